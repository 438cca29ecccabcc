#!/usr/bin/env bash
# Side-by-side: Nexmark q0 (SELECT auction, bidder, price, date_time, extra FROM bid) over the same
# JSON-lines file of bids, read to the end by Tributary (into its blackhole sink), Apache Flink
# (PyPI apache-flink, local mode, filesystem source with the json format, blackhole sink) and
# DuckDB (read_json, the projected columns reduced by max() so each is decoded). Each engine runs
# RUNS times; the table reports the median run's events/s, events per CPU-second (the machine's
# busy time during the run, see benches/measure.py) and peak RSS of all the run's processes.
# Flink's JVM start-up and job submission are measured on a one-line file, reported separately
# and subtracted in the "net" columns.
#
# Usage: bash benches/compare.sh            (BIDS=10000000 RUNS=3 by default)
# Needs the file benches/nexmark.sh writes (it is made here when missing) and a Java runtime.
# Output: benches/results/compare.md (the README includes it).
set -euo pipefail
cd "$(dirname "$0")/.."
BIDS="${BIDS:-10000000}"
RUNS="${RUNS:-3}"
CACHE="${TRIBUTARY_CACHE:-$HOME/.cache/tributary}"
# File sources and sinks read and write under the benchmarks' work directories (README: Security).
export TRIBUTARY_ALLOW_PATH="$CACHE/bench:$PWD"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
WORK="$CACHE/bench/nexmark-$BIDS"
OUT="benches/results/compare.md"
# shellcheck source=benches/compare_lib.sh
. benches/compare_lib.sh
BYTES=$(stat -c %s "$FILE")
RUN="$WORK/compare"
mkdir -p "$RUN"

cat > "$RUN/flink_q0.py" <<'PY'
import sys
from pyflink.table import EnvironmentSettings, TableEnvironment
path, parallelism = sys.argv[1], sys.argv[2]
env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
env.get_config().set("parallelism.default", parallelism)
env.execute_sql(f"""CREATE TABLE bid (auction BIGINT, bidder BIGINT, price BIGINT, channel STRING,
  url STRING, date_time TIMESTAMP(3), extra STRING)
  WITH ('connector' = 'filesystem', 'path' = 'file://{path}', 'format' = 'json',
        'json.timestamp-format.standard' = 'ISO-8601')""")
env.execute_sql("""CREATE TABLE out_q0 (auction BIGINT, bidder BIGINT, price BIGINT,
  date_time TIMESTAMP(3), extra STRING) WITH ('connector' = 'blackhole')""")
env.execute_sql("INSERT INTO out_q0 SELECT auction, bidder, price, date_time, extra FROM bid").wait()
PY

cat > "$RUN/duckdb_q0.py" <<'PY'
import sys, duckdb
path = sys.argv[1]
con = duckdb.connect()
r = con.sql(f"""SELECT count(*), max(auction), max(bidder), max(price), max(date_time), max(length(extra))
  FROM read_json('{path}', format = 'newline_delimited', columns = {{auction: 'BIGINT', bidder: 'BIGINT',
  price: 'BIGINT', channel: 'VARCHAR', url: 'VARCHAR', date_time: 'TIMESTAMP', extra: 'VARCHAR'}})""").fetchall()
print(r, file=sys.stderr)
PY

printf 'CREATE SOURCE bid (auction BIGINT, bidder BIGINT, price BIGINT, channel TEXT, url TEXT, date_time TIMESTAMP(3), extra TEXT) WITH (connector = %s, path = %s, format = %s);\nCREATE SINK out WITH (connector = %s);\nCREATE PIPELINE p WITH (checkpoint_interval = %s) AS INSERT INTO out SELECT auction, bidder, price, date_time, extra FROM bid;\n' \
  "'file'" "'$FILE'" "'json'" "'blackhole'" "'10s'" > "$RUN/tributary_q0.sql"

# "wall cpu rss_kb" of a command and everything it starts (benches/measure.py: machine-wide busy
# time, so the JVM that PyFlink starts and does not wait for is counted; run on an idle machine).

median() { # lines "wall cpu rss" -> the line of the median wall time
  sort -n | awk '{a[NR]=$0} END {print a[int((NR+1)/2)]}'
}

tributary_run() { rm -rf "$RUN/data"; measure "$BIN" run "$RUN/tributary_q0.sql" --data-dir "$RUN/data" --quiet; }
flink_run() { measure "$VENV/bin/python" "$RUN/flink_q0.py" "$1" "$2"; }
duckdb_run() { measure "$VENV/bin/python" "$RUN/duckdb_q0.py" "$FILE"; }

declare -A result
for r in $(seq "$RUNS"); do
  result[tributary]+="$(tributary_run)"$'\n'
  result[duckdb]+="$(duckdb_run)"$'\n'
  result[flink]+="$(flink_run "$FILE" 2)"$'\n'
  result[flink1]+="$(flink_run "$FILE" 1)"$'\n'
  result[flink_empty]+="$(flink_run "$WORK/one.jsonl" 2)"$'\n'
done
for k in "${!result[@]}"; do echo "$k: $(printf '%s' "${result[$k]}" | tr '\n' ';')" >&2; done

row() { # name, median line, optional overhead line
  local name="$1" line="$2" over="${3:-0 0 0}"
  awk -v name="$name" -v rows="$ROWS" -v line="$line" -v over="$over" '
  function c(x,   s) { s = sprintf("%.0f", x); while (s ~ /[0-9][0-9][0-9][0-9]/) sub(/[0-9][0-9][0-9]($|,)/, ",&", s); gsub(/,,/, ",", s); return s }
  BEGIN {
    split(line, m, " "); split(over, o, " ");
    wall = m[1]; cpu = m[2]; nw = wall - o[1]; nc = cpu - o[2];
    printf "| %s | %.1f | %.1f | %s | %s | %.2f | %.0f |", name, wall, cpu, c(rows / wall), c(rows / cpu), cpu / wall, m[3] / 1024;
    if (o[1] > 0) printf " %s | %s |\n", c(rows / nw), c(rows / nc); else printf " %s | %s |\n", c(rows / wall), c(rows / cpu);
  }'
}

FLINK_EMPTY=$(printf '%s' "${result[flink_empty]}" | median)
{
  echo "q0 over one JSON-lines file of $ROWS Nexmark bids ($((BYTES / 1024 / 1024)) MiB, $((BYTES / ROWS)) B/bid) on $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)); median of $RUNS runs."
  echo "Reproduce: \`BIDS=$BIDS RUNS=$RUNS bash benches/compare.sh\` (Flink $FLINK_VERSION and DuckDB $DUCKDB_VERSION from PyPI, $(java -version 2>&1 | head -1 | tr -d '"'))."
  echo
  echo "| engine | wall s | CPU s | events/s | events per CPU-s | cores used | peak RSS MB | net events/s | net events per CPU-s |"
  echo "|---|---|---|---|---|---|---|---|---|"
  row "Tributary (release)" "$(printf '%s' "${result[tributary]}" | median)"
  row "DuckDB $DUCKDB_VERSION" "$(printf '%s' "${result[duckdb]}" | median)"
  row "Flink $FLINK_VERSION, parallelism 2" "$(printf '%s' "${result[flink]}" | median)" "$FLINK_EMPTY"
  row "Flink $FLINK_VERSION, parallelism 1" "$(printf '%s' "${result[flink1]}" | median)" "$FLINK_EMPTY"
  echo
  echo "Flink's fixed cost (JVM start, local cluster, job submission; a one-line file): $(echo "$FLINK_EMPTY" | awk '{printf "%.1f s wall, %.1f CPU-s", $1, $2}'). The net columns subtract it; for Tributary and DuckDB (start-up well under a second) they equal the whole run."
} > "$OUT"
cat "$OUT"
