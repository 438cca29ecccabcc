#!/usr/bin/env bash
# Side-by-side for the stateful Nexmark queries (benches/nexmark_lib.sh: q11 sessions per bidder,
# q12t tumbling counts per bidder, q5h hopping counts per auction, q15, q16 and q17 per-day rollups) over the same JSON-lines
# file of bids: Tributary (a batch pipeline into its blackhole sink; windows close at the end of
# the input, rollups are emitted at each checkpoint), DuckDB running the batch equivalent
# (time_bucket, generate_series for the hops, lag and a running sum for the sessions) and reducing its result so every row is computed,
# and Apache Flink (PyPI apache-flink, local mode, parallelism 2) running the Nexmark suite's Flink SQL
# in streaming mode: the file as a filesystem source (json format) with the suite's 4 s watermark,
# window TVFs (SESSION partitioned by bidder, TUMBLE, HOP; every window fires at the end of the input),
# a plain GROUP BY for the rollups, the suite's table options (mini-batch, split distinct
# aggregates), no checkpoints, a blackhole sink.
# Each runs RUNS times; the table reports the median run (benches/measure.py).
# Flink's JVM start-up and job submission are measured on a one-line file (with q12t), reported
# separately and subtracted in the "net" columns.
#
# Usage: bash benches/compare_stateful.sh   (BIDS=10000000 RUNS=3 by default; QUERIES="q11 q15" for a subset,
# written to benches/results/compare-stateful-q11-q15.md)
# Needs a Java runtime for Flink.
# Output: benches/results/compare-stateful.md (the README includes it).
set -euo pipefail
cd "$(dirname "$0")/.."
BIDS="${BIDS:-10000000}"
RUNS="${RUNS:-3}"
CACHE="${TRIBUTARY_CACHE:-$HOME/.cache/tributary}"
# File sources and sinks read and write under the benchmarks' work directories (README: Security).
export TRIBUTARY_ALLOW_PATH="$CACHE/bench:$PWD"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
# shellcheck source=benches/nexmark_lib.sh
. benches/nexmark_lib.sh
OUT="benches/results/compare-stateful${QUERIES:+-$(echo "$QUERIES" | tr ' ' '-')}.md"
# shellcheck source=benches/compare_lib.sh
. benches/compare_lib.sh
RUN="$WORK/compare-stateful"
mkdir -p "$RUN"

cat > "$RUN/duckdb_stateful.py" <<'PY'
import sys, duckdb
path, q = sys.argv[1], sys.argv[2]
bids = f"""read_json('{path}', format = 'newline_delimited', columns = {{auction: 'BIGINT', bidder: 'BIGINT',
  price: 'BIGINT', channel: 'VARCHAR', url: 'VARCHAR', date_time: 'TIMESTAMP', extra: 'VARCHAR'}})"""
queries = {
  "q11": f"""SELECT bidder, count(*) AS bid_count, min(date_time) AS starttime,
               max(date_time) + INTERVAL 10 SECOND AS endtime FROM (
               SELECT *, sum(starts) OVER (PARTITION BY bidder ORDER BY date_time) AS session FROM (
                 SELECT bidder, date_time,
                   CASE WHEN lag(date_time) OVER (PARTITION BY bidder ORDER BY date_time) + INTERVAL 10 SECOND > date_time
                        THEN 0 ELSE 1 END AS starts
                 FROM {bids}))
             GROUP BY bidder, session""",
  "q12t": f"""SELECT bidder, count(*) AS bid_count, time_bucket(INTERVAL 10 SECOND, date_time) AS window_start
              FROM {bids} GROUP BY ALL""",
  "q5h": f"""SELECT auction, count(*) AS num, starttime FROM (
               SELECT auction, unnest(generate_series(time_bucket(INTERVAL 2 SECOND, date_time) - INTERVAL 8 SECOND,
                                                      time_bucket(INTERVAL 2 SECOND, date_time), INTERVAL 2 SECOND)) AS starttime
               FROM {bids}) GROUP BY ALL""",
  "q15": f"""SELECT strftime(date_time, '%Y-%m-%d') AS day, count(*) AS total_bids,
               count(*) FILTER (WHERE price < 10000) AS rank1_bids,
               count(*) FILTER (WHERE price >= 10000 AND price < 1000000) AS rank2_bids,
               count(*) FILTER (WHERE price >= 1000000) AS rank3_bids,
               count(DISTINCT bidder) AS total_bidders, count(DISTINCT auction) AS total_auctions
             FROM {bids} GROUP BY ALL""",
  "q16": f"""SELECT channel, strftime(date_time, '%Y-%m-%d') AS day, max(strftime(date_time, '%H:%M')) AS minute,
               count(*) AS total_bids,
               count(*) FILTER (WHERE price < 10000) AS rank1_bids,
               count(*) FILTER (WHERE price >= 10000 AND price < 1000000) AS rank2_bids,
               count(*) FILTER (WHERE price >= 1000000) AS rank3_bids,
               count(DISTINCT bidder) AS total_bidders,
               count(DISTINCT bidder) FILTER (WHERE price < 10000) AS rank1_bidders,
               count(DISTINCT bidder) FILTER (WHERE price >= 10000 AND price < 1000000) AS rank2_bidders,
               count(DISTINCT bidder) FILTER (WHERE price >= 1000000) AS rank3_bidders,
               count(DISTINCT auction) AS total_auctions,
               count(DISTINCT auction) FILTER (WHERE price < 10000) AS rank1_auctions,
               count(DISTINCT auction) FILTER (WHERE price >= 10000 AND price < 1000000) AS rank2_auctions,
               count(DISTINCT auction) FILTER (WHERE price >= 1000000) AS rank3_auctions
             FROM {bids} GROUP BY ALL""",
  "q17": f"""SELECT auction, strftime(date_time, '%Y-%m-%d') AS day, count(*) AS total_bids,
               count(*) FILTER (WHERE price < 10000) AS rank1_bids, min(price) AS min_price,
               max(price) AS max_price, avg(price) AS avg_price, sum(price) AS sum_price
             FROM {bids} GROUP BY ALL""",
}
print(duckdb.connect().sql(f"SELECT count(*) FROM ({queries[q]})").fetchall(), file=sys.stderr)
PY

# The same queries in Flink SQL, as the Nexmark suite writes them (window TVFs; DATE_FORMAT for the day).
cat > "$RUN/flink_stateful.py" <<'PY'
import sys
from pyflink.table import EnvironmentSettings, Schema, TableDescriptor, TableEnvironment
path, q, parallelism = sys.argv[1], sys.argv[2], sys.argv[3]
env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
config = env.get_config()
config.set("parallelism.default", parallelism)
# The Nexmark suite's table options (nexmark-flink conf): mini-batches and split distinct aggregates.
config.set("table.exec.mini-batch.enabled", "true")
config.set("table.exec.mini-batch.allow-latency", "2s")
config.set("table.exec.mini-batch.size", "50000")
config.set("table.optimizer.distinct-agg.split.enabled", "true")
env.execute_sql(f"""CREATE TABLE bid (auction BIGINT, bidder BIGINT, price BIGINT, channel STRING,
  url STRING, date_time TIMESTAMP(3), extra STRING, WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
  WITH ('connector' = 'filesystem', 'path' = 'file://{path}', 'format' = 'json',
        'json.timestamp-format.standard' = 'ISO-8601')""")
queries = {
  "q11": """SELECT bidder, count(*) AS bid_count, window_start AS starttime, window_end AS endtime
            FROM TABLE(SESSION(TABLE bid PARTITION BY bidder, DESCRIPTOR(date_time), INTERVAL '10' SECOND))
            GROUP BY bidder, window_start, window_end""",
  "q12t": """SELECT bidder, count(*) AS bid_count, window_start, window_end
             FROM TABLE(TUMBLE(TABLE bid, DESCRIPTOR(date_time), INTERVAL '10' SECOND))
             GROUP BY bidder, window_start, window_end""",
  "q5h": """SELECT auction, count(*) AS num, window_start AS starttime
            FROM TABLE(HOP(TABLE bid, DESCRIPTOR(date_time), INTERVAL '2' SECOND, INTERVAL '10' SECOND))
            GROUP BY auction, window_start, window_end""",
  "q15": """SELECT DATE_FORMAT(date_time, 'yyyy-MM-dd') AS `day`, count(*) AS total_bids,
              count(*) FILTER (WHERE price < 10000) AS rank1_bids,
              count(*) FILTER (WHERE price >= 10000 AND price < 1000000) AS rank2_bids,
              count(*) FILTER (WHERE price >= 1000000) AS rank3_bids,
              count(DISTINCT bidder) AS total_bidders, count(DISTINCT auction) AS total_auctions
            FROM bid GROUP BY DATE_FORMAT(date_time, 'yyyy-MM-dd')""",
  "q16": """SELECT channel, DATE_FORMAT(date_time, 'yyyy-MM-dd') AS `day`, max(DATE_FORMAT(date_time, 'HH:mm')) AS `minute`,
              count(*) AS total_bids,
              count(*) FILTER (WHERE price < 10000) AS rank1_bids,
              count(*) FILTER (WHERE price >= 10000 AND price < 1000000) AS rank2_bids,
              count(*) FILTER (WHERE price >= 1000000) AS rank3_bids,
              count(DISTINCT bidder) AS total_bidders,
              count(DISTINCT bidder) FILTER (WHERE price < 10000) AS rank1_bidders,
              count(DISTINCT bidder) FILTER (WHERE price >= 10000 AND price < 1000000) AS rank2_bidders,
              count(DISTINCT bidder) FILTER (WHERE price >= 1000000) AS rank3_bidders,
              count(DISTINCT auction) AS total_auctions,
              count(DISTINCT auction) FILTER (WHERE price < 10000) AS rank1_auctions,
              count(DISTINCT auction) FILTER (WHERE price >= 10000 AND price < 1000000) AS rank2_auctions,
              count(DISTINCT auction) FILTER (WHERE price >= 1000000) AS rank3_auctions
            FROM bid GROUP BY channel, DATE_FORMAT(date_time, 'yyyy-MM-dd')""",
  "q17": """SELECT auction, DATE_FORMAT(date_time, 'yyyy-MM-dd') AS `day`, count(*) AS total_bids,
              count(*) FILTER (WHERE price < 10000) AS rank1_bids, min(price) AS min_price,
              max(price) AS max_price, avg(price) AS avg_price, sum(price) AS sum_price
            FROM bid GROUP BY auction, DATE_FORMAT(date_time, 'yyyy-MM-dd')""",
}
result = env.sql_query(queries[q])
env.create_temporary_table("out", TableDescriptor.for_connector("blackhole")
                           .schema(Schema.new_builder().from_row_data_type(result.get_schema().to_row_data_type()).build()).build())
result.execute_insert("out").wait()
PY

# Flink's fixed cost: the median of RUNS runs of q12t over a one-line file.
e=""
for r in $(seq "$RUNS"); do
  e+="$(measure "$VENV/bin/python" "$RUN/flink_stateful.py" "$WORK/one.jsonl" q12t 2)"$'\n'
done
FLINK_EMPTY=$(printf '%s' "$e" | median)
echo "Flink fixed cost: $FLINK_EMPTY" >&2

{
  echo "Stateful queries over one JSON-lines file of $ROWS Nexmark bids on $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)); median of $RUNS runs."
  echo "Reproduce: \`BIDS=$BIDS RUNS=$RUNS bash benches/compare_stateful.sh\` (Flink $FLINK_VERSION and DuckDB $DUCKDB_VERSION from PyPI, $(java -version 2>&1 | head -1 | tr -d '"'))."
  echo
  echo "| query | engine | wall s | CPU s | events/s | events per CPU-s | cores used | peak RSS MB | net events/s | net events per CPU-s |"
  echo "|---|---|---|---|---|---|---|---|---|---|"
} > "$OUT.tmp"
for q in ${QUERIES:-q11 q12t q5h q15 q16 q17}; do
  pipeline_sql "$q" json blackhole "$RUN" > "$RUN/$q.sql"
  t="" d="" f=""
  for r in $(seq "$RUNS"); do
    rm -rf "$RUN/data"
    t+="$(measure "$BIN" run "$RUN/$q.sql" --data-dir "$RUN/data" --quiet)"$'\n'
    d+="$(measure "$VENV/bin/python" "$RUN/duckdb_stateful.py" "$FILE" "$q")"$'\n'
    f+="$(measure "$VENV/bin/python" "$RUN/flink_stateful.py" "$FILE" "$q" 2)"$'\n'
  done
  row "$q" "Tributary (release)" "$(printf '%s' "$t" | median)" >> "$OUT.tmp"
  row "$q" "DuckDB $DUCKDB_VERSION" "$(printf '%s' "$d" | median)" >> "$OUT.tmp"
  row "$q" "Flink $FLINK_VERSION, parallelism 2" "$(printf '%s' "$f" | median)" "$FLINK_EMPTY" >> "$OUT.tmp"
  tail -3 "$OUT.tmp" >&2
done
{
  echo
  echo "Flink's fixed cost (JVM start, local cluster, job submission; q12t over a one-line file): $(echo "$FLINK_EMPTY" | awk '{printf "%.1f s wall, %.1f CPU-s", $1, $2}'). The net columns subtract it; for Tributary and DuckDB (start-up well under a second) they equal the whole run."
} >> "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
cat "$OUT"
