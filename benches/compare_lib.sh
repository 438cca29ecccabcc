# Shared by benches/compare.sh, compare_stateful.sh and compare_joins.sh (sourced, not run): the
# engines they compare (Flink and DuckDB from PyPI in one venv, the release build), how a run is
# measured and reported, and (unless OWN_INPUTS is set) the bids file. Expects CACHE, WORK, RUN
# (and BIDS) to be set; sets FLINK_VERSION, DUCKDB_VERSION, VENV, BIN (and FILE, ROWS and
# $WORK/one.jsonl).
FLINK_VERSION=2.3.0
DUCKDB_VERSION=2.0.1
VENV="$CACHE/compare-venv"

command -v java >/dev/null || { echo "$(basename "$0") needs a Java runtime for Flink (apt-get install default-jre-headless)" >&2; exit 1; }
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$VENV/.pkgs" 2>/dev/null)" != "$FLINK_VERSION $DUCKDB_VERSION" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q "apache-flink==$FLINK_VERSION" "duckdb==$DUCKDB_VERSION"
  echo "$FLINK_VERSION $DUCKDB_VERSION" > "$VENV/.pkgs"
fi
if [ -z "${OWN_INPUTS:-}" ]; then
  [ -s "$WORK/bids.jsonl" ] || FILES_ONLY=1 BIDS="$BIDS" bash benches/nexmark.sh
fi
cargo build --release --bin tributary >&2
BIN="$CARGO_TARGET_DIR/release/tributary"
if [ -z "${OWN_INPUTS:-}" ]; then
  FILE="$WORK/bids.jsonl"
  ROWS=$(wc -l < "$FILE")
  head -1 "$FILE" > "$WORK/one.jsonl"
fi

# Runs a command under benches/measure.py ("wall cpu rss_kb"); its stderr goes to $RUN/stderr.txt.
measure() { python3 benches/measure.py "$@" 2> "$RUN/stderr.txt" || { tail -30 "$RUN/stderr.txt" >&2; return 1; }; }
# The line of the median wall time among lines "wall cpu rss_kb".
median() { sort -n | awk '{a[NR]=$0} END {print a[int((NR+1)/2)]}'; }
# A table row over $ROWS events: query, engine, median line "wall cpu rss_kb", optional fixed-cost
# line subtracted in the net columns.
row() {
  awk -v q="$1" -v name="$2" -v rows="$ROWS" -v line="$3" -v over="${4:-0 0 0}" '
  function c(x,   s) { s = sprintf("%.0f", x); while (s ~ /[0-9][0-9][0-9][0-9]/) sub(/[0-9][0-9][0-9]($|,)/, ",&", s); gsub(/,,/, ",", s); return s }
  BEGIN {
    split(line, m, " "); split(over, o, " ");
    wall = m[1]; cpu = m[2]; nw = wall - o[1]; nc = cpu - o[2];
    printf "| %s | %s | %.1f | %.1f | %s | %s | %.2f | %.0f |", q, name, wall, cpu, c(rows / wall), c(rows / cpu), cpu / wall, m[3] / 1024;
    if (o[1] > 0) printf " %s | %s |\n", c(rows / nw), c(rows / nc); else printf " %s | %s |\n", c(rows / wall), c(rows / cpu);
  }'
}
