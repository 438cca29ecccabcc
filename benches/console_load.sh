#!/usr/bin/env bash
# How fast the console's pipelines page loads with many pipelines: a release `tributary serve`
# runs PIPELINES streaming Nexmark pipelines (each paced at 200 events/s), and headless Chromium
# (driven by Selenium, as the console tests do) opens the page LOADS times. Reports, per load,
# the milliseconds from navigation to a table holding every pipeline with its sparkline, and the
# size of the two API answers the page polls each second.
#
# Usage: bash benches/console_load.sh       (PIPELINES=50 LOADS=10 by default)
# Needs: chromium, chromium-driver and the venv with selenium (tests/run.sh installs them).
# Output: benches/results/console-load.md (the README quotes it).
set -euo pipefail
cd "$(dirname "$0")/.."
PIPELINES="${PIPELINES:-50}"
LOADS="${LOADS:-10}"
CACHE="${TRIBUTARY_CACHE:-$HOME/.cache/tributary}"
# File sources and sinks read and write under the benchmarks' work directories (README: Security).
export TRIBUTARY_ALLOW_PATH="$CACHE/bench:$PWD"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
PYTHON="${TRIBUTARY_PYTHON:-$CACHE/venv/bin/python}"
OUT="${OUT:-benches/results/console-load.md}"
# BIN=path/to/tributary skips the build.
if [ -z "${BIN:-}" ]; then
  cargo build --release --bin tributary >&2
  BIN="$CARGO_TARGET_DIR/release/tributary"
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
dir="$(mktemp -d)"
pg="$(free_port)"; http="$(free_port)"
"$BIN" serve --data-dir "$dir/data" --pg-listen "127.0.0.1:$pg" --http-listen "127.0.0.1:$http" 2>"$dir/log" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$dir"' EXIT
until curl -sf "127.0.0.1:$http/readyz" >/dev/null 2>&1; do sleep 0.1; done
{
  echo "CREATE SINK nowhere WITH (connector = 'blackhole');"
  for i in $(seq 1 "$PIPELINES"); do
    echo "CREATE SOURCE bids_$i WITH (connector = 'nexmark', table = 'bid', rate = 200, seed = $i);"
    echo "CREATE PIPELINE p_$i AS INSERT INTO nowhere SELECT auction, price FROM bids_$i WHERE price > 1000;"
  done
} | psql -q -h 127.0.0.1 -p "$pg" -U tributary -v ON_ERROR_STOP=1 >/dev/null
# A minute of history, so the sparklines have points to draw.
sleep 60

"$PYTHON" - "$http" "$PIPELINES" "$LOADS" "$OUT" "$(nproc)" <<'PY'
import json, os, statistics, sys, time, urllib.request
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

port, n, loads, out, cores = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
base = f"http://127.0.0.1:{port}"
options = Options()
options.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
for arg in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"]:
    options.add_argument(arg)
driver = webdriver.Chrome(service=Service(os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")), options=options)
ready = f"return document.querySelectorAll('table#pipelines tbody tr[data-pipeline] svg.spark polyline').length >= {n}"
times = []
try:
    for _ in range(loads):
        driver.get("about:blank")
        start = time.perf_counter()
        driver.get(base + "/")
        deadline = start + 30
        while not driver.execute_script(ready):
            if time.perf_counter() > deadline:
                raise SystemExit("the page did not show every pipeline within 30 s")
            time.sleep(0.005)
        times.append((time.perf_counter() - start) * 1000)
finally:
    driver.quit()
sizes = {path: len(urllib.request.urlopen(base + path).read()) for path in ["/api/v1/pipelines", "/api/v1/history?last=60", "/api/v1/history?last=3"]}
times.sort()
lines = [
    f"# Console: the pipelines page with {n} pipelines",
    "",
    f"{time.strftime('%Y-%m-%d')}, release build, {cores} cores; `bash benches/console_load.sh` "
    f"(PIPELINES={n} LOADS={loads}). Headless Chromium via Selenium; from navigation to a table "
    f"with every pipeline and its sparkline (the server runs the {n} pipelines meanwhile).",
    "",
    "| loads | median ms | fastest ms | slowest ms |",
    "|---|---|---|---|",
    f"| {loads} | {statistics.median(times):.0f} | {times[0]:.0f} | {times[-1]:.0f} |",
    "",
    "What the page fetches: " + ", ".join(f"`{p}` {s:,} bytes" for p, s in sizes.items())
    + " (the whole minute of samples at first, then the pipelines and the last 3 samples each second).",
    "",
]
open(out, "w").write("\n".join(lines))
print("\n".join(lines))
PY
