#!/usr/bin/env bash
# PostgreSQL CDC benchmark (release build): change events/s from an update-heavy workload into a
# Delta upsert sink and a PostgreSQL upsert sink, and source-commit-to-visible latency at a
# steady rate, with Tributary's peak RSS.
#
# Starts a throwaway PostgreSQL cluster (wal_level = logical) and `tributary serve`, then:
#  1. throughput: a table of ROWS rows is snapshotted by two pipelines (one per sink), both are
#     stopped, UPDATES single-row-change events are written upstream (transactions of 1,000
#     updated rows), and each pipeline is started alone and timed until its sink holds the final
#     state: events/s = UPDATES / catch-up time, and events per CPU-second of Tributary;
#  2. latency: both pipelines stream while a client commits RATE single-row updates/s for
#     DURATION seconds; pollers (every POLL_MS) note when each update is visible in each sink.
# Usage: ROWS=200000 UPDATES=1000000 RATE=200 DURATION=20 bash benches/cdc.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS="${ROWS:-200000}"; UPDATES="${UPDATES:-1000000}"; RATE="${RATE:-200}"; DURATION="${DURATION:-20}"
POLL_MS="${POLL_MS:-50}"; INTERVAL="${CHECKPOINT_INTERVAL:-1s}"
CACHE="${TRIBUTARY_CACHE:-$HOME/.cache/tributary}"
# File sources and sinks read and write under the benchmarks' work directories (README: Security).
export TRIBUTARY_ALLOW_PATH="$CACHE/bench:$PWD"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
PY="${TRIBUTARY_PYTHON:-$CACHE/venv/bin/python}"
WORK="$CACHE/bench/cdc"; rm -rf "$WORK"; mkdir -p "$WORK"
cargo build --release --bin tributary >&2
BIN="$CARGO_TARGET_DIR/release/tributary"

PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PGPORT=$(free_port); TPORT=$(free_port)
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
# The cluster lives under /tmp: the postgres user cannot enter root's home.
PGDIR=$(mktemp -d /tmp/tributary-bench-pg.XXXXXX); echo bench > "$PGDIR/pw"
[ "$(id -u)" = 0 ] && chown -R postgres:postgres "$PGDIR"
as_pg "$PGBIN/initdb" -D "$PGDIR/data" -U postgres --auth-local=trust --auth-host=scram-sha-256 --pwfile="$PGDIR/pw" --no-sync >/dev/null
cat >> "$PGDIR/data/postgresql.conf" <<CONF
port = $PGPORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$PGDIR'
wal_level = logical
max_wal_size = 4GB
shared_buffers = 256MB
CONF
as_pg "$PGBIN/pg_ctl" -D "$PGDIR/data" -l "$PGDIR/log" start -w >/dev/null
cleanup() {
  [ -n "${SERVER:-}" ] && kill "$SERVER" 2>/dev/null || true
  as_pg "$PGBIN/pg_ctl" -D "$PGDIR/data" stop -m immediate >/dev/null 2>&1 || true
  rm -rf "$PGDIR"
}
trap cleanup EXIT

/usr/bin/time -v "$BIN" serve --data-dir "$WORK/data" --pg-listen "127.0.0.1:$TPORT" 2> "$WORK/serve.time" &
SERVER=$!
until python3 -c "import socket; socket.create_connection(('127.0.0.1', $TPORT), 1)" 2>/dev/null; do sleep 0.1; done
TPID=$(pgrep -P "$SERVER" -f "tributary serve" || echo "$SERVER")

"$PY" - "$PGPORT" "$TPORT" "$TPID" "$ROWS" "$UPDATES" "$RATE" "$DURATION" "$POLL_MS" "$INTERVAL" "$WORK" > "$WORK/table.md" <<'PY'
import os, sys, time, threading, statistics
import psycopg
pgport, tport, tpid, rows, updates, rate, seconds, poll_ms, interval, work = sys.argv[1:]
rows, updates, rate, seconds, poll_ms = int(rows), int(updates), int(rate), int(seconds), int(poll_ms)
url = lambda db: f"postgres://postgres:bench@127.0.0.1:{pgport}/{db}"
admin = psycopg.connect(url("postgres"), autocommit=True)
admin.execute("CREATE DATABASE shop"); admin.execute("CREATE DATABASE warehouse")
shop = psycopg.connect(url("shop"), autocommit=True)
wh = psycopg.connect(url("warehouse"), autocommit=True)
trib = psycopg.connect(f"host=127.0.0.1 port={tport} user=tributary", autocommit=True)
shop.execute("CREATE TABLE bench (id int PRIMARY KEY, v bigint NOT NULL, note text, updated_at timestamptz)")
shop.execute(f"INSERT INTO bench SELECT g, 0, 'row ' || g, now() FROM generate_series(1, {rows}) g")
shop.execute("ANALYZE bench")
lake = os.path.join(work, "lake")
for stmt in [
    f"CREATE SOURCE src_pg WITH (connector = 'postgres-cdc', url = '{url('shop')}', table = 'bench')",
    f"CREATE SOURCE src_delta WITH (connector = 'postgres-cdc', url = '{url('shop')}', table = 'bench')",
    f"CREATE SINK wh WITH (connector = 'postgres', url = '{url('warehouse')}', table = 'bench', mode = 'upsert')",
    f"CREATE SINK lake WITH (connector = 'delta', path = '{lake}', mode = 'upsert')",
    f"CREATE PIPELINE to_pg WITH (checkpoint_interval = '{interval}') AS INSERT INTO wh SELECT id, v, note, updated_at FROM src_pg",
    f"CREATE PIPELINE to_delta WITH (checkpoint_interval = '{interval}') AS INSERT INTO lake SELECT id, v, note, updated_at FROM src_delta",
]:
    trib.execute(stmt)

def pg_sum():
    try: return wh.execute("SELECT coalesce(sum(v), 0), count(*) FROM bench").fetchone()
    except psycopg.Error: return (None, None)
def delta_sum():
    try: return trib.execute("SELECT coalesce(sum(v), 0), count(*) FROM lake").fetchone()
    except psycopg.Error: return (None, None)
def wait_for(f, want, timeout=600):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if tuple(f()) == want: return time.time()
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {want}, have {f()}")
def cpu_s():
    f = open(f"/proc/{tpid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")

t = time.time(); wait_for(pg_sum, (0, rows)); wait_for(delta_sum, (0, rows))
print(f"snapshot of {rows:,} rows into both sinks: {time.time() - t:.1f} s", file=sys.stderr)
trib.execute("STOP PIPELINE to_pg"); trib.execute("STOP PIPELINE to_delta")
# The workload, written while both pipelines are stopped: transactions of 1,000 updated rows.
t = time.time(); done = 0; lo = 1
while done < updates:
    n = min(1000, updates - done, rows - lo + 1)
    shop.execute(f"UPDATE bench SET v = v + 1, updated_at = now() WHERE id BETWEEN {lo} AND {lo + n - 1}")
    done += n; lo = lo + n if lo + n <= rows else 1
print(f"workload: {updates:,} row updates upstream in {time.time() - t:.1f} s", file=sys.stderr)
results = []
for name, pipeline, f in [("PostgreSQL upsert", "to_pg", pg_sum), ("Delta upsert (MERGE)", "to_delta", delta_sum)]:
    c0, t0 = cpu_s(), time.time()
    trib.execute(f"START PIPELINE {pipeline}")
    t1 = wait_for(f, (updates, rows))
    cpu = cpu_s() - c0
    results.append((name, updates / (t1 - t0), updates / cpu, t1 - t0))

# Latency: both pipelines stream; RATE commits/s, each a distinct row set to a negative marker.
probes = min(rate * seconds, rows)
committed, seen = {}, {"pg": {}, "delta": {}}
stop = threading.Event()
def poller(key, conn_url, sql):
    c = psycopg.connect(conn_url, autocommit=True)
    while not stop.is_set():
        try:
            for (i,) in c.execute(sql).fetchall():
                seen[key].setdefault(i, time.time())
        except psycopg.Error:
            pass
        time.sleep(poll_ms / 1000)
threads = [
    threading.Thread(target=poller, args=("pg", url("warehouse"), "SELECT id FROM bench WHERE v < 0")),
    threading.Thread(target=poller, args=("delta", f"host=127.0.0.1 port={tport} user=tributary", "SELECT id FROM lake WHERE v < 0")),
]
for th in threads: th.start()
start = time.time()
for i in range(1, probes + 1):
    target = start + i / rate
    if target > time.time(): time.sleep(target - time.time())
    shop.execute(f"UPDATE bench SET v = -{i} WHERE id = {i}")
    committed[i] = time.time()
deadline = time.time() + 120
while time.time() < deadline and min(len(seen["pg"]), len(seen["delta"])) < probes:
    time.sleep(0.2)
stop.set()
for th in threads: th.join()
def pct(xs, p): return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]
print(f"| sink | change events/s (catch-up of {updates:,} updates) | events per CPU-s | catch-up s | latency p50 ms | p99 ms | max ms |")
print("|---|---|---|---|---|---|---|")
for (name, eps, epc, secs), key in zip(results, ["pg", "delta"]):
    lat = sorted((seen[key][i] - committed[i]) * 1000 for i in committed if i in seen[key])
    print(f"| {name} | {eps:,.0f} | {epc:,.0f} | {secs:.1f} | {pct(lat, 50):.0f} | {pct(lat, 99):.0f} | {max(lat):.0f} |")
    if len(lat) < probes: print(f"(only {len(lat)} of {probes} probes seen in {name})", file=sys.stderr)
PY
kill -TERM "$TPID"; wait "$SERVER" || true; SERVER=""
RSS=$(grep 'Maximum resident' "$WORK/serve.time" | awk '{print $NF}')
{
echo "Command: \`ROWS=$ROWS UPDATES=$UPDATES RATE=$RATE DURATION=$DURATION bash benches/cdc.sh\` (release build, $(date -u +%Y-%m-%d))."
echo
cat "$WORK/table.md"
echo
echo "Peak RSS of tributary serve over the whole run: $((RSS / 1024)) MB. Checkpoint interval $INTERVAL, latency polled every ${POLL_MS} ms at $RATE commits/s for ${DURATION} s; $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)."
} | tee benches/results/cdc.md
