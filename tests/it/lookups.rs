//! Orders joined with customers looked up in PostgreSQL (`connector = 'postgres'`) as each
//! batch arrives: a pipeline that caches its lookups for an hour keeps the customers it first
//! saw, one that does not cache (written `FOR SYSTEM_TIME AS OF now()`, as Flink writes
//! lookups, and run as three instances that each look up their share of the keys) sees every
//! change, one with a one-second cache sees changes once its entries
//! expire; a PostgreSQL restart and a SIGKILL lose and duplicate nothing; a
//! batch pipeline with two chained lookups (one on a composite key) equals the batch SELECT.

use std::time::Duration;

use rand::Rng;
use tokio_postgres::Client;

use crate::cdc::{setup_source_db, PgCluster};
use crate::cdc_tables::{drop_orders, written};
use crate::harness::*;

/// `id name tier` per order, `None` for NULLs, sorted by id.
async fn joined(c: &Client, table: &str) -> Vec<String> {
    c.query(
        &format!("SELECT id, name, tier FROM {table} ORDER BY id"),
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| {
        format!(
            "{} {} {}",
            r.get::<_, i64>(0),
            r.get::<_, Option<String>>(1).unwrap_or("None".into()),
            r.get::<_, Option<String>>(2).unwrap_or("None".into())
        )
    })
    .collect()
}

/// The customer `cid` as first created, and after the update of the test.
fn customer(cid: i32, updated: bool) -> Option<(String, String)> {
    let tier = if cid % 2 == 0 { "silver" } else { "bronze" };
    match (cid, updated) {
        (150, true) => Some(("new 150".into(), "gold".into())),
        (101.., _) | (20, true) => None,
        (21, true) => Some((format!("c{cid}"), "none".into())),
        (..=10, true) => Some((format!("renamed {cid}"), tier.into())),
        _ => Some((format!("c{cid}"), tier.into())),
    }
}

/// The rows a LEFT JOIN gives for `orders`, with each customer as `updated` says.
fn left_join(orders: &[(i64, i32)], updated: bool) -> Vec<String> {
    orders
        .iter()
        .map(|&(id, cid)| match customer(cid, updated) {
            Some((n, t)) => format!("{id} {n} {t}"),
            None => format!("{id} None None"),
        })
        .collect()
}

/// The rows of `SELECT ... JOIN ... WHERE tier <> 'none'` for `orders`.
fn inner_join(orders: &[(i64, i32)], updated: bool) -> Vec<String> {
    orders
        .iter()
        .filter_map(|&(id, cid)| {
            let (n, t) = customer(cid, updated)?;
            (t != "none").then(|| format!("{id} {n} {t}"))
        })
        .collect()
}

async fn lookup_figure(c: &Client, pipeline: &str, figure: &str) -> String {
    scalar(
        c,
        &format!(
            "SELECT sum({figure}) FROM tributary.operators WHERE pipeline = '{pipeline}' AND kind = 'lookup_join'"
        ),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup_joins_follow_postgres_under_their_cache_ttl() {
    let pg = PgCluster::start("replica");
    let shop = setup_source_db(&pg, 0).await;
    shop.batch_execute(
        "DROP TABLE customers;
         CREATE TABLE customers (id int PRIMARY KEY, name text, tier text);
         INSERT INTO customers SELECT g, 'c' || g, CASE WHEN g % 2 = 0 THEN 'silver' ELSE 'bronze' END
         FROM generate_series(1, 100) g;
         CREATE TABLE tiers (tier text, bucket int, discount int, PRIMARY KEY (tier, bucket));
         INSERT INTO tiers SELECT t, b, b * 10 + length(t) FROM unnest(ARRAY['silver', 'bronze']) t, generate_series(0, 1) b;",
    )
    .await
    .unwrap();
    // The sinks live in another server, up while the lookups' server restarts.
    let wh_pg = PgCluster::start("replica");
    let warehouse = wh_pg.client("postgres").await;
    let tmp = tempfile::tempdir().unwrap();
    let (orders, data) = (tmp.path().join("orders"), tmp.path().join("data"));
    std::fs::create_dir_all(&orders).unwrap();
    std::fs::create_dir_all(&data).unwrap();
    let mut server = Server::start(&data).await;
    let c = server.client().await;
    c.batch_execute(&format!(
        "CREATE SOURCE orders (id BIGINT, customer_id INT, amount DOUBLE) WITH (connector = 'file', path = '{orders}/*.csv');
         CREATE SOURCE cust_cached WITH (connector = 'postgres', url = '{url}', table = 'customers', lookup_cache_ttl = '1h');
         CREATE SOURCE cust_live WITH (connector = 'postgres', url = '{url}', table = 'customers');
         CREATE SOURCE cust_short WITH (connector = 'postgres', url = '{url}', table = 'customers', lookup_cache_ttl = '1s');
         CREATE SOURCE tiers WITH (connector = 'postgres', url = '{url}', table = 'public.tiers');
         CREATE SINK wh_cached WITH (connector = 'postgres', url = '{wh}', table = 'public.cached');
         CREATE SINK wh_live WITH (connector = 'postgres', url = '{wh}', table = 'public.live');
         CREATE SINK wh_short WITH (connector = 'postgres', url = '{wh}', table = 'public.short');
         CREATE SINK wh_batch WITH (connector = 'postgres', url = '{wh}', table = 'public.batch');",
        orders = orders.display(),
        url = pg.url("shop"),
        wh = wh_pg.url("postgres"),
    ))
    .await
    .unwrap();

    // Refused at CREATE: the table on the outer side, and a key that is not a table column.
    for (sql, what) in [
        ("SELECT o.id, c.name, c.tier FROM orders o FULL JOIN cust_live c ON o.customer_id = c.id", "FULL"),
        ("SELECT o.id, c.name, c.tier FROM orders o JOIN cust_live c ON o.customer_id = c.id + 1", "looks its rows up by its columns"),
    ] {
        let e = c
            .batch_execute(&format!("CREATE PIPELINE bad AS INSERT INTO wh_batch {sql}"))
            .await
            .unwrap_err();
        let db = e.as_db_error().unwrap();
        assert_eq!(db.code().code(), "0A000", "{sql}: {}", db.message());
        assert!(db.message().contains(what), "{sql}: {}", db.message());
    }

    c.batch_execute(
        "CREATE PIPELINE p_cached WITH (mode = 'streaming', checkpoint_interval = '200ms') AS INSERT INTO wh_cached
           SELECT o.id, c.name, c.tier FROM orders o LEFT JOIN cust_cached c ON o.customer_id = c.id;
         CREATE PIPELINE p_live WITH (mode = 'streaming', checkpoint_interval = '200ms', parallelism = 3) AS INSERT INTO wh_live
           SELECT o.id, c.name, c.tier FROM orders o JOIN cust_live FOR SYSTEM_TIME AS OF now() AS c ON c.id = o.customer_id WHERE c.tier <> 'none';
         CREATE PIPELINE p_short WITH (mode = 'streaming', checkpoint_interval = '200ms') AS INSERT INTO wh_short
           SELECT o.id, c.name, c.tier FROM orders o LEFT JOIN cust_short c ON o.customer_id = c.id;",
    )
    .await
    .unwrap();
    let pipelines = ["p_cached", "p_live", "p_short"];

    // Batch 1: customers 1..200, of which 101..200 are unknown.
    let first: Vec<(i64, i32)> = (1..=200).map(|i| (i, i as i32)).collect();
    drop_orders(&orders, 1, &first);
    written(&c, "p_cached", 200).await;
    written(&c, "p_live", 100).await;
    // The uncached pipeline looks its keys up from three instances, each its own share.
    let instances = query_lines(
        &c,
        "SELECT instance, rows_in > 0 FROM tributary.operators WHERE pipeline = 'p_live' AND kind = 'lookup_join' ORDER BY instance",
    )
    .await;
    assert_eq!(instances, ["0 t", "1 t", "2 t"]);
    written(&c, "p_short", 200).await;
    // The hour-long cache holds every key asked for, those found without a row too.
    assert_eq!(lookup_figure(&c, "p_cached", "state_rows").await, "200");
    assert_eq!(lookup_figure(&c, "p_live", "state_rows").await, "0");

    shop.batch_execute(
        "UPDATE customers SET name = 'renamed ' || id WHERE id <= 10;
         DELETE FROM customers WHERE id = 20;
         UPDATE customers SET tier = 'none' WHERE id = 21;
         INSERT INTO customers VALUES (150, 'new 150', 'gold');",
    )
    .await
    .unwrap();
    // The one-second cache's entries expire: that expiry is what is tested, so the test waits it out.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let second: Vec<(i64, i32)> = (1..=200).map(|i| (200 + i, i as i32)).collect();
    drop_orders(&orders, 2, &second);
    written(&c, "p_cached", 400).await;
    written(&c, "p_live", 199).await;
    written(&c, "p_short", 400).await;

    // The lookups' server goes away while orders arrive: the lookups retry until it is back.
    pg.stop();
    let third: Vec<(i64, i32)> = (1..=50).map(|i| (400 + i, i as i32)).collect();
    drop_orders(&orders, 3, &third);
    poll(
        Duration::from_secs(60),
        "a lookup to fail and retry",
        || async {
            server
                .log()
                .contains("Lookup failed; retrying.")
                .then_some(())
        },
    )
    .await;
    pg.restart_server();
    written(&c, "p_cached", 450).await;
    written(&c, "p_live", 247).await;
    written(&c, "p_short", 450).await;
    for p in pipelines {
        wait_state(&c, p, "running").await;
    }

    // Killed while batch 4 is joined: nothing lost, nothing twice.
    let fourth: Vec<(i64, i32)> = (1..=200).map(|i| (450 + i, i as i32)).collect();
    let mut rng = seeded_rng("lookup_joins_follow_postgres_under_their_cache_ttl");
    let kill_after = rng.random_range(0..400);
    drop_orders(&orders, 4, &fourth);
    // A random moment to kill at (seeded), not synchronisation.
    tokio::time::sleep(Duration::from_millis(kill_after)).await;
    server.kill9();
    server = Server::start(&data).await;
    let c = server.client().await;
    written(&c, "p_cached", 650).await;
    written(&c, "p_live", 346).await;
    written(&c, "p_short", 650).await;

    // rows_out counts rows as written; their epoch commits after.
    for (table, rows) in [
        ("public.live", 346),
        ("public.short", 650),
        ("public.cached", 650),
    ] {
        poll(
            Duration::from_secs(60),
            "the last epoch's commit",
            || async { (joined(&warehouse, table).await.len() == rows).then_some(()) },
        )
        .await;
    }
    let before: Vec<(i64, i32)> = first.clone();
    let after: Vec<(i64, i32)> = [second.clone(), third.clone(), fourth.clone()].concat();
    // Without a cache every order sees the table as it is when the order arrives.
    let want: Vec<String> = [inner_join(&before, false), inner_join(&after, true)].concat();
    assert_same_rows(&joined(&warehouse, "public.live").await, &want, "no cache");
    // A one-second cache: batch 2 came after its entries expired.
    let want: Vec<String> = [left_join(&before, false), left_join(&after, true)].concat();
    assert_same_rows(
        &joined(&warehouse, "public.short").await,
        &want,
        "a 1 s cache",
    );
    // An hour-long cache: batches 2 and 3 joined the customers as batch 1 found them (150
    // too, cached as missing). Batch 4 was joined before the kill from the cache, or after
    // it, with the cache gone, from the table: each order once, either way.
    let got = joined(&warehouse, "public.cached").await;
    let want: Vec<String> = left_join(&[first, second, third].concat(), false);
    assert_same_rows(&got[..450], &want, "a 1 h cache");
    for (row, &(id, cid)) in got[450..].iter().zip(&fourth) {
        let old = left_join(&[(id, cid)], false);
        let new = left_join(&[(id, cid)], true);
        assert!(
            *row == old[0] || *row == new[0],
            "order {id}: {row} is neither {old:?} nor {new:?}"
        );
    }
    assert_eq!(got.len(), 650);

    // A batch pipeline over two chained lookups (the second on a composite key, one of its
    // columns compared as another type) equals the same SELECT run as a batch query.
    let select = "SELECT o.id, c.name, r.discount FROM orders o
                  LEFT JOIN cust_live c ON o.customer_id = c.id
                  LEFT JOIN tiers r ON r.tier = c.tier AND r.bucket = o.id % 3";
    c.batch_execute(&format!(
        "CREATE PIPELINE p_batch AS INSERT INTO wh_batch {select}"
    ))
    .await
    .unwrap();
    wait_state(&c, "p_batch", "completed").await;
    let want = query_lines(&c, &format!("SELECT * FROM ({select}) q ORDER BY id")).await;
    assert_eq!(want.len(), 650);
    // NULL is empty text in these lines.
    let discounts = want.iter().filter(|l| !l.ends_with(' ')).count();
    assert!(discounts > 200, "{discounts} of 650 found a tier");
    let got: Vec<String> = warehouse
        .query(
            "SELECT id::text AS i, name, discount::text AS d FROM public.batch ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| {
            (0..3)
                .map(|i| r.get::<_, Option<String>>(i).unwrap_or_default())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    assert_eq!(got, want, "the batch pipeline against the batch SELECT");
    drop(server);
}
