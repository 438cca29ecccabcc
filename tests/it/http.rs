//! The HTTP API and `/metrics` of a real `tributary serve`: a streaming Nexmark pipeline, a file
//! pipeline with malformed lines and a failed pipeline, read over HTTP and over psql's wire.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;

/// A plain HTTP/1.1 request to the server; returns the status code and the body.
pub(crate) async fn http(port: u16, method: &str, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to the HTTP port");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let response = String::from_utf8(response).expect("UTF-8 response");
    let (head, body) = response.split_once("\r\n\r\n").expect("a header block");
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    (status, body.to_string())
}

pub(crate) fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// The value of the sample `name{labels}` in the text exposition `text`.
pub(crate) fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The scenario the HTTP and console tests watch: `files` (a file pipeline over `in/a.jsonl`,
/// 5 lines, 2 malformed: `{"id": oops}` and `last_line`) completed, `broken` (1 / 0) failed,
/// and `live` (`live_pipeline`, a statement over the Nexmark source `bids`, into `nowhere`)
/// running and reading. Returns the directory of `a.jsonl`.
pub(crate) async fn three_pipelines(
    dir: &std::path::Path,
    c: &tokio_postgres::Client,
    last_line: &str,
    live_pipeline: &str,
) -> std::path::PathBuf {
    let input = dir.join("in");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::write(
        input.join("a.jsonl"),
        format!("{{\"id\": 1}}\n{{\"id\": 2}}\n{{\"id\": oops}}\n{{\"id\": 3}}\n{last_line}\n"),
    )
    .unwrap();
    let good = dir.join("good");
    std::fs::create_dir_all(&good).unwrap();
    std::fs::write(good.join("b.jsonl"), "{\"id\": 7}\n").unwrap();
    c.batch_execute(&format!(
        "CREATE SOURCE lines (id BIGINT) WITH (connector = 'file', path = '{}/*.jsonl', format = 'json');
         CREATE SINK nowhere WITH (connector = 'blackhole');
         CREATE PIPELINE files AS INSERT INTO nowhere SELECT id FROM lines;
         CREATE SOURCE bids WITH (connector = 'nexmark', table = 'bid', rate = 2000, seed = 5);
         {live_pipeline};
         CREATE SOURCE good (id BIGINT) WITH (connector = 'file', path = '{}/*.jsonl', format = 'json');
         CREATE PIPELINE broken WITH (on_error = 'fail') AS INSERT INTO nowhere SELECT 1 / (id - id) AS boom FROM good;",
        input.display(),
        good.display()
    ))
    .await
    .unwrap();
    wait_state(c, "files", "completed").await;
    wait_state(c, "broken", "failed").await;
    wait_progress(c, "live").await;
    input
}

#[tokio::test]
async fn api_and_metrics_agree_with_the_system_tables_and_stop_pipelines() {
    let (dir, server) = start_fresh().await;
    let c = server.client().await;
    let input = three_pipelines(
        dir.path(),
        &c,
        "[not an object",
        "CREATE PIPELINE live AS INSERT INTO nowhere SELECT auction, price FROM bids",
    )
    .await;

    // Every pipeline is listed with its state, as tributary.pipelines has it.
    let (status, body) = http(server.http_port, "GET", "/api/v1/pipelines").await;
    assert_eq!(status, 200, "{body}");
    let listed = json(&body);
    let state_of = |name: &str| {
        listed
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{name} not listed: {listed}"))
            .clone()
    };
    assert_eq!(state_of("files")["state"], "completed");
    // A file source says how many of its files it has read.
    assert_eq!(state_of("files")["phase"], "1 of 1 files read", "{listed}");
    assert_eq!(state_of("live")["state"], "running");
    let broken = state_of("broken");
    assert_eq!(broken["state"], "failed");
    assert!(
        broken["error"].as_str().is_some_and(|e| e.contains("zero")),
        "{broken}"
    );
    assert_eq!(broken["health"], "failed", "{broken}");
    assert_eq!(broken["health_detail"], broken["error"], "{broken}");
    assert!(state_of("files")["health"].is_null());
    // The running one is sampled as it goes: healthy, and as psql sees it.
    poll(Duration::from_secs(30), "live to be healthy", || async {
        let (_, body) = http(server.http_port, "GET", "/api/v1/pipelines/live").await;
        (json(&body)["health"] == "healthy").then_some(())
    })
    .await;
    assert_eq!(
        scalar(
            &c,
            "SELECT health FROM tributary.pipelines WHERE name = 'broken'"
        )
        .await,
        "failed"
    );
    // Sampled once a second as it runs.
    poll(Duration::from_secs(30), "live's history", || async {
        let (_, body) = http(server.http_port, "GET", "/api/v1/pipelines/live/history").await;
        let samples = json(&body);
        let samples = samples.as_array()?;
        (!samples.is_empty() && samples.iter().all(|s| s["rows_in"].is_u64())).then_some(())
    })
    .await;

    // The completed pipeline's counts: HTTP, /metrics and SQL say the same.
    let sql = query(
        &c,
        "SELECT rows_in, rows_out, rows_errored FROM tributary.pipelines WHERE name = 'files'",
    )
    .await;
    let sql: Vec<f64> = sql[0]
        .iter()
        .map(|v| v.as_deref().unwrap().parse().unwrap())
        .collect();
    assert_eq!(sql, vec![5.0, 3.0, 2.0]);
    let files = state_of("files");
    assert_eq!(
        [
            &files["rows_in"],
            &files["rows_out"],
            &files["rows_errored"]
        ],
        [5, 3, 2]
    );
    let (status, metrics) = http(server.http_port, "GET", "/metrics").await;
    assert_eq!(status, 200);
    for (series, want) in [
        (
            "tributary_pipeline_records_in_total{pipeline=\"files\"}",
            sql[0],
        ),
        (
            "tributary_pipeline_records_out_total{pipeline=\"files\"}",
            sql[1],
        ),
        (
            "tributary_pipeline_records_rejected_total{pipeline=\"files\"}",
            sql[2],
        ),
        ("tributary_pipeline_up{pipeline=\"live\"}", 1.0),
        (
            "tributary_pipeline_state{pipeline=\"broken\",state=\"failed\"}",
            1.0,
        ),
    ] {
        assert_eq!(
            sample(&metrics, series),
            Some(want),
            "{series} in\n{metrics}"
        );
    }
    assert!(sample(&metrics, "tributary_process_resident_memory_bytes").is_some_and(|v| v > 0.0));
    // A checkpoint and a commit timed for each commit of the completed pipeline.
    let epochs: f64 = scalar(
        &c,
        "SELECT count(*) FROM tributary.commits WHERE pipeline = 'files'",
    )
    .await
    .parse()
    .unwrap();
    assert!(epochs >= 1.0);
    for series in [
        "tributary_checkpoint_duration_seconds_count{pipeline=\"files\"}",
        "tributary_sink_commit_duration_seconds_count{pipeline=\"files\"}",
        "tributary_checkpoint_duration_seconds_bucket{pipeline=\"files\",le=\"+Inf\"}",
    ] {
        assert_eq!(
            sample(&metrics, series),
            Some(epochs),
            "{series} in\n{metrics}"
        );
    }
    assert_eq!(
        sample(
            &metrics,
            "tributary_sink_commit_failures_total{pipeline=\"files\"}"
        ),
        Some(0.0)
    );
    // Bytes in: every byte of the file, malformed lines and newlines included.
    let file_bytes = std::fs::metadata(input.join("a.jsonl")).unwrap().len() as f64;
    assert_eq!(
        sample(
            &metrics,
            "tributary_pipeline_bytes_in_total{pipeline=\"files\"}"
        ),
        Some(file_bytes)
    );

    // promtool, Prometheus's own checker, accepts the exposition.
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; tests/run.sh installs it)");
    use std::io::Write;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    // The malformed lines are there with their file and line.
    let (status, body) = http(server.http_port, "GET", "/api/v1/errors?pipeline=files").await;
    assert_eq!(status, 200);
    let errors = json(&body);
    let errors = errors.as_array().unwrap();
    assert_eq!(errors.len(), 2, "{body}");
    assert!(body.contains("a.jsonl:3"), "{body}");
    assert!(body.contains("[not an object"), "{body}");
    let (_, body) = http(
        server.http_port,
        "GET",
        "/api/v1/errors?pipeline=files&limit=1",
    )
    .await;
    assert_eq!(json(&body).as_array().map(Vec::len), Some(1), "{body}");

    // STOP over HTTP stops the pipeline, as psql sees it.
    let (status, body) = http(server.http_port, "POST", "/api/v1/pipelines/live/stop").await;
    assert_eq!(status, 200, "{body}");
    wait_state(&c, "live", "stopped").await;
    let (status, body) = http(server.http_port, "POST", "/api/v1/pipelines/live/start").await;
    assert_eq!(status, 200, "{body}");
    wait_state(&c, "live", "running").await;
    let (status, body) = http(server.http_port, "POST", "/api/v1/pipelines/gone/stop").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(json(&body)["error"]["code"], "42704");

    // Each commit says what it made visible: the Delta version the independent reader sees.
    let lake = dir.path().join("lake");
    c.batch_execute(&format!(
        "CREATE SINK lake WITH (connector = 'delta', path = '{}');
         CREATE PIPELINE to_lake AS INSERT INTO lake SELECT id FROM lines;",
        lake.display()
    ))
    .await
    .unwrap();
    wait_state(&c, "to_lake", "completed").await;
    let (status, body) = http(server.http_port, "GET", "/api/v1/commits?pipeline=to_lake").await;
    assert_eq!(status, 200, "{body}");
    let commits = json(&body);
    let last = commits
        .as_array()
        .and_then(|c| c.last())
        .unwrap_or_else(|| panic!("{body}"));
    let version = run_python(
        "import sys, deltalake\nprint(deltalake.DeltaTable(sys.argv[1]).version())",
        &[lake.to_str().unwrap()],
    );
    assert_eq!(
        last["sink_commit"],
        format!("Delta version {version}"),
        "{body}"
    );
    assert_eq!(last["rows_out"], 3, "{body}");
    assert_eq!(
        scalar(&c, "SELECT sink_commit FROM tributary.commits WHERE pipeline = 'to_lake' ORDER BY epoch DESC LIMIT 1").await,
        format!("Delta version {version}")
    );

    let (status, _) = http(server.http_port, "GET", "/readyz").await;
    assert_eq!(status, 200);
    poll(Duration::from_secs(5), "healthz", || async {
        (http(server.http_port, "GET", "/healthz").await.0 == 200).then_some(())
    })
    .await;
}

#[tokio::test]
async fn serving_http_beyond_loopback_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(bin())
        .args(["serve", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--pg-listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--http-listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("beyond loopback the console and API need TLS"),
        "{stderr}"
    );
}
