#!/usr/bin/env bash
# Nexmark benchmark harness: q0, q1, q2 from (a) the built-in nexmark source, (b) a JSON-lines
# file and (c) a CSV file holding the same bids (written once by the harness), into a blackhole
# and into Delta. Each configuration runs RUNS times with `tributary run` (release build) under
# /usr/bin/time -v; the table reports the median run: events/s, events per CPU-second, peak RSS.
#
# Usage: bash benches/nexmark.sh            (BIDS=10000000 RUNS=3 by default)
# Output: benches/results/nexmark.md (the README includes it).
# Stateful queries (q11: sessions; q12t, q5h: windows; q15, q16, q17: updating per-day rollups;
# the last column is the operators' state when the input ends):
#   QUERIES="q11 q12t q5h q15 q16 q17" SOURCES=nexmark SINKS=blackhole bash benches/nexmark.sh
#   writes benches/results/nexmark-q11-q12t-q5h-q15-q16-q17.md.
set -euo pipefail
cd "$(dirname "$0")/.."
BIDS="${BIDS:-10000000}"
RUNS="${RUNS:-3}"
CACHE="${TRIBUTARY_CACHE:-$HOME/.cache/tributary}"
# File sources and sinks read and write under the benchmarks' work directories (README: Security).
export TRIBUTARY_ALLOW_PATH="$CACHE/bench:$PWD"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
OUT="benches/results/nexmark.md"
# The generator alone (SELECT * into a blackhole) runs longer, so start-up does not count.
GEN_BIDS="${GEN_BIDS:-$((BIDS * 10))}"
# shellcheck source=benches/nexmark_lib.sh
. benches/nexmark_lib.sh
mkdir -p "$WORK" benches/results
PY="${TRIBUTARY_PYTHON:-$CACHE/venv/bin/python}"
[ -x "$PY" ] || PY=python3

cargo build --release --bin tributary >&2
BIN="$CARGO_TARGET_DIR/release/tributary"

# The same bids as files, written once: nexmark -> Parquet (by Tributary), Parquet -> JSON lines and CSV (by pyarrow).
if [ ! -s "$WORK/bids.jsonl" ] || [ ! -s "$WORK/bids.csv" ]; then
  rm -rf "$WORK/gen" "$WORK/parquet"
  cat > "$WORK/gen.sql" <<SQL
CREATE SOURCE bid WITH (connector = 'nexmark', table = 'bid', events = $EVENTS, seed = $SEED);
CREATE SINK pq WITH (connector = 'parquet', path = '$WORK/parquet');
CREATE PIPELINE gen AS INSERT INTO pq SELECT * FROM bid;
SQL
  "$BIN" run "$WORK/gen.sql" --data-dir "$WORK/gen" --quiet >/dev/null
  "$PY" - "$WORK" <<'PY'
import sys, json, pyarrow.dataset as ds, pyarrow.csv as pacsv, pyarrow.compute as pc
work = sys.argv[1]
t = ds.dataset(f"{work}/parquet", format="parquet").to_table()
t = t.set_column(t.schema.get_field_index("date_time"), "date_time",
                 pc.strftime(t["date_time"], format="%Y-%m-%dT%H:%M:%S"))
pacsv.write_csv(t, f"{work}/bids.csv")
with open(f"{work}/bids.jsonl", "w") as f:
    for b in t.to_batches(max_chunksize=100_000):
        cols = b.to_pydict()
        names = list(cols)
        for row in zip(*cols.values()):
            f.write(json.dumps(dict(zip(names, row)), separators=(",", ":")) + "\n")
PY
fi
[ -z "${FILES_ONLY:-}" ] || exit 0

{
  echo "Nexmark on $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(free -g | awk '/Mem:/{print $2}') GiB RAM; $BIDS bids; median of $RUNS runs; release build."
  echo "Reproduce: \`${QUERIES:+QUERIES=\"$QUERIES\" SOURCES=\"${SOURCES:-nexmark json csv}\" SINKS=\"${SINKS:-blackhole delta}\" }BIDS=$BIDS RUNS=$RUNS bash benches/nexmark.sh\`"
  echo
  echo "| query | source | sink | events/s | events per CPU-s | CPU cores used | peak RSS MB | state at the end |"
  echo "|---|---|---|---|---|---|---|---|"
} > "$OUT.tmp"

bench() { # query source sink -> appends the median run's row to $OUT.tmp
      local q="$1" src="$2" sink="$3" results=() run r wall cpu rss rows
      for r in $(seq "$RUNS"); do
        run="$WORK/run"; rm -rf "$run"; mkdir -p "$run"
        pipeline_sql "$q" "$src" "$sink" "$run" > "$run/p.sql"
        /usr/bin/time -v "$BIN" run "$run/p.sql" --data-dir "$run/data" --quiet 2> "$run/time.txt" >/dev/null
        wall=$(grep 'Elapsed (wall clock)' "$run/time.txt" | awk '{print $NF}' | awk -F: '{ if (NF==3) print $1*3600+$2*60+$3; else print $1*60+$2 }')
        cpu=$(awk '/User time|System time/ {s+=$NF} END {print s}' "$run/time.txt")
        rss=$(grep 'Maximum resident' "$run/time.txt" | awk '{print $NF}')
        rows=$(grep -o 'completed — [0-9]* rows in' "$run/time.txt" | grep -o '[0-9]*')
        state=$(grep -o 'state at the end: [0-9]* rows, [0-9]* bytes' "$run/time.txt" | grep -o '[0-9]*' | tr '\n' ' ')
        results+=("$wall $cpu $rss $rows ${state:-0 0}")
      done
      printf '%s\n' "${results[@]}" | "$PY" -c "
import sys, statistics
runs = [list(map(float, l.split())) for l in sys.stdin if l.strip()]
runs.sort(key=lambda r: r[0])
wall, cpu, rss, rows, state_rows, state_bytes = runs[len(runs)//2]
state = f'{state_rows:,.0f} rows, {state_bytes/1048576:.1f} MB' if state_rows else '-'
print(f'| $q | $src | $sink | {rows/wall:,.0f} | {rows/cpu:,.0f} | {cpu/wall:.2f} | {rss/1024:.0f} | {state} |')
" >> "$OUT.tmp"
      tail -1 "$OUT.tmp" >&2
}

for q in ${QUERIES:-q0 q1 q2}; do
  for src in ${SOURCES:-nexmark json csv}; do
    for sink in ${SINKS:-blackhole delta}; do
      bench "$q" "$src" "$sink"
    done
  done
done
[ -z "${QUERIES:-}" ] || { mv "$OUT.tmp" "${OUT%.md}-$(echo "$QUERIES" | tr ' ' '-').md"; cat "${OUT%.md}-$(echo "$QUERIES" | tr ' ' '-').md"; exit 0; }
# The generator alone: every column of GEN_BIDS bids, as Arrow batches, into a blackhole.
EVENTS=$(events_for_bids "$GEN_BIDS")
bench all nexmark blackhole
sed -i '$ s/^| all |/| SELECT * ('"$GEN_BIDS"' bids) |/' "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
cat "$OUT"
