//! Two PostgreSQL tables read through change data capture and joined (orders with their
//! customers): under a seeded random workload on both tables and two SIGKILLs, the Delta and
//! PostgreSQL upsert sinks end equal to PostgreSQL's own join of the source tables, and a GROUP
//! BY over the joined rows equal to PostgreSQL's aggregate of that join.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::Rng;
use tokio_postgres::Client;

use crate::cdc::{setup_source_db, PgCluster};
use crate::harness::*;

const CUSTOMERS: i64 = 2_000;
const ORDERS: i64 = 5_000;

/// One random change (or transaction of changes) to orders or customers.
fn random_change(rng: &mut StdRng, round: u64) -> String {
    let order = rng.random_range(1..=ORDERS + 500);
    let customer = rng.random_range(1..=CUSTOMERS + 200);
    match rng.random_range(0..8) {
        0 => format!("UPDATE orders SET customer_id = {customer} WHERE id = {order}"),
        1 => format!("UPDATE orders SET amount = amount + 1.25 WHERE id = {order}"),
        2 => format!("DELETE FROM orders WHERE id = {order}"),
        3 => format!(
            "INSERT INTO orders VALUES ({order}, {customer}, {round}.50) ON CONFLICT (id) DO UPDATE SET customer_id = excluded.customer_id"
        ),
        4 => format!("UPDATE customers SET name = 'n{round}', balance = balance + 50 WHERE id = {customer}"),
        5 => format!("DELETE FROM customers WHERE id = {customer}"),
        6 => format!(
            "INSERT INTO customers VALUES ({customer}, 'new{round}', {round}.75, now()) ON CONFLICT (id) DO UPDATE SET name = NULL"
        ),
        _ => format!(
            "BEGIN; UPDATE customers SET balance = balance * 2 WHERE id BETWEEN {customer} AND {customer} + 10; \
             UPDATE orders SET customer_id = customer_id + 1 WHERE id BETWEEN {order} AND {order} + 5; COMMIT"
        ),
    }
}

async fn workload(c: Client, mut rng: StdRng, rounds: u64) {
    for round in 0..rounds {
        let sql = random_change(&mut rng, round);
        c.batch_execute(&sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_of_two_cdc_tables_follows_both_across_sigkills() {
    let pg = PgCluster::start("logical");
    let shop = setup_source_db(&pg, CUSTOMERS).await;
    shop.batch_execute(&format!(
        "CREATE TABLE orders (id int PRIMARY KEY, customer_id int, amount numeric(12,2));
         INSERT INTO orders SELECT g, g % {} + 1, (g % 700) + 0.5 FROM generate_series(1, {ORDERS}) g;",
        CUSTOMERS + 300
    ))
    .await
    .unwrap();
    let warehouse = pg.client("warehouse").await;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let lake = tmp.path().join("lake");
    let mut server = Server::start(&data).await;
    let c = server.client().await;
    c.batch_execute(&format!(
        "CREATE SOURCE orders_l WITH (connector = 'postgres-cdc', url = '{url}', table = 'orders');
         CREATE SOURCE customers_l WITH (connector = 'postgres-cdc', url = '{url}', table = 'customers');
         CREATE SOURCE orders_w WITH (connector = 'postgres-cdc', url = '{url}', table = 'orders');
         CREATE SOURCE customers_w WITH (connector = 'postgres-cdc', url = '{url}', table = 'customers');
         CREATE SOURCE orders_a WITH (connector = 'postgres-cdc', url = '{url}', table = 'orders');
         CREATE SOURCE customers_a WITH (connector = 'postgres-cdc', url = '{url}', table = 'customers');
         CREATE SINK buckets WITH (connector = 'postgres', url = '{wh}', table = 'public.buckets', mode = 'upsert');
         CREATE SINK lake WITH (connector = 'delta', path = '{lake}', mode = 'upsert', key = 'order_id');
         CREATE SINK wh WITH (connector = 'postgres', url = '{wh}', table = 'public.enriched', mode = 'upsert', key = 'order_id');
         CREATE PIPELINE to_lake WITH (checkpoint_interval = '300ms') AS INSERT INTO lake
           SELECT o.id AS order_id, o.amount, c.name, c.balance
           FROM orders_l o LEFT JOIN customers_l c ON o.customer_id = c.id;
         CREATE PIPELINE to_wh WITH (checkpoint_interval = '300ms') AS INSERT INTO wh
           SELECT o.id AS order_id, c.name FROM orders_w o JOIN customers_w c ON c.id = o.customer_id
           WHERE c.balance > 300;
         CREATE PIPELINE per_bucket WITH (checkpoint_interval = '300ms') AS INSERT INTO buckets
           SELECT o.customer_id % 10 AS bucket, count(*) AS n, sum(c.balance) AS total
           FROM orders_a o JOIN customers_a c ON c.id = o.customer_id GROUP BY o.customer_id % 10;",
        url = pg.url("shop"),
        wh = pg.url("warehouse"),
        lake = lake.display()
    ))
    .await
    .unwrap();

    // Orders move between customers and leave; customers change, leave and come back; both in
    // one transaction too. Tributary is killed twice meanwhile.
    const ROUNDS: u64 = 1_500;
    let mut rng = seeded_rng("a_join_of_two_cdc_tables_follows_both_across_sigkills");
    let kill_after: Vec<u64> = (0..2).map(|_| rng.random_range(800..3000)).collect();
    let load = tokio::spawn(workload(pg.client("shop").await, rng, ROUNDS));
    for ms in kill_after {
        // A random moment to kill at (seeded), not synchronisation.
        tokio::time::sleep(Duration::from_millis(ms)).await;
        server.kill9();
        server = Server::start(&data).await;
    }
    load.await.unwrap();
    let c = server.client().await;
    for p in ["to_lake", "to_wh", "per_bucket"] {
        wait_state(&c, p, "running").await;
    }

    // PostgreSQL's own joins of the source tables.
    let expected_lake = query_lines(
        &shop,
        "SELECT o.id::text || ' ' || o.amount::text || ' ' || coalesce(c.name, 'None') || ' ' || coalesce(c.balance::text, 'None')
         FROM orders o LEFT JOIN customers c ON o.customer_id = c.id ORDER BY o.id",
    )
    .await;
    let expected_wh = query_lines(
        &shop,
        "SELECT o.id::text || ' ' || coalesce(c.name, 'None') FROM orders o JOIN customers c ON c.id = o.customer_id
         WHERE c.balance > 300 ORDER BY o.id",
    )
    .await;
    assert!(expected_wh.len() > 500, "{}", expected_wh.len());
    let expected_buckets = query_lines(
        &shop,
        "SELECT b::text || ' ' || n::text || ' ' || t::text FROM (
           SELECT o.customer_id % 10 AS b, count(*) AS n, sum(c.balance) AS t
           FROM orders o JOIN customers c ON c.id = o.customer_id GROUP BY 1) x ORDER BY b",
    )
    .await;
    poll(
        Duration::from_secs(240),
        "the GROUP BY over the join to equal PostgreSQL's",
        || async {
            let got = query_lines(
                &warehouse,
                "SELECT bucket::text || ' ' || n::text || ' ' || total::text FROM public.buckets ORDER BY bucket",
            )
            .await;
            (got == expected_buckets).then_some(())
        },
    )
    .await;
    poll(
        Duration::from_secs(240),
        "the PostgreSQL sink to equal PostgreSQL's join",
        || async {
            let got = query_lines(
                &warehouse,
                "SELECT order_id::text || ' ' || coalesce(name, 'None') FROM public.enriched ORDER BY order_id",
            )
            .await;
            (got == expected_wh).then_some(())
        },
    )
    .await;
    poll(
        Duration::from_secs(240),
        "the Delta sink to equal PostgreSQL's join",
        || async {
            // Each read starts a Python reader (about a second): that paces the polling.
            let got = delta_sorted(&lake, &["order_id", "amount", "name", "balance"]);
            (got == expected_lake).then_some(())
        },
    )
    .await;
    // The join keeps both tables' current rows (the customers that pass the WHERE, for the
    // warehouse's).
    let rows = scalar(
        &shop,
        "SELECT ((SELECT count(*) FROM orders) + (SELECT count(*) FROM customers))::text",
    )
    .await;
    // Polled: a pipeline restarted by the kill shows its operators once it has run a while.
    poll(Duration::from_secs(60), "the join's state rows", || async {
        let state = scalar(
            &c,
            "SELECT sum(state_rows) FROM tributary.operators WHERE pipeline = 'to_lake' AND kind = 'change_join'",
        )
        .await;
        (state == rows).then_some(())
    })
    .await;
    drop(server);
}
