// digitlab serve: the page. Plain JavaScript, no libraries; charts are drawn as SVG from the
// JSON endpoints (documented in the README and in digitlab/serve/app.py).
"use strict";

const $ = (sel, el = document) => el.querySelector(sel);
const $$ = (sel, el = document) => Array.from(el.querySelectorAll(sel));
const ESC = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ESC[c]);
const enc = encodeURIComponent;
const view = () => $("#view");
const COLORS = ["#2b6cb0", "#c05621", "#2f855a", "#805ad5", "#b83280", "#2c7a7b", "#975a16",
  "#4a5568", "#e53e3e", "#38a169", "#d69e2e", "#3182ce"];
const SPLITS = { train: "#2b6cb0", val: "#c05621", test: "#2f855a" };
let pollTimer = null;
let routeToken = 0;

async function getJSON(url, options) {
  const r = await fetch(url, options);
  let body = null;
  try { body = await r.json(); } catch (e) { body = null; }
  if (!r.ok) throw new Error((body && body.error) || `${r.status} ${r.statusText}`);
  return body;
}

const fmt = {
  acc: (v) => (v == null ? "–" : (100 * v).toFixed(2) + "%"),
  num: (v, d = 3) => (v == null ? "–" : Number(v).toPrecision(d).replace(/\.?0+(e|$)/, "$1")),
  secs: (v) => (v == null ? "–" : v < 60 ? v.toFixed(1) + " s" : v < 3600 ? (v / 60).toFixed(1) + " min" : (v / 3600).toFixed(1) + " h"),
  ago: (t) => {
    if (t == null) return "–";
    const s = Date.now() / 1000 - t;
    if (s < 60) return Math.max(0, Math.round(s)) + " s ago";
    if (s < 3600) return Math.round(s / 60) + " min ago";
    if (s < 86400) return Math.round(s / 3600) + " h ago";
    return new Date(t * 1000).toISOString().slice(0, 10);
  },
  value: (v) => (v == null ? "–" : Array.isArray(v) ? "[" + v.join(", ") + "]" : typeof v === "number" ? (Number.isInteger(v) ? String(v) : String(+v.toPrecision(6))) : String(v)),
};
const badge = (s) => `<span class="badge ${esc(String(s).replace(/ /g, "-"))}">${esc(s)}</span>`;

// ------------------------------------------------------------------------------ charts
function niceTicks(lo, hi, n) {
  const span = hi - lo || Math.abs(hi) || 1;
  const raw = span / n;
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => span / s <= n) || 10 * mag;
  const out = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) out.push(+t.toPrecision(12));
  return out;
}

// Charts drawn so far (for the hover read-out); emptied when the page changes.
const CHARTS = [];

// Hovering a chart shows the values of every series at the nearest evaluation.
document.addEventListener("mousemove", (e) => {
  const tip = $("#tooltip");
  const svg = e.target.closest && e.target.closest("svg.chart");
  if (!svg || !CHARTS[+svg.dataset.chart]) { tip.hidden = true; return; }
  const c = CHARTS[+svg.dataset.chart];
  const r = svg.getBoundingClientRect();
  const px = ((e.clientX - r.left) / r.width) * c.W;
  const x = c.x0 + ((px - c.m.l) / (c.W - c.m.l - c.m.r)) * (c.x1 - c.x0);
  const lines = [];
  let at = null;
  for (const s of c.series) {
    let best = -1;
    s.xs.forEach((v, i) => { if (v != null && s.ys[i] != null && (best < 0 || Math.abs(v - x) < Math.abs(s.xs[best] - x))) best = i; });
    if (best < 0) continue;
    at = at ?? s.xs[best];
    lines.push(`<span style="color:${s.color}">■</span> ${esc(s.name)}: ${esc(c.yfmt(s.ys[best]))}`);
  }
  if (!lines.length) { tip.hidden = true; return; }
  tip.innerHTML = `<b>${esc(c.xlabel)} ${esc(fmt.num(at, 4))}</b><br>${lines.join("<br>")}`;
  tip.style.left = `${e.clientX + 14}px`;
  tip.style.top = `${e.clientY + 14}px`;
  tip.hidden = false;
});

// series: [{name, color, dash, xs, ys}]; returns an SVG string (empty-state text if no data).
function lineChart(series, opts = {}) {
  const raw = [series, opts];
  if (typeof chartView === "function") [series, opts] = chartView(series, opts); // log y, smoothing (chart-options.js)
  const W = opts.width || 600, H = opts.height || 270;
  const m = { l: 66, r: 14, t: 12, b: 38 };
  const pts = [];
  for (const s of series) s.xs.forEach((x, i) => { const y = s.ys[i]; if (x != null && y != null && isFinite(y)) pts.push([x, y]); });
  if (!pts.length) return `<p class="muted">${esc(opts.empty || "no data yet")}</p>`;
  let [x0, x1] = [Math.min(...pts.map((p) => p[0])), Math.max(...pts.map((p) => p[0]))];
  let [y0, y1] = [Math.min(...pts.map((p) => p[1])), Math.max(...pts.map((p) => p[1]))];
  if (opts.y0 != null) y0 = Math.min(y0, opts.y0);
  if (opts.y1 != null) y1 = Math.max(y1, opts.y1);
  for (const gd of opts.guides || []) { y0 = Math.min(y0, gd); y1 = Math.max(y1, gd); }
  if (x1 === x0) { x0 -= 0.5; x1 += 0.5; }
  if (y1 === y0) { const d = Math.abs(y0) * 0.1 || 1; y0 -= d; y1 += d; }
  const pad = (y1 - y0) * 0.05; y0 -= opts.y0 === 0 && y0 >= 0 ? 0 : pad; y1 += pad;
  const X = (x) => m.l + ((x - x0) / (x1 - x0)) * (W - m.l - m.r);
  const Y = (y) => H - m.b - ((y - y0) / (y1 - y0)) * (H - m.t - m.b);
  const yfmt = opts.yfmt || ((v) => fmt.num(v, 3));
  const chartId = CHARTS.push({ series, X, x0, x1, W, m, yfmt, xlabel: opts.xlabel || "x", raw }) - 1;
  let g = `<svg class="chart" data-chart="${chartId}" viewBox="0 0 ${W} ${H}" role="img" aria-label="${esc(opts.ylabel || "")}">`;
  g += `<g class="grid">`;
  const yt = niceTicks(y0, y1, 5), xt = niceTicks(x0, x1, 6);
  for (const t of yt) g += `<line x1="${m.l}" x2="${W - m.r}" y1="${Y(t)}" y2="${Y(t)}"/>`;
  g += `</g><g class="axis">`;
  g += `<line x1="${m.l}" x2="${m.l}" y1="${m.t}" y2="${H - m.b}"/><line x1="${m.l}" x2="${W - m.r}" y1="${H - m.b}" y2="${H - m.b}"/>`;
  for (const t of yt) g += `<text x="${m.l - 6}" y="${Y(t) + 4}" text-anchor="end">${esc(yfmt(t))}</text>`;
  for (const t of xt) g += `<line x1="${X(t)}" x2="${X(t)}" y1="${H - m.b}" y2="${H - m.b + 4}"/><text x="${X(t)}" y="${H - m.b + 16}" text-anchor="middle">${esc(fmt.num(t, 4))}</text>`;
  g += `<text x="${(W + m.l) / 2}" y="${H - 4}" text-anchor="middle">${esc(opts.xlabel || "")}</text>`;
  g += `<text transform="translate(12 ${(H - m.b + m.t) / 2}) rotate(-90)" text-anchor="middle">${esc(opts.ylabel || "")}</text>`;
  g += `</g>`;
  for (const gd of opts.guides || []) g += `<line class="guide" x1="${m.l}" x2="${W - m.r}" y1="${Y(gd)}" y2="${Y(gd)}"/>`;
  for (const s of series) {
    let d = "", pen = "M";
    s.xs.forEach((x, i) => {
      const y = s.ys[i];
      if (x == null || y == null || !isFinite(y)) { pen = "M"; return; }
      d += `${pen}${X(x).toFixed(1)} ${Y(y).toFixed(1)}`; pen = "L";
    });
    if (!d) continue;
    const dash = s.dash ? ` stroke-dasharray="${s.dash}"` : "";
    g += `<path class="line" d="${d}" stroke="${s.color}"${dash}><title>${esc(s.name)}</title></path>`;
    const last = s.ys.length - 1;
    if (s.xs.length === 1 || s.marker) g += `<circle cx="${X(s.xs[last])}" cy="${Y(s.ys[last])}" r="3" fill="${s.color}"/>`;
  }
  g += `</svg>`;
  const legend = series.filter((s) => s.ys.some((v) => v != null))
    .map((s) => `<span><i style="background:${s.color}"></i>${esc(s.name)}</span>`).join("");
  return g + `<div class="legend">${legend}</div>` + (opts.tools || "");
}

function xAxis(cols) {
  if (cols.epoch && cols.epoch.length && cols.epoch.every((v) => v != null)) return [cols.epoch, "epoch"];
  return [cols.step || [], "step"];
}

// ------------------------------------------------------------------------------ router
// Pages added by other scripts (sweeps.js, experiments.js): name -> {nav, show(params, token)}.
const PAGES = {};

function route() {
  clearTimeout(pollTimer);
  CHARTS.length = 0;
  routeToken += 1;
  const [path, query] = location.hash.replace(/^#/, "").split("?");
  const params = new URLSearchParams(query || "");
  const page = (path || "/runs").split("/")[1] || "runs";
  const added = PAGES[page];
  $$("nav a").forEach((a) => a.classList.toggle("active", a.dataset.nav === (page === "run" ? "runs" : added ? added.nav : page)));
  const token = routeToken;
  const fail = (e) => { if (token === routeToken) view().innerHTML = `<div class="card error">${esc(e.message)}</div>`; };
  if (page === "run") showRun(params.get("id"), token).catch(fail);
  else if (page === "compare") showCompare(params.get("ids"), token).catch(fail);
  else if (page === "draw") showDraw(token).catch(fail);
  else if (page === "train") showTrain(token).catch(fail); // train.js
  else if (added) added.show(params, token).catch(fail);
  else showRuns(token).catch(fail);
}
window.addEventListener("hashchange", route);
window.addEventListener("DOMContentLoaded", route);

// ------------------------------------------------------------------------------ runs page
const selected = new Set(JSON.parse(sessionStorage.getItem("selected") || "[]"));
const saveSelected = () => sessionStorage.setItem("selected", JSON.stringify([...selected]));
const runsState = { sort: "updated", asc: false, filter: "", status: "", runs: [] };

function modelName(s) {
  if (!s.model) return "?";
  if (s.model === "mlp") return `mlp ${(s.hidden || []).join("-")} ${s.activation || ""}`.trim();
  return s.model;
}
function optimizerName(s) {
  const o = s.optimizer || "sgd";
  return o === "sgd" && s.momentum ? `sgd m=${s.momentum}` : o;
}
function penalty(s) {
  if (s.l1 && s.l2) return `L1 ${s.l1} + L2 ${s.l2}`;
  if (s.l1) return `L1 ${s.l1}`;
  if (s.l2) return `L2 ${s.l2}`;
  return "–";
}

const RUN_COLUMNS = [
  { key: "id", label: "run", get: (r) => r.id },
  { key: "model", label: "model", get: (r) => modelName(r.settings) },
  { key: "dataset", label: "dataset", get: (r) => r.settings.dataset || "" },
  { key: "optimizer", label: "optimiser", get: (r) => optimizerName(r.settings) },
  { key: "lr", label: "lr", num: true, get: (r) => r.settings.lr },
  { key: "batch", label: "batch", get: (r) => r.settings.batch },
  { key: "penalty", label: "penalty", get: (r) => penalty(r.settings) },
  { key: "best_val_acc", label: "best val", num: true, get: (r) => r.best_val_acc, show: fmt.acc },
  { key: "test_acc", label: "test", num: true, get: (r) => r.test_acc, show: fmt.acc },
  { key: "epochs", label: "epochs", num: true, get: (r) => r.epochs, show: (v) => fmt.num(v, 4) },
  { key: "seconds", label: "time", num: true, get: (r) => r.seconds, show: fmt.secs },
  { key: "status", label: "status", get: (r) => r.status, show: badge },
  { key: "updated", label: "updated", num: true, get: (r) => r.updated, show: fmt.ago },
];

async function showRuns(token) {
  const data = await getJSON("/api/runs");
  if (token !== routeToken) return;
  const t0 = performance.now();
  $("#root").textContent = data.root;
  runsState.runs = data.runs;
  for (const r of data.runs) {
    r._text = [r.id, r.experiment, r.member, modelName(r.settings), r.settings.dataset, r.status,
      optimizerName(r.settings)].join(" ").toLowerCase();
  }
  const statuses = [...new Set(data.runs.map((r) => r.status))].sort();
  view().innerHTML = `
    <div class="row" style="margin-bottom:12px">
      <input id="filter" type="search" placeholder="filter: words in id, model, dataset, status…" value="${esc(runsState.filter)}">
      <select id="status"><option value="">any status</option>${statuses.map((s) => `<option${s === runsState.status ? " selected" : ""}>${esc(s)}</option>`).join("")}</select>
      <span id="count" class="muted"></span><span class="spacer"></span>
      <button id="compare-btn">Compare selected</button>
    </div>
    <div class="table-wrap"><table class="runs" id="runs-table"><thead><tr><th data-key=""></th>${RUN_COLUMNS.map((c) => `<th data-key="${c.key}" class="${c.num ? "num" : ""}">${esc(c.label)}</th>`).join("")}</tr></thead><tbody></tbody></table></div>
    ${data.runs.length ? "" : `<div class="card muted" style="margin-top:12px">No runs under <span class="mono">${esc(data.root)}</span> yet. Train one with <span class="mono">digitlab train --out ${esc(data.root)}</span> or <span class="mono">digitlab reproduce</span>; this page picks it up by itself.</div>`}`;
  $("#filter").addEventListener("input", (e) => { runsState.filter = e.target.value; renderRunRows(); });
  $("#status").addEventListener("change", (e) => { runsState.status = e.target.value; renderRunRows(); });
  $("#compare-btn").addEventListener("click", () => { location.hash = `#/compare?ids=${enc([...selected].join(","))}`; });
  $("#runs-table thead").addEventListener("click", (e) => {
    const key = e.target.closest("th")?.dataset.key;
    if (!key) return;
    if (runsState.sort === key) runsState.asc = !runsState.asc; else { runsState.sort = key; runsState.asc = key === "id"; }
    renderRunRows();
  });
  $("#runs-table tbody").addEventListener("change", (e) => {
    if (!e.target.matches("input[type=checkbox]")) return;
    if (e.target.checked) selected.add(e.target.value); else selected.delete(e.target.value);
    saveSelected(); updateCompareButton();
  });
  renderRunRows();
  document.body.dataset.runsRenderMs = (performance.now() - t0).toFixed(1);
  document.body.dataset.runsShownAt = performance.now().toFixed(1); // ms since navigation
  pollTimer = setTimeout(() => refreshRuns(token), 5000);
}

async function refreshRuns(token) {
  if (token !== routeToken) return;
  try {
    const data = await getJSON("/api/runs");
    if (token !== routeToken) return;
    const key = (runs) => runs.map((r) => `${r.id}|${r.status}|${r.updated}|${r.n_evals}`).join("\n");
    if (key(data.runs) === key(runsState.runs)) return; // nothing changed: keep the table as it is
    for (const r of data.runs) r._text = [r.id, r.experiment, r.member, modelName(r.settings), r.settings.dataset, r.status, optimizerName(r.settings)].join(" ").toLowerCase();
    runsState.runs = data.runs;
    renderRunRows();
  } finally {
    if (token === routeToken) pollTimer = setTimeout(() => refreshRuns(token), 5000);
  }
}

function updateCompareButton() {
  const b = $("#compare-btn");
  if (b) { b.disabled = selected.size < 1; b.textContent = `Compare selected (${selected.size})`; }
}

function renderRunRows() {
  const words = runsState.filter.toLowerCase().split(/\s+/).filter(Boolean);
  let rows = runsState.runs.filter((r) => (!runsState.status || r.status === runsState.status) && words.every((w) => r._text.includes(w)));
  const col = RUN_COLUMNS.find((c) => c.key === runsState.sort) || RUN_COLUMNS[0];
  const dir = runsState.asc ? 1 : -1;
  rows = rows.map((r) => [col.get(r), r]);
  rows.sort((a, b) => {
    const [x, y] = [a[0], b[0]];
    if (x == null || x === "") return 1;
    if (y == null || y === "") return -1;
    return (typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y), undefined, { numeric: true })) * dir;
  });
  const html = rows.map(([, r]) => {
    const cells = RUN_COLUMNS.map((c) => {
      const v = c.get(r);
      if (c.key === "id") {
        const sub = r.experiment ? `<div class="muted">${esc(r.experiment)} · ${esc(r.member)}</div>` : "";
        return `<td class="id"><a href="#/run?id=${enc(r.id)}" title="${esc(r.id)}">${esc(r.id)}</a>${sub}</td>`;
      }
      if (c.key === "status") return `<td>${r.error ? `<span title="${esc(r.error)}">${badge("error")}</span>` : badge(v)}</td>`;
      return `<td class="${c.num ? "num" : ""}">${esc(c.show ? c.show(v) : fmt.value(v))}</td>`;
    }).join("");
    return `<tr data-id="${esc(r.id)}"><td><input type="checkbox" value="${esc(r.id)}"${selected.has(r.id) ? " checked" : ""} aria-label="select ${esc(r.id)}"></td>${cells}</tr>`;
  }).join("");
  $("#runs-table tbody").innerHTML = html;
  $$("#runs-table th").forEach((th) => {
    th.classList.toggle("sorted", th.dataset.key === runsState.sort);
    th.classList.toggle("asc", th.dataset.key === runsState.sort && runsState.asc);
  });
  $("#count").textContent = `${rows.length} of ${runsState.runs.length} runs`;
  updateCompareButton();
}

// ------------------------------------------------------------------------------ one run
function kvTable(obj, highlight) {
  const keys = Object.keys(obj || {});
  if (!keys.length) return `<p class="muted">none</p>`;
  return `<table class="kv">${keys.map((k) => {
    let v = obj[k];
    if (v && typeof v === "object" && !Array.isArray(v)) v = JSON.stringify(v);
    if (Array.isArray(v) && v.length > 12) v = `[${v.length} values]`;
    return `<tr class="${highlight && highlight.has(k) ? "diff" : ""}"><td>${esc(k)}</td><td>${esc(fmt.value(v))}</td></tr>`;
  }).join("")}</table>`;
}

function runStats(d) {
  const stat = (label, value) => `<div class="stat"><b>${esc(value)}</b><span>${esc(label)}</span></div>`;
  return stat("best validation", fmt.acc(d.best_val_acc)) + stat("test accuracy", fmt.acc(d.test_acc)) +
    stat("train accuracy", fmt.acc(d.train_acc)) + stat("epochs", fmt.num(d.epochs, 4)) +
    stat("steps", fmt.value(d.steps)) + stat("time", fmt.secs(d.seconds)) + stat("evaluations", d.n_evals);
}

function drawRunCharts(cols) {
  CHARTS.length = 0; // the run page's four charts are redrawn together
  const [xs, xlabel] = xAxis(cols);
  const split = (metric) => Object.keys(SPLITS).filter((s) => cols[`${s}_${metric}`])
    .map((s) => ({ name: s === "val" ? "validation" : s, color: SPLITS[s], xs, ys: cols[`${s}_${metric}`] }));
  $("#chart-loss").innerHTML = lineChart(split("loss"), { xlabel, ylabel: "cross-entropy loss" });
  $("#chart-acc").innerHTML = lineChart(split("acc"), { xlabel, ylabel: "accuracy", yfmt: (v) => (100 * v).toFixed(1) + "%" });
  $("#chart-lr").innerHTML = lineChart([{ name: "learning rate", color: "#805ad5", xs, ys: cols.lr || [] }], { xlabel, ylabel: "learning rate", y0: 0 });
  $("#chart-norm").innerHTML = lineChart([{ name: "weight L2 norm", color: "#2c7a7b", xs, ys: cols.weight_norm || [] }], { xlabel, ylabel: "weight norm", y0: 0 });
}

// ------------------------------------------------------------------------------ layers
// Per-layer statistics recorded in history.csv at each evaluation (digitlab.models.inspect):
// W{i}_norm, b{i}_norm, W{i}_grad_norm, W{i}_update_ratio, a{i}_mean/_std/_saturated/_dead,
// a{i}_hist00..15, bn{i}_running_mean/_var.
const LAYER_COLORS = ["#2b6cb0", "#c05621", "#2f855a", "#805ad5", "#b83280", "#2c7a7b"];
const HIST_BINS = 16;
const RATIO_RANGE = [1e-4, 1e-1];  // digitlab.models.inspect.RATIO_BAND (tests/test_serve_inside.py)
const WARNINGS = {
  dead: "Dead ReLUs output 0 for every probe image and get no gradient: usually a learning rate that is too high, or biases driven negative.",
  saturated: "Saturated units sit at the limits of tanh/sigmoid where the gradient vanishes: usually weights that are too large (a poor initialisation) or unscaled inputs.",
  high: "Each step changes the weights by more than a tenth of their size: the learning rate is usually too high.",
  low: "Each step changes the weights by less than 1/10,000 of their size: the learning rate is usually too low (or training has stalled).",
};

function layerIndices(cols, re) {
  // the layer numbers as strings ("" for a linear model's W and b), in order
  return Object.keys(cols).map((k) => k.match(re)).filter(Boolean).map((m) => m[1]).sort((a, b) => +a - +b);
}
const lastValue = (ys) => { for (let i = (ys || []).length - 1; i >= 0; i--) if (ys[i] != null) return ys[i]; return null; };
const log10s = (ys) => (ys || []).map((v) => (v != null && v > 0 ? Math.log10(v) : null));
const pow10 = (v) => fmt.num(Math.pow(10, v), 2);

// Warnings from the last evaluation: [{layer, kind, text}].
function layerWarnings(cols) {
  const out = [];
  for (const i of layerIndices(cols, /^a(\d+)_mean$/)) {
    for (const kind of ["dead", "saturated"]) {
      const v = lastValue(cols[`a${i}_${kind}`]);
      if (v != null && v > 0.5) out.push({ layer: i, kind, text: `hidden layer ${i}: ${(100 * v).toFixed(0)}% ${kind} units` });
    }
  }
  for (const i of layerIndices(cols, /^W(\d*)_update_ratio$/)) {
    const v = lastValue(cols[`W${i}_update_ratio`]);
    if (v == null) continue;
    if (v > RATIO_RANGE[1]) out.push({ layer: i, kind: "high", text: `W${i}: update/weight ratio ${fmt.num(v, 2)} > 0.1` });
    else if (v < RATIO_RANGE[0]) out.push({ layer: i, kind: "low", text: `W${i}: update/weight ratio ${fmt.num(v, 2)} < 0.0001` });
  }
  return out;
}

function warningsHtml(warnings) {
  if (!warnings.length) return `<p class="muted">No layer warnings: under 50% dead or saturated units and update/weight ratios in [1e-4, 1e-1] at the last evaluation.</p>`;
  return warnings.map((w) => `<div class="layer-warning" data-layer="${esc(w.layer)}" data-kind="${esc(w.kind)}"><span class="badge warn">${esc(w.text)}</span> <span>${esc(WARNINGS[w.kind])}</span></div>`).join("");
}

// Heat map of one hidden layer's activation histograms: evaluations (x) by bins (y, low at
// the bottom), each column scaled to its largest count.
function heatMap(cols, i, xs, xlabel, range) {
  const bins = [...Array(HIST_BINS).keys()].map((j) => cols[`a${i}_hist${String(j).padStart(2, "0")}`]);
  if (bins.some((b) => !b)) return "";
  const n = bins[0].length;
  if (!n) return `<p class="muted">no evaluations yet</p>`;
  const W = 600, H = 200, m = { l: 66, r: 14, t: 8, b: 34 };
  const picks = n > 200 ? [...Array(200).keys()].map((k) => Math.round((k * (n - 1)) / 199)) : [...Array(n).keys()];
  const cw = (W - m.l - m.r) / picks.length, ch = (H - m.t - m.b) / HIST_BINS;
  let g = `<svg class="chart heatmap" data-layer="${i}" viewBox="0 0 ${W} ${H}" role="img" aria-label="hidden layer ${i} activation histograms">`;
  picks.forEach((r, k) => {
    const counts = bins.map((b) => b[r] || 0);
    const top = Math.sqrt(Math.max(1, ...counts));
    counts.forEach((c, j) => {
      const a = (Math.sqrt(c) / top).toFixed(3);
      g += `<rect x="${(m.l + k * cw).toFixed(2)}" y="${(H - m.b - (j + 1) * ch).toFixed(2)}" width="${(cw + 0.3).toFixed(2)}" height="${(ch + 0.3).toFixed(2)}" fill="rgba(43,108,176,${a})"><title>${esc(xlabel)} ${esc(fmt.num(xs[r], 4))}, bin ${j}: ${esc(c)}</title></rect>`;
    });
  });
  const [lo, hi] = range;
  g += `<g class="axis"><line x1="${m.l}" x2="${m.l}" y1="${m.t}" y2="${H - m.b}"/><line x1="${m.l}" x2="${W - m.r}" y1="${H - m.b}" y2="${H - m.b}"/>`;
  g += `<text x="${m.l - 6}" y="${H - m.b}" text-anchor="end">${esc(fmt.num(lo, 3))}</text><text x="${m.l - 6}" y="${m.t + 10}" text-anchor="end">${esc(fmt.num(hi, 3))}</text>`;
  g += `<text x="${m.l}" y="${H - m.b + 16}" text-anchor="start">${esc(fmt.num(xs[picks[0]], 4))}</text><text x="${W - m.r}" y="${H - m.b + 16}" text-anchor="end">${esc(fmt.num(xs[picks[picks.length - 1]], 4))}</text>`;
  g += `<text x="${(W + m.l) / 2}" y="${H - 4}" text-anchor="middle">${esc(xlabel)}</text>`;
  g += `<text transform="translate(12 ${(H - m.b + m.t) / 2}) rotate(-90)" text-anchor="middle">activation</text></g></svg>`;
  return g;
}

// The run page's per-layer charts, heat maps and warnings (empty when none were recorded).
function drawLayers(cols, range) {
  const box = $("#layers");
  if (!box) return;
  const weights = layerIndices(cols, /^W(\d*)_norm$/);
  const hidden = layerIndices(cols, /^a(\d+)_mean$/);
  if (!weights.length && !hidden.length) { box.innerHTML = `<p class="muted">No per-layer statistics in this run's history.</p>`; return; }
  const [xs, xlabel] = xAxis(cols);
  const color = (i) => LAYER_COLORS[Math.max(0, (+i || 1) - 1) % LAYER_COLORS.length];
  const per = (idx, key, name, extra = {}) => idx.filter((i) => cols[key(i)]).map((i) => ({ name: name(i), color: color(i), xs, ys: cols[key(i)], ...extra }));
  const bn = layerIndices(cols, /^bn(\d+)_running_mean$/);
  const charts = [
    ["norms", "Weight and bias norms", per(weights, (i) => `W${i}_norm`, (i) => `W${i}`).concat(per(weights, (i) => `b${i}_norm`, (i) => `b${i}`, { dash: "4 3" })), { ylabel: "L2 norm", y0: 0 }],
    ["grad", "Gradient norms", per(weights, (i) => `W${i}_grad_norm`, (i) => `dW${i}`), { ylabel: "gradient L2 norm", y0: 0 }],
    ["ratio", "Update / weight ratio (log scale)", per(weights, (i) => `W${i}_update_ratio`, (i) => `W${i}`).map((s) => ({ ...s, ys: log10s(s.ys) })), { ylabel: "||ΔW|| / ||W||", yfmt: pow10, guides: [-4, -1], empty: "no positive ratio recorded: the weights did not move (ratio 0)" }],
    ["units", "Dead or saturated units", per(hidden, (i) => (cols[`a${i}_dead`] ? `a${i}_dead` : `a${i}_saturated`), (i) => `layer ${i} ${cols[`a${i}_dead`] ? "dead" : "saturated"}`), { ylabel: "fraction of units", y0: 0, y1: 1, guides: [0.5], yfmt: (v) => (100 * v).toFixed(0) + "%", empty: "this activation neither dies nor saturates" }],
    ["act", "Activation mean (solid) and std (dashed)", per(hidden, (i) => `a${i}_mean`, (i) => `layer ${i} mean`).concat(per(hidden, (i) => `a${i}_std`, (i) => `layer ${i} std`, { dash: "4 3" })), { ylabel: "activation" }],
  ];
  if (bn.length) charts.push(["bn", "Batch norm running mean (solid) and variance (dashed)", per(bn, (i) => `bn${i}_running_mean`, (i) => `bn${i} mean`).concat(per(bn, (i) => `bn${i}_running_var`, (i) => `bn${i} var`, { dash: "4 3" })), { ylabel: "mean over units" }]);
  const heat = hidden.map((i) => `<div class="card"><h2>Hidden layer ${i}: activation histograms over training</h2>${heatMap(cols, i, xs, xlabel, range)}<p class="muted">each column one evaluation on the probe batch, darker: more activations in that bin (square-root scale, per column)</p></div>`).join("");
  box.innerHTML = `<div id="layer-warnings">${warningsHtml(layerWarnings(cols))}</div>
    <div class="grid two">${charts.map(([key, title]) => `<div class="card"><h2>${esc(title)}</h2><div id="layer-${key}"></div></div>`).join("")}${heat}</div>`;
  for (const [key, , series, opts] of charts) $(`#layer-${key}`).innerHTML = lineChart(series, { xlabel, ...opts });
}

async function showRun(id, token) {
  if (!id) { location.hash = "#/runs"; return; }
  const d = await getJSON(`/api/run?id=${enc(id)}`);
  if (token !== routeToken) return;
  const v = Math.round((d.updated || 0) * 1000);
  const sub = d.experiment ? `experiment <b>${esc(d.experiment)}</b> · member <b>${esc(d.member)}</b> · ` : "";
  view().innerHTML = `
    <div class="row"><h1>${esc(d.id)}</h1><span id="run-status">${badge(d.status)}</span><span class="spacer"></span>
      <button class="secondary" id="add-compare">${selected.has(d.id) ? "Selected for comparison" : "Select for comparison"}</button></div>
    <div class="muted">${sub}${esc(modelName(d.settings))} on ${esc(d.settings.dataset || "?")}${d.stop_reason ? " · " + esc(d.stop_reason) : ""}</div>${d.error ? `<div class="card error">${esc(d.error)}</div>` : ""}
    <div class="stats" id="run-stats">${runStats(d)}</div>
    <div class="grid two">
      <div class="card"><h2>Loss</h2><div id="chart-loss"></div></div>
      <div class="card"><h2>Accuracy</h2><div id="chart-acc"></div></div>
      <div class="card"><h2>Learning rate</h2><div id="chart-lr"></div></div>
      <div class="card"><h2>Weight norm</h2><div id="chart-norm"></div></div>
    </div>
    <div class="card" style="margin-top:16px"><h2>Inside the network: per-layer statistics</h2><div id="layers" class="muted">loading…</div></div>
    <div class="card" style="margin-top:16px"><h2>Weights${d.kind === "mlp" ? " (first hidden units, input layer)" : " per class"}</h2>
      <div class="weights" id="weights">${d.weights.length ? d.weights.map((t, i) => `<figure><img alt="weights ${esc(t)}" src="/api/run/weights.png?id=${enc(d.id)}&unit=${i}&v=${v}"><figcaption>${esc(t)}</figcaption></figure>`).join("") : `<p class="muted">${esc(d.weights_error || "no checkpoint yet")}</p>`}</div>
      <p class="muted">red: positive weight, blue: negative, white: zero (each image scaled to its largest |weight|).</p></div>
    <div class="card"><h2>Confusion matrix (test split)</h2><div id="confusion" class="muted">${d.has_checkpoint ? "computing…" : "no checkpoint yet"}</div><div class="examples" id="examples"></div></div>
    <div class="grid two">
      <div class="card"><h2>Settings</h2>${kvTable(d.config)}</div>
      <div class="card"><h2>Metrics</h2>${kvTable(d.metrics ? Object.fromEntries(Object.entries(d.metrics).filter(([k]) => k !== "confusion_test")) : { status: d.status })}</div>
    </div>`;
  $("#add-compare").addEventListener("click", (e) => {
    if (selected.has(d.id)) selected.delete(d.id); else selected.add(d.id);
    saveSelected();
    e.target.textContent = selected.has(d.id) ? "Selected for comparison" : "Select for comparison";
  });
  const hist = await getJSON(`/api/run/history?id=${enc(id)}`);
  if (token !== routeToken) return;
  drawRunCharts(hist.columns);
  drawLayers(hist.columns, d.hist_range || [-4, 4]);
  if (d.has_checkpoint) loadConfusion(d.id, token);
  if (d.status === "running") pollTimer = setTimeout(() => followRun(id, token, d.status, d.hist_range), 2000);
}

async function followRun(id, token, lastStatus, range) {
  if (token !== routeToken) return;
  try {
    const hist = await getJSON(`/api/run/history?id=${enc(id)}`);
    if (token !== routeToken) return;
    drawRunCharts(hist.columns);
    drawLayers(hist.columns, range || [-4, 4]);
    $("#run-status").innerHTML = badge(hist.status);
    $("#run-stats").innerHTML = runStats(hist.summary);
    if (hist.status !== "running") { route(); return; } // finished: reload weights, confusion, metrics
  } catch (e) { /* keep polling: the run may be between two writes */ }
  if (token === routeToken) pollTimer = setTimeout(() => followRun(id, token, lastStatus, range), 2000);
}

async function loadConfusion(id, token) {
  const box = $("#confusion");
  let c;
  try { c = await getJSON(`/api/run/confusion?id=${enc(id)}`); } catch (e) { box.innerHTML = `<span class="error">${esc(e.message)}</span>`; return; }
  if (token !== routeToken) return;
  if (!c.matrix) { box.innerHTML = `<span class="error">${esc(c.error)}</span>`; return; }
  const k = c.classes.length;
  const rowMax = c.matrix.map((r) => Math.max(1, ...r));
  let h = `<table class="confusion" id="confusion-table"><tr><th>true \\ predicted</th>${c.classes.map((n) => `<th>${esc(n)}</th>`).join("")}</tr>`;
  for (let i = 0; i < k; i++) {
    h += `<tr><th>${esc(c.classes[i])}</th>`;
    for (let j = 0; j < k; j++) {
      const n = c.matrix[i][j];
      const a = n / rowMax[i];
      const bg = i === j ? `rgba(47,133,90,${(0.1 + 0.6 * a).toFixed(2)})` : n ? `rgba(197,48,48,${(0.12 + 0.75 * Math.min(1, (4 * n) / rowMax[i])).toFixed(2)})` : "transparent";
      const off = i !== j && n > 0 && c.examples[`${i},${j}`];
      h += `<td style="background:${bg}" class="${off ? "off" : ""}" data-t="${i}" data-p="${j}" title="true ${esc(c.classes[i])}, predicted ${esc(c.classes[j])}: ${esc(n)}">${esc(n || "")}</td>`;
    }
    h += `</tr>`;
  }
  h += `</table><p class="muted">${esc(c.source)}. ${c.error ? `<span class="error">${esc(c.error)}</span>` : "Click a red cell to see its misclassified test images."}</p>`;
  box.classList.remove("muted");
  box.innerHTML = h;
  box.addEventListener("click", (e) => {
    const td = e.target.closest("td.off");
    if (!td) return;
    $$("td.chosen", box).forEach((x) => x.classList.remove("chosen"));
    td.classList.add("chosen");
    const [t, p] = [td.dataset.t, td.dataset.p];
    const n = c.examples[`${t},${p}`].length;
    $("#examples").innerHTML = `<div><b>${n}</b> test image(s) of <b>${esc(c.classes[t])}</b> predicted as <b>${esc(c.classes[p])}</b>${n >= 48 ? " (first 48)" : ""}</div><img alt="misclassified examples" src="/api/run/examples.png?id=${enc(id)}&true=${t}&pred=${p}">`;
    const img = $("#examples img");
    img.addEventListener("load", () => { img.style.width = `${2 * img.naturalWidth}px`; });
  });
}

// ------------------------------------------------------------------------------ compare
async function showCompare(idsParam, token) {
  const ids = (idsParam || "").split(",").filter(Boolean);
  if (ids.length === 0) {
    view().innerHTML = `<div class="card"><h2>Compare runs</h2><p>Tick runs in the <a href="#/runs">runs table</a> (or “Select for comparison” on a run page), then press <b>Compare selected</b>.</p>
      ${selected.size ? `<p><a href="#/compare?ids=${enc([...selected].join(","))}">Compare the ${selected.size} selected run(s)</a></p>` : ""}</div>`;
    return;
  }
  const data = await getJSON(`/api/compare?ids=${enc(ids.join(","))}`);
  const hists = await Promise.all(ids.map((i) => getJSON(`/api/run/history?id=${enc(i)}`)));
  if (token !== routeToken) return;
  const color = (i) => COLORS[i % COLORS.length];
  const metrics = [["val_acc", "validation accuracy"], ["test_acc", "test accuracy"], ["val_loss", "validation loss"], ["train_loss", "training loss"]];
  const cards = metrics.map(([key, label]) => `<div class="card"><h2>${label}</h2><div id="cmp-${key}"></div></div>`).join("");
  const diff = new Set(data.differing);
  const header = data.runs.map((r, i) => `<th><i style="display:inline-block;width:10px;height:10px;background:${color(i)};border-radius:2px"></i> <a href="#/run?id=${enc(r.id)}">${esc(r.id)}</a></th>`).join("");
  const row = (label, f) => `<tr><td class="mono">${esc(label)}</td>${data.runs.map((r) => `<td>${f(r)}</td>`).join("")}</tr>`;
  view().innerHTML = `
    <div class="row"><h1>Compare ${ids.length} runs</h1><span class="spacer"></span><button class="secondary" id="clear-sel">Clear selection</button></div>
    <div class="grid two" style="margin-top:12px">${cards}</div>
    <div class="grid two" style="margin-top:16px" id="cmp-layers">${LAYER_COMPARE.map(([key, label]) => `<div class="card"><h2>${esc(label)}</h2><div id="cmp-${key}"></div></div>`).join("")}</div>
    <div class="card" style="margin-top:16px"><h2>Settings that differ (${data.differing.length}) and results</h2>
      <div style="overflow:auto"><table class="kv" id="diff-table"><tr><th></th>${header}</tr>
      ${data.differing.map((k) => `<tr class="diff"><td>${esc(k)}</td>${ids.map((i) => `<td>${esc(fmt.value(data.settings[i][k]))}</td>`).join("")}</tr>`).join("")}
      ${row("status", (r) => badge(r.status))}${row("best val", (r) => fmt.acc(r.best_val_acc))}${row("test", (r) => fmt.acc(r.test_acc))}
      ${row("epochs", (r) => fmt.num(r.epochs, 4))}${row("time", (r) => fmt.secs(r.seconds))}
      ${row("layer warnings", (r) => { const w = layerWarnings(hists[ids.indexOf(r.id)].columns); return w.length ? w.map((x) => `<span class="badge warn" title="${esc(WARNINGS[x.kind])}">${esc(x.text)}</span>`).join(" ") : "–"; })}
      </table></div>${data.differing.length ? "" : `<p class="muted">The runs have the same settings.</p>`}</div>
    <details class="card"><summary>All settings</summary>${kvTable(data.settings[ids[0]], diff)}</details>`;
  for (const [key, label] of metrics) {
    const series = hists.map((h, i) => { const [xs] = xAxis(h.columns); return { name: ids[i], color: color(i), xs, ys: h.columns[key] || [] }; });
    const acc = key.endsWith("acc");
    $(`#cmp-${key}`).innerHTML = lineChart(series, { xlabel: xAxis(hists[0].columns)[1], ylabel: label, yfmt: acc ? (v) => (100 * v).toFixed(1) + "%" : undefined, empty: `no ${label} recorded` });
  }
  for (const [key, label, pick, opts] of LAYER_COMPARE) {
    const series = [];
    hists.forEach((h, i) => {
      const [xs] = xAxis(h.columns);
      for (const [name, ys, dash] of pick(h.columns)) series.push({ name: `${ids[i]} ${name}`, color: color(i), dash, xs, ys });
    });
    $(`#cmp-${key}`).innerHTML = lineChart(series, { xlabel: xAxis(hists[0].columns)[1], ylabel: label, empty: "no per-layer statistics recorded", ...opts });
  }
  $("#clear-sel").addEventListener("click", () => { selected.clear(); saveSelected(); location.hash = "#/runs"; });
}

// Per-layer charts of the compare page: [key, title, columns -> [[name, ys, dash]], options];
// each run has its colour, layers after the first are dashed.
const LAYER_DASH = (i) => (i > 1 ? `${2 + 2 * i} 3` : undefined);
const LAYER_COMPARE = [
  ["layer-ratio", "Update / weight ratio per layer (log scale)", (c) => layerIndices(c, /^W(\d*)_update_ratio$/).map((i) => [`W${i}`, log10s(c[`W${i}_update_ratio`]), LAYER_DASH(i)]), { yfmt: pow10, guides: [-4, -1] }],
  ["layer-units", "Dead or saturated units per hidden layer", (c) => layerIndices(c, /^a(\d+)_mean$/).filter((i) => c[`a${i}_dead`] || c[`a${i}_saturated`]).map((i) => [`layer ${i}`, c[`a${i}_dead`] || c[`a${i}_saturated`], LAYER_DASH(i)]), { y0: 0, y1: 1, guides: [0.5], yfmt: (v) => (100 * v).toFixed(0) + "%" }],
  ["layer-norms", "Weight norm per layer", (c) => layerIndices(c, /^W(\d*)_norm$/).map((i) => [`W${i}`, c[`W${i}_norm`], LAYER_DASH(i)]), { y0: 0 }],
  ["layer-act", "Activation std per hidden layer", (c) => layerIndices(c, /^a(\d+)_std$/).map((i) => [`layer ${i}`, c[`a${i}_std`], LAYER_DASH(i)]), { y0: 0 }],
];

// ------------------------------------------------------------------------------ draw
const drawState = { dirty: false, inflight: false, pending: false, file: null, ink: false, timer: null, cls: "" };

async function showDraw(token) {
  const data = await getJSON("/api/runs");
  if (token !== routeToken) return;
  const usable = data.runs.filter((r) => r.has_checkpoint).sort((a, b) => (b.test_acc ?? -1) - (a.test_acc ?? -1));
  let chosen = JSON.parse(localStorage.getItem("drawRuns") || "[]").filter((i) => usable.some((r) => r.id === i));
  if (!chosen.length && usable.length) chosen = [usable[0].id];
  view().innerHTML = `
    <div class="draw">
      <div class="card">
        <h2>Draw a digit</h2>
        <canvas id="pad" width="280" height="280" aria-label="drawing pad"></canvas>
        <div class="row" style="margin-top:10px"><button id="clear">Clear</button>
          <label class="muted">or <input id="file" type="file" accept="image/*" style="width:190px"></label></div>
        <p class="muted">Draw with mouse, pen or finger, or drop an image file on the pad.</p>
        <h2 style="margin-top:14px">What the model sees</h2>
        <canvas id="seen" width="28" height="28"></canvas>
        <p class="muted" id="predict-info"></p>
      </div>
      <div>
        <div class="card"><h2>Checkpoints</h2>
          ${usable.length ? `<div class="checklist" id="models">${usable.map((r) => `<label><input type="checkbox" value="${esc(r.id)}"${chosen.includes(r.id) ? " checked" : ""}> ${esc(r.id)} <span class="muted">${esc(modelName(r.settings))} · ${esc(r.settings.dataset || "")} · test ${fmt.acc(r.test_acc)}</span></label>`).join("")}</div>`
            : `<p class="muted">No run with a checkpoint under ${esc(data.root)} yet.</p>`}
          <div class="row" style="margin-top:8px"><label class="muted">saliency also of class <select id="cls"><option value="">(predicted only)</option></select></label></div>
        </div>
        <div class="models" id="results"></div>
        <p class="error" id="draw-error"></p>
      </div>
    </div>`;
  const pad = $("#pad");
  const ctx = pad.getContext("2d");
  const clear = () => {
    ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, pad.width, pad.height);
    drawState.file = null; drawState.ink = false;
    $("#results").innerHTML = ""; $("#draw-error").textContent = ""; $("#predict-info").textContent = "";
    $("#seen").getContext("2d").clearRect(0, 0, 28, 28);
  };
  clear();
  ctx.lineCap = "round"; ctx.lineJoin = "round"; ctx.strokeStyle = "#000"; ctx.fillStyle = "#000";
  let last = null;
  const pos = (e) => { const r = pad.getBoundingClientRect(); return [(e.clientX - r.left) * pad.width / r.width, (e.clientY - r.top) * pad.height / r.height]; };
  const width = (e) => (e.pointerType === "pen" && e.pressure > 0 ? 10 + 20 * e.pressure : 20);
  const stroke = (a, b, w) => {
    ctx.fillStyle = "#000"; ctx.lineWidth = w;
    ctx.beginPath(); ctx.moveTo(a[0], a[1]); ctx.lineTo(b[0], b[1]); ctx.stroke();
  };
  pad.addEventListener("pointerdown", (e) => {
    e.preventDefault();
    pad.setPointerCapture(e.pointerId);
    drawState.file = null; drawState.ink = true;
    last = pos(e); stroke(last, last, width(e)); schedulePredict(false);
  });
  pad.addEventListener("pointermove", (e) => {
    if (!last) return;
    const events = e.getCoalescedEvents ? e.getCoalescedEvents() : [e];
    for (const ev of events.length ? events : [e]) { const p = pos(ev); stroke(last, p, width(ev)); last = p; }
    schedulePredict(false);
  });
  const up = () => { if (last) { last = null; schedulePredict(true); } };
  pad.addEventListener("pointerup", up);
  pad.addEventListener("pointercancel", up);
  $("#clear").addEventListener("click", clear);
  const useFile = (file) => {
    if (!file) return;
    drawState.file = file; drawState.ink = true;
    const url = URL.createObjectURL(file);
    const img = new Image();
    img.onload = () => {
      ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, pad.width, pad.height);
      const s = Math.min(pad.width / img.width, pad.height / img.height);
      ctx.drawImage(img, (pad.width - img.width * s) / 2, (pad.height - img.height * s) / 2, img.width * s, img.height * s);
      URL.revokeObjectURL(url);
    };
    img.src = url;
    schedulePredict(true);
  };
  $("#file").addEventListener("change", (e) => useFile(e.target.files[0]));
  pad.addEventListener("dragover", (e) => { e.preventDefault(); pad.classList.add("over"); });
  pad.addEventListener("dragleave", () => pad.classList.remove("over"));
  pad.addEventListener("drop", (e) => { e.preventDefault(); pad.classList.remove("over"); useFile(e.dataTransfer.files[0]); });
  $("#cls").addEventListener("change", (e) => { drawState.cls = e.target.value; schedulePredict(true); });
  const box = $("#models");
  if (box) box.addEventListener("change", () => {
    localStorage.setItem("drawRuns", JSON.stringify(chosenRuns()));
    schedulePredict(true);
  });
}

// The drawing as a grey 8-bit PNG, half the pad's size (140x140): the server's MNIST-style
// preprocessing costs time in proportion to the pixels and channels it gets, and the 20x20 box
// the digit ends up in needs no more. Falls back to the pad's own RGBA PNG without
// CompressionStream (zlib) in the browser.
const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();
function crc32(bytes) {
  let c = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]) & 255] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}
function pngChunk(type, data) {
  const out = new Uint8Array(12 + data.length);
  const dv = new DataView(out.buffer);
  dv.setUint32(0, data.length);
  out.set(new TextEncoder().encode(type), 4);
  out.set(data, 8);
  dv.setUint32(8 + data.length, crc32(out.subarray(4, 8 + data.length)));
  return out;
}
async function padImage(pad, side = 140) {
  if (typeof CompressionStream === "undefined") return new Promise((res) => pad.toBlob(res, "image/png"));
  const small = document.createElement("canvas");
  small.width = small.height = side;
  const ctx = small.getContext("2d");
  ctx.imageSmoothingEnabled = true; ctx.imageSmoothingQuality = "high";
  ctx.drawImage(pad, 0, 0, side, side);
  const rgba = ctx.getImageData(0, 0, side, side).data;
  const raw = new Uint8Array(side * (side + 1)); // filter byte 0, then the row's grey levels
  for (let y = 0; y < side; y++) {
    for (let x = 0; x < side; x++) {
      const i = 4 * (y * side + x);
      raw[y * (side + 1) + 1 + x] = Math.round(0.299 * rgba[i] + 0.587 * rgba[i + 1] + 0.114 * rgba[i + 2]);
    }
  }
  const zlib = new Uint8Array(await new Response(new Blob([raw]).stream().pipeThrough(new CompressionStream("deflate"))).arrayBuffer());
  const ihdr = new Uint8Array(13);
  new DataView(ihdr.buffer).setUint32(0, side);
  new DataView(ihdr.buffer).setUint32(4, side);
  ihdr.set([8, 0, 0, 0, 0], 8); // 8-bit grey, deflate, no filter, no interlace
  const signature = new Uint8Array([137, 80, 78, 71, 13, 10, 26, 10]);
  return new Blob([signature, pngChunk("IHDR", ihdr), pngChunk("IDAT", zlib), pngChunk("IEND", new Uint8Array())], { type: "image/png" });
}

function chosenRuns() { return $$("#models input:checked").map((i) => i.value); }

function schedulePredict(now) {
  if (!drawState.ink) return;
  drawState.dirty = true;
  if (drawState.inflight) { drawState.pending = true; return; }
  clearTimeout(drawState.timer);
  drawState.timer = setTimeout(sendPredict, now ? 0 : 60);
}

async function sendPredict() {
  const ids = chosenRuns();
  if (!ids.length) { $("#draw-error").textContent = "choose a checkpoint"; return; }
  drawState.inflight = true; drawState.pending = false; drawState.dirty = false;
  const pad = $("#pad");
  try {
    let body = drawState.file;
    if (body && body.size > 2 * 1024 * 1024) throw new Error("the image is larger than 2 MB");
    if (!body) body = await padImage(pad);
    window.digitlabLastUpload = body; // what was sent (the browser tests read it)
    const t0 = performance.now();
    const cls = drawState.cls ? `&cls=${enc(drawState.cls)}` : "";
    const r = await fetch(`/api/predict?ids=${enc(ids.join(","))}${cls}`, { method: "POST", body, headers: { "Content-Type": body.type || "application/octet-stream" } });
    const data = await r.json();
    if (!r.ok) throw new Error(data.error || r.statusText);
    if (!$("#pad")) return;
    $("#draw-error").textContent = "";
    showPrediction(data, performance.now() - t0);
  } catch (e) {
    if ($("#draw-error")) $("#draw-error").textContent = e.message;
  } finally {
    drawState.inflight = false;
    if (drawState.pending && $("#pad")) schedulePredict(true);
  }
}

function paintGrey(canvas, rows) {
  const [h, w] = [rows.length, rows[0].length];
  canvas.width = w; canvas.height = h;
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(w, h);
  rows.flat().forEach((v, i) => { const g = Math.round(255 * v); img.data.set([g, g, g, 255], 4 * i); });
  ctx.putImageData(img, 0, 0);
}

function paintDiverging(canvas, values, h, w, scale) {
  canvas.width = w; canvas.height = h;
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(w, h);
  values.forEach((v, i) => {
    const t = Math.max(-1, Math.min(1, v / scale));
    const p = Math.max(0, t), n = Math.max(0, -t);
    img.data.set([255 - n * 222 - p * 77, 255 - n * 153 - p * 231, 255 - n * 83 - p * 212, 255], 4 * i);
  });
  ctx.putImageData(img, 0, 0);
}

// The input (grey) with a diverging overlay of ``values`` (h*w, in [-1, 1]) blended over it.
function paintOverlay(canvas, image, values, h, w) {
  canvas.width = w; canvas.height = h;
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(w, h);
  const grey = image.flat();
  values.forEach((v, i) => {
    const g = 255 * (0.25 + 0.5 * (1 - grey[i])); // ink dark grey, background light
    const t = Math.max(-1, Math.min(1, v)), a = Math.abs(t);
    const c = t >= 0 ? [215, 38, 38] : [33, 102, 172];
    img.data.set([g + (c[0] - g) * a, g + (c[1] - g) * a, g + (c[2] - g) * a, 255], 4 * i);
  });
  ctx.putImageData(img, 0, 0);
}

function saliencyHtml(m, mi) {
  if (!m.saliency || !m.saliency.length) return "";
  const figs = m.saliency.map((s, si) => {
    const name = esc(m.classes[s.class]) + (s.class === m.pred ? " (predicted)" : "");
    return `<figure><canvas class="overlay" data-m="${mi}" data-s="${si}" data-class="${esc(m.classes[s.class])}"></canvas><figcaption>${name}: gradient × input</figcaption></figure>` +
      `<figure><canvas class="gradient" data-m="${mi}" data-s="${si}"></canvas><figcaption>${name}: gradient</figcaption></figure>`;
  }).join("");
  return `<h2 style="margin-top:12px">Saliency (input gradient of the class logit)</h2><div class="saliency">${figs}</div><p class="muted">red: more ink there raises the class's logit, blue: lowers it; the overlay weighs the gradient by the ink drawn.</p>`;
}

function hiddenHtml(m, mi) {
  if (!m.hidden || !m.hidden.length) return "";
  return `<h2 style="margin-top:12px">Hidden layers</h2>` + m.hidden.map((L, li) => {
    const units = L.top.map((u, ui) => {
      const bar = `<div class="unit-bar" style="width:${(100 * Math.max(0, Math.min(1, u.value / L.scale))).toFixed(0)}%"></div>`;
      const pic = u.weights ? `<canvas data-m="${mi}" data-l="${li}" data-u="${ui}"></canvas>` : "";
      return `<figure class="unit">${pic}${bar}<figcaption>unit ${esc(u.unit + 1)}: ${esc(fmt.num(u.value, 3))}</figcaption></figure>`;
    }).join("");
    return `<div class="hidden-layer" data-layer="${esc(L.layer)}"><div><b>layer ${esc(L.layer)}</b> <span class="muted">${esc(L.units)} ${esc(L.activation)} units${L.active != null ? ` · ${(100 * L.active).toFixed(0)}% active` : ""} · mean ${esc(fmt.num(L.mean, 3))}</span></div>` +
      `<canvas class="strip" data-m="${mi}" data-l="${li}"></canvas><div class="units">${units}</div></div>`;
  }).join("") + `<p class="muted">the most active units first${m.hidden[0].top.some((u) => u.weights) ? "; layer 1's units drawn as their input weights (red positive, blue negative)" : ""}; the strip shows every unit's activation.</p>`;
}

function paintInside(m, mi, image, h, w) {
  $$(`.saliency canvas.overlay[data-m="${mi}"]`).forEach((c) => paintOverlay(c, image, m.saliency[+c.dataset.s].times_input, h, w));
  $$(`.saliency canvas.gradient[data-m="${mi}"]`).forEach((c) => paintDiverging(c, m.saliency[+c.dataset.s].gradient, h, w, 1));
  (m.hidden || []).forEach((L, li) => {
    const strip = $(`canvas.strip[data-m="${mi}"][data-l="${li}"]`);
    if (strip) paintDiverging(strip, L.values, 1, L.values.length, 1);
    L.top.forEach((u, ui) => {
      const c = $(`canvas[data-m="${mi}"][data-l="${li}"][data-u="${ui}"]`);
      if (c && u.weights) paintDiverging(c, u.weights, h, w, 1);
    });
  });
}

function updateClassPicker(models) {
  const sel = $("#cls");
  if (!sel) return;
  const names = [...new Set(models.flatMap((m) => m.classes))];
  const have = Array.from(sel.options).slice(1).map((o) => o.value);
  if (have.join("\n") === names.join("\n")) return;
  sel.innerHTML = `<option value="">(predicted only)</option>` + names.map((n) => `<option${n === drawState.cls ? " selected" : ""}>${esc(n)}</option>`).join("");
}

function showPrediction(data, ms) {
  paintGrey($("#seen"), data.image);
  $("#predict-info").textContent = `round trip ${ms.toFixed(0)} ms (server ${data.ms.toFixed(1)} ms)`;
  const [h, w] = data.shape;
  updateClassPicker(data.models);
  $("#results").innerHTML = data.models.map((m, mi) => {
    const bars = m.classes.map((c, i) => `<div class="bar${i === m.pred ? " top" : ""}"><b>${esc(c)}</b><div class="track"><div class="fill" style="width:${(100 * m.probs[i]).toFixed(1)}%"></div></div><span class="p">${(100 * m.probs[i]).toFixed(1)}%</span></div>`).join("");
    const ev = m.evidence ? `<h2 style="margin-top:12px">Evidence (weight × input)</h2><div class="evidence">${m.evidence.map((_, i) => `<figure><canvas data-m="${mi}" data-i="${i}"></canvas><figcaption>${esc(m.evidence_titles[i])}: ${(m.evidence[i].reduce((a, b) => a + b, 0) + m.evidence_bias[i]).toFixed(2)}</figcaption></figure>`).join("")}</div><p class="muted">red pixels push towards the class, blue away; the number is the class's logit (sum + bias).</p>` : "";
    return `<div class="model" data-id="${esc(m.id)}"><div class="row"><div class="pred" data-label="${esc(m.label)}">${esc(m.label)}</div><div><div class="mono">${esc(m.id)}</div><div class="muted">${esc(m.kind)} · p = ${(100 * m.probs[m.pred]).toFixed(1)}%</div></div></div><div class="bars">${bars}</div>${saliencyHtml(m, mi)}${hiddenHtml(m, mi)}${ev}</div>`;
  }).join("");
  data.models.forEach((m, mi) => {
    if (m.image) paintInside(m, mi, m.image, m.image.length, m.image[0].length);
    else paintInside(m, mi, data.image, h, w);
    if (!m.evidence) return;
    const scale = Math.max(1e-12, ...m.evidence.map((row) => Math.max(...row.map(Math.abs))));
    $$(`canvas[data-m="${mi}"][data-i]`).forEach((c) => paintDiverging(c, m.evidence[+c.dataset.i], h, w, scale));
  });
}
