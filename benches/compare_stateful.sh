#!/usr/bin/env bash
# Side-by-side for the stateful Nexmark queries (benches/nexmark_lib.sh: q11 sessions per bidder,
# q12t tumbling counts per bidder, q5h hopping counts per auction, q15 and q17 per-day rollups) over the same JSON-lines
# file of bids: Tributary (a batch pipeline into its blackhole sink; windows close at the end of
# the input, rollups are emitted at each checkpoint) beside DuckDB running the batch equivalent
# (time_bucket, generate_series for the hops, lag and a running sum for the sessions) and reducing its result so every row is computed.
# Each runs RUNS times; the table reports the median run (benches/measure.py).
#
# Usage: bash benches/compare_stateful.sh   (BIDS=10000000 RUNS=3 by default)
# Output: benches/results/compare-stateful.md (the README includes it).
set -euo pipefail
cd "$(dirname "$0")/.."
BIDS="${BIDS:-10000000}"
RUNS="${RUNS:-3}"
CACHE="${TRIBUTARY_CACHE:-$HOME/.cache/tributary}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
# shellcheck source=benches/nexmark_lib.sh
. benches/nexmark_lib.sh
OUT="benches/results/compare-stateful.md"
DUCKDB_VERSION=2.0.1
VENV="$CACHE/duckdb-venv"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$VENV/.pkgs" 2>/dev/null)" != "$DUCKDB_VERSION" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "duckdb==$DUCKDB_VERSION"
  echo "$DUCKDB_VERSION" > "$VENV/.pkgs"
fi
[ -s "$WORK/bids.jsonl" ] || FILES_ONLY=1 BIDS="$BIDS" bash benches/nexmark.sh
cargo build --release --bin tributary >&2
BIN="$CARGO_TARGET_DIR/release/tributary"
FILE="$WORK/bids.jsonl"
ROWS=$(wc -l < "$FILE")
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
  "q17": f"""SELECT auction, strftime(date_time, '%Y-%m-%d') AS day, count(*) AS total_bids,
               count(*) FILTER (WHERE price < 10000) AS rank1_bids, min(price) AS min_price,
               max(price) AS max_price, avg(price) AS avg_price, sum(price) AS sum_price
             FROM {bids} GROUP BY ALL""",
}
print(duckdb.connect().sql(f"SELECT count(*) FROM ({queries[q]})").fetchall(), file=sys.stderr)
PY

measure() { python3 benches/measure.py "$@" 2> "$RUN/stderr.txt" || { tail -30 "$RUN/stderr.txt" >&2; return 1; }; }
median() { sort -n | awk '{a[NR]=$0} END {print a[int((NR+1)/2)]}'; }
row() { # query, engine, median line "wall cpu rss_kb"
  awk -v q="$1" -v name="$2" -v rows="$ROWS" -v line="$3" '
  function c(x,   s) { s = sprintf("%.0f", x); while (s ~ /[0-9]{4}/) sub(/[0-9]{3}($|,)/, ",&", s); gsub(/,,/, ",", s); return s }
  BEGIN { split(line, m, " "); printf "| %s | %s | %.1f | %.1f | %s | %s | %.2f | %.0f |\n", q, name, m[1], m[2], c(rows / m[1]), c(rows / m[2]), m[2] / m[1], m[3] / 1024 }'
}

{
  echo "Stateful queries over one JSON-lines file of $ROWS Nexmark bids on $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)); median of $RUNS runs."
  echo "Reproduce: \`BIDS=$BIDS RUNS=$RUNS bash benches/compare_stateful.sh\` (DuckDB $DUCKDB_VERSION from PyPI)."
  echo
  echo "| query | engine | wall s | CPU s | events/s | events per CPU-s | cores used | peak RSS MB |"
  echo "|---|---|---|---|---|---|---|---|"
} > "$OUT.tmp"
for q in ${QUERIES:-q11 q12t q5h q15 q17}; do
  pipeline_sql "$q" json blackhole "$RUN" > "$RUN/$q.sql"
  t="" d=""
  for r in $(seq "$RUNS"); do
    rm -rf "$RUN/data"
    t+="$(measure "$BIN" run "$RUN/$q.sql" --data-dir "$RUN/data" --quiet)"$'\n'
    d+="$(measure "$VENV/bin/python" "$RUN/duckdb_stateful.py" "$FILE" "$q")"$'\n'
  done
  row "$q" "Tributary (release)" "$(printf '%s' "$t" | median)" >> "$OUT.tmp"
  row "$q" "DuckDB $DUCKDB_VERSION" "$(printf '%s' "$d" | median)" >> "$OUT.tmp"
  tail -2 "$OUT.tmp" >&2
done
mv "$OUT.tmp" "$OUT"
cat "$OUT"
