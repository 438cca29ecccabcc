#!/usr/bin/env bash
# What watching costs: Nexmark q0 (bids from the generator into a blackhole) on a real
# `tributary serve`, with nothing polling (quiet), with /metrics, /api/v1/pipelines and
# /api/v1/operators fetched every second (polled: a Prometheus scrape), and with the web console
# open on the pipeline's page in headless Chromium (console: its six requests a second) plus the
# scrape, alternating RUNS times. Reports the server's CPU seconds from the pipeline's creation
# to its completion (from /proc/PID/stat) and the events per CPU-second of each run.
#
# Usage: bash benches/metrics_overhead.sh       (EVENTS=100000000 RUNS=3 MODES="quiet polled
#        console" by default; BIN=path skips the build; console needs chromium, chromium-driver
#        and the venv with selenium that tests/run.sh installs)
# Output: benches/results/metrics-overhead.md (the README quotes it).
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS="${EVENTS:-100000000}"
RUNS="${RUNS:-3}"
CACHE="${TRIBUTARY_CACHE:-$HOME/.cache/tributary}"
# File sources and sinks read and write under the benchmarks' work directories (README: Security).
export TRIBUTARY_ALLOW_PATH="$CACHE/bench:$PWD"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
MODES="${MODES:-quiet polled console}"
PYTHON="${TRIBUTARY_PYTHON:-$CACHE/venv/bin/python}"
OUT="${OUT:-benches/results/metrics-overhead.md}"
if [ -z "${BIN:-}" ]; then
  cargo build --release --bin tributary >&2
  BIN="$CARGO_TARGET_DIR/release/tributary"
fi
TICKS="$(getconf CLK_TCK)"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# One run; $1 = "polled" or "quiet". Prints "cpu_s wall_s".
run_one() {
  local mode="$1" dir pg http pid poller="" browser="" t0 c0 c1 t1
  dir="$(mktemp -d)"
  pg="$(free_port)"; http="$(free_port)"
  "$BIN" serve --data-dir "$dir/data" --pg-listen "127.0.0.1:$pg" --http-listen "127.0.0.1:$http" 2>"$dir/log" &
  pid=$!
  until curl -sf "127.0.0.1:$http/readyz" >/dev/null 2>&1; do sleep 0.1; done
  if [ "$mode" = console ]; then
    # The console on the pipeline's page, polling as a person's open tab does.
    "$PYTHON" - "$http" <<'PY' &
import os, signal, sys, time
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
o = Options()
o.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
for a in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]:
    o.add_argument(a)
d = webdriver.Chrome(service=Service(os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")), options=o)
signal.signal(signal.SIGTERM, lambda *_: (d.quit(), sys.exit(0)))
d.get(f"http://127.0.0.1:{sys.argv[1]}/#/pipelines/q0")
while True:
    time.sleep(1)
PY
    browser=$!
    sleep 3
  fi
  if [ "$mode" = polled ] || [ "$mode" = console ]; then
    ( while kill -0 "$pid" 2>/dev/null; do
        curl -s "127.0.0.1:$http/metrics" >/dev/null || true
        curl -s "127.0.0.1:$http/api/v1/pipelines" >/dev/null || true
        curl -s "127.0.0.1:$http/api/v1/operators" >/dev/null || true
        sleep 1
      done ) &
    poller=$!
  fi
  t0="$(date +%s.%N)"; c0="$(cpu_ticks "$pid")"
  psql -q -h 127.0.0.1 -p "$pg" -U tributary -d tributary -v ON_ERROR_STOP=1 -c "
    CREATE SOURCE bids WITH (connector = 'nexmark', table = 'bid', events = $EVENTS, seed = 1);
    CREATE SINK nowhere WITH (connector = 'blackhole');
    CREATE PIPELINE q0 AS INSERT INTO nowhere SELECT auction, bidder, price, date_time FROM bids;" >/dev/null
  # Asked over HTTP in both modes, every 2 s, so both pay the same for knowing when it ends.
  until curl -s "127.0.0.1:$http/api/v1/pipelines/q0" | grep -q '"state":"completed"'; do sleep 2; done
  c1="$(cpu_ticks "$pid")"; t1="$(date +%s.%N)"
  [ -n "$poller" ] && kill "$poller" 2>/dev/null || true
  if [ -n "$browser" ]; then kill "$browser" 2>/dev/null || true; wait "$browser" 2>/dev/null || true; fi
  kill "$pid"; wait "$pid" 2>/dev/null || true
  rm -rf "$dir"
  python3 -c "print(f'{($c1 - $c0) / $TICKS:.2f} {$t1 - $t0:.2f}')"
}

rows=()
for i in $(seq 1 "$RUNS"); do
  for mode in $MODES; do
    read -r cpu wall < <(run_one "$mode")
    eps="$(python3 -c "print(round($EVENTS * 0.92 / $cpu))")"
    echo "run $i $mode: $cpu CPU-s, $wall s, $eps bids per CPU-s" >&2
    rows+=("| $i | $mode | $wall | $cpu | $eps |")
  done
done
{
  echo "Nexmark q0 ($EVENTS events, 92% of them bids, from the generator into a blackhole) on \`tributary serve\`, $(nproc) cores; polled: /metrics, /api/v1/pipelines and /api/v1/operators every second; console: the same plus the web console open on the pipeline's page in headless Chromium (six API requests a second). CPU of the server (not the browser's) from CREATE PIPELINE to completion. $(date -u +%Y-%m-%d)."
  echo
  echo "| run | mode | wall s | CPU s | bids per CPU-s |"
  echo "|---|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
} > "$OUT"
cat "$OUT"
