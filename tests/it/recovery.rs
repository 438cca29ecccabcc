//! Kill -9 in the middle of a batch run, restart, and the Delta table holds every input row
//! exactly once (design.md section 3).

use std::time::Duration;

use rand::Rng;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_run_is_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    let total: u64 = 80 * 50_000;
    write_csv(&input, "orders", 80, 50_000, 1);
    let lake = tmp.path().join("lake");
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();

    let server = Server::start(&data).await;
    let c = server.client().await;
    c.batch_execute(&format!(
        "CREATE SOURCE orders (id BIGINT, customer TEXT, amount DOUBLE, ts TIMESTAMP) WITH (connector = 'file', path = '{}');
         CREATE SINK lake WITH (connector = 'delta', path = '{}', partition_by = 'bucket');
         CREATE PIPELINE load WITH (checkpoint_interval = '200ms') AS INSERT INTO lake
           SELECT id, customer, amount, id % 4 AS bucket FROM orders;",
        input.display(),
        lake.display()
    ))
    .await
    .unwrap();

    // Kill at up to three points of the run (a fast machine may finish before the later ones).
    let mut rng = seeded_rng("sigkill_mid_run_is_exactly_once");
    let thresholds: Vec<u64> = (0..3)
        .map(|i| (total as f64 * (i as f64 + rng.random::<f64>() * 0.8 + 0.1) / 3.5) as u64)
        .collect();
    let (server, kills) = kill_at(server, &data, "load", &thresholds).await;
    assert!(
        kills >= 1,
        "the run finished before it could be killed once; make the input larger"
    );
    let c = server.client().await;
    wait_state(&c, "load", "completed").await;
    assert_eq!(delta_count_distinct(&lake), (total, total));
    let out = query(
        &c,
        "SELECT rows_out, rows_errored FROM tributary.pipelines WHERE name = 'load'",
    )
    .await;
    assert_eq!(out[0], vec![Some(total.to_string()), Some("0".into())]);
    // The run was cut into several epochs, each one Delta commit.
    let commits = std::fs::read_dir(lake.join("_delta_log"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "json")
        })
        .count();
    eprintln!("killed {kills} times; {commits} Delta commits");
    assert!(commits >= 3, "{commits} commits");
}

/// One JSON-lines file of many blocks (decoded in parallel, emitted in order), with bad lines,
/// escapes and non-ASCII text: SIGKILLs mid-file, and the Delta table still equals DataFusion's
/// batch result over the good lines; each bad line is counted once and listed by line number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_json_file_equals_datafusion() {
    use datafusion::prelude::{JsonReadOptions, SessionContext};
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    let rows = 600_000u64;
    let mut text = String::new();
    let mut good = String::new();
    let mut bad_lines = Vec::new();
    for id in 1..=rows {
        let line = if id % 100_003 == 0 {
            format!("{{\"id\":{id},\"customer\":oops}}")
        } else {
            let customer = match id % 5 {
                0 => format!("caf\u{e9} {id}"),
                1 => format!("quote \\\"{id}\\\" \\u00e9\\ud83d\\ude00"),
                _ => format!("customer_{}", id % 97),
            };
            format!(
                "{{\"id\":{id},\"customer\":\"{customer}\",\"amount\":{}.{:02},\"ts\":\"2026-03-{:02}T{:02}:{:02}:00.{:03}\"}}",
                id % 1000,
                id % 100,
                1 + id % 28,
                id % 24,
                id % 60,
                1 + id % 999
            )
        };
        text.push_str(&line);
        text.push('\n');
        if line.contains("oops") {
            bad_lines.push(id);
        } else {
            good.push_str(&line);
            good.push('\n');
        }
    }
    assert!(text.len() > 12 << 20, "the file spans several 4 MB blocks");
    std::fs::write(input.join("orders.jsonl"), &text).unwrap();
    let oracle_dir = tmp.path().join("oracle");
    std::fs::create_dir_all(&oracle_dir).unwrap();
    std::fs::write(oracle_dir.join("good.jsonl"), &good).unwrap();

    let lake = tmp.path().join("lake");
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let server = Server::start(&data).await;
    let c = server.client().await;
    c.batch_execute(&format!(
        "CREATE SOURCE orders (id BIGINT, customer TEXT, amount DOUBLE, ts TIMESTAMP(3)) WITH (connector = 'file', path = '{}', format = 'json');
         CREATE SINK lake WITH (connector = 'delta', path = '{}');
         CREATE PIPELINE load WITH (checkpoint_interval = '100ms') AS INSERT INTO lake
           SELECT id, customer, amount, ts FROM orders WHERE id % 3 <> 0;",
        input.display(),
        lake.display()
    ))
    .await
    .unwrap();
    let mut rng = seeded_rng("sigkill_mid_json_file_equals_datafusion");
    let thresholds: Vec<u64> = [0.3, 0.65]
        .iter()
        .map(|f| (rows as f64 * (f + rng.random::<f64>() * 0.1)) as u64)
        .collect();
    let (server, kills) = kill_at(server, &data, "load", &thresholds).await;
    eprintln!("killed {kills} times");
    let c = server.client().await;
    wait_state(&c, "load", "completed").await;

    // The oracle: DataFusion's batch query over the good lines.
    let ctx = SessionContext::new();
    let schema = arrow::datatypes::Schema::new(vec![
        arrow::datatypes::Field::new("id", arrow::datatypes::DataType::Int64, true),
        arrow::datatypes::Field::new("customer", arrow::datatypes::DataType::Utf8, true),
        arrow::datatypes::Field::new("amount", arrow::datatypes::DataType::Float64, true),
        arrow::datatypes::Field::new(
            "ts",
            arrow::datatypes::DataType::Timestamp(arrow::datatypes::TimeUnit::Millisecond, None),
            true,
        ),
    ]);
    ctx.register_json(
        "orders",
        oracle_dir.to_str().unwrap(),
        JsonReadOptions::default()
            .schema(&schema)
            .file_extension(".jsonl"),
    )
    .await
    .unwrap();
    let batches = ctx
        .sql("SELECT id, customer, amount, ts FROM orders WHERE id % 3 <> 0 ORDER BY id")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let mut expected = Vec::new();
    for b in &batches {
        let ids = b
            .column(0)
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .unwrap();
        let names = b
            .column(1)
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .unwrap();
        let amounts = b
            .column(2)
            .as_any()
            .downcast_ref::<arrow::array::Float64Array>()
            .unwrap();
        let ts = b
            .column(3)
            .as_any()
            .downcast_ref::<arrow::array::TimestampMillisecondArray>()
            .unwrap();
        for i in 0..b.num_rows() {
            let t = ts
                .value_as_datetime(i)
                .unwrap()
                .format("%Y-%m-%dT%H:%M:%S%.6f");
            expected.push(
                serde_json::json!([
                    ids.value(i),
                    names.value(i),
                    amounts.value(i),
                    t.to_string()
                ])
                .to_string(),
            );
        }
    }
    assert_eq!(
        expected.len() as u64,
        (1..=rows)
            .filter(|i| i % 3 != 0 && i % 100_003 != 0)
            .count() as u64
    );
    let script = r#"
import sys, json, deltalake
t = deltalake.DeltaTable(sys.argv[1]).to_pyarrow_table().sort_by('id')
for r in t.to_pylist():
    ts = r['ts'].replace(tzinfo=None).isoformat(timespec='microseconds')
    print(json.dumps([r['id'], r['customer'], r['amount'], ts], ensure_ascii=False, separators=(',', ':')))
"#;
    let actual: Vec<String> = run_python(script, &[lake.to_str().unwrap()])
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(actual.len(), expected.len());
    for (a, e) in actual.iter().zip(&expected) {
        assert_eq!(a, e);
    }

    // Bad lines: counted once each, listed with their line numbers.
    let counters = query(
        &c,
        "SELECT rows_in, rows_errored FROM tributary.pipelines WHERE name = 'load'",
    )
    .await;
    assert_eq!(
        counters[0],
        vec![Some(rows.to_string()), Some(bad_lines.len().to_string())]
    );
    let listed: Vec<String> = query(
        &c,
        "SELECT DISTINCT position FROM tributary.errors WHERE pipeline = 'load' ORDER BY position",
    )
    .await
    .into_iter()
    .filter_map(|r| r[0].clone())
    .collect();
    for id in &bad_lines {
        assert!(
            listed
                .iter()
                .any(|p| p.ends_with(&format!("orders.jsonl:{id}"))),
            "line {id} not in {listed:?}"
        );
    }
}

/// A damaged latest checkpoint fails the pipeline with an error naming the file; it never falls
/// back to an older checkpoint, whose epochs are already committed downstream. The server and
/// its other pipelines carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_latest_checkpoint_fails_the_pipeline_loudly() {
    let tmp = tempfile::tempdir().unwrap();
    let lake = tmp.path().join("lake");
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mut server = Server::start(&data).await;
    let c = server.client().await;
    c.batch_execute(&format!(
        "CREATE SOURCE gen WITH (connector = 'nexmark', table = 'bid', rate = 5000, seed = 2);
         CREATE SINK lake WITH (connector = 'delta', path = '{}');
         CREATE SINK hole WITH (connector = 'blackhole');
         CREATE PIPELINE load WITH (checkpoint_interval = '200ms') AS INSERT INTO lake SELECT auction, price FROM gen;
         CREATE PIPELINE other AS INSERT INTO hole SELECT auction FROM gen;",
        lake.display()
    ))
    .await
    .unwrap();
    wait_epoch(&c, "load", 4).await;
    let id = scalar(&c, "SELECT id FROM tributary.pipelines WHERE name = 'load'").await;
    server.kill9();

    let dir = data.join("checkpoints").join(&id);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 2, "{files:?}");
    let latest = files.last().unwrap().clone();
    let text = std::fs::read_to_string(&latest).unwrap();
    std::fs::write(&latest, &text[..text.len() / 2]).unwrap();

    let server = Server::start(&data).await;
    let c = server.client().await;
    let error = poll(Duration::from_secs(60), "the pipeline to fail", || async {
        let row = query(
            &c,
            "SELECT state, error FROM tributary.pipelines WHERE name = 'load'",
        )
        .await;
        (row[0][0].as_deref() == Some("failed")).then(|| row[0][1].clone().unwrap_or_default())
    })
    .await;
    let file_name = latest.file_name().unwrap().to_str().unwrap();
    assert!(
        error.contains(file_name) && error.contains("unreadable"),
        "{error}"
    );
    // The other pipeline resumed.
    wait_state(&c, "other", "running").await;
    wait_progress(&c, "other").await;
}
