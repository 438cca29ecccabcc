//! Concurrent clients racing on one name: of several START PIPELINE or CREATE PIPELINE at once,
//! exactly one wins, the others get a clear error, and the catalog stays consistent.

use tokio_postgres::error::SqlState;

use crate::harness::*;

/// Runs `sql` from `clients` connections at once; returns the outcome of each.
async fn race(
    server: &Server,
    clients: usize,
    sql: &str,
) -> Vec<Result<(), tokio_postgres::Error>> {
    let mut conns = Vec::new();
    for _ in 0..clients {
        conns.push(server.client().await);
    }
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(clients));
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|c| {
            let barrier = barrier.clone();
            let sql = sql.to_string();
            tokio::spawn(async move {
                barrier.wait().await;
                c.batch_execute(&sql).await
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_start_and_create_have_one_winner() {
    let (_tmp, server) = start_fresh().await;
    let c = server.client().await;
    c.batch_execute(
        "CREATE SOURCE gen WITH (connector = 'nexmark', table = 'bid', rate = 1000, seed = 1);
         CREATE SINK hole WITH (connector = 'blackhole');
         CREATE PIPELINE p AS INSERT INTO hole SELECT auction FROM gen;
         STOP PIPELINE p;",
    )
    .await
    .unwrap();

    for round in 0..5 {
        let outcomes = race(&server, 8, "START PIPELINE p").await;
        let won = outcomes.iter().filter(|o| o.is_ok()).count();
        assert_eq!(won, 1, "round {round}: {outcomes:?}");
        for e in outcomes.iter().filter_map(|o| o.as_ref().err()) {
            assert_eq!(
                e.code(),
                Some(&SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE),
                "{e:?}"
            );
            assert!(
                e.to_string().contains("already running")
                    || format!("{e:?}").contains("already running"),
                "{e:?}"
            );
        }
        let row = query(
            &c,
            "SELECT state, error FROM tributary.pipelines WHERE name = 'p'",
        )
        .await;
        assert_eq!(row[0], vec![Some("running".into()), None], "round {round}");
        c.batch_execute("STOP PIPELINE p").await.unwrap();
        assert_eq!(
            scalar(&c, "SELECT state FROM tributary.pipelines WHERE name = 'p'").await,
            "stopped"
        );
    }

    for round in 0..3 {
        let name = format!("q{round}");
        let sql = format!("CREATE PIPELINE {name} AS INSERT INTO hole SELECT price FROM gen");
        let outcomes = race(&server, 8, &sql).await;
        let won = outcomes.iter().filter(|o| o.is_ok()).count();
        assert_eq!(won, 1, "round {round}: {outcomes:?}");
        for e in outcomes.iter().filter_map(|o| o.as_ref().err()) {
            assert_eq!(e.code(), Some(&SqlState::DUPLICATE_OBJECT), "{e:?}");
        }
        assert_eq!(
            scalar(
                &c,
                &format!("SELECT count(*) FROM tributary.pipelines WHERE name = '{name}'")
            )
            .await,
            "1"
        );
        // With IF NOT EXISTS every racer succeeds, and still one pipeline exists.
        let name = format!("r{round}");
        let sql = format!(
            "CREATE PIPELINE IF NOT EXISTS {name} AS INSERT INTO hole SELECT price FROM gen"
        );
        let outcomes = race(&server, 8, &sql).await;
        assert!(outcomes.iter().all(|o| o.is_ok()), "{outcomes:?}");
        assert_eq!(
            scalar(
                &c,
                &format!("SELECT count(*) FROM tributary.pipelines WHERE name = '{name}'")
            )
            .await,
            "1"
        );
        assert_eq!(
            scalar(
                &c,
                &format!("SELECT state FROM tributary.pipelines WHERE name = '{name}'")
            )
            .await,
            "running"
        );
    }

    // Sources and sinks share one namespace; racing CREATE SOURCE yields one.
    let outcomes = race(
        &server,
        8,
        "CREATE SOURCE g2 WITH (connector = 'nexmark', table = 'bid', events = 1000)",
    )
    .await;
    assert_eq!(
        outcomes.iter().filter(|o| o.is_ok()).count(),
        1,
        "{outcomes:?}"
    );
}
