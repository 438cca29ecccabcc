//! File sources into Delta and Parquet sinks, checked against DataFusion's batch result over the
//! same files and read back by readers that are not ours.

use std::time::Duration;

use datafusion::prelude::{CsvReadOptions, SessionContext};

use crate::harness::*;

const QUERY: &str =
    "SELECT id, upper(customer) AS customer, CAST(amount * 100 AS BIGINT) AS cents \
                     FROM orders WHERE id % 7 <> 0";

/// The oracle: DataFusion's own batch query over the same CSV files, as JSON lines sorted by id.
async fn oracle(dir: &std::path::Path) -> Vec<String> {
    let ctx = SessionContext::new();
    ctx.register_csv(
        "orders",
        dir.to_str().unwrap(),
        CsvReadOptions::new().file_extension(".csv"),
    )
    .await
    .unwrap();
    let batches = ctx
        .sql(&format!("{QUERY} ORDER BY id"))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let mut out = Vec::new();
    for b in batches {
        let ids = b
            .column(0)
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .unwrap();
        let names = arrow::compute::cast(b.column(1), &arrow::datatypes::DataType::Utf8).unwrap();
        let names = names
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .unwrap();
        let cents = b
            .column(2)
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .unwrap();
        for i in 0..b.num_rows() {
            out.push(format!(
                "[{}, \"{}\", {}]",
                ids.value(i),
                names.value(i),
                cents.value(i)
            ));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_json_parquet_into_delta_and_parquet() {
    let tmp = tempfile::tempdir().unwrap();
    let csv_dir = tmp.path().join("in/csv");
    let json_dir = tmp.path().join("in/json");
    let next = write_csv(&csv_dir, "orders", 4, 25_000, 1);
    write_json(&json_dir, "events", 2, 10_000, 1);
    let lake = tmp.path().join("lake/orders");
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mut server = Server::start(&data).await;
    let c = server.client().await;

    // CSV into Delta (partitioned), compared row for row with DataFusion's batch result.
    c.batch_execute(&format!(
        "CREATE SOURCE orders (id BIGINT, customer TEXT, amount DOUBLE, ts TIMESTAMP) \
           WITH (connector = 'file', path = '{}/*.csv', format = 'csv');
         CREATE SINK lake WITH (connector = 'delta', path = '{}');
         CREATE PIPELINE load AS INSERT INTO lake {QUERY};",
        csv_dir.display(),
        lake.display()
    ))
    .await
    .unwrap();
    wait_state(&c, "load", "completed").await;
    let expected = oracle(&csv_dir).await;
    assert_eq!(expected.len(), 100_000 - 100_000 / 7);
    assert_eq!(delta_rows(&lake, &["id", "customer", "cents"]), expected);
    assert_eq!(
        scalar(&c, "SELECT count(*) FROM lake").await,
        expected.len().to_string()
    );
    let counters = query(
        &c,
        "SELECT rows_in, rows_out, rows_errored FROM tributary.pipelines WHERE name = 'load'",
    )
    .await;
    assert_eq!(
        counters[0],
        vec![
            Some("100000".into()),
            Some(expected.len().to_string()),
            Some("0".into())
        ]
    );

    // New files: a second run reads only them.
    write_csv(&csv_dir, "later", 1, 7_000, next);
    c.batch_execute("START PIPELINE load").await.unwrap();
    let expected_total = oracle(&csv_dir).await.len() as u64;
    poll(
        Duration::from_secs(120),
        "second run to add the new rows",
        || async {
            let n: u64 = scalar(&c, "SELECT count(*) FROM lake").await.parse().ok()?;
            (n >= expected_total).then_some(())
        },
    )
    .await;
    wait_state(&c, "load", "completed").await;
    let (rows, distinct) = delta_count_distinct(&lake);
    assert_eq!((rows, distinct), (expected_total, expected_total));

    // JSON lines into Parquet, then those Parquet files as a source into a second Delta table.
    let pq = tmp.path().join("lake/events_parquet");
    let lake2 = tmp.path().join("lake/events_delta");
    c.batch_execute(&format!(
        "CREATE SOURCE events WITH (connector = 'file', path = '{}', format = 'json');
         CREATE SINK events_pq WITH (connector = 'parquet', path = '{}');
         CREATE PIPELINE events_to_pq AS INSERT INTO events_pq SELECT id, customer, amount FROM events WHERE amount > 10;",
        json_dir.display(),
        pq.display()
    ))
    .await
    .unwrap();
    wait_state(&c, "events_to_pq", "completed").await;
    let py = r#"
import sys, pyarrow.dataset as ds, pyarrow.compute as pc
t = ds.dataset(sys.argv[1], format='parquet').to_table()
print(t.num_rows, '%.2f' % pc.sum(t['amount']).as_py())
"#;
    let expected_json: Vec<(u64, f64)> = (1..=20_000u64)
        .map(|id| (id, (id % 1000) as f64 + (id % 100) as f64 / 100.0))
        .filter(|(_, a)| *a > 10.0)
        .collect();
    let sum: f64 = expected_json.iter().map(|(_, a)| a).sum();
    assert_eq!(
        run_python(py, &[pq.to_str().unwrap()]),
        format!("{} {:.2}", expected_json.len(), sum)
    );

    c.batch_execute(&format!(
        "CREATE SOURCE events_files WITH (connector = 'file', path = '{}/*.parquet', format = 'parquet');
         CREATE SINK events_lake WITH (connector = 'delta', path = '{}');
         CREATE PIPELINE pq_to_delta AS INSERT INTO events_lake SELECT id, amount * 2 AS doubled FROM events_files;",
        pq.display(),
        lake2.display()
    ))
    .await
    .unwrap();
    wait_state(&c, "pq_to_delta", "completed").await;
    let (rows, distinct) = delta_count_distinct(&lake2);
    assert_eq!(
        (rows, distinct),
        (expected_json.len() as u64, expected_json.len() as u64)
    );

    // The catalog survives a restart.
    drop(c);
    assert!(server.terminate().success());
    let server = Server::start(&data).await;
    let c = server.client().await;
    let names = query(&c, "SELECT name FROM tributary.sources ORDER BY name").await;
    assert_eq!(
        names,
        vec![
            vec![Some("events".into())],
            vec![Some("events_files".into())],
            vec![Some("orders".into())]
        ]
    );
    let states = query(
        &c,
        "SELECT name, state FROM tributary.pipelines ORDER BY name",
    )
    .await;
    assert_eq!(states.len(), 3);
    assert!(
        states.iter().all(|r| r[1].as_deref() == Some("completed")),
        "{states:?}"
    );
    assert_eq!(
        scalar(&c, "SELECT count(*) FROM lake").await,
        expected_total.to_string()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_file_source_picks_up_new_files() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    let staging = tmp.path().join("staging");
    let next = write_csv(&input, "a", 1, 1000, 1);
    let lake = tmp.path().join("lake");
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let server = Server::start(&data).await;
    let c = server.client().await;
    c.batch_execute(&format!(
        "CREATE SOURCE orders (id BIGINT, customer TEXT, amount DOUBLE, ts TIMESTAMP) WITH (connector = 'file', path = '{}/*.csv');
         CREATE SINK lake WITH (connector = 'delta', path = '{}');
         CREATE SINK files WITH (connector = 'parquet', path = '{}');
         CREATE PIPELINE watch WITH (mode = 'streaming', checkpoint_interval = '200ms') AS INSERT INTO lake SELECT id, amount FROM orders;
         CREATE PIPELINE watch_pq WITH (mode = 'streaming', checkpoint_interval = '200ms') AS INSERT INTO files SELECT id, amount FROM orders;",
        input.display(),
        lake.display(),
        tmp.path().join("files").display()
    ))
    .await
    .unwrap();
    let count_in = |sink: &'static str| {
        let c = &c;
        async move {
            scalar(c, &format!("SELECT count(*) FROM {sink}"))
                .await
                .parse::<u64>()
                .unwrap_or(0)
        }
    };
    let count = || count_in("lake");
    poll(Duration::from_secs(60), "the first file", || async {
        (count().await == 1000 && count_in("files").await == 1000).then_some(())
    })
    .await;
    // A file that appears later (written elsewhere, renamed in) is picked up while the pipeline runs.
    write_csv(&staging, "b", 1, 500, next);
    std::fs::rename(staging.join("b-0000.csv"), input.join("b-0000.csv")).unwrap();
    // Queries of a Parquet sink see every file committed since the last query (no stale listing).
    poll(Duration::from_secs(60), "the new file", || async {
        (count().await == 1500 && count_in("files").await == 1500).then_some(())
    })
    .await;
    assert_eq!(
        scalar(
            &c,
            "SELECT state FROM tributary.pipelines WHERE name = 'watch'"
        )
        .await,
        "running"
    );
    c.batch_execute("STOP PIPELINE watch").await.unwrap();
    assert_eq!(delta_count_distinct(&lake), (1500, 1500));
}

/// `SELECT DISTINCT` in a pipeline keeps the keys it has seen as operator state in the checkpoint:
/// a second run (a new process, state restored from the checkpoint) emits only keys never seen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distinct_state_survives_restarts_through_checkpoints() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::write(
        input.join("a.csv"),
        "id,customer\n1,ann\n2,bob\n3,ann\n4,cid\n5,bob\n",
    )
    .unwrap();
    let out = tmp.path().join("out");
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mut server = Server::start(&data).await;
    let c = server.client().await;
    c.batch_execute(&format!(
        "CREATE SOURCE orders (id BIGINT, customer TEXT) WITH (connector = 'file', path = '{}/*.csv');
         CREATE SINK customers WITH (connector = 'parquet', path = '{}');
         CREATE PIPELINE firsts AS INSERT INTO customers SELECT DISTINCT upper(customer) AS customer FROM orders;",
        input.display(),
        out.display()
    ))
    .await
    .unwrap();
    wait_state(&c, "firsts", "completed").await;
    assert_eq!(customers(&c).await, vec!["ANN", "BOB", "CID"]);
    // The graph, as tributary.operators shows it: upper(customer), the key columns, the distinct.
    assert_eq!(
        operators(&c, "firsts").await,
        vec![
            "project1 project 5 5 0",
            "project0 project 5 5 0",
            "dedup2 distinct 5 3 3"
        ]
    );
    // Restart the server: the next run restores the seen keys from the last checkpoint.
    drop(c);
    assert!(server.terminate().success());
    server = Server::start(&data).await;
    std::fs::write(
        input.join("b.csv"),
        "id,customer\n6,bob\n7,dee\n8,ann\n9,dee\n",
    )
    .unwrap();
    let c = server.client().await;
    c.batch_execute("START PIPELINE firsts").await.unwrap();
    wait_state(&c, "firsts", "completed").await;
    assert_eq!(customers(&c).await, vec!["ANN", "BOB", "CID", "DEE"]);
    // Restored state counts, and the second run saw 4 rows of which 1 was new.
    assert_eq!(
        operators(&c, "firsts").await,
        vec![
            "project1 project 4 4 0",
            "project0 project 4 4 0",
            "dedup2 distinct 4 1 4"
        ]
    );
    // The keys are Arrow IPC files beside the checkpoints, which list them.
    let id = scalar(
        &c,
        "SELECT id FROM tributary.pipelines WHERE name = 'firsts'",
    )
    .await;
    let state_dir = data
        .join("checkpoints")
        .join(&id)
        .join("state")
        .join("dedup2");
    let files: Vec<_> = std::fs::read_dir(&state_dir)
        .unwrap_or_else(|e| panic!("{}: {e}", state_dir.display()))
        .map(|f| f.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        !files.is_empty() && files.iter().all(|f| f.ends_with(".arrow")),
        "{files:?}"
    );
}

async fn operators(c: &tokio_postgres::Client, pipeline: &str) -> Vec<String> {
    query_lines(
        c,
        &format!(
            "SELECT operator, kind, sum(rows_in), sum(rows_out), sum(state_rows) \
             FROM tributary.operators WHERE pipeline = '{pipeline}' \
             GROUP BY operator, kind ORDER BY operator DESC"
        ),
    )
    .await
}

async fn customers(c: &tokio_postgres::Client) -> Vec<String> {
    query(c, "SELECT customer FROM customers ORDER BY customer")
        .await
        .into_iter()
        .map(|r| r[0].clone().unwrap())
        .collect()
}

/// A line longer than `max_record_bytes` is rejected with its position instead of growing the
/// read block without limit; a long line under the limit is read whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_longer_than_max_record_bytes_are_rejected_with_their_line() {
    let (tmp, server) = start_fresh().await;
    let input = tmp.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    let long = |n: usize| "x".repeat(n);
    let lines = [
        r#"{"id": 1, "s": "a"}"#.to_string(),
        format!(r#"{{"id": 2, "s": "{}"}}"#, long(6 << 20)),
        format!(r#"{{"id": 3, "s": "{}"}}"#, long(12 << 20)),
        r#"{"id": 4, "s": "d"}"#.to_string(),
    ];
    std::fs::write(input.join("big.json"), lines.join("\n") + "\n").unwrap();
    let c = server.client().await;
    c.batch_execute(&format!(
        "CREATE SOURCE big (id BIGINT, s TEXT) WITH (connector = 'file', path = '{}/*.json', max_record_bytes = '8388608');
         CREATE SINK out WITH (connector = 'parquet', path = '{}');
         CREATE PIPELINE load AS INSERT INTO out SELECT id, length(s) AS len FROM big;",
        input.display(),
        tmp.path().join("out").display()
    ))
    .await
    .unwrap();
    wait_state(&c, "load", "completed").await;
    let rows = query(&c, "SELECT id, len FROM out ORDER BY id").await;
    let rows: Vec<String> = rows
        .iter()
        .map(|r| format!("{}:{}", r[0].clone().unwrap(), r[1].clone().unwrap()))
        .collect();
    assert_eq!(
        rows,
        vec!["1:1".to_string(), format!("2:{}", 6 << 20), "4:1".into()]
    );
    let errors = query(
        &c,
        "SELECT position, error, length(raw) FROM tributary.errors WHERE pipeline = 'load'",
    )
    .await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    let e = &errors[0];
    assert!(e[0].as_deref().unwrap().ends_with("big.json:3"), "{e:?}");
    assert!(
        e[1].as_deref().unwrap().contains("max_record_bytes"),
        "{e:?}"
    );
    assert!(
        e[2].as_deref().unwrap().parse::<u64>().unwrap() <= 4096,
        "{e:?}"
    );
}
