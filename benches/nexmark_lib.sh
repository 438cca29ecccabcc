# Shared by benches/nexmark.sh and benches/profile.sh (sourced, not run): the bench file
# locations and the Nexmark pipelines as SQL. Expects BIDS and CACHE to be set.
WORK="$CACHE/bench/nexmark-$BIDS"
# Global events such that the bid table holds BIDS rows (46 bids in every 50 events).
events_for_bids() { echo $(( ($1 / 46) * 50 + $1 % 46 + 4 )); }
EVENTS=$(events_for_bids "$BIDS")
SEED=1

source_sql() { # kind -> CREATE SOURCE statement for table "bid" (with the watermark the Nexmark suite uses)
  local wm="WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND"
  local cols="auction BIGINT, bidder BIGINT, price BIGINT, channel TEXT, url TEXT, date_time TIMESTAMP(3), extra TEXT, $wm"
  case "$1" in
    nexmark) echo "CREATE SOURCE bid ($wm) WITH (connector = 'nexmark', table = 'bid', events = $EVENTS, seed = $SEED);" ;;
    json) echo "CREATE SOURCE bid ($cols) WITH (connector = 'file', path = '$WORK/bids.jsonl', format = 'json');" ;;
    csv) echo "CREATE SOURCE bid ($cols) WITH (connector = 'file', path = '$WORK/bids.csv', format = 'csv');" ;;
  esac
}
query_sql() {
  case "$1" in
    q0) echo "SELECT auction, bidder, price, date_time, extra FROM bid" ;;
    q1) echo "SELECT auction, bidder, 0.908 * price AS price, date_time, extra FROM bid" ;;
    q2) echo "SELECT auction, price FROM bid WHERE auction % 123 = 0" ;;
    all) echo "SELECT * FROM bid" ;;
    # Sessions per bidder: bids less than 10 s apart (q11).
    q11) echo "SELECT bidder, count(*) AS bid_count, window_start AS starttime, window_end AS endtime FROM SESSION(bid, date_time, INTERVAL '10' SECOND) GROUP BY bidder, window_start, window_end" ;;
    # Tumbling counts per bidder (q12 in event time).
    q12t) echo "SELECT bidder, count(*) AS bid_count, window_start, window_end FROM TUMBLE(bid, date_time, INTERVAL '10' SECOND) GROUP BY bidder, window_start, window_end" ;;
    # Bids per auction in 10 s windows every 2 s: where q5 starts.
    q5h) echo "SELECT auction, count(*) AS num, window_start AS starttime FROM HOP(bid, date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND) GROUP BY auction, window_start, window_end" ;;
    # Per-day rollups, updated at each checkpoint (q15 without its per-rank distinct counts, q17).
    q15) echo "SELECT to_char(date_time, '%Y-%m-%d') AS day, count(*) AS total_bids, count(*) FILTER (WHERE price < 10000) AS rank1_bids, count(*) FILTER (WHERE price >= 10000 AND price < 1000000) AS rank2_bids, count(*) FILTER (WHERE price >= 1000000) AS rank3_bids, count(DISTINCT bidder) AS total_bidders, count(DISTINCT auction) AS total_auctions FROM bid GROUP BY to_char(date_time, '%Y-%m-%d')" ;;
    # Per channel and day (q16): distinct bidders and auctions in each price rank.
    q16) echo "SELECT channel, to_char(date_time, '%Y-%m-%d') AS day, max(to_char(date_time, '%H:%M')) AS minute, count(*) AS total_bids, count(*) FILTER (WHERE price < 10000) AS rank1_bids, count(*) FILTER (WHERE price >= 10000 AND price < 1000000) AS rank2_bids, count(*) FILTER (WHERE price >= 1000000) AS rank3_bids, count(DISTINCT bidder) AS total_bidders, count(DISTINCT bidder) FILTER (WHERE price < 10000) AS rank1_bidders, count(DISTINCT bidder) FILTER (WHERE price >= 10000 AND price < 1000000) AS rank2_bidders, count(DISTINCT bidder) FILTER (WHERE price >= 1000000) AS rank3_bidders, count(DISTINCT auction) AS total_auctions, count(DISTINCT auction) FILTER (WHERE price < 10000) AS rank1_auctions, count(DISTINCT auction) FILTER (WHERE price >= 10000 AND price < 1000000) AS rank2_auctions, count(DISTINCT auction) FILTER (WHERE price >= 1000000) AS rank3_auctions FROM bid GROUP BY channel, to_char(date_time, '%Y-%m-%d')" ;;
    q17) echo "SELECT auction, to_char(date_time, '%Y-%m-%d') AS day, count(*) AS total_bids, count(*) FILTER (WHERE price < 10000) AS rank1_bids, min(price) AS min_price, max(price) AS max_price, avg(price) AS avg_price, sum(price) AS sum_price FROM bid GROUP BY auction, to_char(date_time, '%Y-%m-%d')" ;;
  esac
}
pipeline_sql() { # query source sink run-dir -> the script `tributary run` takes
  local sink_sql
  local mode="append"
  case "$1" in q15|q16|q17) mode="upsert" ;; esac # updating rollups need a sink that applies rows by key
  if [ "$3" = delta ]; then sink_sql="CREATE SINK out WITH (connector = 'delta', path = '$4/lake', mode = '$mode');"
  else sink_sql="CREATE SINK out WITH (connector = 'blackhole');"; fi
  printf '%s\n%s\nCREATE PIPELINE p WITH (checkpoint_interval = %s) AS INSERT INTO out %s;\n' \
    "$(source_sql "$2")" "$sink_sql" "'10s'" "$(query_sql "$1")"
}
