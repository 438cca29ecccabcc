//! GROUP BY without a window end to end: per-key rollups, updated at every checkpoint, into a
//! PostgreSQL upsert table and a Delta upsert table (read by the deltalake package), across
//! SIGKILLs and with state spilled beyond its memory, equal to DataFusion's batch result over
//! the same rows.

use std::time::Duration;

use crate::cdc::PgCluster;
use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollups_update_postgres_and_delta_across_sigkills() {
    let pg = PgCluster::start("replica");
    let tmp = tempfile::tempdir().unwrap();
    let lake = tmp.path().join("lake");
    let few = tmp.path().join("few");
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let server = Server::start(&data).await;
    let c = server.client().await;
    const EVENTS: u64 = 2_000_000;
    let bids = EVENTS * 92 / 100;
    c.batch_execute(&format!(
        "CREATE SOURCE bids WITH (connector = 'nexmark', table = 'bid', events = {EVENTS}, seed = 31);
         CREATE SINK lake WITH (connector = 'delta', path = '{}', mode = 'upsert');
         CREATE SINK few WITH (connector = 'delta', path = '{}', mode = 'upsert');
         CREATE SINK wh WITH (connector = 'postgres', url = '{}', table = 'public.per_bidder', mode = 'upsert');
         CREATE PIPELINE per_auction WITH (checkpoint_interval = '100ms', parallelism = 2, state_memory = '4 MB') AS INSERT INTO lake
           SELECT auction, count(*) AS n, sum(price) AS total, max(price) AS high, max(url) AS url FROM bids GROUP BY auction;
         CREATE PIPELINE per_bidder WITH (checkpoint_interval = '100ms') AS INSERT INTO wh
           SELECT bidder, count(*) AS n, min(date_time) AS first_bid, count(DISTINCT auction) AS auctions FROM bids GROUP BY bidder;
         CREATE PIPELINE few_bids WITH (checkpoint_interval = '100ms', parallelism = 2) AS INSERT INTO few
           SELECT auction, count(*) AS n, max(price) AS high, count(DISTINCT bidder) AS bidders,
                  count(DISTINCT bidder) FILTER (WHERE price > 1000000) AS big_bidders
           FROM bids GROUP BY auction HAVING count(*) < 30;",
        lake.display(),
        few.display(),
        pg.url("postgres")
    ))
    .await
    .unwrap();
    let server = kill_twice(
        server,
        &data,
        "per_auction",
        bids,
        "rollups_update_postgres_and_delta_across_sigkills",
    )
    .await;
    let c = server.client().await;
    wait_state(&c, "per_auction", "completed").await;
    wait_state(&c, "per_bidder", "completed").await;
    wait_state(&c, "few_bids", "completed").await;

    // per_auction's groups (a URL in each: well over 4 MB at the end, whatever the kills left
    // in memory) did not fit its 4 MB: they were spilled, and still add up.
    let spilled: i64 = scalar(
        &c,
        "SELECT sum(spilled_bytes) FROM tributary.operators WHERE pipeline = 'per_auction'",
    )
    .await
    .parse()
    .unwrap();
    assert!(spilled > 0, "per_auction spilled its state");
    // The DISTINCT counts were counted by marks in front of the aggregates (a number per group).
    let marks = scalar(
        &c,
        "SELECT count(DISTINCT pipeline) FROM tributary.operators WHERE kind = 'distinct_marks' AND state_rows > 0",
    )
    .await;
    assert_eq!(marks, "2");

    // Delta: every auction once, with its totals over all bids.
    let want = query_lines(
        &c,
        "SELECT auction, count(*), sum(price), max(price) FROM bids GROUP BY auction ORDER BY auction",
    )
    .await;
    assert!(want.len() > 1_000, "{} auctions", want.len());
    let got = delta_sorted(&lake, &["auction", "n", "total", "high"]);
    assert_same_rows(&got, &want, "auctions in Delta vs the batch result");

    // HAVING: an auction with fewer than 30 bids so far was written, and deleted once it had
    // more; the table holds exactly the batch result.
    let want = query_lines(
        &c,
        "SELECT auction, count(*), max(price), count(DISTINCT bidder), count(DISTINCT bidder) FILTER (WHERE price > 1000000) \
         FROM bids GROUP BY auction HAVING count(*) < 30 ORDER BY auction",
    )
    .await;
    let got = delta_sorted(&few, &["auction", "n", "high", "bidders", "big_bidders"]);
    assert!(want.len() > 100, "{} auctions", want.len());
    assert_eq!(got, want, "auctions with fewer than 30 bids");
    let deleted: u64 = scalar(
        &c,
        "SELECT rows_out FROM tributary.pipelines WHERE name = 'few_bids'",
    )
    .await
    .parse()
    .unwrap();
    assert!(
        deleted > want.len() as u64 + 100,
        "groups that passed HAVING and then left it were written and deleted ({deleted} rows out)"
    );

    // PostgreSQL: every bidder once, keyed by bidder.
    let want = query_lines(
        &c,
        "SELECT bidder, count(*), CAST(floor(date_part('epoch', min(date_time)) * 1000) AS BIGINT), count(DISTINCT auction) FROM bids GROUP BY bidder ORDER BY bidder",
    )
    .await;
    let wh = pg.client("postgres").await;
    let got: Vec<String> = wh
        .query(
            "SELECT bidder, n, floor(extract(epoch FROM first_bid) * 1000)::bigint, auctions FROM per_bidder ORDER BY bidder",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| {
            let field = |i| r.get::<_, i64>(i);
            format!("{} {} {} {}", field(0), field(1), field(2), field(3))
        })
        .collect();
    assert_eq!(
        got.len(),
        want.len(),
        "bidders in PostgreSQL vs the batch result"
    );
    assert_eq!(got, want);
    let key: i64 = wh
        .query_one(
            "SELECT count(*) FROM information_schema.table_constraints WHERE table_name = 'per_bidder' AND constraint_type = 'PRIMARY KEY'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(key, 1, "the table is keyed by the GROUP BY column");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_ttl_drops_groups_that_stop_changing() {
    let (tmp, server) = start_fresh().await;
    let input = tmp.path().join("in");
    let staging = tmp.path().join("staging");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::create_dir_all(&staging).unwrap();
    let rows = |keys: &[&str]| -> String {
        keys.iter()
            .map(|k| format!("{{\"k\": \"{k}\", \"v\": 1}}\n"))
            .collect()
    };
    // Files appear whole: written aside, then renamed in.
    let add = |name: &str, keys: &[&str]| {
        std::fs::write(staging.join(name), rows(keys)).unwrap();
        std::fs::rename(staging.join(name), input.join(name)).unwrap();
    };
    add("1.json", &["a", "a", "a", "b"]);
    let c = server.client().await;
    c.batch_execute(&format!(
        "CREATE SOURCE ev (k TEXT, v BIGINT) WITH (connector = 'file', path = '{}/*.json', format = 'json');
         CREATE SINK totals WITH (connector = 'delta', path = '{}', mode = 'upsert');
         CREATE PIPELINE p WITH (mode = 'streaming', checkpoint_interval = '200ms', state_ttl = '2s')
           AS INSERT INTO totals SELECT k, count(*) AS n FROM ev GROUP BY k;",
        input.display(),
        tmp.path().join("totals").display()
    ))
    .await
    .unwrap();
    // Waits for a checkpoint holding `rows` rows and its commit, then reads the sink (which
    // has no table before its first commit).
    let totals = |rows: u64, want: &'static [&'static str]| {
        let c = &c;
        async move {
            poll(Duration::from_secs(60), "a checkpoint", || async {
                let done = scalar(
                    c,
                    "SELECT max(rows_in) FROM tributary.checkpoints WHERE pipeline = 'p'",
                )
                .await;
                (done == rows.to_string()).then_some(())
            })
            .await;
            poll(Duration::from_secs(60), "the totals", || async {
                let got = c
                    .simple_query("SELECT k || ' ' || n FROM totals ORDER BY k")
                    .await
                    .ok()?;
                let got: Vec<String> = got
                    .iter()
                    .filter_map(|m| match m {
                        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                        _ => None,
                    })
                    .collect();
                (got == want).then_some(())
            })
            .await;
        }
    };
    let state_rows = "SELECT sum(state_rows) FROM tributary.operators WHERE pipeline = 'p' AND kind = 'updating_aggregate'";
    totals(4, &["a 3", "b 1"]).await;
    // Two quiet seconds: both groups leave the state (their rows stay in the sink).
    poll(Duration::from_secs(60), "groups past the TTL", || async {
        (scalar(&c, state_rows).await == "0").then_some(())
    })
    .await;
    // a again: counted afresh.
    add("2.json", &["a", "a"]);
    totals(6, &["a 2", "b 1"]).await;
    // The expiry was checkpointed as the whole state: after a restart, b does not come back
    // from older change files.
    c.batch_execute("STOP PIPELINE p").await.unwrap();
    c.batch_execute("START PIPELINE p").await.unwrap();
    add("3.json", &["b"]);
    // c marks the point where b's change is committed too.
    add("4.json", &["c"]);
    totals(8, &["a 2", "b 1", "c 1"]).await;
}
