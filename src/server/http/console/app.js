// Tributary console: one page per hash route (#/, #/pipelines/NAME, #/errors, #/sources,
// #/events), each polling the JSON API under /api/v1 once a second while the tab is visible.
// No framework and nothing fetched from elsewhere: the binary embeds this file.
"use strict";

const POLL_MS = 1000;

// ---- DOM helpers: text always goes in as text nodes, never as HTML. ----

function h(tag, attrs, ...children) {
  return build(document.createElement(tag), attrs, children);
}

function svg(tag, attrs, ...children) {
  return build(document.createElementNS("http://www.w3.org/2000/svg", tag), attrs, children);
}

function build(el, attrs, children) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function replace(el, ...children) {
  el.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined));
}

// ---- The API. ----

async function api(path, options) {
  const response = await fetch("/api/v1" + path, {
    ...options,
    headers: { Accept: "application/json", ...(options && options.headers) },
  });
  const body = await response.json();
  if (!response.ok) {
    const e = body && body.error;
    throw new Error(e ? `${e.message} (SQLSTATE ${e.code})` : response.statusText);
  }
  return body;
}

function query(params) {
  const parts = Object.entries(params)
    .filter(([, v]) => v !== "" && v !== null && v !== undefined)
    .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(v)}`);
  return parts.length ? "?" + parts.join("&") : "";
}

// ---- Formatting. ----

function parseTime(text) {
  if (!text) return null;
  const iso = /[zZ]|[+-]\d\d:?\d\d$/.test(text) ? text : text + "Z";
  const t = Date.parse(iso);
  return Number.isNaN(t) ? null : t;
}

function count(n) {
  if (n === null || n === undefined) return "–";
  return Number(n).toLocaleString("en-US");
}

function short(n) {
  if (n === null || n === undefined || Number.isNaN(n)) return "–";
  const a = Math.abs(n);
  if (a >= 1e9) return (n / 1e9).toFixed(1) + "G";
  if (a >= 1e6) return (n / 1e6).toFixed(1) + "M";
  if (a >= 1e4) return (n / 1e3).toFixed(1) + "k";
  if (a >= 100 || Number.isInteger(n)) return String(Math.round(n));
  return n.toFixed(1);
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n : n.toFixed(1)) + " " + units[i];
}

function age(text) {
  const t = parseTime(text);
  if (t === null) return "–";
  return duration(Math.max(0, (Date.now() - t) / 1000)) + " ago";
}

function duration(s) {
  if (s < 60) return s.toFixed(0) + " s";
  if (s < 3600) return (s / 60).toFixed(0) + " min";
  if (s < 86400) return (s / 3600).toFixed(1) + " h";
  return (s / 86400).toFixed(1) + " d";
}

function clock(text) {
  const t = typeof text === "number" ? text : parseTime(text);
  return t === null ? "–" : new Date(t).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

function badge(value) {
  return h("span", { class: "badge " + (value || "") }, (value || "–").replace("_", " "));
}

// Whether sample `i` follows a restore: a run that starts again takes its counters from the
// last checkpoint, so they jump from 0 (or fall back); that step is no rows read.
function restored(samples, i) {
  const a = samples[i - 1], b = samples[i];
  return (a.epoch === 0 && b.epoch > 1) || b.epoch < a.epoch || b.rows_in < a.rows_in;
}

// Per-second rate of a counter over the last `window` samples, since the last restore.
function rate(samples, key, window = 5) {
  if (!samples || samples.length < 2) return null;
  const lastIndex = samples.length - 1;
  let start = Math.max(0, lastIndex - window);
  for (let i = lastIndex; i > start; i--) if (restored(samples, i)) { start = i; break; }
  const last = samples[lastIndex];
  const first = samples[start];
  const seconds = (last.at_ms - first.at_ms) / 1000;
  if (seconds <= 0) return null;
  return Math.max(0, last[key] - first[key]) / seconds;
}

function rateSeries(samples, key) {
  const out = [];
  for (let i = 1; i < samples.length; i++) {
    const dt = (samples[i].at_ms - samples[i - 1].at_ms) / 1000;
    if (dt > 0 && !restored(samples, i)) out.push([samples[i].at_ms, Math.max(0, samples[i][key] - samples[i - 1][key]) / dt]);
  }
  return out;
}

function sparkline(points) {
  const w = 90, hgt = 20;
  if (points.length < 2) return svg("svg", { class: "spark", viewBox: `0 0 ${w} ${hgt}` });
  const max = Math.max(1, ...points.map((p) => p[1]));
  const t0 = points[0][0], t1 = points[points.length - 1][0];
  const xy = points.map(([t, v]) =>
    `${(((t - t0) / Math.max(1, t1 - t0)) * w).toFixed(1)},${(hgt - 1 - (v / max) * (hgt - 2)).toFixed(1)}`);
  return svg("svg", { class: "spark", viewBox: `0 0 ${w} ${hgt}`, preserveAspectRatio: "none" },
    svg("polyline", { points: xy.join(" ") }));
}

// A line chart of `series` ([{label, cls, points: [[ms, value]]}]) over the time its points
// cover: at least a minute, at most the last 15.
function lineChart(title, series, format) {
  const w = 600, hgt = 140, left = 48, bottom = 16;
  const now = Date.now();
  const oldest = Math.min(now, ...series.flatMap((s) => s.points.map((p) => p[0])));
  const spanMs = Math.min(15 * 60 * 1000, Math.max(60 * 1000, now - oldest));
  const t0 = now - spanMs;
  const all = series.flatMap((s) => s.points.filter((p) => p[0] >= t0).map((p) => p[1]));
  const max = Math.max(1, ...all.filter((v) => v !== null && v !== undefined));
  const x = (t) => left + ((t - t0) / spanMs) * (w - left - 4);
  const y = (v) => 4 + (1 - v / max) * (hgt - bottom - 8);
  const lines = series.map((s) => {
    const pts = s.points.filter((p) => p[0] >= t0 && p[1] !== null && p[1] !== undefined);
    return svg("polyline", { class: s.cls, points: pts.map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`).join(" ") });
  });
  const chart = svg("svg", { viewBox: `0 0 ${w} ${hgt}`, preserveAspectRatio: "none" },
    svg("line", { class: "axis", x1: left, y1: y(0), x2: w, y2: y(0) }),
    svg("line", { class: "axis", x1: left, y1: y(max), x2: w, y2: y(max) }),
    svg("text", { class: "axis-text", x: 2, y: y(max) + 4 }, format(max)),
    svg("text", { class: "axis-text", x: 2, y: y(0) }, format(0)),
    svg("text", { class: "axis-text", x: left, y: hgt - 2 }, "−" + duration(spanMs / 1000)),
    svg("text", { class: "axis-text", x: w - 30, y: hgt - 2 }, "now"),
    lines);
  return h("div", { class: "chart" },
    h("div", { class: "title" }, title),
    chart,
    h("div", { class: "legend" }, series.map((s) => h("span", { class: "swatch-" + s.cls.slice(-1) }, "■ " + s.label))));
}

function table(columns, rows, options = {}) {
  const head = h("tr", {}, columns.map((c) => {
    const sorted = options.sort && options.sort.key === c.key;
    return h("th", {
      class: [c.num ? "num" : "", options.onsort && c.sort !== false ? "sortable" : "",
        sorted ? (options.sort.desc ? "sorted-desc" : "sorted-asc") : ""].join(" ").trim() || null,
      onclick: options.onsort && c.sort !== false ? () => options.onsort(c.key) : null,
    }, c.title);
  }));
  const body = rows.map((row) => h("tr", options.rowAttrs ? options.rowAttrs(row) : {},
    columns.map((c) => h("td", { class: [c.key, c.num ? "num" : "", c.cls || ""].join(" ").trim() },
      c.render ? c.render(row) : (row[c.key] ?? "–")))));
  return h("table", { id: options.id || null },
    h("thead", {}, head),
    h("tbody", {}, body.length ? body : h("tr", {}, h("td", { colspan: columns.length, class: "muted" }, options.empty || "None."))));
}

// ---- Routing and polling. ----

let current = null; // {stop()} of the view shown

function route() {
  const hash = location.hash.replace(/^#/, "") || "/";
  const [path, search] = hash.split("?");
  const params = new URLSearchParams(search || "");
  const parts = path.split("/").filter(Boolean).map((part) => {
    try { return decodeURIComponent(part); } catch { return part; }
  });
  if (current) current.stop();
  const view = document.getElementById("view");
  view.replaceChildren();
  let name = "pipelines";
  if (parts[0] === "pipelines" && parts[1]) { name = "pipelines"; current = pipelineView(view, parts[1]); }
  else if (parts[0] === "errors") { name = "errors"; current = errorsView(view, params); }
  else if (parts[0] === "sources") { name = "sources"; current = sourcesView(view); }
  else if (parts[0] === "events") { name = "events"; current = eventsView(view); }
  else current = pipelinesView(view);
  for (const a of document.querySelectorAll("header nav a")) a.classList.toggle("active", a.dataset.view === name);
}

// Calls `refresh` now and once a second while the page is visible, until stopped.
function poll(refresh) {
  let timer = null, stopped = false;
  const status = document.getElementById("status");
  async function tick() {
    if (stopped) return;
    if (document.visibilityState === "visible") {
      try {
        await refresh();
        status.textContent = "updated " + new Date().toLocaleTimeString();
        status.classList.remove("down");
      } catch (e) {
        status.textContent = "cannot reach the server: " + e.message;
        status.classList.add("down");
      }
    }
    if (!stopped) timer = setTimeout(tick, POLL_MS);
  }
  tick();
  return { stop() { stopped = true; clearTimeout(timer); } };
}

// ---- Pipelines. ----

function pipelinesView(view) {
  const sort = { key: "name", desc: false };
  const filter = h("input", { type: "search", id: "filter", placeholder: "Filter by name, source, sink, state or health" });
  const summary = h("span", { class: "muted", id: "summary" });
  const body = h("div");
  replace(view, h("h1", {}, "Pipelines"), h("div", { class: "controls" }, filter, summary), body);
  let last = { pipelines: [], history: {} };
  function render() {
    const words = filter.value.trim().toLowerCase();
    const rows = last.pipelines
      .map((p) => {
        const samples = last.history[p.name] || [];
        return { ...p, samples, rate_in: rate(samples, "rows_in"), rate_out: rate(samples, "rows_out"),
          rate_errored: rate(samples, "rows_errored"), lag: samples.length ? samples[samples.length - 1].lag : null };
      })
      .filter((p) => !words || [p.name, p.source, p.sink, p.state, p.health, p.mode].join(" ").toLowerCase().includes(words));
    rows.sort((a, b) => {
      let x = a[sort.key], y = b[sort.key];
      if (sort.key === "last_checkpoint_at") { x = parseTime(x) || 0; y = parseTime(y) || 0; }
      const c = x === y ? 0 : x === null || x === undefined ? -1 : y === null || y === undefined ? 1 : x < y ? -1 : 1;
      return sort.desc ? -c : c;
    });
    summary.textContent = `${rows.length} of ${last.pipelines.length} pipelines; ` +
      ["running", "failed", "stopped", "completed"].map((s) => `${last.pipelines.filter((p) => p.state === s).length} ${s}`).join(", ");
    replace(body, table([
      { key: "name", title: "Name", render: (p) => h("a", { href: "#/pipelines/" + encodeURIComponent(p.name) }, p.name) },
      { key: "mode", title: "Mode" },
      { key: "state", title: "State", render: (p) => badge(p.state) },
      { key: "health", title: "Health", cls: "wrap", render: (p) => [badge(p.health), p.health_detail ? h("div", { class: "detail" }, p.health_detail) : null] },
      { key: "rows_in", title: "Rows in", num: true, render: (p) => count(p.rows_in) },
      { key: "rows_out", title: "Rows out", num: true, render: (p) => count(p.rows_out) },
      { key: "rows_errored", title: "Rejected", num: true, render: (p) => p.rows_errored ? h("a", { href: "#/errors?pipeline=" + encodeURIComponent(p.name) }, count(p.rows_errored)) : "0" },
      { key: "rate_in", title: "In/s", num: true, render: (p) => [sparkline(rateSeries(p.samples, "rows_in")), " ", short(p.rate_in)] },
      { key: "rate_out", title: "Out/s", num: true, render: (p) => short(p.rate_out) },
      { key: "rate_errored", title: "Rejected/s", num: true, render: (p) => short(p.rate_errored) },
      { key: "lag", title: "Lag", num: true, render: (p) => p.lag === null ? "–" : count(p.lag) },
      { key: "last_checkpoint_at", title: "Last checkpoint", render: (p) => age(p.last_checkpoint_at) },
    ], rows, {
      id: "pipelines",
      sort,
      onsort: (key) => { sort.desc = sort.key === key ? !sort.desc : false; sort.key = key; render(); },
      rowAttrs: (p) => ({ "data-pipeline": p.name }),
      empty: last.pipelines.length ? "No pipeline matches." : "No pipelines yet: CREATE PIPELINE over psql.",
    }));
  }
  filter.addEventListener("input", render);
  // The last minute of samples, fetched whole at first (or after the tab was hidden) and then
  // three at a time: with hundreds of pipelines the whole minute is megabytes a second.
  let fetchedAt = 0;
  return poll(async () => {
    const since = Date.now() - fetchedAt;
    const whole = since > 30000;
    const lastN = whole ? 60 : Math.min(60, Math.ceil(since / 1000) + 2);
    const [pipelines, recent] = await Promise.all([api("/pipelines"), api("/history?last=" + lastN)]);
    fetchedAt = Date.now();
    const history = {};
    for (const [name, samples] of Object.entries(recent)) {
      const had = whole ? [] : last.history[name] || [];
      const newest = had.length ? had[had.length - 1].at_ms : -Infinity;
      history[name] = had.concat(samples.filter((s) => s.at_ms > newest)).slice(-60);
    }
    last = { pipelines, history };
    render();
  });
}

// ---- One pipeline. ----

function pipelineView(view, name) {
  const title = h("h1");
  const actions = h("div", { class: "controls" });
  const cards = h("div", { class: "cards" });
  const graph = h("div", { class: "graph", id: "plan" });
  const charts = h("div", { class: "charts" });
  const lag = h("div");
  const checkpoints = h("div");
  const sql = h("pre", { class: "sql", id: "sql" });
  const message = h("div", { class: "error", id: "action-error" });
  replace(view, title, actions, message, cards,
    h("h2", {}, "Plan"), graph, h("h2", {}, "Recent (up to 15 minutes)"), charts,
    h("h2", {}, "Lag per partition"), lag, h("h2", {}, "Checkpoints and sink commits"), checkpoints,
    h("h2", {}, "SQL"), sql);
  const opHistory = []; // [{at, ops: Map id -> {rows_in, rows_out}}], the last 10 s
  let busy = false;

  async function act(verb) {
    busy = true;
    for (const b of actions.querySelectorAll("button")) b.disabled = true;
    message.textContent = "";
    try {
      await api(`/pipelines/${encodeURIComponent(name)}/${verb}`, { method: "POST" });
    } catch (e) {
      message.textContent = `${verb.toUpperCase()} failed: ${e.message}`;
    }
    busy = false;
  }

  function render(p, history, operators, lags, cps, commits) {
    replace(title, name, badge(p.state), badge(p.health),
      h("span", { class: "detail" }, p.health_detail || ""));
    const running = p.state === "running";
    replace(actions,
      h("button", { id: "start", class: "start", disabled: running || busy, onclick: () => act("start") }, "Start"),
      h("button", { id: "stop", class: "stop", disabled: !running || busy, onclick: () => act("stop") }, "Stop"),
      h("a", { href: "#/errors?pipeline=" + encodeURIComponent(name) }, "Rejected rows"),
      p.error ? h("span", { class: "error" }, p.error) : null,
      p.warning ? h("span", { class: "detail" }, p.warning) : null);
    const lastLag = history.length ? history[history.length - 1].lag : null;
    const card = (label, value, id) => h("div", { class: "card" }, h("div", { class: "label" }, label), h("div", { class: "value", id }, value));
    replace(cards,
      card("Mode", p.mode || "–"),
      card("Rows in", count(p.rows_in), "rows-in"),
      card("Rows out", count(p.rows_out), "rows-out"),
      card("Rejected", count(p.rows_errored), "rows-errored"),
      card("Late", count(p.rows_late)),
      card("In / s", short(rate(history, "rows_in"))),
      card("Out / s", short(rate(history, "rows_out"))),
      card("Lag", lastLag === null ? "–" : count(lastLag)),
      card("Watermark", p.watermark ? clock(p.watermark) : "–"),
      card("Epoch", count(p.epoch)),
      card("Last checkpoint", age(p.last_checkpoint_at)),
      card("Phase", p.phase || "–"));
    replace(graph, planGraph(p, operators, history));
    const timed = (key) => commits.map((c) => [parseTime(c.at), c[key]]).filter((x) => x[0] !== null);
    replace(charts,
      lineChart("Rows per second", [
        { label: "in", cls: "line-a", points: rateSeries(history, "rows_in") },
        { label: "out", cls: "line-b", points: rateSeries(history, "rows_out") },
        { label: "rejected", cls: "line-c", points: rateSeries(history, "rows_errored") },
      ], short),
      lineChart("Lag (records, or WAL bytes for CDC)", [
        { label: "lag", cls: "line-a", points: history.map((s) => [s.at_ms, s.lag]) },
      ], short),
      lineChart("Checkpoint and sink commit duration (ms)", [
        { label: "checkpoint", cls: "line-c", points: timed("checkpoint_ms") },
        { label: "sink commit", cls: "line-a", points: timed("commit_ms") },
      ], short));
    replace(lag, table([
      { key: "source", title: "Source" },
      { key: "partition", title: "Partition" },
      { key: "position", title: "Position", num: true, render: (r) => r.position_lsn || count(r.position) },
      { key: "latest", title: "Latest", num: true, render: (r) => r.latest_lsn || count(r.latest) },
      { key: "lag", title: "Lag", num: true, render: (r) => r.position_lsn ? bytes(r.lag) : count(r.lag) },
      { key: "lag_seconds", title: "Behind", num: true, render: (r) => r.lag_seconds === null ? "–" : duration(r.lag_seconds) },
      { key: "confirmed", title: "Confirmed", render: (r) => r.confirmed_lsn || (r.confirmed === null ? "–" : count(r.confirmed)) },
      { key: "watermark", title: "Watermark", render: (r) => r.watermark ? clock(r.watermark) : "–" },
      { key: "idle", title: "Idle", render: (r) => r.idle ? "yes" : "no" },
    ], lags, { id: "lag", empty: "No source of this pipeline reports positions." }));
    // The commits since the engine started; before the first, the checkpoints kept on disk.
    const shown = commits.length ? commits : cps.map((c) => ({ ...c, checkpoint_ms: c.duration_ms, commit_ms: null, sink_commit: null }));
    replace(checkpoints, table([
      { key: "epoch", title: "Epoch", num: true },
      { key: "at", title: "At", render: (c) => clock(c.at) },
      { key: "checkpoint_ms", title: "Checkpoint", num: true, render: (c) => c.checkpoint_ms + " ms" },
      { key: "commit_ms", title: "Sink commit", num: true, render: (c) => c.commit_ms === null ? "–" : c.commit_ms + " ms" },
      { key: "bytes", title: "Checkpoint size", num: true, render: (c) => bytes(c.bytes) },
      { key: "rows_in", title: "Rows in", num: true, render: (c) => count(c.rows_in) },
      { key: "rows_out", title: "Rows out", num: true, render: (c) => count(c.rows_out) },
      { key: "sink_commit", title: "Made visible", cls: "wrap", render: (c) => c.sink_commit || "–" },
    ], shown.slice().reverse().slice(0, 20), { id: "checkpoints", empty: "No checkpoint yet." }));
    sql.textContent = p.query;
  }

  return poll(async () => {
    const n = encodeURIComponent(name);
    const [p, history, operators, lags, cps, commits] = await Promise.all([
      api(`/pipelines/${n}`), api(`/pipelines/${n}/history`), api(`/operators?pipeline=${n}`),
      api(`/lag?pipeline=${n}`), api(`/checkpoints?pipeline=${n}`), api(`/commits?pipeline=${n}`),
    ]);
    const now = Date.now();
    const ops = new Map();
    for (const o of operators) {
      const was = ops.get(o.operator) || { rows_in: 0, rows_out: 0 };
      ops.set(o.operator, { rows_in: was.rows_in + o.rows_in, rows_out: was.rows_out + o.rows_out });
    }
    opHistory.push({ at: now, ops });
    while (opHistory.length > 1 && now - opHistory[0].at > 30000) opHistory.shift();
    render(p, history, operators, lags, cps, commits);
  });

  // The plan as a graph: sources, operators (instances summed), the sink; each edge labelled
  // with rows per second over the last 30 s (operators count the rows of committed epochs, so
  // their rates show once the page has watched for 5 s), each operator coloured by its busy
  // ratio.
  function planGraph(p, operators, history) {
    const nodes = new Map(); // id -> {id, kind, label, inputs, busy, depth}
    for (const o of operators) {
      const n = nodes.get(o.operator);
      if (n) { n.busy = Math.max(n.busy, o.busy_ratio || 0); n.instances++; continue; }
      nodes.set(o.operator, { id: o.operator, kind: o.kind, inputs: o.inputs ? o.inputs.split(", ") : [],
        busy: o.busy_ratio || 0, instances: 1, state_bytes: 0 });
    }
    for (const o of operators) nodes.get(o.operator).state_bytes += o.state_bytes;
    const sources = (p.source || "").split(", ").filter(Boolean);
    const consumed = new Set([...nodes.values()].flatMap((n) => n.inputs.filter((i) => !i.startsWith("source:"))));
    const first = opHistory[0], last = opHistory[opHistory.length - 1];
    const seconds = first && last ? (last.at - first.at) / 1000 : 0;
    const opRate = (id, key) => {
      if (!first || seconds < 5 || !first.ops.has(id) || !last.ops.has(id)) return null;
      return Math.max(0, last.ops.get(id)[key] - first.ops.get(id)[key]) / seconds;
    };
    const edges = [];
    for (const n of nodes.values()) {
      for (const input of n.inputs) {
        // `source:<name>` or an operator's id.
        const fromOp = !input.startsWith("source:");
        const r = fromOp ? opRate(input, "rows_out")
          : n.inputs.length === 1 ? opRate(n.id, "rows_in")
          : sources.length === 1 ? rate(history, "rows_in", 10) : null;
        edges.push({ from: fromOp ? "op:" + input : "src:" + input.slice(7), to: "op:" + n.id, rate: r });
      }
    }
    const feeders = nodes.size ? [...nodes.values()].filter((n) => !consumed.has(n.id)).map((n) => "op:" + n.id) : sources.map((s) => "src:" + s);
    for (const f of feeders) edges.push({ from: f, to: "sink", rate: feeders.length === 1 ? rate(history, "rows_out", 10) : null });
    for (const s of sources) if (!edges.some((e) => e.from === "src:" + s)) edges.push({ from: "src:" + s, to: feeders.length ? feeders[0] : "sink", rate: null });

    // Columns by depth.
    const depth = new Map(sources.map((s) => ["src:" + s, 0]));
    for (const e of edges) if (e.from.startsWith("src:")) depth.set(e.from, 0);
    const depthOf = (key, seen = new Set()) => {
      if (depth.has(key)) return depth.get(key);
      if (seen.has(key)) return 0;
      seen.add(key);
      const ins = edges.filter((e) => e.to === key).map((e) => depthOf(e.from, seen));
      const d = ins.length ? Math.max(...ins) + 1 : 0;
      depth.set(key, d);
      return d;
    };
    const keys = [...new Set(edges.flatMap((e) => [e.from, e.to]))];
    keys.forEach((k) => depthOf(k));
    if (!keys.length) return h("p", { class: "muted" }, "No plan to show yet.");
    const columns = [];
    for (const k of keys) (columns[depth.get(k)] ||= []).push(k);
    for (let i = 0; i < columns.length; i++) columns[i] ||= [];
    const boxW = 160, boxH = 46, gapX = 70, gapY = 24;
    const pos = new Map();
    columns.forEach((col, ci) => col.forEach((k, ri) => pos.set(k, { x: 10 + ci * (boxW + gapX), y: 10 + ri * (boxH + gapY) })));
    const width = 20 + columns.length * (boxW + gapX) - gapX;
    const height = 20 + Math.max(1, ...columns.map((c) => c.length)) * (boxH + gapY) - gapY;
    const g = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}` },
      svg("defs", {}, svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto" },
        svg("path", { d: "M0,0 L10,5 L0,10 z", fill: "#8d98b0" }))));
    for (const e of edges) {
      const a = pos.get(e.from), b = pos.get(e.to);
      const x1 = a.x + boxW, y1 = a.y + boxH / 2, x2 = b.x, y2 = b.y + boxH / 2;
      const mx = (x1 + x2) / 2;
      g.append(svg("path", { class: "edge", d: `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}` }),
        svg("text", { class: "edge-label", x: mx - 20, y: (y1 + y2) / 2 - 5 }, e.rate === null ? "" : short(e.rate) + "/s"));
    }
    for (const k of keys) {
      const { x, y } = pos.get(k);
      let fill = "#eef1f7", label, sub;
      if (k === "sink") { label = "sink " + p.sink; sub = "rows out " + count(p.rows_out); }
      else if (k.startsWith("src:")) { label = "source " + k.slice(4); sub = sources.length === 1 ? "rows in " + count(p.rows_in) : ""; }
      else if (!nodes.has(k.slice(3))) { label = "operator " + k.slice(3); sub = "not running"; }
      else {
        const n = nodes.get(k.slice(3));
        const b = Math.min(1, Math.max(0, n.busy));
        fill = `hsl(${Math.round(120 * (1 - b))}, 65%, 86%)`;
        label = n.kind.replace(/_/g, " ");
        sub = `busy ${(b * 100).toFixed(0)}%` + (n.instances > 1 ? ` · ×${n.instances}` : "") + (n.state_bytes ? ` · state ${bytes(n.state_bytes)}` : "");
      }
      g.append(svg("g", { class: "node", "data-node": k },
        svg("title", {}, k.startsWith("op:") ? "operator " + k.slice(3) : label),
        svg("rect", { x, y, width: boxW, height: boxH, fill }),
        svg("text", { x: x + 8, y: y + 18 }, label.length > 22 ? label.slice(0, 21) + "…" : label),
        svg("text", { class: "sub", x: x + 8, y: y + 35 }, sub)));
    }
    return g;
  }
}

// ---- Rejected rows. ----

function errorsView(view, params) {
  const inputs = {
    pipeline: h("input", { type: "text", id: "f-pipeline", placeholder: "pipeline", value: params.get("pipeline") || "" }),
    source: h("input", { type: "text", id: "f-source", placeholder: "source", value: params.get("source") || "" }),
    message: h("input", { type: "search", id: "f-message", placeholder: "message contains" }),
  };
  const summary = h("span", { class: "muted" });
  const body = h("div");
  replace(view, h("h1", {}, "Rejected rows"),
    h("div", { class: "controls" }, Object.values(inputs), summary), body);
  for (const i of Object.values(inputs)) i.addEventListener("input", () => refresh().catch(() => {}));
  let asked = 0; // answers to older filters are dropped
  async function refresh() {
    const ask = ++asked;
    const rows = await api("/errors" + query({
      pipeline: inputs.pipeline.value.trim(), source: inputs.source.value.trim(),
      message: inputs.message.value, limit: 500,
    }));
    if (ask !== asked) return;
    summary.textContent = rows.length === 500 ? "the last 500" : `${rows.length} rows`;
    replace(body, table([
      { key: "at", title: "At", render: (r) => clock(r.at) },
      { key: "pipeline", title: "Pipeline", render: (r) => h("a", { href: "#/pipelines/" + encodeURIComponent(r.pipeline) }, r.pipeline) },
      { key: "source", title: "Source" },
      { key: "position", title: "Position" },
      { key: "error", title: "Error", cls: "wrap" },
      { key: "raw", title: "Raw record", cls: "wrap raw" },
    ], rows.slice().reverse(), { id: "errors", empty: "No rejected rows." }));
  }
  return poll(refresh);
}

// ---- Sources and sinks. ----

function sourcesView(view) {
  const body = h("div");
  replace(view, h("h1", {}, "Sources and sinks"), body);
  return poll(async () => {
    const [sources, sinks, pipelines] = await Promise.all([api("/sources"), api("/sinks"), api("/pipelines")]);
    const users = (pred) => pipelines.filter(pred).map((p, i) => [i ? ", " : "", h("a", { href: "#/pipelines/" + encodeURIComponent(p.name) }, p.name)]);
    replace(body,
      h("h2", {}, "Sources"),
      table([
        { key: "name", title: "Name" },
        { key: "connector", title: "Connector" },
        { key: "options", title: "Options (secrets redacted)", cls: "wrap" },
        { key: "schema", title: "Schema", cls: "wrap" },
        { key: "used", title: "Used by", render: (s) => users((p) => (p.source || "").split(", ").includes(s.name)) },
      ], sources, { id: "sources" }),
      h("h2", {}, "Sinks"),
      table([
        { key: "name", title: "Name" },
        { key: "connector", title: "Connector" },
        { key: "options", title: "Options (secrets redacted)", cls: "wrap" },
        { key: "used", title: "Used by", render: (s) => users((p) => p.sink === s.name) },
      ], sinks, { id: "sinks" }));
  });
}

// ---- Events. ----

function eventsView(view) {
  const filter = h("input", { type: "search", id: "f-events", placeholder: "Filter by object, kind or message" });
  const body = h("div");
  replace(view, h("h1", {}, "Events"), h("div", { class: "controls" }, filter), body);
  let rows = [];
  function render() {
    const words = filter.value.trim().toLowerCase();
    const shown = rows.filter((e) => !words || [e.kind, e.object, e.message].join(" ").toLowerCase().includes(words));
    replace(body, table([
      { key: "at", title: "At", render: (e) => clock(e.at) },
      { key: "kind", title: "Kind", render: (e) => badge(e.kind) },
      { key: "object_kind", title: "Of" },
      { key: "object", title: "Name", render: (e) => e.object_kind === "pipeline" ? h("a", { href: "#/pipelines/" + encodeURIComponent(e.object) }, e.object) : e.object },
      { key: "message", title: "Message", cls: "wrap" },
    ], shown, { id: "events", empty: "No events." }));
  }
  filter.addEventListener("input", render);
  return poll(async () => {
    rows = (await api("/events?limit=1000")).reverse();
    render();
  });
}

window.addEventListener("hashchange", route);
route();
