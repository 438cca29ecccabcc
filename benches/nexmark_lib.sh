# Shared by benches/nexmark.sh and benches/profile.sh (sourced, not run): the bench file
# locations and the Nexmark pipelines as SQL. Expects BIDS and CACHE to be set.
WORK="$CACHE/bench/nexmark-$BIDS"
# Global events such that the bid table holds BIDS rows (46 bids in every 50 events).
events_for_bids() { echo $(( ($1 / 46) * 50 + $1 % 46 + 4 )); }
EVENTS=$(events_for_bids "$BIDS")
SEED=1

source_sql() { # kind -> CREATE SOURCE statement for table "bid"
  local cols="auction BIGINT, bidder BIGINT, price BIGINT, channel TEXT, url TEXT, date_time TIMESTAMP(3), extra TEXT"
  case "$1" in
    nexmark) echo "CREATE SOURCE bid WITH (connector = 'nexmark', table = 'bid', events = $EVENTS, seed = $SEED);" ;;
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
  esac
}
pipeline_sql() { # query source sink run-dir -> the script `tributary run` takes
  local sink_sql
  if [ "$3" = delta ]; then sink_sql="CREATE SINK out WITH (connector = 'delta', path = '$4/lake');"
  else sink_sql="CREATE SINK out WITH (connector = 'blackhole');"; fi
  printf '%s\n%s\nCREATE PIPELINE p WITH (checkpoint_interval = %s) AS INSERT INTO out %s;\n' \
    "$(source_sql "$2")" "$sink_sql" "'10s'" "$(query_sql "$1")"
}
