#!/usr/bin/env bash
# Throughput of file sources into Delta: a ~1 GB CSV file and a ~1 GB JSON-lines file with the
# same rows, each loaded by `tributary run` (release build) under /usr/bin/time -v.
# Usage: bash benches/files_to_delta.sh [size_mb]   (default 1024). Prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MB="${1:-1024}"
CACHE="${TRIBUTARY_CACHE:-$HOME/.cache/tributary}"
# File sources and sinks read and write under the benchmarks' work directories (README: Security).
export TRIBUTARY_ALLOW_PATH="$CACHE/bench:$PWD"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
WORK="$CACHE/bench/files"
mkdir -p "$WORK"

cargo build --release --bin tributary >&2
BIN="$CARGO_TARGET_DIR/release/tributary"

gen() { # format, path: writes rows until the file reaches SIZE_MB
  python3 - "$1" "$2" "$SIZE_MB" <<'PY'
import sys
fmt, path, size_mb = sys.argv[1], sys.argv[2], int(sys.argv[3])
limit = size_mb * 1024 * 1024
names = ["acme", "globex", "initech", "umbrella", "hooli", "stark", "wayne", "wonka"]
with open(path, "w") as f:
    if fmt == "csv":
        f.write("id,customer,country,amount,currency,ordered_at,note\n")
    i, written, chunk = 0, 0, []
    while written < limit:
        c = names[i % 8]; amt = (i * 7919 % 100000) / 100
        ts = f"2026-{1 + i % 12:02d}-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:{(i * 7) % 60:02d}"
        if fmt == "csv":
            line = f"{i},{c},DE,{amt},EUR,{ts},order number {i} for {c}\n"
        else:
            line = f'{{"id":{i},"customer":"{c}","country":"DE","amount":{amt},"currency":"EUR","ordered_at":"{ts}","note":"order number {i} for {c}"}}\n'
        chunk.append(line); written += len(line); i += 1
        if len(chunk) == 10000:
            f.write("".join(chunk)); chunk = []
    f.write("".join(chunk))
PY
}

[ -s "$WORK/orders.csv" ] || gen csv "$WORK/orders.csv"
[ -s "$WORK/orders.jsonl" ] || gen json "$WORK/orders.jsonl"

echo "| input | size | rows | wall s | rows/s | MB/s | CPU s | peak RSS MB |"
echo "|---|---|---|---|---|---|---|---|"
for fmt in csv json; do
  file="$WORK/orders.$([ $fmt = csv ] && echo csv || echo jsonl)"
  run="$WORK/run-$fmt"; rm -rf "$run"; mkdir -p "$run"
  cat > "$run/load.sql" <<SQL
CREATE SOURCE orders (id BIGINT, customer TEXT, country TEXT, amount DOUBLE, currency TEXT, ordered_at TIMESTAMP, note TEXT)
  WITH (connector = 'file', path = '$file', format = '$fmt');
CREATE SINK lake WITH (connector = 'delta', path = '$run/lake');
CREATE PIPELINE load WITH (checkpoint_interval = '10s') AS INSERT INTO lake
  SELECT id, upper(customer) AS customer, country, amount, currency, ordered_at, note FROM orders;
SQL
  /usr/bin/time -v "$BIN" run "$run/load.sql" --data-dir "$run/data" --quiet 2> "$run/time.txt" >/dev/null
  rows=$(grep -o 'completed — [0-9]* rows in' "$run/time.txt" | grep -o '[0-9]*')
  wall=$(grep 'Elapsed (wall clock)' "$run/time.txt" | awk '{print $NF}' | awk -F: '{ if (NF==3) print $1*3600+$2*60+$3; else print $1*60+$2 }')
  user=$(grep 'User time' "$run/time.txt" | awk '{print $NF}')
  sys=$(grep 'System time' "$run/time.txt" | awk '{print $NF}')
  rss=$(grep 'Maximum resident' "$run/time.txt" | awk '{print $NF}')
  bytes=$(stat -c %s "$file")
  python3 - "$fmt" "$bytes" "$rows" "$wall" "$user" "$sys" "$rss" <<'PY'
import sys
fmt, b, rows, wall, user, sys_, rss = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6]), int(sys.argv[7])
print(f"| {fmt} | {b/2**20:.0f} MB | {rows:,} | {wall:.1f} | {rows/wall:,.0f} | {b/2**20/wall:.1f} | {user+sys_:.1f} | {rss/1024:.0f} |")
PY
done
