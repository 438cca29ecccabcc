"""Drives the web console in headless Chromium (the Debian packages chromium and
chromium-driver) through Selenium: reads the pipelines list, the rejected rows, a pipeline's
page, stops a pipeline with its button, and writes a screenshot of every page.

Usage: drive.py BASE_URL SCREENSHOT_DIR. Prints one JSON object of what the pages showed.
"""
import json
import os
import sys
import time

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

base, shots = sys.argv[1], sys.argv[2]
os.makedirs(shots, exist_ok=True)

options = Options()
options.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
for arg in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--window-size=1400,1000", "--lang=en-US"]:
    options.add_argument(arg)
options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
driver = webdriver.Chrome(
    service=Service(executable_path=os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")),
    options=options)


def until(what, probe, timeout=60):
    """Polls `probe` until it returns something truthy, with a deadline."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = probe()
            if value:
                return value
        except (StaleElementReferenceException, WebDriverException) as e:
            last = e
        time.sleep(0.1)
    driver.save_screenshot(os.path.join(shots, "timeout.png"))
    raise SystemExit(f"timed out waiting for {what} (last error: {last})\n{driver.page_source[:4000]}")


def number(text):
    return int(text.replace(",", "").strip())


def pipeline_rows():
    out = {}
    for tr in driver.find_elements(By.CSS_SELECTOR, "table#pipelines tbody tr[data-pipeline]"):
        cell = lambda cls: tr.find_element(By.CSS_SELECTOR, "td." + cls).text.strip()
        out[tr.get_attribute("data-pipeline")] = {
            "state": tr.find_element(By.CSS_SELECTOR, "td.state .badge").text.strip(),
            "health": tr.find_element(By.CSS_SELECTOR, "td.health .badge").text.strip(),
            "health_detail": cell("health"),
            "rows_in": number(cell("rows_in")),
            "rows_out": number(cell("rows_out")),
            "rows_errored": number(cell("rows_errored")),
        }
    return out


result = {}
try:
    # The pipelines list: every pipeline, its state and verdict.
    driver.get(base + "/")
    rows = until("three pipelines with verdicts", lambda: (lambda r: r if len(r) == 3 and r["live"]["health"] != "–" else None)(pipeline_rows()))
    result["list"] = rows
    driver.save_screenshot(os.path.join(shots, "1-pipelines.png"))
    # The filter narrows the list.
    driver.find_element(By.ID, "filter").send_keys("brok")
    result["filtered"] = until("the filtered list", lambda: (lambda r: list(r) if len(r) == 1 else None)(pipeline_rows()))
    driver.find_element(By.ID, "filter").clear()

    # Rejected rows of the file pipeline, with their file and line.
    driver.get(base + "/#/errors?pipeline=files")
    def rejected():
        trs = driver.find_elements(By.CSS_SELECTOR, "table#errors tbody tr")
        rows = [{c: tr.find_element(By.CSS_SELECTOR, "td." + c).text for c in ["pipeline", "position", "error", "raw"]}
                for tr in trs if tr.find_elements(By.CSS_SELECTOR, "td.raw")]
        return rows if len(rows) >= 2 else None
    result["errors"] = until("the rejected rows", rejected)
    result["raw_elements"] = len(driver.find_elements(By.CSS_SELECTOR, "td.raw *"))
    result["title"] = driver.title
    driver.save_screenshot(os.path.join(shots, "2-rejected-rows.png"))

    # The failed pipeline's page shows its error.
    driver.get(base + "/#/pipelines/broken")
    result["broken_error"] = until("the failed pipeline's error", lambda: driver.find_element(By.CSS_SELECTOR, ".controls .error").text)
    driver.save_screenshot(os.path.join(shots, "3-failed-pipeline.png"))

    # The streaming pipeline's page: its plan, charts and checkpoints; then STOP.
    driver.get(base + "/#/pipelines/live")
    until("the plan graph", lambda: len(driver.find_elements(By.CSS_SELECTOR, "#plan g.node")) >= 3)
    until("a rate on the plan's edges", lambda: any(t.text.endswith("/s") for t in driver.find_elements(By.CSS_SELECTOR, "#plan text.edge-label")))
    until("a checkpoint row", lambda: driver.find_elements(By.CSS_SELECTOR, "table#checkpoints tbody td.epoch"))
    result["plan_nodes"] = [g.get_attribute("data-node") for g in driver.find_elements(By.CSS_SELECTOR, "#plan g.node")]
    result["sql"] = driver.find_element(By.ID, "sql").text
    driver.save_screenshot(os.path.join(shots, "4-pipeline.png"))
    until("an enabled Stop button", lambda: driver.find_element(By.ID, "stop").is_enabled())
    driver.find_element(By.ID, "stop").click()
    until("the page to show the pipeline stopped", lambda: driver.find_element(By.CSS_SELECTOR, "h1 .badge").text == "stopped")
    result["start_enabled_after_stop"] = until("an enabled Start button", lambda: driver.find_element(By.ID, "start").is_enabled())

    # The list again, once it shows the stop: its counts are final now.
    driver.get(base + "/")
    result["after_stop"] = until("the stopped pipeline in the list", lambda: (lambda r: r if r.get("live", {}).get("state") == "stopped" else None)(pipeline_rows()))

    driver.get(base + "/#/sources")
    until("the sources table", lambda: driver.find_elements(By.CSS_SELECTOR, "table#sources tbody td.connector"))
    result["sources_text"] = driver.find_element(By.ID, "view").text
    driver.save_screenshot(os.path.join(shots, "5-sources-and-sinks.png"))

    driver.get(base + "/#/events")
    result["events"] = until("the stop in the events", lambda: (lambda t: t if "stopped after a final checkpoint" in t else None)(driver.find_element(By.CSS_SELECTOR, "table#events").text))
    driver.save_screenshot(os.path.join(shots, "6-events.png"))

    # What the browser logged as errors (a script error, a refused request, a CSP violation).
    result["console_errors"] = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
finally:
    driver.quit()
print(json.dumps(result))
