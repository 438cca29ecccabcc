//! `tributary run script.sql`: embedded, no server; waits for batch pipelines; exit codes.

use std::process::Command;

use crate::harness::*;

#[test]
fn run_executes_a_script_and_fails_on_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    write_csv(&input, "orders", 3, 1000, 1);
    let lake = tmp.path().join("lake");
    let script = tmp.path().join("load.sql");
    std::fs::write(
        &script,
        format!(
            "CREATE SOURCE orders (id BIGINT, customer TEXT, amount DOUBLE, ts TIMESTAMP) WITH (connector = 'file', path = '{}');\n\
             CREATE SINK lake WITH (connector = 'delta', path = '{}');\n\
             CREATE PIPELINE load AS INSERT INTO lake SELECT id, amount FROM orders;\n\
             SELECT count(*) AS n FROM lake;\n",
            input.display(),
            lake.display()
        ),
    )
    .unwrap();
    let data = tmp.path().join("data");
    // The inputs and the lake are outside the data and working directories: refused, naming
    // the option, until the directory is allowed.
    let out = run(&[
        script.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("ERROR [42501]") && stderr.contains("option 'path'"),
        "{stderr}"
    );
    let out = run(&[
        script.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
        "--allow-path",
        tmp.path().to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("| 3000 |"), "{stdout}");
    assert!(
        stderr.contains("pipeline load: completed — 3000 rows in, 3000 rows out, 0 errored"),
        "{stderr}"
    );
    assert_eq!(delta_count_distinct(&lake), (3000, 3000));

    let bad = tmp.path().join("bad.sql");
    std::fs::write(&bad, "SELECT 1;\nSELECT * FROM nowhere;\nSELECT 2;\n").unwrap();
    let out = run(&[bad.to_str().unwrap(), "--data-dir", data.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("ERROR [42P01]") && stderr.contains("nowhere"),
        "{stderr}"
    );
}

/// `tributary run` with `args`.
fn run(args: &[&str]) -> std::process::Output {
    Command::new(bin()).arg("run").args(args).output().unwrap()
}
