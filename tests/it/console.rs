//! The web console in a real browser: headless Chromium, driven by Selenium
//! (tests/console/drive.py), against a real server running a streaming Nexmark pipeline, a file
//! pipeline with malformed lines and a failed pipeline. What the pages show is compared with
//! tributary.pipelines over the wire and with /metrics; the screenshots land in
//! target/tmp/console-screenshots.

use super::http::{http, json, sample, three_pipelines};
use crate::harness::*;

const DRIVER: &str = include_str!("../console/drive.py");

#[tokio::test]
async fn the_console_shows_what_psql_and_metrics_show_and_stops_a_pipeline() {
    let (dir, server) = start_fresh().await;
    let c = server.client().await;
    three_pipelines(
        dir.path(),
        &c,
        "<img src=x onerror=\"document.title='xss'\">",
        "CREATE PIPELINE live WITH (checkpoint_interval = '2s') AS
           INSERT INTO nowhere SELECT auction, price FROM bids WHERE price > 1000",
    )
    .await;

    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    let base = format!("http://127.0.0.1:{}", server.http_port);
    let script_path = dir.path().join("drive.py");
    std::fs::write(&script_path, DRIVER).unwrap();
    let out = run_python(
        &format!(
            "import runpy, sys\nsys.argv = ['drive.py'] + sys.argv[1:]\nrunpy.run_path({:?}, run_name='__main__')",
            script_path.display().to_string()
        ),
        &[&base, shots.to_str().unwrap()],
    );
    let page = json(out.lines().last().unwrap_or_default());
    eprintln!("screenshots in {}", shots.display());

    // The list showed all three, with their states and verdicts.
    let list = &page["list"];
    assert_eq!(list["files"]["state"], "completed", "{page}");
    assert_eq!(list["live"]["state"], "running", "{page}");
    assert_eq!(list["broken"]["state"], "failed", "{page}");
    assert_eq!(list["broken"]["health"], "failed", "{page}");
    assert!(
        list["broken"]["health_detail"]
            .as_str()
            .is_some_and(|d| d.contains("zero")),
        "{page}"
    );
    assert!(
        ["healthy", "idle"].contains(&list["live"]["health"].as_str().unwrap()),
        "{page}"
    );
    assert_eq!(page["filtered"], serde_json::json!(["broken"]), "{page}");

    // The counts on the page equal tributary.pipelines over the wire and /metrics: the stopped,
    // completed and failed pipelines' counts no longer move.
    let (_, metrics) = http(server.http_port, "GET", "/metrics").await;
    for name in ["files", "broken", "live"] {
        let shown = &page["after_stop"][name];
        let sql = query(
            &c,
            &format!(
                "SELECT rows_in, rows_out, rows_errored, state FROM tributary.pipelines WHERE name = '{name}'"
            ),
        )
        .await;
        let row = &sql[0];
        let n = |i: usize| row[i].as_deref().unwrap().parse::<u64>().unwrap();
        assert_eq!(
            (
                shown["rows_in"].as_u64(),
                shown["rows_out"].as_u64(),
                shown["rows_errored"].as_u64()
            ),
            (Some(n(0)), Some(n(1)), Some(n(2))),
            "{name}: the page showed {shown}, psql reads {row:?}"
        );
        for (metric, i) in [
            ("records_in_total", 0),
            ("records_out_total", 1),
            ("records_rejected_total", 2),
        ] {
            let series = format!("tributary_pipeline_{metric}{{pipeline=\"{name}\"}}");
            assert_eq!(
                sample(&metrics, &series),
                Some(n(i) as f64),
                "{series} in\n{metrics}"
            );
        }
    }
    assert!(page["after_stop"]["live"]["rows_in"].as_u64().unwrap() > 0);

    // A checkpoint's duration is its own work, not its epoch's length (2 s here).
    let slowest: u64 = scalar(
        &c,
        "SELECT max(duration_ms) FROM tributary.checkpoints WHERE pipeline = 'live'",
    )
    .await
    .parse()
    .unwrap();
    assert!(slowest < 1500, "a checkpoint of live took {slowest} ms");

    // STOP from the console stopped the pipeline, as psql sees it.
    assert_eq!(
        scalar(
            &c,
            "SELECT state FROM tributary.pipelines WHERE name = 'live'"
        )
        .await,
        "stopped"
    );
    assert_eq!(page["start_enabled_after_stop"], true);

    // The malformed lines appear with their file and line; the one that is markup is shown as
    // text: no element made of it, and its handler never ran.
    let errors = page["errors"].as_array().unwrap();
    let oops = errors
        .iter()
        .find(|e| e["raw"] == "{\"id\": oops}")
        .unwrap_or_else(|| panic!("{page}"));
    assert!(
        oops["position"].as_str().unwrap().ends_with("a.jsonl:3"),
        "{oops}"
    );
    assert!(
        errors.iter().any(
            |e| e["raw"] == "<img src=x onerror=\"document.title='xss'\">"
                && e["position"].as_str().unwrap().ends_with("a.jsonl:5")
        ),
        "{page}"
    );
    assert_eq!(page["raw_elements"], 0, "{page}");
    assert_eq!(page["title"], "Tributary", "{page}");

    // The failed pipeline's page shows its error; the live one's, its plan and SQL.
    assert!(
        page["broken_error"].as_str().unwrap().contains("zero"),
        "{page}"
    );
    let nodes: Vec<&str> = page["plan_nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert!(
        nodes.contains(&"src:bids") && nodes.contains(&"sink"),
        "{nodes:?}"
    );
    assert!(
        page["sql"].as_str().unwrap().contains("price > 1000"),
        "{page}"
    );
    let sources = page["sources_text"].as_str().unwrap();
    assert!(
        sources.contains("nexmark") && sources.contains("nowhere"),
        "{sources}"
    );
    assert!(page["events"].as_str().unwrap().contains("live"), "{page}");
    assert_eq!(
        page["console_errors"],
        serde_json::json!([]),
        "the browser logged errors"
    );
    for shot in [
        "1-pipelines.png",
        "2-rejected-rows.png",
        "3-failed-pipeline.png",
        "4-pipeline.png",
        "5-sources-and-sinks.png",
        "6-events.png",
    ] {
        let len = std::fs::metadata(shots.join(shot)).map_or(0, |m| m.len());
        assert!(len > 10_000, "{shot}: {len} bytes");
    }
}
