#!/usr/bin/env bash
# Joins with tables kept by change streams, measured with `tributary run` (release build) into a
# blackhole sink, beside DuckDB computing the same result in one batch:
#   (a) orders joined with the rate valid at each order's time (FOR SYSTEM_TIME AS OF, over a
#       changelog of rates with commit times), against DuckDB's ASOF LEFT JOIN of the orders
#       with the rate versions;
#   (b) a changelog of orders joined with a changelog of customers (both tables kept, the
#       joined rows updated), against DuckDB joining the two tables rebuilt from their changes.
# Usage: bash benches/table_joins.sh   (ORDERS=4000000 RATE_CHANGES=400000 CHANGES=4000000 by default)
# Output: benches/results/table-joins.md. CPU and peak RSS by benches/measure.py.
set -euo pipefail
cd "$(dirname "$0")/.."
ORDERS="${ORDERS:-4000000}"
RATE_CHANGES="${RATE_CHANGES:-400000}"
CHANGES="${CHANGES:-4000000}"
CACHE="${TRIBUTARY_CACHE:-$HOME/.cache/tributary}"
# File sources and sinks read and write under the benchmarks' work directories (README: Security).
export TRIBUTARY_ALLOW_PATH="$CACHE/bench:$PWD"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
WORK="$CACHE/bench/table-joins-$ORDERS-$CHANGES"
OUT=benches/results/table-joins.md
mkdir -p "$WORK" benches/results
DUCKDB_VENV="$CACHE/duckdb-venv"
[ -x "$DUCKDB_VENV/bin/python" ] || { python3 -m venv "$DUCKDB_VENV" && "$DUCKDB_VENV/bin/pip" install -q "duckdb==2.0.1"; }

cargo build --release --bin tributary >&2
BIN="$CARGO_TARGET_DIR/release/tributary"

# Seeded inputs, written once: rates of 1,000 currencies changing over a day (a snapshot
# without commit times first, deletes and inserts again), orders over the same day; a
# changelog of orders (a tenth of the changes as keys) and of their customers (a tenth of the
# orders' keys).
if [ ! -s "$WORK/customers.jsonl" ]; then
  python3 - "$WORK" "$ORDERS" "$RATE_CHANGES" "$CHANGES" <<'PY'
import datetime, json, random, sys
work, orders, rate_changes, changes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rnd = random.Random(11)
base = datetime.datetime(2026, 1, 1)
day = 86400.0
def ts(s):
    return (base + datetime.timedelta(seconds=s)).isoformat(timespec="microseconds")
def write(path, rows):
    with open(path, "w") as f:
        out = []
        for r in rows:
            out.append(json.dumps(r))
            if len(out) == 10000:
                f.write("\n".join(out) + "\n"); out = []
        if out:
            f.write("\n".join(out) + "\n")
def rates():
    live = set()
    for c in range(1000):
        live.add(c)
        yield {"seq": c, "currency": f"C{c}", "rate": rnd.uniform(0.5, 2), "_op": "insert", "_commit_ts": None}
    for i in range(rate_changes):
        c = rnd.randrange(1000)
        t = ts(day * i / rate_changes)
        if c in live and rnd.random() < 0.02:
            live.discard(c)
            yield {"seq": 1000 + i, "currency": f"C{c}", "_op": "delete", "_commit_ts": t}
        else:
            op = "update" if c in live else "insert"
            live.add(c)
            yield {"seq": 1000 + i, "currency": f"C{c}", "rate": rnd.uniform(0.5, 2), "_op": op, "_commit_ts": t}
write(f"{work}/rates.jsonl", rates())
write(f"{work}/orders.jsonl", ({"id": i, "currency": f"C{rnd.randrange(1000)}", "amount": rnd.uniform(1, 500),
                                "ts": ts(day * i / orders)} for i in range(orders)))
def changelog(n, keys, row):
    live = set()
    for seq in range(n):
        k = seq if seq < keys else rnd.randrange(keys)
        if k in live and rnd.random() < 0.1:
            live.discard(k)
            yield {"seq": seq, "id": k, "_op": "delete"}
        else:
            op = "update" if k in live else "insert"
            live.add(k)
            yield dict(row(k), seq=seq, id=k, _op=op)
keys = changes // 10
write(f"{work}/order_changes.jsonl", changelog(changes, keys, lambda k: {"customer_id": rnd.randrange(keys // 10), "amount": rnd.uniform(1, 500)}))
write(f"{work}/customers.jsonl", changelog(changes // 10, keys // 10, lambda k: {"name": f"n{rnd.randrange(10**6)}", "region": f"r{rnd.randrange(100)}"}))
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

duck() { measure "$DUCKDB_VENV/bin/python" -c "import duckdb; duckdb.sql('''$1''').fetchall()" 2>/dev/null | tail -1; }

versioned=$((ORDERS + RATE_CHANGES + 1000))
joined=$((CHANGES + CHANGES / 10))
{
  echo "# Joins with tables kept by change streams ($(date -u +%F), $(nproc) cores)"
  echo
  echo "Reproduce: \`ORDERS=$ORDERS RATE_CHANGES=$RATE_CHANGES CHANGES=$CHANGES bash benches/table_joins.sh\`."
  echo "Rows: orders and rate changes read (a); both changelogs' changes read (b)."
  echo
  echo "| run | rows | wall s | CPU s | per s | per CPU-s | peak RSS MB |"
  echo "|---|---|---|---|---|---|---|"
  row "(a) orders x rates FOR SYSTEM_TIME AS OF the order's time (Tributary)" "$versioned" "$(run_sql asof "
  CREATE SOURCE rates (seq BIGINT, currency TEXT, rate DOUBLE, _op TEXT, _commit_ts TIMESTAMP,
    PRIMARY KEY (currency), WATERMARK FOR _commit_ts AS _commit_ts)
    WITH (connector = 'file', path = '$WORK/rates.jsonl', format = 'json');
  CREATE SOURCE orders (id BIGINT, currency TEXT, amount DOUBLE, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '10' SECOND)
    WITH (connector = 'file', path = '$WORK/orders.jsonl', format = 'json');
  CREATE SINK out WITH (connector = 'blackhole');
  CREATE PIPELINE p AS INSERT INTO out
    SELECT o.id, o.amount * r.rate AS value FROM orders o LEFT JOIN rates FOR SYSTEM_TIME AS OF o.ts AS r ON o.currency = r.currency;")"
  row "(a) the same with DuckDB's ASOF LEFT JOIN" "$versioned" "$(duck "
    WITH v AS (SELECT currency, rate, _op, coalesce(_commit_ts::TIMESTAMP, TIMESTAMP '1970-01-01') AS valid_from
               FROM read_json('$WORK/rates.jsonl', format = 'newline_delimited')
               QUALIFY row_number() OVER (PARTITION BY currency, valid_from ORDER BY seq DESC) = 1)
    SELECT count(*), sum(o.amount * CASE WHEN v._op <> 'delete' THEN v.rate END)
    FROM read_json('$WORK/orders.jsonl', format = 'newline_delimited') o
    ASOF LEFT JOIN v ON o.currency = v.currency AND o.ts::TIMESTAMP >= v.valid_from")"
  row "(b) orders changelog x customers changelog (Tributary)" "$joined" "$(run_sql changes "
  CREATE SOURCE orders (seq BIGINT, id BIGINT, customer_id BIGINT, amount DOUBLE, _op TEXT, PRIMARY KEY (id))
    WITH (connector = 'file', path = '$WORK/order_changes.jsonl', format = 'json');
  CREATE SOURCE customers (seq BIGINT, id BIGINT, name TEXT, region TEXT, _op TEXT, PRIMARY KEY (id))
    WITH (connector = 'file', path = '$WORK/customers.jsonl', format = 'json');
  CREATE SINK out WITH (connector = 'blackhole');
  CREATE PIPELINE p AS INSERT INTO out
    SELECT o.id AS order_id, o.amount, c.name, c.region FROM orders o LEFT JOIN customers c ON o.customer_id = c.id;")"
  row "(b) the two tables rebuilt and joined in one batch (DuckDB)" "$joined" "$(duck "
    WITH o AS (SELECT * FROM read_json('$WORK/order_changes.jsonl', format = 'newline_delimited')
               QUALIFY row_number() OVER (PARTITION BY id ORDER BY seq DESC) = 1),
         c AS (SELECT * FROM read_json('$WORK/customers.jsonl', format = 'newline_delimited')
               QUALIFY row_number() OVER (PARTITION BY id ORDER BY seq DESC) = 1)
    SELECT count(*), count(c.name) FROM o LEFT JOIN c ON o.customer_id = c.id AND c._op <> 'delete' WHERE o._op <> 'delete'
  ")"
} | tee "$OUT"
