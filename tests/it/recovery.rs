//! Kill -9 in the middle of a batch run, restart, and the Delta table holds every input row
//! exactly once (design.md section 3).

use std::time::Duration;

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

    let mut server = Server::start(&data).await;
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

    // Kill at three points of the run; each time the run must still have been in progress.
    let mut kills = 0;
    let fractions: Vec<f64> = (0..3)
        .map(|i| (i as f64 + rand::random::<f64>() * 0.8 + 0.1) / 3.5)
        .collect();
    for fraction in fractions {
        let threshold = (total as f64 * fraction) as u64;
        let c = server.client().await;
        let state = poll(
            Duration::from_secs(300),
            "progress before the kill",
            || async {
                let rows = query(
                    &c,
                    "SELECT rows_in, state FROM tributary.pipelines WHERE name = 'load'",
                )
                .await;
                let n: u64 = rows.first()?.first()?.as_ref()?.parse().ok()?;
                let state = rows[0][1].clone()?;
                (n >= threshold || state != "running").then_some(state)
            },
        )
        .await;
        if state != "running" {
            break;
        }
        server.kill9();
        kills += 1;
        server = Server::start(&data).await;
    }
    assert!(
        kills >= 2,
        "the run finished before it could be killed twice; make the input larger"
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
