//! Pipelines over several sources: a UNION ALL of two file sources, each read by a reader of
//! its own, killed twice mid-run; every row lands once, and a GROUP BY over the union equals
//! DataFusion's batch query. Windows over two streams, and an interval join of two streams,
//! equal the batch query across kills.

use std::time::Duration;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn union_of_two_sources_is_exactly_once_across_sigkills() {
    let tmp = tempfile::tempdir().unwrap();
    let (east, west) = (tmp.path().join("east"), tmp.path().join("west"));
    const FILES: usize = 40;
    const ROWS: usize = 25_000;
    let next = write_csv(&east, "orders", FILES, ROWS, 1);
    write_csv(&west, "orders", FILES, ROWS, next);
    let total = (2 * FILES * ROWS) as u64;
    let (lake, totals) = (tmp.path().join("lake"), tmp.path().join("totals"));
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let server = Server::start(&data).await;
    let c = server.client().await;
    c.batch_execute(&format!(
        "CREATE SOURCE east (id BIGINT, customer TEXT, amount DOUBLE, ts TIMESTAMP) WITH (connector = 'file', path = '{east}');
         CREATE SOURCE west (id BIGINT, customer TEXT, amount DOUBLE, ts TIMESTAMP) WITH (connector = 'file', path = '{west}');
         CREATE SINK lake WITH (connector = 'delta', path = '{lake}');
         CREATE SINK totals WITH (connector = 'delta', path = '{totals}', mode = 'upsert');
         CREATE PIPELINE everything WITH (checkpoint_interval = '200ms') AS INSERT INTO lake
           SELECT id, customer, amount, 'east' AS region FROM east
           UNION ALL SELECT id, customer, amount, 'west' FROM west;
         CREATE PIPELINE per_customer WITH (checkpoint_interval = '200ms') AS INSERT INTO totals
           SELECT customer, count(*) AS n, sum(id) AS ids, max(amount) AS high
           FROM (SELECT customer, id, amount FROM east UNION ALL SELECT customer, id, amount FROM west WHERE id % 3 <> 0) o
           GROUP BY customer;",
        east = east.display(),
        west = west.display(),
        lake = lake.display(),
        totals = totals.display()
    ))
    .await
    .unwrap();
    let server = kill_twice(
        server,
        &data,
        "everything",
        total,
        "union_of_two_sources_is_exactly_once_across_sigkills",
    )
    .await;
    let c = server.client().await;
    wait_state(&c, "everything", "completed").await;
    wait_state(&c, "per_customer", "completed").await;

    // Every row of both sources once.
    assert_eq!(delta_count_distinct(&lake), (total, total));
    let out = query_lines(
        &c,
        "SELECT source, rows_in, rows_out FROM tributary.pipelines WHERE name = 'everything'",
    )
    .await;
    assert_eq!(out, vec![format!("east, west {total} {total}")]);
    // The checkpoint holds both sources' positions.
    let checkpoints = data.join("checkpoints");
    let latest = std::fs::read_dir(&checkpoints)
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .max()
        .unwrap();
    let cp: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&latest).unwrap()).unwrap();
    let mut sources: Vec<&String> = cp["sources"].as_object().unwrap().keys().collect();
    sources.sort();
    assert_eq!(sources, ["east", "west"], "{latest:?}");

    // The GROUP BY over the union equals the batch query over the same sources.
    let want = query_lines(
        &c,
        "SELECT customer, count(*), sum(id), max(amount)
         FROM (SELECT customer, id, amount FROM east UNION ALL SELECT customer, id, amount FROM west WHERE id % 3 <> 0) o
         GROUP BY customer ORDER BY customer",
    )
    .await;
    let got = query_lines(
        &c,
        "SELECT customer, n, ids, high FROM totals ORDER BY customer",
    )
    .await;
    assert!(want.len() > 10, "{want:?}");
    assert_eq!(got, want);
}

/// Windows over a UNION ALL of two out-of-order streams, one paced behind the other, killed
/// twice with windows open: no row is late, and the windows equal the batch query.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_over_two_streams_equal_the_batch_query_across_sigkills() {
    let tmp = tempfile::tempdir().unwrap();
    let lake = tmp.path().join("lake");
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let server = Server::start(&data).await;
    let c = server.client().await;
    // fast: 2 M events read at full speed; slow: 100 k events paced over about four seconds.
    let (fast, slow) = (2_000_000u64, 100_000u64);
    c.batch_execute(&format!(
        "CREATE SOURCE fast (WATERMARK FOR date_time AS date_time - INTERVAL '2' SECOND)
           WITH (connector = 'nexmark', table = 'bid', events = {fast}, seed = 41, out_of_order = 100);
         CREATE SOURCE slow (WATERMARK FOR date_time AS date_time - INTERVAL '2' SECOND)
           WITH (connector = 'nexmark', table = 'bid', events = {slow}, rate = 25000, seed = 42,
                 out_of_order = 100, batch_size = 500);
         CREATE SINK lake WITH (connector = 'delta', path = '{}');
         CREATE PIPELINE win WITH (checkpoint_interval = '100ms', parallelism = 2) AS INSERT INTO lake {WINDOWS};",
        lake.display()
    ))
    .await
    .unwrap();
    let bids = (fast + slow) * 92 / 100;
    let server = kill_twice(
        server,
        &data,
        "win",
        bids,
        "windows_over_two_streams_equal_the_batch_query_across_sigkills",
    )
    .await;
    let c = server.client().await;
    wait_state(&c, "win", "completed").await;
    let late = scalar(
        &c,
        "SELECT rows_late FROM tributary.pipelines WHERE name = 'win'",
    )
    .await;
    assert_eq!(late, "0");
    let want = query_lines(
        &c,
        &format!(
            "SELECT CAST(arrow_cast(window_start, 'Timestamp(Microsecond, None)') AS BIGINT), bucket, n, total, high
             FROM ({WINDOWS}) ORDER BY 1, 2"
        ),
    )
    .await;
    assert!(want.len() > 1_000, "{} windows", want.len());
    let got = delta_sorted(&lake, &["window_start", "bucket", "n", "total", "high"]);
    assert_same_rows(&got, &want, "windows in Delta vs the batch result");
}

/// Per second and auction bucket, over both streams.
const WINDOWS: &str = "SELECT window_start, window_end, auction % 10 AS bucket, count(*) AS n, \
     sum(price) AS total, max(price) AS high \
     FROM (SELECT * FROM TUMBLE(fast, date_time, INTERVAL '1' SECOND) \
           UNION ALL SELECT * FROM TUMBLE(slow, date_time, INTERVAL '1' SECOND)) w \
     GROUP BY window_start, window_end, auction % 10";

/// Bids within two seconds of their auction's start, from a paced auction stream and a paced
/// bid stream, killed twice: each joined row lands once, none is late, the join forgets rows
/// as the watermark passes their bound, and the result equals the batch join.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interval_join_of_two_streams_equals_the_batch_join_across_sigkills() {
    let tmp = tempfile::tempdir().unwrap();
    let lake = tmp.path().join("lake");
    let expanded_lake = tmp.path().join("expanded");
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let server = Server::start(&data).await;
    let c = server.client().await;
    // The same seed and events: the bids' auctions are the auctions'. About six seconds each.
    // Beside it, a regular join (q20) that keeps every bid until the auctions end, in less
    // memory than their columns take: they spill, and are snapshotted and restored spilled.
    let events = 300_000u64;
    c.batch_execute(&format!(
        "{}
         CREATE SINK lake WITH (connector = 'delta', path = '{}');
         CREATE SINK expanded_lake WITH (connector = 'delta', path = '{}');
         CREATE PIPELINE early WITH (checkpoint_interval = '100ms') AS INSERT INTO lake {EARLY_BIDS};
         CREATE PIPELINE expanded WITH (checkpoint_interval = '100ms', state_memory = '16MB') AS INSERT INTO expanded_lake {EXPANDED_BIDS};",
        paced_auctions_and_bids(events, 9),
        lake.display(),
        expanded_lake.display()
    ))
    .await
    .unwrap();
    let rows_in = events * 49 / 50;
    // Mid-run the join holds the rows that can still match, far fewer than it has read.
    let (read, kept) = poll(Duration::from_secs(120), "the join to read half its input", || async {
        let line = query_lines(
            &c,
            "SELECT rows_in, state_rows FROM tributary.operators WHERE pipeline = 'early' AND kind = 'stream_join'",
        )
        .await;
        let figures: Vec<u64> = line.first()?.split(' ').map(|v| v.parse().unwrap_or(0)).collect();
        (figures[0] >= rows_in / 2).then(|| (figures[0], figures[1]))
    })
    .await;
    assert!(
        kept < read / 2,
        "the join keeps {kept} of the {read} rows it read"
    );
    poll(Duration::from_secs(120), "the regular join to spill", || async {
        let spilled = scalar(
            &c,
            "SELECT sum(spilled_bytes) FROM tributary.operators WHERE pipeline = 'expanded' AND kind = 'stream_join'",
        )
        .await;
        (spilled.parse::<u64>().unwrap_or(0) > 0).then_some(())
    })
    .await;
    let server = kill_twice(
        server,
        &data,
        "early",
        rows_in,
        "interval_join_of_two_streams_equals_the_batch_join_across_sigkills",
    )
    .await;
    let c = server.client().await;
    wait_state(&c, "early", "completed").await;
    let late = scalar(
        &c,
        "SELECT rows_late FROM tributary.pipelines WHERE name = 'early'",
    )
    .await;
    assert_eq!(late, "0");
    let want = query_lines(
        &c,
        &format!("SELECT auction, bidder, price, CAST(arrow_cast(bid_time, 'Timestamp(Microsecond, None)') AS BIGINT) FROM ({EARLY_BIDS}) ORDER BY 1, 2, 3, 4"),
    )
    .await;
    assert!(want.len() > 10_000, "{} joined rows", want.len());
    let got = delta_sorted(&lake, &["auction", "bidder", "price", "bid_time"]);
    assert_same_rows(&got, &want, "the interval join in Delta vs the batch join");
    wait_state(&c, "expanded", "completed").await;
    let want = query_lines(
        &c,
        &format!("SELECT auction, bidder, price, url, CAST(arrow_cast(bid_time, 'Timestamp(Microsecond, None)') AS BIGINT), item_name FROM ({EXPANDED_BIDS}) ORDER BY 1, 2, 3, 4, 5"),
    )
    .await;
    assert!(want.len() > 1_000, "{} joined rows", want.len());
    let got = delta_sorted(
        &expanded_lake,
        &["auction", "bidder", "price", "url", "bid_time", "item_name"],
    );
    assert_same_rows(
        &got,
        &want,
        "the spilling regular join in Delta vs the batch join",
    );
}

/// Nexmark q20's shape: every bid with its auction, for one category.
const EXPANDED_BIDS: &str =
    "SELECT b.auction, b.bidder, b.price, b.url, b.date_time AS bid_time, a.item_name \
     FROM bids b JOIN auctions a ON b.auction = a.id WHERE a.category = 10";

const EARLY_BIDS: &str = "SELECT a.id AS auction, b.bidder, b.price, b.date_time AS bid_time \
     FROM auctions a JOIN bids b \
       ON a.id = b.auction AND b.date_time BETWEEN a.date_time AND a.date_time + INTERVAL '2' SECOND";

/// Nexmark q9 (each auction's winning bid: ROW_NUMBER() kept to the first row) and q4 (average
/// winning price per category: a GROUP BY over a GROUP BY's updates) from paced auction and bid
/// streams into Delta upsert sinks, killed twice: the state of both restores, and the tables
/// equal the batch queries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn winning_bids_and_their_averages_equal_the_batch_queries_across_sigkills() {
    let tmp = tempfile::tempdir().unwrap();
    let winners = tmp.path().join("winners");
    let averages = tmp.path().join("averages");
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let server = Server::start(&data).await;
    let c = server.client().await;
    let events = 300_000u64;
    c.batch_execute(&format!(
        "{}
         CREATE SINK winners WITH (connector = 'delta', path = '{}', mode = 'upsert');
         CREATE SINK averages WITH (connector = 'delta', path = '{}', mode = 'upsert');
         CREATE PIPELINE q9 WITH (checkpoint_interval = '100ms') AS INSERT INTO winners {Q9};
         CREATE PIPELINE q4 WITH (checkpoint_interval = '100ms') AS INSERT INTO averages {Q4};",
        paced_auctions_and_bids(events, 11),
        winners.display(),
        averages.display()
    ))
    .await
    .unwrap();
    let server = kill_twice(
        server,
        &data,
        "q9",
        events * 49 / 50,
        "winning_bids_and_their_averages_equal_the_batch_queries_across_sigkills",
    )
    .await;
    let c = server.client().await;
    wait_state(&c, "q9", "completed").await;
    wait_state(&c, "q4", "completed").await;
    let want = query_lines(
        &c,
        &format!("SELECT id, bidder, price, CAST(arrow_cast(bid_time, 'Timestamp(Microsecond, None)') AS BIGINT) FROM ({Q9}) q ORDER BY 1, 2, 3, 4"),
    )
    .await;
    assert!(want.len() > 1_000, "{} winning bids", want.len());
    let got = delta_sorted(&winners, &["id", "bidder", "price", "bid_time"]);
    assert_same_rows(&got, &want, "q9 in Delta vs the batch query");
    // The averages as the sink table reads back, against the batch query in the same engine.
    let differences = query_lines(
        &c,
        &format!(
            "WITH want AS ({Q4}) SELECT (SELECT count(*) FROM want) AS categories,
               (SELECT count(*) FROM (SELECT * FROM want EXCEPT ALL SELECT * FROM averages)) AS missing,
               (SELECT count(*) FROM (SELECT * FROM averages EXCEPT ALL SELECT * FROM want)) AS extra"
        ),
    )
    .await;
    let figures: Vec<&str> = differences[0].split(' ').collect();
    assert!(figures[0].parse::<u64>().unwrap() > 3, "{differences:?}");
    assert_eq!(&figures[1..], ["0", "0"], "q4: categories missing, extra");
}

/// Auctions joined with their bids' GROUP BY (count and highest price so far), from paced
/// auction and bid streams into a Delta upsert sink keyed by auction, killed twice: the join of
/// a stream with a GROUP BY's updates restores both, and the table equals the batch query.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auctions_with_their_bids_so_far_equal_the_batch_query_across_sigkills() {
    let tmp = tempfile::tempdir().unwrap();
    let lake = tmp.path().join("lake");
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let server = Server::start(&data).await;
    let c = server.client().await;
    let events = 300_000u64;
    c.batch_execute(&format!(
        "{}
         CREATE SINK lake WITH (connector = 'delta', path = '{}', mode = 'upsert', key = 'id');
         CREATE PIPELINE so_far WITH (checkpoint_interval = '100ms') AS INSERT INTO lake {BIDS_SO_FAR};",
        paced_auctions_and_bids(events, 13),
        lake.display()
    ))
    .await
    .unwrap();
    let server = kill_twice(
        server,
        &data,
        "so_far",
        events * 49 / 50,
        "auctions_with_their_bids_so_far_equal_the_batch_query_across_sigkills",
    )
    .await;
    let c = server.client().await;
    wait_state(&c, "so_far", "completed").await;
    let differences = query_lines(
        &c,
        &format!(
            "WITH want AS ({BIDS_SO_FAR}) SELECT (SELECT count(*) FROM want) AS auctions,
               (SELECT count(*) FROM want WHERE n IS NULL) AS without_bids,
               (SELECT count(*) FROM (SELECT * FROM want EXCEPT ALL SELECT * FROM lake)) AS missing,
               (SELECT count(*) FROM (SELECT * FROM lake EXCEPT ALL SELECT * FROM want)) AS extra"
        ),
    )
    .await;
    let figures: Vec<u64> = differences[0]
        .split(' ')
        .map(|v| v.parse().unwrap())
        .collect();
    assert!(figures[0] > 1_000 && figures[1] > 0, "{differences:?}");
    assert_eq!(&figures[2..], [0, 0], "auctions missing, extra");
}

const BIDS_SO_FAR: &str = "SELECT a.id, a.category, b.n, b.top \
     FROM auctions a LEFT JOIN \
       (SELECT auction, count(*) AS n, max(price) AS top FROM bids GROUP BY auction) b ON a.id = b.auction";

const Q9: &str = "SELECT id, item_name, seller, category, bidder, price, bid_time \
     FROM (SELECT a.id, a.item_name, a.seller, a.category, b.bidder, b.price, b.date_time AS bid_time, \
                  ROW_NUMBER() OVER (PARTITION BY a.id ORDER BY b.price DESC, b.date_time ASC, b.bidder) AS rownum \
           FROM auctions a JOIN bids b ON a.id = b.auction AND b.date_time BETWEEN a.date_time AND a.expires) x \
     WHERE rownum <= 1";

const Q4: &str = "SELECT q.category, avg(q.final) AS avg_final \
     FROM (SELECT max(b.price) AS final, a.category \
           FROM auctions a JOIN bids b ON a.id = b.auction AND b.date_time BETWEEN a.date_time AND a.expires \
           GROUP BY a.id, a.category) q \
     GROUP BY q.category";

/// Nexmark auctions and bids of the same `events` and `seed` (the bids' auctions are the
/// auctions'), paced at 50,000 events/s each, with a 500 ms watermark delay.
fn paced_auctions_and_bids(events: u64, seed: u64) -> String {
    format!(
        "CREATE SOURCE auctions (WATERMARK FOR date_time AS date_time - INTERVAL '500' MILLISECOND)
           WITH (connector = 'nexmark', table = 'auction', events = {events}, rate = 50000, seed = {seed}, batch_size = 2000);
         CREATE SOURCE bids (WATERMARK FOR date_time AS date_time - INTERVAL '500' MILLISECOND)
           WITH (connector = 'nexmark', table = 'bid', events = {events}, rate = 50000, seed = {seed}, batch_size = 2000);"
    )
}
