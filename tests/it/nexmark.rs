//! Nexmark q0–q2 from the built-in generator through real pipelines into Parquet, compared with
//! DataFusion's batch result over the same generated rows.

use std::sync::Arc;

use datafusion::datasource::MemTable;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use tributary_connectors::nexmark::{Generator, NexmarkTable};

use crate::harness::*;

const EVENTS: u64 = 200_000;
const SEED: u64 = 42;

const QUERIES: &[(&str, &str)] = &[
    (
        "q0",
        "SELECT auction, bidder, price, date_time, extra FROM bid",
    ),
    (
        "q1",
        "SELECT auction, bidder, 0.908 * price AS price, date_time, extra FROM bid",
    ),
    (
        "q2",
        "SELECT auction, price FROM bid WHERE auction % 123 = 0",
    ),
];

async fn sorted_rows(ctx: &SessionContext, sql: &str) -> Vec<String> {
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    let text = arrow::util::pretty::pretty_format_batches(&batches)
        .unwrap()
        .to_string();
    let mut rows: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with("| ") && !l.contains("auction "))
        .map(str::to_string)
        .collect();
    rows.sort();
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn q0_q1_q2_equal_datafusion_batch_results() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let server = Server::start(&data).await;
    let c = server.client().await;
    c.batch_execute(&format!("CREATE SOURCE bid WITH (connector = 'nexmark', table = 'bid', events = {EVENTS}, seed = {SEED})"))
        .await
        .unwrap();
    for (q, sql) in QUERIES {
        let out = tmp.path().join(q);
        c.batch_execute(&format!(
            "CREATE SINK {q}_out WITH (connector = 'parquet', path = '{}');
             CREATE PIPELINE {q} WITH (checkpoint_interval = '100ms') AS INSERT INTO {q}_out {sql};",
            out.display()
        ))
        .await
        .unwrap();
    }
    // The oracle: the same generator's rows in a MemTable, queried by a plain DataFusion session.
    let rows = tributary_connectors::nexmark::generator_rows(NexmarkTable::Bid, EVENTS);
    let generator = Generator::new(
        NexmarkTable::Bid,
        SEED,
        tributary_connectors::nexmark::DEFAULT_EVENT_RATE,
        1,
    );
    let batch = generator.batch(0, rows as usize).unwrap();
    assert_eq!(batch.num_rows(), 184_000);
    let oracle = SessionContext::new();
    oracle
        .register_table(
            "bid",
            Arc::new(MemTable::try_new(batch.schema(), vec![vec![batch]]).unwrap()),
        )
        .unwrap();
    for (q, sql) in QUERIES {
        wait_state(&c, q, "completed").await;
        let reader = SessionContext::new();
        reader
            .register_parquet(
                "out",
                tmp.path().join(q).to_str().unwrap(),
                ParquetReadOptions::default(),
            )
            .await
            .unwrap();
        let got = sorted_rows(&reader, "SELECT * FROM out").await;
        let want = sorted_rows(&oracle, sql).await;
        assert!(!want.is_empty());
        assert_eq!(got.len(), want.len(), "{q}: row count");
        assert!(got == want, "{q}: rows differ");
    }
    // q2 keeps only bids on auctions whose id is a multiple of 123.
    let q2 = scalar(&c, "SELECT count(*) FROM q2_out WHERE auction % 123 <> 0").await;
    assert_eq!(q2, "0");
}
