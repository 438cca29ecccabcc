# Shared by benches/compare.sh and benches/compare_stateful.sh (sourced, not run): the engines
# they compare (Flink and DuckDB from PyPI in one venv, the release build), the bids file and
# how a run is measured. Expects CACHE, BIDS and WORK to be set; sets FLINK_VERSION,
# DUCKDB_VERSION, VENV, BIN, FILE, ROWS and $WORK/one.jsonl.
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
[ -s "$WORK/bids.jsonl" ] || FILES_ONLY=1 BIDS="$BIDS" bash benches/nexmark.sh
cargo build --release --bin tributary >&2
BIN="$CARGO_TARGET_DIR/release/tributary"
FILE="$WORK/bids.jsonl"
ROWS=$(wc -l < "$FILE")
head -1 "$FILE" > "$WORK/one.jsonl"

# Runs a command under benches/measure.py ("wall cpu rss_kb"); its stderr goes to $RUN/stderr.txt.
measure() { python3 benches/measure.py "$@" 2> "$RUN/stderr.txt" || { tail -30 "$RUN/stderr.txt" >&2; return 1; }; }
