#!/usr/bin/env bash
# Where the time goes in one Nexmark pipeline: `perf record` (cpu-clock sampling, all threads) of
# one `tributary run` from benches/nexmark.sh's set, summarised by category (decoding, expression
# evaluation, Parquet encoding, compression, memory copies, kernel) and the top symbols.
#
# Usage: bash benches/profile.sh q0 json delta     (query: q0|q1|q2|all, source: nexmark|json|csv,
#        sink: blackhole|delta; BIDS=10000000 by default, the files come from benches/nexmark.sh)
# Output: benches/results/profile-<query>-<source>-<sink>.md
set -euo pipefail
cd "$(dirname "$0")/.."
Q="${1:-q0}" SRC="${2:-json}" SINK="${3:-blackhole}"
BIDS="${BIDS:-10000000}"
CACHE="${TRIBUTARY_CACHE:-$HOME/.cache/tributary}"
# File sources and sinks read and write under the benchmarks' work directories (README: Security).
export TRIBUTARY_ALLOW_PATH="$CACHE/bench:$PWD"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
# shellcheck source=benches/nexmark_lib.sh
. benches/nexmark_lib.sh
OUT="benches/results/profile-$Q-$SRC-$SINK.md"
PY="${TRIBUTARY_PYTHON:-$CACHE/venv/bin/python}"
[ -x "$PY" ] || PY=python3

command -v perf >/dev/null || { echo "profile.sh needs perf (apt-get install linux-perf)" >&2; exit 1; }
[ "$SRC" = nexmark ] || [ -s "$WORK/bids.jsonl" ] || FILES_ONLY=1 BIDS="$BIDS" bash benches/nexmark.sh
cargo build --release --bin tributary >&2
BIN="$CARGO_TARGET_DIR/release/tributary"
run="$WORK/profile"; rm -rf "$run"; mkdir -p "$run"
pipeline_sql "$Q" "$SRC" "$SINK" "$run" > "$run/p.sql"
perf record -q -F 499 -e cpu-clock -o "$run/perf.data" -- "$BIN" run "$run/p.sql" --data-dir "$run/data" --quiet >/dev/null 2>&1
perf report -i "$run/perf.data" --stdio --no-children --sort dso,symbol 2>/dev/null > "$run/report.txt"

"$PY" - "$run/report.txt" "$Q" "$SRC" "$SINK" > "$OUT" <<'PY'
import re, sys
path, q, src, sink = sys.argv[1:]
rows = []
for line in open(path):
    m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[[^\]]*\]\s+(.*)", line)
    if m:
        sym = re.sub(r"(\s+-)+\s*$", "", m.group(3)).strip()
        rows.append((float(m.group(1)), m.group(2), sym))
# First match wins: decoders before the generic arrow and datafusion kernels.
categories = [
    ("JSON decoding", ["flat_json", "arrow_json", "FlatJsonDecoder", "JsonDecoder"]),
    ("CSV decoding", ["arrow_csv", "csv_core", "CsvDecoder"]),
    ("record splitting", ["split_records"]),
    ("memchr scans (JSON string ends, line ends)", ["memchr"]),
    ("Nexmark generator", ["nexmark"]),
    ("Parquet encoding", ["parquet::"]),
    ("zstd compression", ["ZSTD_", "zstd"]),
    ("text parsing (numbers, timestamps)", ["lexical", "core::num", "arrow_cast::parse", "atoi", "chrono::", "from_str"]),
    ("expression evaluation and filtering", ["datafusion_physical_expr", "arrow_arith", "arrow_cast", "arrow_select", "datafusion_expr", "datafusion_physical_plan", "arrow_ord"]),
    ("memory copies and allocation", ["memmove", "memcpy", "memset", "mi_", "_mi_", "malloc", "free", "realloc", "MutableBuffer"]),
    ("UTF-8 validation", ["from_utf8", "run_utf8_validation"]),
    ("kernel (page faults, I/O, scheduling)", ["[kernel"]),
]
totals = {}
for pct, dso, sym in rows:
    name = "other"
    for cat, keys in categories:
        if any(k in sym or k in dso for k in keys):
            name = cat
            break
    totals[name] = totals.get(name, 0) + pct
print(f"Profile of Nexmark {q} from {src} into {sink}: `perf record -F 499 -e cpu-clock` over one release run (all threads), self time.")
print(f"Reproduce: `bash benches/profile.sh {q} {src} {sink}`\n")
print("| where | share of CPU samples |\n|---|---|")
for name, pct in sorted(totals.items(), key=lambda kv: -kv[1]):
    print(f"| {name} | {pct:.1f}% |")
print("\nTop symbols:\n\n| self % | symbol |\n|---|---|")
for pct, dso, sym in rows[:15]:
    sym = sym.replace("|", "\\|")
    print(f"| {pct:.1f} | `{sym[:110]}` |")
PY
cat "$OUT"
