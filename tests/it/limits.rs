//! Statements nested deeper than the engine plans safely: every statement kind ends in an error
//! for that client (SQLSTATE 54001), never in a stack overflow that takes the server and its
//! running pipelines down; statements just inside the limit still work end to end. And
//! connections past `--max-connections`, refused with 53300 while the others are served.

use tokio_postgres::error::SqlState;

use crate::harness::*;

/// `first + 1 + 1 ...` with `terms` terms: a left-deep chain `terms` levels deep.
fn chain(first: &str, terms: usize) -> String {
    let mut s = String::with_capacity(first.len() + terms * 4);
    s.push_str(first);
    for _ in 1..terms {
        s.push_str(" + 1");
    }
    s
}

async fn expect_too_deep(c: &tokio_postgres::Client, sql: &str, what: &str) {
    let e = c
        .simple_query(sql)
        .await
        .err()
        .unwrap_or_else(|| panic!("{what}: accepted"));
    assert_eq!(
        e.code(),
        Some(&SqlState::STATEMENT_TOO_COMPLEX),
        "{what}: {e:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_statements_are_refused_and_the_server_keeps_serving() {
    let (tmp, server) = start_fresh().await;
    let input = tmp.path().join("in");
    write_csv(&input, "orders", 1, 100, 1);
    let lake = tmp.path().join("lake");
    let c = server.client().await;
    c.batch_execute(&format!(
        "CREATE SOURCE orders (id BIGINT, customer TEXT, amount DOUBLE, ts TIMESTAMP) WITH (connector = 'file', path = '{}');
         CREATE SINK lake WITH (connector = 'delta', path = '{}');
         CREATE SOURCE gen WITH (connector = 'nexmark', table = 'bid', rate = 2000, seed = 1);
         CREATE SINK hole WITH (connector = 'blackhole');
         CREATE PIPELINE live AS INSERT INTO hole SELECT auction, price FROM gen;",
        input.display(),
        lake.display()
    ))
    .await
    .unwrap();

    // Too deep, in every statement kind: ad-hoc SELECT, EXPLAIN, a preview of a source, CREATE
    // PIPELINE, a UNION chain; up to a 100,000-term statement (about 400 KB).
    for terms in [1_001, 2_000, 100_000] {
        expect_too_deep(&c, &format!("SELECT {}", chain("1", terms)), "SELECT").await;
        expect_too_deep(
            &c,
            &format!("EXPLAIN SELECT {}", chain("1", terms)),
            "EXPLAIN",
        )
        .await;
        expect_too_deep(
            &c,
            &format!("SELECT {} AS x FROM orders LIMIT 3", chain("id", terms)),
            "preview",
        )
        .await;
        expect_too_deep(
            &c,
            &format!(
                "CREATE PIPELINE deep AS INSERT INTO lake SELECT {} AS x FROM orders",
                chain("id", terms)
            ),
            "CREATE PIPELINE",
        )
        .await;
        let union = vec!["SELECT 1 AS one"; terms].join(" UNION ALL ");
        expect_too_deep(&c, &union, "UNION chain").await;
    }
    // Deep parentheses and nested calls meet the parser's own limit: the same error.
    let parens = format!("SELECT {}1{}", "(".repeat(10_000), ")".repeat(10_000));
    expect_too_deep(&c, &parens, "parentheses").await;
    let calls = format!("SELECT {}1{}", "abs(".repeat(5_000), ")".repeat(5_000));
    expect_too_deep(&c, &calls, "nested calls").await;
    assert!(
        query(
            &c,
            "SELECT name FROM tributary.pipelines WHERE name = 'deep'"
        )
        .await
        .is_empty(),
        "a refused CREATE PIPELINE left a pipeline behind"
    );

    // The same through psql -f, as the statement was first found.
    let script = tmp.path().join("deep.sql");
    std::fs::write(&script, format!("SELECT {};\n", chain("1", 2_000))).unwrap();
    let out = psql(
        server.port,
        &["-v", "ON_ERROR_STOP=1", "-f", script.to_str().unwrap()],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("nested too deeply"), "{stderr}");

    // Just inside the limit, everything works end to end: a query, a preview, and a pipeline
    // whose 1,000-level expression is evaluated on every batch.
    assert_eq!(
        scalar(&c, &format!("SELECT {}", chain("1", 1_000))).await,
        "1000"
    );
    assert_eq!(
        query(
            &c,
            &format!(
                "SELECT {} AS x FROM orders ORDER BY x LIMIT 2",
                chain("id", 1_000)
            )
        )
        .await,
        vec![vec![Some("1000".into())], vec![Some("1001".into())]]
    );
    c.batch_execute(&format!(
        "CREATE PIPELINE deep AS INSERT INTO lake SELECT id, {} AS x FROM orders",
        chain("id", 1_000)
    ))
    .await
    .unwrap();
    wait_state(&c, "deep", "completed").await;
    assert_eq!(
        query(&c, "SELECT count(*), min(x), max(x), sum(CASE WHEN x = id + 999 THEN 1 ELSE 0 END) FROM lake").await,
        vec![vec![
            Some("100".into()),
            Some("1000".into()),
            Some("1099".into()),
            Some("100".into())
        ]]
    );

    // The server and its running pipeline lived through all of it.
    wait_progress(&c, "live").await;
    assert_eq!(
        scalar(
            &c,
            "SELECT state FROM tributary.pipelines WHERE name = 'live'"
        )
        .await,
        "running"
    );
    // Logs written to a file carry no terminal colour codes.
    let log = server.log();
    assert!(log.contains("INFO"), "{log}");
    assert!(!log.contains('\u{1b}'), "ANSI escapes in the log file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tributary_run_refuses_a_deep_script_statement() {
    let tmp = tempfile::tempdir().unwrap();
    let script = tmp.path().join("deep.sql");
    std::fs::write(&script, format!("SELECT {};\n", chain("1", 50_000))).unwrap();
    let out = std::process::Command::new(bin())
        .args(["run", "--quiet", "--data-dir"])
        .arg(tmp.path().join("data"))
        .arg(&script)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Exit code 1 with the error; a stack overflow would abort (no exit code, SIGABRT).
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("ERROR [54001]"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_are_refused_and_the_others_served() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start_with(&tmp.path().join("data"), &["--max-connections", "3"]).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(server.client().await);
    }
    let address = format!("host=127.0.0.1 port={} user=tributary", server.port);
    let connect = || tokio_postgres::connect(&address, tokio_postgres::NoTls);
    let e = connect()
        .await
        .err()
        .expect("a fourth connection was refused");
    let db = e.as_db_error().expect("the server's error");
    assert_eq!(db.code(), &SqlState::TOO_MANY_CONNECTIONS);
    assert_eq!(db.message(), "sorry, too many clients already");
    let out = psql(server.port, &["-c", "SELECT 1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("too many clients"),
        "{stderr}"
    );
    // The three are served; when one leaves, its slot is free again.
    for c in &clients {
        assert_eq!(scalar(c, "SELECT 1").await, "1");
    }
    drop(clients.pop());
    let again = poll(
        std::time::Duration::from_secs(30),
        "a free slot",
        || async {
            let (client, conn) = connect().await.ok()?;
            tokio::spawn(conn);
            Some(client)
        },
    )
    .await;
    assert_eq!(scalar(&again, "SELECT 2").await, "2");
}
