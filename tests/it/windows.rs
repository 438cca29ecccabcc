//! Windowed aggregation end to end: SIGKILLs while windows or sessions are open, and the Delta table (read
//! by the deltalake package) equals DataFusion's batch result; rows behind the watermark are
//! counted and, when asked, kept in tributary.errors.

use crate::harness::*;

const WINDOWED: &str = "SELECT window_start, window_end, auction % 10 AS bucket, count(*) AS n, \
     sum(price) AS total, max(price) AS high, count(DISTINCT bidder) AS bidders \
     FROM TUMBLE(bids, date_time, INTERVAL '1' SECOND) \
     GROUP BY window_start, window_end, auction % 10";

/// Sessions of a bidder: bids less than 500 ms apart.
const SESSIONS: &str = "SELECT window_start, window_end, bidder, count(*) AS n, \
     sum(price) AS total, max(price) AS high, count(DISTINCT auction) AS auctions \
     FROM SESSION(bids, date_time, INTERVAL '500' MILLISECOND) \
     GROUP BY window_start, window_end, bidder";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_windows_open_equals_datafusion() {
    killed_twice_equals_batch(
        "sigkill_with_windows_open_equals_datafusion",
        WINDOWED,
        "bucket",
        &["bucket", "n", "total", "high", "bidders"],
        2_000,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_sessions_open_equals_datafusion() {
    killed_twice_equals_batch(
        "sigkill_with_sessions_open_equals_datafusion",
        SESSIONS,
        "bidder",
        &["bidder", "n", "total", "high", "auctions"],
        20_000,
    )
    .await;
}

/// Runs `select` over out-of-order bids into Delta, SIGKILLs the server twice with windows
/// open, and compares the table (read by the deltalake package) with the same SELECT as
/// DataFusion's batch query (SESSION keyed by `key` there). At least `at_least` windows.
async fn killed_twice_equals_batch(
    test: &str,
    select: &str,
    key: &str,
    columns: &[&str],
    at_least: usize,
) {
    let tmp = tempfile::tempdir().unwrap();
    let lake = tmp.path().join("lake");
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let server = Server::start(&data).await;
    let c = server.client().await;
    const EVENTS: u64 = 3_000_000;
    let bids = EVENTS * 92 / 100;
    c.batch_execute(&format!(
        "CREATE SOURCE bids (WATERMARK FOR date_time AS date_time - INTERVAL '2' SECOND)
           WITH (connector = 'nexmark', table = 'bid', events = {EVENTS}, seed = 21, out_of_order = 100);
         CREATE SINK lake WITH (connector = 'delta', path = '{}');
         CREATE PIPELINE win WITH (checkpoint_interval = '100ms', parallelism = 2) AS INSERT INTO lake {select};",
        lake.display()
    ))
    .await
    .unwrap();
    let server = kill_twice(server, &data, "win", bids, test).await;
    let c = server.client().await;
    wait_state(&c, "win", "completed").await;
    assert_eq!(counters(&c, "win").await.0, bids);
    assert_eq!(
        scalar(
            &c,
            "SELECT rows_late FROM tributary.pipelines WHERE name = 'win'"
        )
        .await,
        "0"
    );

    // The oracle: the same SELECT as DataFusion's batch query over the same bids.
    let batch = select.replace(
        "INTERVAL '500' MILLISECOND)",
        &format!("INTERVAL '500' MILLISECOND, {key})"),
    );
    let want: Vec<String> = query_lines(
        &c,
        &format!(
            "SELECT CAST(arrow_cast(window_start, 'Timestamp(Microsecond, None)') AS BIGINT), {} \
             FROM ({batch}) ORDER BY 1, 2",
            columns.join(", ")
        ),
    )
    .await;
    assert!(want.len() > at_least, "{} windows", want.len());
    let mut read = vec!["window_start"];
    read.extend(columns);
    let got = delta_sorted(&lake, &read);
    assert_same_rows(&got, &want, "windows in the table vs the batch result");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_rows_are_counted_and_kept_when_asked() {
    let (tmp, server) = start_fresh().await;
    let input = tmp.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    let line = |id: u32, second: u32| {
        format!("{{\"id\": {id}, \"ts\": \"2026-05-01T10:00:{second:02}\"}}\n")
    };
    // The first run's rows reach 10:00:50; with a 5 s delay the watermark ends at 10:00:45.
    let first: String = (0..=50).map(|s| line(s, s)).collect();
    std::fs::write(input.join("a.json"), first).unwrap();
    let c = server.client().await;
    c.batch_execute(&format!(
        "CREATE SOURCE ev (id BIGINT, ts TIMESTAMP(3), WATERMARK FOR ts AS ts - INTERVAL '5' SECOND)
           WITH (connector = 'file', path = '{}/*.json', format = 'json');
         CREATE SINK per10 WITH (connector = 'parquet', path = '{}');
         CREATE PIPELINE p WITH (on_late = 'errors') AS INSERT INTO per10
           SELECT window_start, count(*) AS n FROM TUMBLE(ev, ts, INTERVAL '10' SECOND)
           GROUP BY window_start, window_end;",
        input.display(),
        tmp.path().join("out").display()
    ))
    .await
    .unwrap();
    wait_state(&c, "p", "completed").await;
    assert_eq!(
        scalar(&c, "SELECT sum(n) FROM per10").await,
        "51",
        "the end of the input closes every window"
    );
    // A second file: 7 rows from before the watermark (late), 3 after it.
    let second: String = (100..107)
        .map(|i| line(i, 30 + (i - 100)))
        .chain((107..110).map(|i| line(i, 50 + (i - 107))))
        .collect();
    std::fs::write(input.join("b.json"), second).unwrap();
    c.batch_execute("START PIPELINE p").await.unwrap();
    wait_state(&c, "p", "completed").await;
    let row = query(
        &c,
        "SELECT rows_in, rows_late, rows_errored, watermark FROM tributary.pipelines WHERE name = 'p'",
    )
    .await;
    assert_eq!(
        row[0],
        vec![
            Some("61".into()),
            Some("7".into()),
            Some("0".into()),
            Some("2026-05-01 10:00:47+00".into())
        ]
    );
    let late = query(
        &c,
        "SELECT error, raw FROM tributary.errors WHERE pipeline = 'p' ORDER BY raw",
    )
    .await;
    assert_eq!(late.len(), 7, "{late:?}");
    assert!(
        late.iter()
            .all(|r| r[0].as_deref().unwrap().starts_with("late:")
                && r[0].as_deref().unwrap().contains("2026-05-01T10:00:45")),
        "{late:?}"
    );
    assert!(
        late[0][1].as_deref().unwrap().contains("\"id\":100"),
        "{late:?}"
    );
    // The on-time rows were counted in windows of their own run.
    assert_eq!(scalar(&c, "SELECT sum(n) FROM per10").await, "54");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_definitions_point_at_their_place() {
    let (tmp, server) = start_fresh().await;
    let c = server.client().await;
    c.batch_execute(&format!(
        "CREATE SOURCE bids (WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
           WITH (connector = 'nexmark', table = 'bid', events = 1000, seed = 1);
         CREATE SOURCE plain WITH (connector = 'nexmark', table = 'bid', events = 1000, seed = 1);
         CREATE SINK out WITH (connector = 'parquet', path = '{}');",
        tmp.path().join("out").display()
    ))
    .await
    .unwrap();
    // (statement, what the position must point at, SQLSTATE)
    let cases = [
        (
            "CREATE PIPELINE bad AS INSERT INTO out SELECT window_start, count(*) AS n FROM TUMBLE(bids, price, INTERVAL '2' SECOND) GROUP BY window_start, window_end",
            "price,",
            "42000",
        ),
        (
            "CREATE PIPELINE bad AS INSERT INTO out SELECT window_start, count(*) AS n FROM HOP(nobids, date_time, INTERVAL '2' SECOND, INTERVAL '4' SECOND) GROUP BY window_start, window_end",
            "nobids",
            "42000",
        ),
        (
            "CREATE PIPELINE bad AS INSERT INTO out SELECT window_start, count(*) AS n FROM SESSION(bids, date_time, INTERVAL '2' SECOND, nobody) GROUP BY window_start, window_end",
            "nobody",
            "42000",
        ),
        ("SELECT auction, nosuch FROM bids", "nosuch", "42703"),
        // Our own planning's errors point too: a window over a source without a watermark...
        (
            "CREATE PIPELINE bad AS INSERT INTO out SELECT window_start, window_end, count(*) AS n FROM TUMBLE(plain, date_time, INTERVAL '2' SECOND) GROUP BY window_start, window_end",
            "TUMBLE(plain",
            "42000",
        ),
        // ...a window's GROUP BY without its end...
        (
            "CREATE PIPELINE bad AS INSERT INTO out SELECT count(*) AS n FROM TUMBLE(bids, date_time, INTERVAL '2' SECOND) GROUP BY window_start",
            "window_start",
            "42000",
        ),
        // ...an updating aggregate into an append-only sink (at its GROUP BY)...
        (
            "CREATE PIPELINE bad AS INSERT INTO out SELECT auction, count(*) AS n FROM bids GROUP BY 1",
            "1",
            "0A000",
        ),
        // ...and an aggregate over the whole stream (at its SELECT).
        (
            "CREATE PIPELINE bad AS INSERT INTO out SELECT count(*) AS n FROM bids",
            "SELECT",
            "0A000",
        ),
    ];
    for (sql, place, code) in cases {
        let e = c.batch_execute(sql).await.unwrap_err();
        let e = e.as_db_error().unwrap_or_else(|| panic!("{sql}: {e:?}"));
        let want = sql.find(place).unwrap() + 1;
        assert!(
            !e.message().contains("Error during planning"),
            "{}",
            e.message()
        );
        assert_eq!(
            (e.code().code(), e.position()),
            (
                code,
                Some(&tokio_postgres::error::ErrorPosition::Original(want as u32))
            ),
            "{sql}: {}",
            e.message()
        );
    }
    // In a script of several statements the position counts from the script's start.
    let script = "SELECT 1; SELECT nosuch FROM bids";
    let e = c.simple_query(script).await.unwrap_err();
    assert_eq!(
        e.as_db_error().unwrap().position(),
        Some(&tokio_postgres::error::ErrorPosition::Original(
            script.find("nosuch").unwrap() as u32 + 1
        ))
    );
}
