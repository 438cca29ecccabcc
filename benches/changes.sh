#!/usr/bin/env bash
# Change streams and several inputs, measured with `tributary run` (release build):
#   (a) a GROUP BY over a change stream (a JSON-lines changelog: inserts, updates, key-only
#       deletes), beside DuckDB computing the same table's aggregate in one batch (the last
#       change per key, then GROUP BY);
#   (b) UNION ALL of two Nexmark bid sources against one source of as many bids, both into a
#       blackhole sink: what a second input costs.
# Usage: bash benches/changes.sh   (CHANGES=4000000 KEYS=400000 BIDS=10000000 by default)
# Output: benches/results/changes.md. CPU and peak RSS by benches/measure.py.
set -euo pipefail
cd "$(dirname "$0")/.."
CHANGES="${CHANGES:-4000000}"
KEYS="${KEYS:-400000}"
BIDS="${BIDS:-10000000}"
CACHE="${TRIBUTARY_CACHE:-$HOME/.cache/tributary}"
# File sources and sinks read and write under the benchmarks' work directories (README: Security).
export TRIBUTARY_ALLOW_PATH="$CACHE/bench:$PWD"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
WORK="$CACHE/bench/changes-$CHANGES"
OUT=benches/results/changes.md
mkdir -p "$WORK" benches/results
DUCKDB_VENV="$CACHE/duckdb-venv"
[ -x "$DUCKDB_VENV/bin/python" ] || { python3 -m venv "$DUCKDB_VENV" && "$DUCKDB_VENV/bin/pip" install -q "duckdb==2.0.1"; }

cargo build --release --bin tributary >&2
BIN="$CARGO_TARGET_DIR/release/tributary"

# The changelog: every key inserted once, then updates (moving balance and region), deletes
# carrying the key alone, and inserts again of deleted keys. Seeded: the same file each time.
if [ ! -s "$WORK/changes.jsonl" ]; then
  python3 - "$WORK/changes.jsonl" "$CHANGES" "$KEYS" <<'PY'
import json, random, sys
path, n, keys = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rnd = random.Random(7)
live = set()
with open(path, "w") as f:
    out = []
    for seq in range(n):
        k = seq if seq < keys else rnd.randrange(keys)
        if k in live and rnd.random() < 0.1:
            live.discard(k)
            out.append(json.dumps({"seq": seq, "id": k, "_op": "delete"}))
        else:
            op = "update" if k in live else "insert"
            live.add(k)
            out.append(json.dumps({"seq": seq, "id": k, "region": f"r{rnd.randrange(1000)}",
                                   "balance": rnd.randrange(-1000, 100000), "_op": op}))
        if len(out) == 10000:
            f.write("\n".join(out) + "\n"); out = []
    if out:
        f.write("\n".join(out) + "\n")
PY
fi

measure() { python3 benches/measure.py "$@"; }
row() { # name, changes or events, "wall cpu rss"
  python3 - "$@" <<'PY'
import sys
name, n, (wall, cpu, rss) = sys.argv[1], int(sys.argv[2]), sys.argv[3].split()
wall, cpu, rss = float(wall), float(cpu), int(rss)
print(f"| {name} | {n:,} | {wall:.1f} | {cpu:.1f} | {n / wall:,.0f} | {n / cpu:,.0f} | {rss / 1024:.0f} |")
PY
}

run_sql() { # name, sql: a fresh data directory each time
  local dir="$WORK/run-$1"; rm -rf "$dir"; mkdir -p "$dir"
  printf '%s\n' "$2" > "$dir/job.sql"
  measure "$BIN" run "$dir/job.sql" --data-dir "$dir/data" --quiet 2>/dev/null | tail -1
}

{
  echo "# Change streams and several inputs ($(date -u +%F), $(nproc) cores)"
  echo
  echo "Reproduce: \`CHANGES=$CHANGES KEYS=$KEYS BIDS=$BIDS bash benches/changes.sh\`."
  echo
  echo "| run | changes or events | wall s | CPU s | per s | per CPU-s | peak RSS MB |"
  echo "|---|---|---|---|---|---|---|"
  source_sql="CREATE SOURCE customers (seq BIGINT, id BIGINT, region TEXT, balance BIGINT, _op TEXT, PRIMARY KEY (id))
    WITH (connector = 'file', path = '$WORK/changes.jsonl', format = 'json');
  CREATE SINK out WITH (connector = 'blackhole');"
  row "GROUP BY region over the changelog (Tributary)" "$CHANGES" "$(run_sql agg "$source_sql
  CREATE PIPELINE p AS INSERT INTO out
    SELECT region, count(*) AS n, sum(balance) AS total, max(balance) AS high FROM customers GROUP BY region;")"
  row "the same table's aggregate in one batch (DuckDB)" "$CHANGES" "$(measure "$DUCKDB_VENV/bin/python" -c "
import duckdb
duckdb.sql('''WITH cur AS (SELECT * FROM read_json('$WORK/changes.jsonl', format = 'newline_delimited')
                           QUALIFY row_number() OVER (PARTITION BY id ORDER BY seq DESC) = 1)
              SELECT region, count(*), sum(balance), max(balance) FROM cur WHERE _op <> 'delete' GROUP BY region''').fetchall()
" 2>/dev/null | tail -1)"
  half=$((BIDS / 2))
  row "one Nexmark bid source into a blackhole" "$BIDS" "$(run_sql one "CREATE SOURCE bids WITH (connector = 'nexmark', table = 'bid', events = $BIDS);
  CREATE SINK out WITH (connector = 'blackhole');
  CREATE PIPELINE p AS INSERT INTO out SELECT auction, bidder, price, date_time FROM bids;")"
  row "UNION ALL of two Nexmark bid sources of half as many" "$BIDS" "$(run_sql two "CREATE SOURCE a WITH (connector = 'nexmark', table = 'bid', events = $half, seed = 1);
  CREATE SOURCE b WITH (connector = 'nexmark', table = 'bid', events = $half, seed = 2);
  CREATE SINK out WITH (connector = 'blackhole');
  CREATE PIPELINE p AS INSERT INTO out SELECT auction, bidder, price, date_time FROM a
    UNION ALL SELECT auction, bidder, price, date_time FROM b;")"
} | tee "$OUT"
