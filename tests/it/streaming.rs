//! A streaming pipeline (paced Nexmark source into Delta): STOP takes a final checkpoint, START
//! resumes, a SIGKILL and restart resumes by itself, and the table ends with exactly the bids the
//! generator produced, each once.

use std::sync::Arc;
use std::time::Duration;

use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use tributary_connectors::nexmark::{Generator, NexmarkTable};

use crate::harness::*;

async fn rows_out(c: &tokio_postgres::Client) -> u64 {
    counters(c, "stream").await.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_stop_start_kill_resume_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let lake = tmp.path().join("lake");
    let mut server = Server::start(&data).await;
    let c = server.client().await;
    c.batch_execute(&format!(
        "CREATE SOURCE bids WITH (connector = 'nexmark', table = 'bid', rate = 20000, seed = 5, batch_size = 500);
         CREATE SINK lake WITH (connector = 'delta', path = '{}');
         CREATE PIPELINE stream WITH (checkpoint_interval = '200ms') AS INSERT INTO lake SELECT auction, bidder, price, date_time FROM bids;",
        lake.display()
    ))
    .await
    .unwrap();
    assert_eq!(
        scalar(
            &c,
            "SELECT mode FROM tributary.pipelines WHERE name = 'stream'"
        )
        .await,
        "streaming"
    );
    poll(Duration::from_secs(60), "rows to stream in", || async {
        (rows_out(&c).await > 5_000).then_some(())
    })
    .await;

    // STOP drains and checkpoints: afterwards the table holds exactly what the pipeline counted.
    c.batch_execute("STOP PIPELINE stream").await.unwrap();
    assert_eq!(
        scalar(
            &c,
            "SELECT state FROM tributary.pipelines WHERE name = 'stream'"
        )
        .await,
        "stopped"
    );
    let stopped_at = rows_out(&c).await;
    assert_eq!(
        scalar(&c, "SELECT count(*) FROM lake").await,
        stopped_at.to_string()
    );

    // START resumes from the checkpoint.
    c.batch_execute("START PIPELINE stream").await.unwrap();
    poll(Duration::from_secs(60), "rows after START", || async {
        (rows_out(&c).await > stopped_at + 5_000).then_some(())
    })
    .await;

    // SIGKILL; the restarted server resumes the running pipeline by itself.
    server.kill9();
    server = Server::start(&data).await;
    let c = server.client().await;
    assert_eq!(
        scalar(
            &c,
            "SELECT state FROM tributary.pipelines WHERE name = 'stream'"
        )
        .await,
        "running"
    );
    let resumed_at = rows_out(&c).await;
    poll(Duration::from_secs(60), "rows after restart", || async {
        (rows_out(&c).await > resumed_at + 5_000).then_some(())
    })
    .await;
    c.batch_execute("STOP PIPELINE stream").await.unwrap();
    let total = rows_out(&c).await;

    // The table holds bids 0..total of the generator, each exactly once: same count, same sums,
    // same number of distinct rows as the generator's first `total` bids.
    let batch = Generator::new(NexmarkTable::Bid, 5, 20_000, 1)
        .batch(0, total as usize)
        .unwrap();
    let oracle = SessionContext::new();
    oracle
        .register_table(
            "bid",
            Arc::new(MemTable::try_new(batch.schema(), vec![vec![batch]]).unwrap()),
        )
        .unwrap();
    let want = oracle
        .sql("SELECT count(*) AS n, sum(auction) AS a, sum(bidder) AS b, sum(price) AS p, (SELECT count(*) FROM (SELECT DISTINCT auction, bidder, price, date_time FROM bid)) AS d FROM bid")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let want: Vec<String> = (0..5)
        .map(|i| arrow::util::display::array_value_to_string(want[0].column(i), 0).unwrap())
        .collect();
    let py = r#"
import sys, deltalake, pyarrow.compute as pc
t = deltalake.DeltaTable(sys.argv[1]).to_pyarrow_table()
rows = set(zip(t['auction'].to_pylist(), t['bidder'].to_pylist(), t['price'].to_pylist(), t['date_time'].to_pylist()))
print(t.num_rows, pc.sum(t['auction']).as_py(), pc.sum(t['bidder']).as_py(), pc.sum(t['price']).as_py(), len(rows))
"#;
    let got = run_python(py, &[lake.to_str().unwrap()]);
    assert_eq!(got, want.join(" "));
    assert_eq!(want[0], total.to_string());
}
