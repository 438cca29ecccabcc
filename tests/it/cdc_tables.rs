//! A PostgreSQL table read through change data capture as the table it is: a GROUP BY over it
//! into a PostgreSQL upsert sink, and a WHERE over it into a Delta upsert sink, follow the
//! upstream table under a mixed workload and SIGKILLs; PostgreSQL's own query over the source
//! table is the oracle.

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
        "SELECT sum(state_rows) FROM tributary.operators WHERE pipeline = 'per_bucket' AND kind = 'change_aggregate'",
    )
    .await;
    assert_eq!(state, passing);
    drop(server);
}
