#!/usr/bin/env bash
# Side-by-side for the Nexmark join queries over JSON-lines files of the same events' persons,
# auctions and bids: q3 (persons x auctions, a regular join), q5 (the auctions with the most
# bids per hopping window), q7 (bids x their 10 s windows'
# highest price), q8 (persons x sellers of the same 10 s window), q20 (bids x auctions), q4 (the
# average winning price per category: a GROUP BY over a GROUP BY of auctions x bids) and q9 (each
# auction's winning bid: ROW_NUMBER() kept to the first row).
# Tributary runs a batch pipeline into its blackhole sink; DuckDB runs the batch equivalent
# (time_bucket for the windows) and counts its result so every row is computed; Apache Flink
# (PyPI apache-flink, local mode, parallelism 2) runs the Nexmark suite's Flink SQL in
# streaming mode over the files as filesystem sources (json) with the suite's 4 s watermark,
# into a blackhole. Events are the rows of the tables a query reads. Each runs RUNS times; the
# table reports the median run (benches/measure.py), and Flink's fixed cost (JVM start, job
# submission; q3 over one-line files) is subtracted in the "net" columns.
#
# Usage: bash benches/compare_joins.sh   (EVENTS=10000000 RUNS=3 by default; QUERIES="q3 q20" for a subset)
# Needs a Java runtime for Flink.
# Output: benches/results/compare-joins.md (the README includes it).
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS="${EVENTS:-10000000}"
RUNS="${RUNS:-3}"
CACHE="${TRIBUTARY_CACHE:-$HOME/.cache/tributary}"
# File sources and sinks read and write under the benchmarks' work directories (README: Security).
export TRIBUTARY_ALLOW_PATH="$CACHE/bench:$PWD"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
WORK="$CACHE/bench/joins-$EVENTS"
RUN="$WORK/run"
OUT="benches/results/compare-joins${QUERIES:+-$(echo "$QUERIES" | tr ' ' '-')}.md"
mkdir -p "$RUN" benches/results
# shellcheck source=benches/compare_lib.sh
OWN_INPUTS=1 . benches/compare_lib.sh

# The three tables of the same events, written once: nexmark -> Parquet (Tributary), Parquet ->
# JSON lines with ISO timestamps (pyarrow). One-line files measure Flink's fixed cost.
if [ ! -s "$WORK/bid.jsonl" ]; then
  rm -rf "$WORK/gen" "$WORK/parquet"
  for t in person auction bid; do
    cat > "$WORK/gen-$t.sql" <<SQL
CREATE SOURCE $t WITH (connector = 'nexmark', table = '$t', events = $EVENTS, seed = 1);
CREATE SINK pq WITH (connector = 'parquet', path = '$WORK/parquet/$t');
CREATE PIPELINE gen AS INSERT INTO pq SELECT * FROM $t;
SQL
    "$BIN" run "$WORK/gen-$t.sql" --data-dir "$WORK/gen/$t" --quiet >/dev/null
  done
  "$VENV/bin/python" - "$WORK" <<'PY'
import sys, json, pyarrow as pa, pyarrow.dataset as ds, pyarrow.compute as pc
work = sys.argv[1]
for table in ["person", "auction", "bid"]:
    t = ds.dataset(f"{work}/parquet/{table}", format="parquet").to_table()
    for i, field in enumerate(t.schema):
        if pa.types.is_timestamp(field.type):
            t = t.set_column(i, field.name, pc.strftime(t[field.name], format="%Y-%m-%dT%H:%M:%S"))
    with open(f"{work}/{table}.jsonl", "w") as f:
        for b in t.to_batches(max_chunksize=100_000):
            cols = b.to_pydict()
            for row in zip(*cols.values()):
                f.write(json.dumps(dict(zip(cols, row)), separators=(",", ":")) + "\n")
    with open(f"{work}/{table}.jsonl") as f, open(f"{work}/one-{table}.jsonl", "w") as one:
        one.write(f.readline())
PY
fi
rows() { wc -l < "$WORK/$1.jsonl"; }
declare -A READS=([q3]="person auction" [q4]="auction bid" [q5]="bid" [q7]="bid" [q8]="person auction" [q9]="auction bid" [q20]="bid auction")

# Tributary: the sources as file sources with the suite's watermark.
tributary_sql() { # query dir-prefix ("" or "one-") -> the script `tributary run` takes
  local wm="WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND" p="$WORK/$2"
  cat <<SQL
CREATE SOURCE person (id BIGINT, name TEXT, email_address TEXT, credit_card TEXT, city TEXT, state TEXT, date_time TIMESTAMP(3), extra TEXT, $wm) WITH (connector = 'file', path = '${p}person.jsonl', format = 'json');
CREATE SOURCE auction (id BIGINT, item_name TEXT, description TEXT, initial_bid BIGINT, reserve BIGINT, date_time TIMESTAMP(3), expires TIMESTAMP(3), seller BIGINT, category BIGINT, extra TEXT, $wm) WITH (connector = 'file', path = '${p}auction.jsonl', format = 'json');
CREATE SOURCE bid (auction BIGINT, bidder BIGINT, price BIGINT, channel TEXT, url TEXT, date_time TIMESTAMP(3), extra TEXT, $wm) WITH (connector = 'file', path = '${p}bid.jsonl', format = 'json');
CREATE SINK out WITH (connector = 'blackhole');
SQL
  case "$1" in
    q3) echo "CREATE PIPELINE p AS INSERT INTO out SELECT p.name, p.city, p.state, a.id FROM auction a JOIN person p ON a.seller = p.id WHERE a.category = 10 AND (p.state = 'or' OR p.state = 'id' OR p.state = 'ca');" ;;
    q5) echo "CREATE PIPELINE p AS INSERT INTO out SELECT auction_bids.auction, auction_bids.num FROM (SELECT auction, count(*) AS num, window_start AS starttime, window_end AS endtime FROM HOP(bid, date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND) GROUP BY auction, window_start, window_end) AS auction_bids JOIN (SELECT max(count_bids.num) AS maxn, count_bids.starttime, count_bids.endtime FROM (SELECT count(*) AS num, window_start AS starttime, window_end AS endtime FROM HOP(bid, date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND) GROUP BY auction, window_start, window_end) AS count_bids GROUP BY count_bids.starttime, count_bids.endtime) AS max_bids ON auction_bids.starttime = max_bids.starttime AND auction_bids.endtime = max_bids.endtime AND auction_bids.num >= max_bids.maxn;" ;;
    q7) echo "CREATE PIPELINE p AS INSERT INTO out SELECT b.auction, b.price, b.bidder, b.date_time, b.extra FROM bid b JOIN (SELECT max(price) AS maxprice, window_end AS date_time FROM TUMBLE(bid, date_time, INTERVAL '10' SECOND) GROUP BY window_start, window_end) b1 ON b.price = b1.maxprice WHERE b.date_time BETWEEN b1.date_time - INTERVAL '10' SECOND AND b1.date_time;" ;;
    q8) echo "CREATE PIPELINE p AS INSERT INTO out SELECT p.id, p.name, p.starttime FROM (SELECT id, name, window_start AS starttime, window_end AS endtime FROM TUMBLE(person, date_time, INTERVAL '10' SECOND) GROUP BY id, name, window_start, window_end) p JOIN (SELECT seller, window_start AS starttime, window_end AS endtime FROM TUMBLE(auction, date_time, INTERVAL '10' SECOND) GROUP BY seller, window_start, window_end) a ON p.id = a.seller AND p.starttime = a.starttime AND p.endtime = a.endtime;" ;;
    q4) echo "CREATE PIPELINE p AS INSERT INTO out SELECT q.category, avg(q.final) AS avg_final FROM (SELECT max(b.price) AS final, a.category FROM auction a JOIN bid b ON a.id = b.auction AND b.date_time BETWEEN a.date_time AND a.expires GROUP BY a.id, a.category) q GROUP BY q.category;" ;;
    q9) echo "CREATE PIPELINE p AS INSERT INTO out SELECT id, item_name, description, initial_bid, reserve, date_time, expires, seller, category, extra, auction, bidder, price, bid_date_time, bid_extra FROM (SELECT a.*, b.auction, b.bidder, b.price, b.date_time AS bid_date_time, b.extra AS bid_extra, ROW_NUMBER() OVER (PARTITION BY a.id ORDER BY b.price DESC, b.date_time ASC) AS rownum FROM auction a JOIN bid b ON a.id = b.auction AND b.date_time BETWEEN a.date_time AND a.expires) x WHERE rownum <= 1;" ;;
    q20) echo "CREATE PIPELINE p AS INSERT INTO out SELECT auction, bidder, price, channel, url, b.date_time AS bid_time, b.extra AS bid_extra, item_name, description, initial_bid, reserve, a.date_time AS auction_time, expires, seller, category, a.extra AS auction_extra FROM bid b JOIN auction a ON b.auction = a.id WHERE a.category = 10;" ;;
  esac
}

cat > "$RUN/duckdb_joins.py" <<'PY'
import sys, duckdb
work, q = sys.argv[1], sys.argv[2]
ts = "'TIMESTAMP'"
person = f"read_json('{work}/person.jsonl', format = 'newline_delimited', columns = {{id: 'BIGINT', name: 'VARCHAR', email_address: 'VARCHAR', credit_card: 'VARCHAR', city: 'VARCHAR', state: 'VARCHAR', date_time: {ts}, extra: 'VARCHAR'}})"
auction = f"read_json('{work}/auction.jsonl', format = 'newline_delimited', columns = {{id: 'BIGINT', item_name: 'VARCHAR', description: 'VARCHAR', initial_bid: 'BIGINT', reserve: 'BIGINT', date_time: {ts}, expires: {ts}, seller: 'BIGINT', category: 'BIGINT', extra: 'VARCHAR'}})"
bid = f"read_json('{work}/bid.jsonl', format = 'newline_delimited', columns = {{auction: 'BIGINT', bidder: 'BIGINT', price: 'BIGINT', channel: 'VARCHAR', url: 'VARCHAR', date_time: {ts}, extra: 'VARCHAR'}})"
queries = {
  "q3": f"""SELECT p.name, p.city, p.state, a.id FROM {auction} a JOIN {person} p ON a.seller = p.id
            WHERE a.category = 10 AND (p.state = 'or' OR p.state = 'id' OR p.state = 'ca')""",
  "q5": f"""WITH counts AS (
              SELECT auction, count(*) AS num, starttime FROM (
                SELECT auction, unnest(generate_series(time_bucket(INTERVAL 2 SECOND, date_time) - INTERVAL 8 SECOND,
                                                       time_bucket(INTERVAL 2 SECOND, date_time), INTERVAL 2 SECOND)) AS starttime
                FROM {bid}) GROUP BY ALL)
            SELECT c.auction, c.num FROM counts c
            JOIN (SELECT max(num) AS maxn, starttime FROM counts GROUP BY starttime) m
              ON c.starttime = m.starttime AND c.num >= m.maxn""",
  "q7": f"""SELECT b.auction, b.price, b.bidder, b.date_time, b.extra FROM {bid} b JOIN (
              SELECT max(price) AS maxprice, time_bucket(INTERVAL 10 SECOND, date_time) + INTERVAL 10 SECOND AS date_time
              FROM {bid} GROUP BY ALL) b1
            ON b.price = b1.maxprice
            WHERE b.date_time BETWEEN b1.date_time - INTERVAL 10 SECOND AND b1.date_time""",
  "q8": f"""SELECT p.id, p.name, p.starttime FROM (
              SELECT id, name, time_bucket(INTERVAL 10 SECOND, date_time) AS starttime FROM {person} GROUP BY ALL) p
            JOIN (SELECT seller, time_bucket(INTERVAL 10 SECOND, date_time) AS starttime FROM {auction} GROUP BY ALL) a
            ON p.id = a.seller AND p.starttime = a.starttime""",
  "q4": f"""SELECT q.category, avg(q.final) FROM (
              SELECT max(b.price) AS final, a.category FROM {auction} a JOIN {bid} b
                ON a.id = b.auction AND b.date_time BETWEEN a.date_time AND a.expires
              GROUP BY a.id, a.category) q GROUP BY q.category""",
  "q9": f"""SELECT * EXCLUDE (rownum) FROM (
              SELECT a.*, b.auction, b.bidder, b.price, b.date_time AS bid_date_time, b.extra AS bid_extra,
                     row_number() OVER (PARTITION BY a.id ORDER BY b.price DESC, b.date_time ASC) AS rownum
              FROM {auction} a JOIN {bid} b ON a.id = b.auction AND b.date_time BETWEEN a.date_time AND a.expires)
            WHERE rownum <= 1""",
  "q20": f"""SELECT auction, bidder, price, channel, url, b.date_time, b.extra, item_name, description,
               initial_bid, reserve, a.date_time, expires, seller, category, a.extra
             FROM {bid} b JOIN {auction} a ON b.auction = a.id WHERE a.category = 10""",
}
print(duckdb.connect().sql(f"SELECT count(*) FROM ({queries[q]})").fetchall(), file=sys.stderr)
PY

# The Nexmark suite's Flink SQL for these queries (window TVFs), over the files.
cat > "$RUN/flink_joins.py" <<'PY'
import sys
from pyflink.table import EnvironmentSettings, Schema, TableDescriptor, TableEnvironment
work, prefix, q, parallelism = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
config = env.get_config()
config.set("parallelism.default", parallelism)
config.set("table.exec.mini-batch.enabled", "true")
config.set("table.exec.mini-batch.allow-latency", "2s")
config.set("table.exec.mini-batch.size", "50000")
wm = "WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND"
opts = lambda t: f"""WITH ('connector' = 'filesystem', 'path' = 'file://{work}/{prefix}{t}.jsonl', 'format' = 'json',
  'json.timestamp-format.standard' = 'ISO-8601')"""
env.execute_sql(f"""CREATE TABLE person (id BIGINT, name STRING, email_address STRING, credit_card STRING, city STRING,
  state STRING, date_time TIMESTAMP(3), extra STRING, {wm}) {opts('person')}""")
env.execute_sql(f"""CREATE TABLE auction (id BIGINT, item_name STRING, description STRING, initial_bid BIGINT,
  reserve BIGINT, date_time TIMESTAMP(3), expires TIMESTAMP(3), seller BIGINT, category BIGINT, extra STRING, {wm}) {opts('auction')}""")
env.execute_sql(f"""CREATE TABLE bid (auction BIGINT, bidder BIGINT, price BIGINT, channel STRING, url STRING,
  date_time TIMESTAMP(3), extra STRING, {wm}) {opts('bid')}""")
queries = {
  "q3": """SELECT P.name, P.city, P.state, A.id FROM auction AS A INNER JOIN person AS P ON A.seller = P.id
           WHERE A.category = 10 AND (P.state = 'or' OR P.state = 'id' OR P.state = 'ca')""",
  "q5": """SELECT AuctionBids.auction, AuctionBids.num FROM (
             SELECT auction, count(*) AS num, window_start AS starttime, window_end AS endtime
             FROM TABLE(HOP(TABLE bid, DESCRIPTOR(date_time), INTERVAL '2' SECOND, INTERVAL '10' SECOND))
             GROUP BY auction, window_start, window_end) AS AuctionBids
           JOIN (SELECT max(CountBids.num) AS maxn, CountBids.starttime, CountBids.endtime FROM (
               SELECT count(*) AS num, window_start AS starttime, window_end AS endtime
               FROM TABLE(HOP(TABLE bid, DESCRIPTOR(date_time), INTERVAL '2' SECOND, INTERVAL '10' SECOND))
               GROUP BY auction, window_start, window_end) AS CountBids
             GROUP BY CountBids.starttime, CountBids.endtime) AS MaxBids
           ON AuctionBids.starttime = MaxBids.starttime AND AuctionBids.endtime = MaxBids.endtime
              AND AuctionBids.num >= MaxBids.maxn""",
  "q7": """SELECT B.auction, B.price, B.bidder, B.date_time, B.extra FROM bid B JOIN (
             SELECT MAX(price) AS maxprice, window_end AS date_time
             FROM TABLE(TUMBLE(TABLE bid, DESCRIPTOR(date_time), INTERVAL '10' SECOND))
             GROUP BY window_start, window_end) B1
           ON B.price = B1.maxprice
           WHERE B.date_time BETWEEN B1.date_time - INTERVAL '10' SECOND AND B1.date_time""",
  "q8": """SELECT P.id, P.name, P.starttime FROM (
             SELECT id, name, window_start AS starttime, window_end AS endtime
             FROM TABLE(TUMBLE(TABLE person, DESCRIPTOR(date_time), INTERVAL '10' SECOND))
             GROUP BY id, name, window_start, window_end) P
           JOIN (SELECT seller, window_start AS starttime, window_end AS endtime
             FROM TABLE(TUMBLE(TABLE auction, DESCRIPTOR(date_time), INTERVAL '10' SECOND))
             GROUP BY seller, window_start, window_end) A
           ON P.id = A.seller AND P.starttime = A.starttime AND P.endtime = A.endtime""",
  "q4": """SELECT Q.category, AVG(Q.final) FROM (
             SELECT MAX(B.price) AS final, A.category FROM auction A, bid B
             WHERE A.id = B.auction AND B.date_time BETWEEN A.date_time AND A.expires
             GROUP BY A.id, A.category) Q
           GROUP BY Q.category""",
  "q9": """SELECT id, item_name, description, initial_bid, reserve, date_time, expires, seller, category, extra,
             auction, bidder, price, bid_date_time, bid_extra FROM (
             SELECT A.*, B.auction, B.bidder, B.price, B.date_time AS bid_date_time, B.extra AS bid_extra,
               ROW_NUMBER() OVER (PARTITION BY A.id ORDER BY B.price DESC, B.date_time ASC) AS rownum
             FROM auction A, bid B
             WHERE A.id = B.auction AND B.date_time BETWEEN A.date_time AND A.expires)
           WHERE rownum <= 1""",
  "q20": """SELECT auction, bidder, price, channel, url, B.date_time AS bid_time, B.extra AS bid_extra, item_name,
              description, initial_bid, reserve, A.date_time AS auction_time, expires, seller, category, A.extra AS auction_extra
            FROM bid AS B INNER JOIN auction AS A ON B.auction = A.id WHERE A.category = 10""",
}
result = env.sql_query(queries[q])
env.create_temporary_table("out", TableDescriptor.for_connector("blackhole")
                           .schema(Schema.new_builder().from_row_data_type(result.get_schema().to_row_data_type()).build()).build())
result.execute_insert("out").wait()
PY

e=""
for r in $(seq "$RUNS"); do
  e+="$(measure "$VENV/bin/python" "$RUN/flink_joins.py" "$WORK" one- q3 2)"$'\n'
done
FLINK_EMPTY=$(printf '%s' "$e" | median)
echo "Flink fixed cost: $FLINK_EMPTY" >&2

{
  echo "Nexmark joins over JSON-lines files of $EVENTS events' persons, auctions and bids ($(rows person), $(rows auction) and $(rows bid) rows) on $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)); events are the rows of the tables a query reads; median of $RUNS runs."
  echo "Reproduce: \`EVENTS=$EVENTS RUNS=$RUNS bash benches/compare_joins.sh\` (Flink $FLINK_VERSION and DuckDB $DUCKDB_VERSION from PyPI, $(java -version 2>&1 | head -1 | tr -d '"'))."
  echo
  echo "| query (events) | engine | wall s | CPU s | events/s | events per CPU-s | cores used | peak RSS MB | net events/s | net events per CPU-s |"
  echo "|---|---|---|---|---|---|---|---|---|---|"
} > "$OUT.tmp"
for q in ${QUERIES:-q3 q4 q5 q7 q8 q9 q20}; do
  events=0
  for t in ${READS[$q]}; do events=$((events + $(rows "$t"))); done
  tributary_sql "$q" "" > "$RUN/$q.sql"
  t="" d="" f=""
  for r in $(seq "$RUNS"); do
    rm -rf "$RUN/data"
    t+="$(measure "$BIN" run "$RUN/$q.sql" --data-dir "$RUN/data" --quiet)"$'\n'
    d+="$(measure "$VENV/bin/python" "$RUN/duckdb_joins.py" "$WORK" "$q")"$'\n'
    f+="$(measure "$VENV/bin/python" "$RUN/flink_joins.py" "$WORK" "" "$q" 2)"$'\n'
  done
  ROWS=$events
  label="$q ($(printf "%'d" "$events"))"
  row "$label" "Tributary (release)" "$(printf '%s' "$t" | median)" >> "$OUT.tmp"
  row "$label" "DuckDB $DUCKDB_VERSION" "$(printf '%s' "$d" | median)" >> "$OUT.tmp"
  row "$label" "Flink $FLINK_VERSION, parallelism 2" "$(printf '%s' "$f" | median)" "$FLINK_EMPTY" >> "$OUT.tmp"
  tail -3 "$OUT.tmp" >&2
done
{
  echo
  echo "Flink's fixed cost (JVM start, local cluster, job submission; q3 over one-line files): $(echo "$FLINK_EMPTY" | awk '{printf "%.1f s wall, %.1f CPU-s", $1, $2}'). The net columns subtract it; for Tributary and DuckDB (start-up well under a second) they equal the whole run."
} >> "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
cat "$OUT"
