//! A PostgreSQL table read through change data capture as the table it is: a GROUP BY over it
//! into a PostgreSQL upsert sink, and a WHERE over it into a Delta upsert sink, follow the
//! upstream table under a mixed workload and SIGKILLs (PostgreSQL's own query over the source
//! table is the oracle); orders joined with it get each customer as it was when the order
//! arrived, into Delta and PostgreSQL, across a SIGKILL; read FOR SYSTEM_TIME AS OF the orders'
//! times, each order gets its customer as it was at the order's time, whenever it arrived.

use std::time::Duration;

use rand::Rng;
use tokio_postgres::Client;

use crate::cdc::{delta_tuples, pg_rows, setup_source_db, workload, PgCluster};
use crate::harness::*;

/// Per bucket of ids: rows, total balance, first name, latest update; as sorted text tuples.
async fn bucket_rows(c: &Client, query: &str) -> Vec<String> {
    let rows = c
        .query(
            &format!(
                "SELECT bucket::text || '|' || n::text || '|' || coalesce(total::text, '~') || '|' ||
                        coalesce(first_name, '~') || '|' ||
                        coalesce((extract(epoch from last_update) * 1000000)::bigint::text, '~')
                 FROM ({query}) b ORDER BY bucket"
            ),
            &[],
        )
        .await
        .unwrap();
    rows.iter().map(|r| r.get::<_, String>(0)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdc_aggregates_and_filters_follow_their_table_across_sigkills() {
    let pg = PgCluster::start("logical");
    const ROWS: i64 = 50_000;
    let shop = setup_source_db(&pg, ROWS).await;
    let warehouse = pg.client("warehouse").await;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let lake = tmp.path().join("rich");
    let mut server = Server::start(&data).await;
    let c = server.client().await;
    c.batch_execute(&format!(
        "CREATE SOURCE customers_agg WITH (connector = 'postgres-cdc', url = '{url}', table = 'customers');
         CREATE SOURCE customers_rich WITH (connector = 'postgres-cdc', url = '{url}', table = 'customers');
         CREATE SINK buckets WITH (connector = 'postgres', url = '{wh}', table = 'public.buckets', mode = 'upsert');
         CREATE SINK rich WITH (connector = 'delta', path = '{lake}', mode = 'upsert', key = 'id');
         CREATE PIPELINE per_bucket WITH (checkpoint_interval = '500ms') AS INSERT INTO buckets
           SELECT id % 100 AS bucket, count(*) AS n, sum(balance) AS total, min(name) AS first_name,
                  max(updated_at) AS last_update
           FROM customers_agg WHERE balance >= 100 GROUP BY id % 100;
         CREATE PIPELINE rich_customers WITH (checkpoint_interval = '500ms') AS INSERT INTO rich
           SELECT id, name, balance, updated_at FROM customers_rich WHERE balance >= 500;",
        url = pg.url("shop"),
        wh = pg.url("warehouse"),
        lake = lake.display()
    ))
    .await
    .unwrap();

    // Updates move balances across both thresholds (+1, x2), deletes arrive by key alone, and
    // names become NULL; Tributary is killed twice meanwhile.
    const ROUNDS: u64 = 2000;
    let mut rng = seeded_rng("cdc_aggregates_and_filters_follow_their_table_across_sigkills");
    let kill_after: Vec<u64> = (0..2).map(|_| rng.random_range(800..3000)).collect();
    let load = tokio::spawn(workload(pg.client("shop").await, ROUNDS, ROWS + 1));
    for ms in kill_after {
        // A random moment to kill at (seeded), not synchronisation.
        tokio::time::sleep(Duration::from_millis(ms)).await;
        server.kill9();
        server = Server::start(&data).await;
    }
    load.await.unwrap();
    // Balances far below the threshold climb over it, and back: the last changes of the run.
    shop.batch_execute(
        "UPDATE customers SET balance = 1000 WHERE id BETWEEN 1 AND 50;
         UPDATE customers SET balance = 1 WHERE id BETWEEN 51 AND 300;
         DELETE FROM customers WHERE id % 100 = 42;",
    )
    .await
    .unwrap();
    let c = server.client().await;
    for p in ["per_bucket", "rich_customers"] {
        wait_state(&c, p, "running").await;
    }

    // PostgreSQL's own aggregate over the source table (names compared bytewise, as Arrow does).
    let expected = bucket_rows(
        &shop,
        "SELECT id % 100 AS bucket, count(*) AS n, sum(balance) AS total,
                min(name COLLATE \"C\") AS first_name, max(updated_at) AS last_update
         FROM customers WHERE balance >= 100 GROUP BY id % 100",
    )
    .await;
    // Bucket 42 lost every row: its row left the sink.
    assert_eq!(expected.len(), 99, "{expected:?}");
    poll(
        Duration::from_secs(240),
        "the per-bucket aggregate to equal PostgreSQL's",
        || async {
            let got = bucket_rows(&warehouse, "SELECT * FROM public.buckets").await;
            (got == expected).then_some(())
        },
    )
    .await;
    let rich = pg_rows(&shop, "customers WHERE balance >= 500").await;
    assert!(rich.len() > 1_000, "{}", rich.len());
    poll(
        Duration::from_secs(240),
        "the filtered Delta table to equal the source's rows that pass",
        || async {
            // Each read starts a Python reader (about a second): that paces the polling.
            (delta_tuples(&lake) == rich).then_some(())
        },
    )
    .await;
    // The aggregate's state is the source's rows that pass its WHERE.
    let passing = scalar(
        &shop,
        "SELECT count(*)::text FROM customers WHERE balance >= 100",
    )
    .await;
    let state = scalar(
        &c,
        "SELECT sum(state_rows) FROM tributary.operators WHERE pipeline = 'per_bucket' AND kind = 'change_partials'",
    )
    .await;
    assert_eq!(state, passing);
    drop(server);
}

/// Writes `orders-<n>.csv` (id, customer_id, amount) into `dir` whole: under another name,
/// then renamed, so the watching source never reads it half-written.
pub(crate) fn drop_orders(dir: &std::path::Path, n: u32, orders: &[(i64, i32)]) {
    let mut text = String::from("id,customer_id,amount\n");
    for (id, customer) in orders {
        text.push_str(&format!("{id},{customer},{}.5\n", id % 97));
    }
    drop_whole(dir, &format!("orders-{n}.csv"), &text);
}

/// Writes `text` into `dir/name` whole: under another name, then renamed.
fn drop_whole(dir: &std::path::Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

/// A figure of each pipeline's join: `rows_in` or `state_rows`.
async fn join_figure(c: &Client, pipeline: &str, figure: &str) -> u64 {
    scalar(
        c,
        &format!(
            "SELECT sum({figure}) FROM tributary.operators WHERE pipeline = '{pipeline}' AND kind IN ('temporal_join', 'versioned_join')"
        ),
    )
    .await
    .parse()
    .unwrap_or(0)
}

/// Waits until each pipeline's join has taken `changes` more rows than `before`.
async fn joined_changes(c: &Client, pipelines: &[&str], before: &[u64], changes: u64) {
    for (p, b) in pipelines.iter().zip(before) {
        poll(
            Duration::from_secs(60),
            "the customers' changes to reach the join",
            || async { (join_figure(c, p, "rows_in").await >= b + changes).then_some(()) },
        )
        .await;
    }
}

async fn joins_rows_in(c: &Client, pipelines: &[&str]) -> Vec<u64> {
    let mut out = Vec::new();
    for p in pipelines {
        out.push(join_figure(c, p, "rows_in").await);
    }
    out
}

/// Waits until `pipeline` has written `rows` rows.
pub(crate) async fn written(c: &Client, pipeline: &str, rows: u64) {
    poll(
        Duration::from_secs(60),
        "the orders to be joined",
        || async {
            let out = scalar(
                c,
                &format!("SELECT rows_out FROM tributary.pipelines WHERE name = '{pipeline}'"),
            )
            .await;
            (out == rows.to_string()).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_join_customers_as_they_are_when_each_order_arrives() {
    let pg = PgCluster::start("logical");
    let shop = setup_source_db(&pg, 0).await;
    shop.batch_execute(
        "DROP TABLE customers;
         CREATE TABLE customers (id int PRIMARY KEY, name text, tier text);
         INSERT INTO customers SELECT g, 'c' || g, CASE WHEN g % 2 = 0 THEN 'silver' ELSE 'bronze' END
         FROM generate_series(1, 100) g;",
    )
    .await
    .unwrap();
    let warehouse = pg.client("warehouse").await;
    let tmp = tempfile::tempdir().unwrap();
    let (orders, lake, data) = (
        tmp.path().join("orders"),
        tmp.path().join("lake"),
        tmp.path().join("data"),
    );
    std::fs::create_dir_all(&orders).unwrap();
    std::fs::create_dir_all(&data).unwrap();
    let mut server = Server::start(&data).await;
    let c = server.client().await;
    c.batch_execute(&format!(
        "CREATE SOURCE orders (id BIGINT, customer_id INT, amount DOUBLE) WITH (connector = 'file', path = '{orders}/*.csv');
         CREATE SOURCE customers_lake WITH (connector = 'postgres-cdc', url = '{url}', table = 'customers');
         CREATE SOURCE customers_wh WITH (connector = 'postgres-cdc', url = '{url}', table = 'customers');
         CREATE SINK lake WITH (connector = 'delta', path = '{lake}');
         CREATE SINK wh WITH (connector = 'postgres', url = '{wh}', table = 'public.enriched');",
        orders = orders.display(),
        url = pg.url("shop"),
        wh = pg.url("warehouse"),
        lake = lake.display()
    ))
    .await
    .unwrap();
    // Batch 1, there before the pipelines start: customers 1..200, of which 101..200 are
    // unknown. The orders wait for the customers' snapshot: none joins a table half loaded.
    let first: Vec<(i64, i32)> = (1..=200).map(|i| (i, i as i32)).collect();
    drop_orders(&orders, 1, &first);
    c.batch_execute(
        "CREATE PIPELINE to_lake WITH (mode = 'streaming', checkpoint_interval = '200ms') AS INSERT INTO lake
           SELECT o.id, o.amount, c.name, c.tier FROM orders o LEFT JOIN customers_lake c ON o.customer_id = c.id;
         CREATE PIPELINE to_wh WITH (mode = 'streaming', checkpoint_interval = '200ms') AS INSERT INTO wh
           SELECT o.id, c.name, c.tier FROM orders o JOIN customers_wh c ON c.id = o.customer_id WHERE c.tier <> 'none';",
    )
    .await
    .unwrap();
    let pipelines = ["to_lake", "to_wh"];
    // The snapshot of the customers is in both joins' tables.
    for p in pipelines {
        poll(
            Duration::from_secs(60),
            "the customers' snapshot",
            || async { (join_figure(&c, p, "state_rows").await == 100).then_some(()) },
        )
        .await;
    }

    written(&c, "to_lake", 200).await;
    written(&c, "to_wh", 100).await;
    // Upstream changes: ten renamed, one deleted, one made 'none' (which the WHERE on the
    // table side drops, as a delete).
    let before = joins_rows_in(&c, &pipelines).await;
    shop.batch_execute(
        "UPDATE customers SET name = 'renamed ' || id WHERE id <= 10;
         DELETE FROM customers WHERE id = 20;
         UPDATE customers SET tier = 'none' WHERE id = 21;",
    )
    .await
    .unwrap();
    joined_changes(&c, &pipelines, &before, 12).await;
    // Batch 2: the same customers again.
    let second: Vec<(i64, i32)> = (1..=200).map(|i| (200 + i, i as i32)).collect();
    drop_orders(&orders, 2, &second);
    written(&c, "to_lake", 400).await;
    written(&c, "to_wh", 198).await;

    // Killed: the tables come back from the checkpoint, not from a new snapshot.
    server.kill9();
    server = Server::start(&data).await;
    let c = server.client().await;
    for p in pipelines {
        wait_state(&c, p, "running").await;
    }
    let before = joins_rows_in(&c, &pipelines).await;
    shop.batch_execute("UPDATE customers SET tier = 'gold' WHERE id = 30")
        .await
        .unwrap();
    joined_changes(&c, &pipelines, &before, 1).await;
    let third: Vec<(i64, i32)> = (1..=50).map(|i| (400 + i, i as i32)).collect();
    drop_orders(&orders, 3, &third);
    written(&c, "to_lake", 450).await;
    written(&c, "to_wh", 246).await;

    // Each order carries its customer as it was when the order arrived.
    let customer = |id: i64, cid: i32| -> Option<(String, String)> {
        let batch = (id - 1) / 200;
        if cid > 100 || (batch >= 1 && cid == 20) {
            return None;
        }
        let name = if batch >= 1 && cid <= 10 {
            format!("renamed {cid}")
        } else {
            format!("c{cid}")
        };
        let tier = match (batch, cid) {
            (1.., 21) => "none",
            (2, 30) => "gold",
            (_, c) if c % 2 == 0 => "silver",
            _ => "bronze",
        };
        Some((name, tier.to_string()))
    };
    let all: Vec<(i64, i32)> = [first, second, third].concat();
    let want_lake: Vec<String> = all
        .iter()
        .map(|&(id, cid)| match customer(id, cid) {
            Some((n, t)) => format!("{id} {n} {t}"),
            None => format!("{id} None None"),
        })
        .collect();
    let got = delta_sorted(&lake, &["id", "name", "tier"]);
    assert_same_rows(&got, &want_lake, "the LEFT JOIN in Delta");
    let want_wh: Vec<String> = all
        .iter()
        .filter_map(|&(id, cid)| {
            let (n, t) = customer(id, cid)?;
            (t != "none").then(|| format!("{id} {n} {t}"))
        })
        .collect();
    let got: Vec<String> = warehouse
        .query(
            "SELECT id, name, tier FROM public.enriched ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| {
            format!(
                "{} {} {}",
                r.get::<_, i64>(0),
                r.get::<_, String>(1),
                r.get::<_, String>(2)
            )
        })
        .collect();
    assert_same_rows(&got, &want_wh, "the INNER JOIN in PostgreSQL");
    // The join keeps the table (the customers that pass its WHERE), not the orders.
    let state = query_lines(
        &c,
        "SELECT pipeline, state_rows FROM tributary.operators WHERE kind = 'temporal_join' ORDER BY pipeline",
    )
    .await;
    assert_eq!(state, ["to_lake 99", "to_wh 98"]);
    drop(server);
}

/// Writes `timed-<n>.csv` (id, customer_id, ts: UTC microseconds) into `dir` whole.
fn drop_timed_orders(dir: &std::path::Path, n: u32, orders: &[(i64, i32, i64)]) {
    let mut text = String::from("id,customer_id,ts\n");
    for (id, customer, at) in orders {
        let at = chrono::DateTime::from_timestamp_micros(*at)
            .unwrap()
            .naive_utc();
        text.push_str(&format!(
            "{id},{customer},{}\n",
            at.format("%Y-%m-%d %H:%M:%S%.6f")
        ));
    }
    drop_whole(dir, &format!("timed-{n}.csv"), &text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_join_customers_as_they_were_at_each_orders_time() {
    let pg = PgCluster::start("logical");
    let shop = setup_source_db(&pg, 0).await;
    shop.batch_execute(
        "DROP TABLE customers;
         CREATE TABLE customers (id int PRIMARY KEY, name text);
         INSERT INTO customers SELECT g, 'c' || g FROM generate_series(1, 100) g;",
    )
    .await
    .unwrap();
    let warehouse = pg.client("warehouse").await;
    let tmp = tempfile::tempdir().unwrap();
    let (orders, lake, data) = (
        tmp.path().join("orders"),
        tmp.path().join("lake"),
        tmp.path().join("data"),
    );
    std::fs::create_dir_all(&orders).unwrap();
    std::fs::create_dir_all(&data).unwrap();
    let mut server = Server::start(&data).await;
    let c = server.client().await;
    // Orders may come an hour out of order; a change's time is its commit's.
    c.batch_execute(&format!(
        "CREATE SOURCE orders (id BIGINT, customer_id INT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '1' HOUR)
           WITH (connector = 'file', path = '{orders}/*.csv');
         CREATE SOURCE customers_lake (WATERMARK FOR _commit_ts AS _commit_ts) WITH (connector = 'postgres-cdc', url = '{url}', table = 'customers');
         CREATE SOURCE customers_wh (WATERMARK FOR _commit_ts AS _commit_ts) WITH (connector = 'postgres-cdc', url = '{url}', table = 'customers');
         CREATE SINK lake WITH (connector = 'delta', path = '{lake}');
         CREATE SINK wh WITH (connector = 'postgres', url = '{wh}', table = 'public.valued');
         CREATE PIPELINE to_lake WITH (mode = 'streaming', checkpoint_interval = '200ms', idle_timeout = '1s') AS INSERT INTO lake
           SELECT o.id, c.name FROM orders o LEFT JOIN customers_lake FOR SYSTEM_TIME AS OF o.ts AS c ON o.customer_id = c.id;
         CREATE PIPELINE to_wh WITH (mode = 'streaming', checkpoint_interval = '200ms', idle_timeout = '1s') AS INSERT INTO wh
           SELECT o.id, c.name FROM orders o JOIN customers_wh FOR SYSTEM_TIME AS OF o.ts c ON c.id = o.customer_id;",
        orders = orders.display(),
        url = pg.url("shop"),
        wh = pg.url("warehouse"),
        lake = lake.display()
    ))
    .await
    .unwrap();
    let pipelines = ["to_lake", "to_wh"];
    for p in pipelines {
        poll(
            Duration::from_secs(60),
            "the customers' snapshot",
            || async { (join_figure(&c, p, "state_rows").await == 100).then_some(()) },
        )
        .await;
    }
    const MINUTE: i64 = 60_000_000;
    let t0: i64 = scalar(
        &shop,
        "SELECT (extract(epoch FROM now()) * 1000000)::bigint::text",
    )
    .await
    .parse()
    .unwrap();
    let (before, after) = (t0 - 10 * MINUTE, t0 + 30 * MINUTE);
    // Batch 1, read before the change: orders timed after it (customers 101..120 unknown).
    let first: Vec<(i64, i32, i64)> = (1..=120).map(|i| (i, i as i32, after)).collect();
    drop_timed_orders(&orders, 1, &first);
    let read = joins_rows_in(&c, &pipelines).await;
    joined_changes(&c, &pipelines, &read, 120).await;
    // The change: ten renamed, one deleted.
    let read = joins_rows_in(&c, &pipelines).await;
    shop.batch_execute(
        "BEGIN;
         UPDATE customers SET name = 'renamed ' || id WHERE id <= 10;
         DELETE FROM customers WHERE id = 20;
         COMMIT;",
    )
    .await
    .unwrap();
    joined_changes(&c, &pipelines, &read, 11).await;
    // Batch 2, read after the change: half timed before it, half after.
    let second: Vec<(i64, i32, i64)> = (1..=120)
        .map(|i| (120 + i, i as i32, if i % 2 == 1 { before } else { after }))
        .collect();
    drop_timed_orders(&orders, 2, &second);
    let read = joins_rows_in(&c, &pipelines).await;
    joined_changes(&c, &pipelines, &read, 120).await;
    // The watermark is an hour behind the orders: every order still waits, in the state.
    for p in pipelines {
        let out = scalar(
            &c,
            &format!("SELECT rows_out FROM tributary.pipelines WHERE name = '{p}'"),
        )
        .await;
        assert_eq!(
            out, "0",
            "{p} joined an order before the watermark passed its time"
        );
    }

    // Killed with every order waiting: they come back from the checkpoint.
    server.kill9();
    server = Server::start(&data).await;
    let c = server.client().await;
    for p in pipelines {
        wait_state(&c, p, "running").await;
    }
    // A later order moves the orders' watermark past them all; once the customers' source has
    // been quiet for its idle timeout it no longer holds the watermark back.
    drop_timed_orders(&orders, 3, &[(1000, 1, t0 + 180 * MINUTE)]);
    let customer = |id: i64, cid: i32| -> Option<String> {
        let changed = id % 2 == 0 || id <= 120;
        match (cid, changed) {
            (101.., _) | (20, true) => None,
            (1..=10, true) => Some(format!("renamed {cid}")),
            _ => Some(format!("c{cid}")),
        }
    };
    let all: Vec<(i64, i32, i64)> = [first, second].concat();
    let want_lake: Vec<String> = all
        .iter()
        .map(|&(id, cid, _)| format!("{id} {}", customer(id, cid).unwrap_or("None".into())))
        .collect();
    let want_wh: Vec<String> = all
        .iter()
        .filter_map(|&(id, cid, _)| Some(format!("{id} {}", customer(id, cid)?)))
        .collect();
    written(&c, "to_lake", want_lake.len() as u64).await;
    written(&c, "to_wh", want_wh.len() as u64).await;
    let got = delta_sorted(&lake, &["id", "name"]);
    assert_same_rows(&got, &want_lake, "the LEFT JOIN in Delta");
    let got: Vec<String> = warehouse
        .query("SELECT id, name FROM public.valued ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| format!("{} {}", r.get::<_, i64>(0), r.get::<_, String>(1)))
        .collect();
    assert_same_rows(&got, &want_wh, "the INNER JOIN in PostgreSQL");
    // Left: each customer's latest version (20 deleted) and the order that waits.
    let state = query_lines(
        &c,
        "SELECT pipeline, state_rows FROM tributary.operators WHERE kind = 'versioned_join' ORDER BY pipeline",
    )
    .await;
    assert_eq!(state, ["to_lake 100", "to_wh 100"]);
    drop(server);
}
