//! What a pipeline's SQL means, end to end: a DISTINCT under a projection that fails on some
//! rows, clock functions read per batch, and quoted (camelCase) column names.

use tokio_postgres::error::SqlState;

use crate::harness::*;

/// `SELECT DISTINCT` under a projection that fails on one key (`100 / a` with `a = 0`): the bad
/// row goes to `tributary.errors` and every other key still lands, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distinct_keeps_the_rows_of_a_batch_that_failed_elsewhere() {
    let (tmp, server) = start_fresh().await;
    let input = tmp.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    let mut csv = String::from("a\n");
    for i in 0..1_000 {
        csv.push_str(&format!("{}\n", i % 50));
    }
    std::fs::write(input.join("nums.csv"), csv).unwrap();
    let lake = tmp.path().join("lake");
    let c = server.client().await;
    c.batch_execute(&format!(
        "CREATE SOURCE nums (a BIGINT) WITH (connector = 'file', path = '{}', format = 'csv');
         CREATE SINK np WITH (connector = 'delta', path = '{}');
         CREATE PIPELINE dp AS INSERT INTO np SELECT 100 / a AS x, a FROM (SELECT DISTINCT a FROM nums) t;",
        input.display(),
        lake.display()
    ))
    .await
    .unwrap();
    wait_state(&c, "dp", "completed").await;
    // The oracle: DataFusion's batch query over the rows it does not fail on.
    let expected: Vec<String> = (1..50).map(|a| format!("{}|{a}", 100 / a)).collect();
    let mut got: Vec<String> = query(&c, "SELECT x, a FROM np ORDER BY a")
        .await
        .into_iter()
        .map(|r| format!("{}|{}", r[0].clone().unwrap(), r[1].clone().unwrap()))
        .collect();
    got.sort_by_key(|r| r.split('|').nth(1).unwrap().parse::<i64>().unwrap());
    assert_eq!(got, expected);
    let errors = query(
        &c,
        "SELECT raw, error FROM tributary.errors WHERE pipeline = 'dp'",
    )
    .await;
    assert!(!errors.is_empty(), "the a = 0 row was not reported");
    for e in &errors {
        assert_eq!(e[0].as_deref(), Some(r#"{"a":0}"#), "{errors:?}");
        assert!(
            e[1].as_deref()
                .unwrap_or_default()
                .contains("Divide by zero"),
            "{errors:?}"
        );
    }
    let (_, rows_out, errored) = counters(&c, "dp").await;
    assert_eq!(rows_out, 49);
    assert_eq!(errored, errors.len() as u64);
}

/// A DISTINCT far past its `state_memory` spills its keys to disk and still lands each row
/// once: the lake equals DataFusion's batch DISTINCT over the same source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distinct_beyond_its_state_memory_spills_and_lands_each_row_once() {
    let (tmp, server) = start_fresh().await;
    let lake = tmp.path().join("lake");
    let c = server.client().await;
    c.batch_execute(&format!(
        "CREATE SOURCE bids WITH (connector = 'nexmark', table = 'bid', events = 500000, seed = 5);
         CREATE SINK lake WITH (connector = 'delta', path = '{}');
         CREATE PIPELINE d WITH (state_memory = '4 MB', parallelism = 2) AS INSERT INTO lake
           SELECT DISTINCT auction, bidder, price FROM bids;",
        lake.display()
    ))
    .await
    .unwrap();
    wait_state(&c, "d", "completed").await;
    let spilled: u64 = scalar(
        &c,
        "SELECT sum(spilled_bytes) FROM tributary.operators WHERE pipeline = 'd' AND kind = 'distinct'",
    )
    .await
    .parse()
    .unwrap();
    assert!(spilled > 0, "the keys spilled");
    let batch = scalar(
        &c,
        "SELECT count(*) FROM (SELECT DISTINCT auction, bidder, price FROM bids) t",
    )
    .await;
    assert!(
        batch.parse::<u64>().unwrap() > 400_000,
        "{batch} distinct rows"
    );
    assert_eq!(scalar(&c, "SELECT count(*) FROM lake").await, batch);
    let landed_distinct = scalar(
        &c,
        "SELECT count(*) FROM (SELECT DISTINCT auction, bidder, price FROM lake) t",
    )
    .await;
    assert_eq!(landed_distinct, batch, "a row landed twice");
    let (_, _, errored) = counters(&c, "d").await;
    assert_eq!(errored, 0);
    // A size that is not one is refused when the pipeline is created.
    let e = c
        .batch_execute(
            "CREATE PIPELINE e WITH (state_memory = 'lots') AS INSERT INTO lake SELECT DISTINCT auction, bidder, price FROM bids",
        )
        .await
        .unwrap_err();
    let e = e.as_db_error().expect("a database error");
    assert_eq!(e.code(), &SqlState::INVALID_PARAMETER_VALUE);
    assert!(e.message().contains("state_memory"), "{}", e.message());
}

/// `now()`, `current_timestamp` and `current_date` are read per batch, not folded into the
/// time the pipeline was planned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_functions_advance_in_a_streaming_pipeline() {
    let (tmp, server) = start_fresh().await;
    let lake = tmp.path().join("lake");
    let c = server.client().await;
    c.batch_execute(&format!(
        "CREATE SOURCE gen WITH (connector = 'nexmark', table = 'bid', rate = 2000, seed = 3, batch_size = 100);
         CREATE SINK lake WITH (connector = 'delta', path = '{}');
         CREATE PIPELINE clock WITH (checkpoint_interval = '200ms') AS INSERT INTO lake
           SELECT auction, now() AS t, current_timestamp AS t2, current_date AS d FROM gen;",
        lake.display()
    ))
    .await
    .unwrap();
    wait_epoch(&c, "clock", 10).await;
    c.batch_execute("STOP PIPELINE clock").await.unwrap();
    let row = query(
        &c,
        "SELECT count(DISTINCT t), count(DISTINCT t2), min(t) < max(t), \
         max(t) <= now(), max(t) > now() - INTERVAL '10 minutes', \
         count(DISTINCT d), min(d) >= current_date - INTERVAL '1 day' FROM lake",
    )
    .await;
    let row = &row[0];
    let distinct_t: u64 = row[0].as_deref().unwrap().parse().unwrap();
    let distinct_t2: u64 = row[1].as_deref().unwrap().parse().unwrap();
    assert!(
        distinct_t >= 10,
        "now() took {distinct_t} values over 10 epochs"
    );
    assert!(
        distinct_t2 >= 10,
        "current_timestamp took {distinct_t2} values"
    );
    assert_eq!(row[2].as_deref(), Some("t"));
    assert_eq!(row[3].as_deref(), Some("t"), "now() ran ahead of the clock");
    assert_eq!(row[4].as_deref(), Some("t"), "now() is stale");
    assert!(matches!(row[5].as_deref(), Some("1") | Some("2")));
    assert_eq!(row[6].as_deref(), Some("t"));
}

/// Quoted identifiers keep their case in DDL, the catalog, the JSON decoder and the sink; JSON
/// keys inferred from the data keep theirs too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quoted_camel_case_columns_keep_their_case() {
    let (tmp, server) = start_fresh().await;
    let input = tmp.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    let mut lines = String::new();
    for i in 1..=1_200 {
        lines.push_str(&format!(
            "{{\"auction\": {i}, \"dateTime\": \"2015-07-15 12:00:{:02}.000\", \"Extra\": \"x{i}\"}}\n",
            i % 60
        ));
    }
    std::fs::write(input.join("bids.jsonl"), lines).unwrap();
    let lake = tmp.path().join("lake");
    let c = server.client().await;
    c.batch_execute(&format!(
        "CREATE SOURCE b (auction BIGINT, \"dateTime\" TIMESTAMP, \"Extra\" TEXT) WITH (connector = 'file', format = 'json', path = '{0}');
         CREATE SOURCE inferred WITH (connector = 'file', format = 'json', path = '{0}');
         CREATE SINK lake WITH (connector = 'delta', path = '{1}');",
        input.display(),
        lake.display()
    ))
    .await
    .unwrap();
    for source in ["b", "inferred"] {
        // Declared, dateTime is a TIMESTAMP; inferred from the lines, it is their text.
        let row = query(
            &c,
            &format!("SELECT \"dateTime\", \"Extra\" FROM {source} ORDER BY auction LIMIT 1"),
        )
        .await;
        let date_time = row[0][0].clone().unwrap_or_default();
        assert!(
            date_time.starts_with("2015-07-15 12:00:01"),
            "{source}: {row:?}"
        );
        assert_eq!(row[0][1].as_deref(), Some("x1"), "{source}: {row:?}");
    }
    let show = scalar(&c, "SELECT schema FROM tributary.sources WHERE name = 'b'").await;
    assert!(
        show.contains("dateTime") && show.contains("Extra"),
        "{show}"
    );
    // Unquoted names fold to lower case, as in PostgreSQL, and then do not match.
    let e = c.simple_query("SELECT dateTime FROM b").await.unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::UNDEFINED_COLUMN), "{e:?}");

    c.batch_execute(
        "CREATE PIPELINE p AS INSERT INTO lake SELECT auction, \"dateTime\", \"Extra\" FROM b",
    )
    .await
    .unwrap();
    wait_state(&c, "p", "completed").await;
    let out = run_python(
        "import sys, deltalake\n\
         t = deltalake.DeltaTable(sys.argv[1]).to_pyarrow_table()\n\
         print(sorted(t.column_names), t.num_rows, t.column('dateTime').null_count, t.column('Extra').null_count)",
        &[lake.to_str().unwrap()],
    );
    assert_eq!(out.trim(), "['Extra', 'auction', 'dateTime'] 1200 0 0");
    assert_eq!(
        scalar(
            &c,
            "SELECT coalesce(warning, '') FROM tributary.pipelines WHERE name = 'p'"
        )
        .await,
        ""
    );

    // Declared unquoted, the name is lowercased and matches no key: every value is NULL, and
    // the pipeline says so.
    c.batch_execute(&format!(
        "CREATE SOURCE lowered (auction BIGINT, dateTime TIMESTAMP) WITH (connector = 'file', format = 'json', path = '{}');
         CREATE SINK hole WITH (connector = 'blackhole');
         CREATE PIPELINE p2 AS INSERT INTO hole SELECT auction, datetime FROM lowered;",
        input.display()
    ))
    .await
    .unwrap();
    wait_state(&c, "p2", "completed").await;
    let warning = scalar(
        &c,
        "SELECT warning FROM tributary.pipelines WHERE name = 'p2'",
    )
    .await;
    assert!(
        warning.contains("\"datetime\"") && warning.contains("1200 records"),
        "{warning}"
    );
}
