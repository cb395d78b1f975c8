// digitlab serve: the sweep page. Parallel coordinates of the settings that differ among the
// chosen runs, a final metric against one setting with each seed group's mean ± sd, and the
// groups' history curves as mean ± sd bands. Everything is computed by /api/sweep and
// /api/sweep/curves (digitlab/serve/sweeps.py); this file only draws SVG. Uses app.js's helpers
// ($, esc, enc, getJSON, fmt, niceTicks, COLORS, PAGES, routeToken, selected, view) and
// chart-options.js's emaSmooth.
"use strict";

const sweepState = { metric: null, x: null, column: "val_acc", ema: 0, log: {} };
const SW = { W: 900, H: 330, m: { l: 64, r: 20, t: 16, b: 42 } };
const groupColor = (g) => (g == null ? "#9aa3b2" : COLORS[g % COLORS.length]);
const swNum = (v) => (v == null ? "–" : fmt.value(v));

// A numeric scale from value to pixel over [r0, r1]. On a log scale values <= 0 have no place:
// with floor they sit at r0 (tick "≤0") and the positive values start 16 px further on.
function numScale(values, log, r0, r1, floor = false) {
  const ok = values.filter((v) => v != null && isFinite(v) && (!log || v > 0));
  if (!ok.length) return null;
  const t = (v) => (log ? Math.log10(v) : v);
  let lo = t(Math.min(...ok)), hi = t(Math.max(...ok));
  if (hi === lo) { const d = log ? 0.5 : Math.abs(lo) * 0.1 || 1; lo -= d; hi += d; }
  const pad = (hi - lo) * 0.06; lo -= pad; hi += pad;
  const low = log && floor && values.some((v) => v != null && v <= 0);
  const s0 = low ? r0 + 16 * Math.sign(r1 - r0) : r0;
  const f = (v) => {
    if (v == null || !isFinite(v)) return null;
    if (log && v <= 0) return low ? r0 : null;
    return s0 + ((t(v) - lo) / (hi - lo)) * (r1 - s0);
  };
  let ticks;
  if (log) {
    const p = []; for (let e = Math.ceil(lo); e <= Math.floor(hi); e++) p.push(e);
    ticks = (p.length >= 2 ? p : niceTicks(lo, hi, 4)).map((e) => ({ v: Math.pow(10, e), label: fmt.num(Math.pow(10, e), 2) }));
    if (low) ticks.unshift({ v: 0, label: "≤0", at: r0 });
  } else ticks = niceTicks(lo, hi, 5).map((v) => ({ v, label: fmt.num(v, 4) }));
  return { kind: log ? "log" : "linear", f, ticks: ticks.map((k) => ({ ...k, at: k.at ?? f(k.v) })) };
}

// An ordinal scale: labels evenly spaced over [r0, r1]; codes index them.
function ordScale(labels, r0, r1) {
  const n = labels.length;
  const f = (code) => (code == null || code < 0 ? null : n === 1 ? (r0 + r1) / 2 : r0 + (code / (n - 1)) * (r1 - r0));
  return { kind: "ordinal", f, ticks: labels.map((label, i) => ({ v: i, label, at: f(i) })) };
}

// Scale of one sweep axis (a setting or a metric) and each run's value on it.
function axisScale(axis, values, r0, r1, log) {
  if (axis.kind === "ordinal") return { scale: ordScale(axis.labels, r0, r1), pos: axis.codes };
  const useLog = log ?? axis.kind === "log";
  const positive = values.some((v) => v != null && v > 0);
  return { scale: numScale(values, useLog && positive, r0, r1, true), pos: values };
}

// ------------------------------------------------------------------------------ page
PAGES.sweep = { nav: "sweep", show: showSweep };

async function showSweepPicker(token) {
  const data = await getJSON("/api/runs");
  if (token !== routeToken) return;
  const folders = new Map();
  for (const r of data.runs) {
    const parts = r.id.split("/");
    for (let i = 1; i < parts.length; i++) {
      const f = parts.slice(0, i).join("/");
      folders.set(f, (folders.get(f) || 0) + 1);
    }
  }
  // ids travel in the URL: a selection too long for one (the server reads 16 KB of request
  // line) is offered as its folders instead
  const picked = enc([...selected].join(","));
  const viaLink = selected.size && picked.length < 12000
    ? ` (<a id="sweep-selected" href="#/sweep?ids=${picked}">the ${selected.size} selected</a>)`
    : selected.size ? ` (the ${selected.size} selected are too many for a link: pick their folder)` : "";
  const rows = [...folders].filter(([, n]) => n > 1).sort((a, b) => a[0].localeCompare(b[0], undefined, { numeric: true }));
  view().innerHTML = `<div class="card"><h2>Sweeps</h2>
    <p>A sweep shows what a set of runs differ in and how a final metric depends on it. Pick the runs ticked in the <a href="#/runs">runs table</a>${viaLink}, every run under the root (<a href="#/sweep?prefix=">${data.runs.length} runs</a>), or a folder:</p>
    <table class="kv" id="sweep-folders">${rows.map(([f, n]) => `<tr><td><a href="#/sweep?prefix=${enc(f)}">${esc(f)}</a></td><td class="muted">${n} runs</td></tr>`).join("") || `<tr><td class="muted">no folder with several runs</td></tr>`}</table></div>`;
}

async function showSweep(params, token) {
  const ids = params.get("ids"), prefix = params.get("prefix");
  if (!ids && prefix == null) return showSweepPicker(token);
  const query = ids ? `ids=${enc(ids)}` : `prefix=${enc(prefix)}`;
  const data = await getJSON(`/api/sweep?${query}`);
  if (token !== routeToken) return;
  const st = sweepState;
  if (!data.metrics.includes(st.metric)) st.metric = data.metrics[0] || null;
  const numeric = data.differing.filter((k) => data.axes[k].kind !== "ordinal" && data.group_keys.includes(k));
  if (!data.differing.includes(st.x)) st.x = numeric[0] || data.group_keys[0] || data.differing[0] || null;
  const opt = (list, chosen) => list.map((v) => `<option${v === chosen ? " selected" : ""}>${esc(v)}</option>`).join("");
  const check = (id, label) => `<label class="muted"><input type="checkbox" id="${id}"> ${label}</label>`;
  const title = ids ? `${data.runs.length} selected runs` : prefix ? `runs under ${prefix}` : "every run under the root";
  view().innerHTML = `
    <div class="row"><h1>Sweep: ${esc(title)}</h1><span class="spacer"></span>
      <a id="sweep-csv" href="/api/sweep.csv?${esc(query)}" download="sweep.csv">Download CSV</a></div>
    <div class="muted">${data.runs.length} runs · differ in ${data.differing.length ? data.differing.map((k) => `<b>${esc(k)}</b>`).join(", ") : "nothing"} · ${data.groups.length} group(s) of runs that differ only by seed${data.errors.length ? ` · <span class="error">${data.errors.length} unreadable run(s)</span>` : ""}</div>
    <div class="row sweep-controls"><label>final metric <select id="sw-metric">${opt(data.metrics, st.metric)}</select></label>
      <label>setting <select id="sw-x">${opt(data.differing, st.x)}</select></label>
      <label>curve <select id="sw-column"><option>${esc(st.column)}</option></select></label>
      <label>smoothing <input id="sw-ema" type="range" min="0" max="0.99" step="0.01" value="${st.ema}"> <span id="sw-ema-value" class="mono">${st.ema.toFixed(2)}</span></label></div>
    <div class="card"><div class="row"><h2>Parallel coordinates: settings that differ, then ${esc(st.metric || "no metric")}</h2><span class="spacer"></span>${check("sw-logpc", "log metric axis")}</div><div id="sw-parallel"></div></div>
    <div class="grid two">
      <div class="card"><div class="row"><h2 id="sw-scatter-title"></h2><span class="spacer"></span>${check("sw-logx", "log x")}${check("sw-logy", "log y")}</div><div id="sw-scatter"></div></div>
      <div class="card"><div class="row"><h2 id="sw-curves-title"></h2><span class="spacer"></span>${check("sw-logcurve", "log y")}</div><div id="sw-curves" class="muted">loading…</div></div>
    </div>
    <div class="card"><h2>Runs</h2><div class="table-wrap"><table class="runs" id="sweep-table"></table></div>
      ${Object.keys(data.common).length ? `<details><summary class="muted">settings all runs share</summary>${kvTable(data.common)}</details>` : ""}
      ${data.errors.map((e) => `<div class="error">${esc(e.error)}</div>`).join("")}</div>`;
  const curves = { data: null };
  const redraw = () => drawSweep(data, curves.data);
  const logDefault = (id, on) => { const el = $(id); el.checked = st.log[id] ?? on; el.addEventListener("change", () => { st.log[id] = el.checked; redraw(); }); };
  logDefault("#sw-logpc", st.metric ? data.metric_axes[st.metric].kind === "log" : false);
  logDefault("#sw-logx", st.x ? data.axes[st.x].kind === "log" : false);
  logDefault("#sw-logy", false);
  logDefault("#sw-logcurve", false);
  $("#sw-metric").addEventListener("change", (e) => { st.metric = e.target.value; redraw(); });
  $("#sw-x").addEventListener("change", (e) => { st.x = e.target.value; delete st.log["#sw-logx"]; $("#sw-logx").checked = data.axes[st.x].kind === "log"; redraw(); });
  $("#sw-ema").addEventListener("input", (e) => { st.ema = +e.target.value; $("#sw-ema-value").textContent = st.ema.toFixed(2); drawCurves(curves.data); });
  $("#sw-column").addEventListener("change", (e) => { st.column = e.target.value; loadCurves(query, curves, token); });
  redraw();
  renderSweepTable(data);
  document.body.dataset.sweepShownAt = performance.now().toFixed(1); // ms since navigation
  loadCurves(query, curves, token);
}

async function loadCurves(query, curves, token) {
  try {
    curves.data = await getJSON(`/api/sweep/curves?${query}&column=${enc(sweepState.column)}`);
  } catch (e) {
    if (token === routeToken) $("#sw-curves").innerHTML = `<span class="error">${esc(e.message)}</span>`;
    return;
  }
  if (token !== routeToken) return;
  const sel = $("#sw-column");
  const cols = curves.data.columns.filter((c) => c !== curves.data.x);
  if (!cols.includes(sweepState.column)) cols.unshift(sweepState.column);
  sel.innerHTML = cols.map((c) => `<option${c === sweepState.column ? " selected" : ""}>${esc(c)}</option>`).join("");
  drawCurves(curves.data);
}

function drawSweep(data, curves) {
  $("#sw-parallel").innerHTML = parallelChart(data);
  $("#sw-scatter").innerHTML = scatterChart(data);
  drawCurves(curves);
}

// ------------------------------------------------------------------------------ charts
function axisLines(W, H, m, xlabel, ylabel, xs, ys) {
  let g = `<g class="axis"><line x1="${m.l}" x2="${m.l}" y1="${m.t}" y2="${H - m.b}"/><line x1="${m.l}" x2="${W - m.r}" y1="${H - m.b}" y2="${H - m.b}"/>`;
  for (const t of ys.ticks) g += `<line class="tick" x1="${m.l - 4}" x2="${m.l}" y1="${t.at}" y2="${t.at}"/><text x="${m.l - 6}" y="${t.at + 4}" text-anchor="end">${esc(t.label)}</text>`;
  for (const t of xs.ticks) g += `<line x1="${t.at}" x2="${t.at}" y1="${H - m.b}" y2="${H - m.b + 4}"/><text x="${t.at}" y="${H - m.b + 16}" text-anchor="middle">${esc(t.label)}</text>`;
  g += `<text x="${(W + m.l) / 2}" y="${H - 6}" text-anchor="middle">${esc(xlabel)}</text>`;
  return g + `<text transform="translate(14 ${(H - m.b + m.t) / 2}) rotate(-90)" text-anchor="middle">${esc(ylabel)}</text></g>`;
}

function parallelChart(data) {
  const st = sweepState, { W, m } = SW, H = 320;
  const names = [...data.differing, ...(st.metric ? [st.metric] : [])];
  if (names.length < 1 || !data.runs.length) return `<p class="muted">The runs do not differ in any setting.</p>`;
  const step = names.length > 1 ? (W - m.l - m.r - 40) / (names.length - 1) : 0;
  const xAt = (i) => m.l + 20 + i * step;
  const axes = names.map((k, i) => {
    const metric = i === names.length - 1 && st.metric === k && !data.differing.includes(k);
    const values = data.runs.map((r) => (metric ? r.metrics[k] : r.settings[k]) ?? null);
    const axis = metric ? data.metric_axes[k] : data.axes[k];
    const log = metric ? $("#sw-logpc")?.checked ?? axis.kind === "log" : undefined;
    return { name: k, metric, ...axisScale(axis, values, H - m.b, m.t, log) };
  });
  let g = `<svg class="chart parallel" id="sweep-parallel" viewBox="0 0 ${W} ${H}" data-lines="${data.runs.length}" data-axes="${esc(names.join(","))}" role="img" aria-label="parallel coordinates">`;
  data.runs.forEach((r, j) => {
    let d = "", pen = "M";
    axes.forEach((a, i) => {
      const y = a.scale ? a.scale.f(a.pos[j]) : null;
      if (y == null) { pen = "M"; return; }
      d += `${pen}${xAt(i).toFixed(1)} ${y.toFixed(1)}`; pen = "L";
    });
    g += `<path class="pc-line" d="${d}" stroke="${groupColor(r.group)}" data-id="${esc(r.id)}" data-group="${r.group ?? ""}"><title>${esc(r.id)}: ${esc(st.metric)} ${esc(swNum(r.metrics[st.metric]))}</title></path>`;
  });
  axes.forEach((a, i) => {
    const x = xAt(i);
    g += `<g class="axis pc-axis" data-name="${esc(a.name)}" data-scale="${a.scale ? a.scale.kind : "none"}"><line x1="${x}" x2="${x}" y1="${m.t}" y2="${H - m.b}"/>`;
    for (const t of a.scale ? a.scale.ticks : []) g += `<text x="${x - 5}" y="${t.at + 4}" text-anchor="end">${esc(t.label)}</text>`;
    g += `<text x="${x}" y="${H - m.b + 18}" text-anchor="middle" class="${a.metric ? "metric" : ""}">${esc(a.name)}${a.scale && a.scale.kind === "log" ? " (log)" : ""}</text></g>`;
  });
  return g + `</svg><div class="legend">${groupLegend(data)}</div>`;
}

function groupLegend(data) {
  if (data.groups.length > 24) return `<span>${data.groups.length} groups</span>`;
  return data.groups.map((gr, i) => `<span><i style="background:${groupColor(i)}"></i>${esc(gr.label || "all runs")} (${gr.ids.length})</span>`).join("");
}

function scatterChart(data) {
  const st = sweepState, { W, H, m } = SW;
  $("#sw-scatter-title").textContent = st.metric && st.x ? `${st.metric} against ${st.x}` : "metric against a setting";
  if (!st.metric || !st.x) return `<p class="muted">needs a final metric and a setting that differs</p>`;
  const axis = data.axes[st.x];
  const xv = data.runs.map((r) => r.settings[st.x] ?? null), yv = data.runs.map((r) => r.metrics[st.metric] ?? null);
  $("#sw-logx").disabled = axis.kind === "ordinal";
  const X = axisScale(axis, xv, m.l + 12, W - m.r - 12, $("#sw-logx").checked);
  const groupStats = data.groups.map((gr) => gr.stats[st.metric]).filter(Boolean);
  const band = groupStats.flatMap((s) => [s.mean - s.sd, s.mean + s.sd]);
  const ylog = $("#sw-logy").checked && yv.some((v) => v > 0);
  const Y = numScale([...yv, ...(ylog ? [] : band)], ylog, H - m.b, m.t, true);
  if (!X.scale || !Y) return `<p class="muted">no ${esc(st.metric)} recorded</p>`;
  let g = `<svg class="chart scatter" id="sweep-scatter" viewBox="0 0 ${W} ${H}" data-xscale="${X.scale.kind}" data-yscale="${Y.kind}" role="img" aria-label="${esc(st.metric)} against ${esc(st.x)}">`;
  g += axisLines(W, H, m, `${st.x}${X.scale.kind === "log" ? " (log)" : ""}`, st.metric, X.scale, Y);
  data.runs.forEach((r, j) => {
    const [x, y] = [X.scale.f(X.pos[j]), Y.f(yv[j])];
    if (x == null || y == null) return;
    g += `<circle class="sc-run" cx="${x.toFixed(1)}" cy="${y.toFixed(1)}" r="3" fill="${groupColor(r.group)}" fill-opacity="0.45" data-id="${esc(r.id)}"><title>${esc(r.id)}: ${esc(swNum(yv[j]))}</title></circle>`;
  });
  // one marker per seed group whose runs share the setting's value: mean ± sd
  const means = [], first = new Map();
  data.runs.forEach((r, j) => { if (!first.has(r.group)) first.set(r.group, j); });
  let marks = "";
  data.groups.forEach((gr, i) => {
    const s = gr.stats[st.metric];
    if (!s || !(st.x in gr.key)) return;
    const x = X.scale.f(X.pos[first.get(i)]);
    if (x == null) return;
    const [y, y0, y1] = [Y.f(s.mean), Y.f(s.mean - s.sd), Y.f(s.mean + s.sd)];
    if (y == null) return;
    means.push([x, y]);
    marks += `<g class="sc-mean" data-x="${esc(JSON.stringify(gr.key[st.x]))}" data-mean="${s.mean}" data-sd="${s.sd}" data-n="${s.n}" data-px="${x.toFixed(2)}" data-py="${y.toFixed(2)}">` +
      (y0 != null && y1 != null ? `<line x1="${x}" x2="${x}" y1="${y0}" y2="${y1}" stroke="#1d2330" stroke-width="1.5"/><line x1="${x - 5}" x2="${x + 5}" y1="${y0}" y2="${y0}" stroke="#1d2330"/><line x1="${x - 5}" x2="${x + 5}" y1="${y1}" y2="${y1}" stroke="#1d2330"/>` : "") +
      `<rect x="${x - 4}" y="${y - 4}" width="8" height="8" fill="${groupColor(i)}" stroke="#1d2330"><title>${esc(gr.label)}: mean ${esc(swNum(s.mean))} ± ${esc(swNum(s.sd))} (n = ${s.n})</title></rect></g>`;
  });
  if (data.group_keys.length === 1 && means.length > 1) { // the means joined, in x order
    means.sort((a, b) => a[0] - b[0]);
    g += `<path class="sc-trend" d="${means.map((p, i) => `${i ? "L" : "M"}${p[0].toFixed(1)} ${p[1].toFixed(1)}`).join("")}" fill="none" stroke="#9aa3b2" stroke-dasharray="4 3"/>`;
  }
  return g + marks + `</svg><p class="muted">dots: runs; squares and bars: mean ± sd (sample sd) of each group of runs that differ only by seed.</p>`;
}

function drawCurves(curves) {
  const box = $("#sw-curves");
  if (!box) return;
  const st = sweepState, { W, H, m } = SW;
  $("#sw-curves-title").textContent = `${st.column} over training, mean ± sd per group`;
  if (!curves) return;
  const groups = curves.groups.map((gr, i) => {
    const mean = emaSmooth(gr.mean, st.ema), sd = emaSmooth(gr.sd, st.ema);
    return { ...gr, i, mean, raw: gr.mean, rawsd: gr.sd, lo: mean.map((v, k) => v - sd[k]), hi: mean.map((v, k) => v + sd[k]) };
  }).filter((gr) => gr.x.length);
  if (!groups.length) { box.innerHTML = `<p class="muted">no ${esc(st.column)} in the runs' history.csv</p>`; return; }
  box.classList.remove("muted");
  const ylog = $("#sw-logcurve").checked;
  const X = numScale(groups.flatMap((gr) => gr.x), false, m.l, W - m.r);
  // the y range of the unsmoothed curves: moving the slider does not rescale the axis
  const Y = numScale(groups.flatMap((gr) => ylog ? gr.raw : gr.raw.flatMap((v, k) => [v - gr.rawsd[k], v + gr.rawsd[k]])), ylog, H - m.b, m.t);
  if (!Y) { box.innerHTML = `<p class="muted">no positive values for a log axis</p>`; return; }
  const clampY = (v) => { const y = Y.f(ylog ? Math.max(v, 1e-300) : v); return y == null ? null : Math.max(m.t - 4, Math.min(H - m.b, y)); };
  let g = `<svg class="chart curves" id="sweep-curves" viewBox="0 0 ${W} ${H}" data-ema="${st.ema}" data-yscale="${Y.kind}" role="img" aria-label="${esc(st.column)} per group">`;
  g += axisLines(W, H, m, curves.x, st.column, X, Y);
  for (const gr of groups) {
    const up = gr.x.map((x, k) => `${X.f(x).toFixed(1)} ${clampY(gr.hi[k]).toFixed(1)}`);
    const down = gr.x.map((x, k) => `${X.f(x).toFixed(1)} ${clampY(gr.lo[k]).toFixed(1)}`).reverse();
    g += `<path class="cv-band" d="M${up.join("L")}L${down.join("L")}Z" fill="${groupColor(gr.i)}" fill-opacity="0.15" stroke="none"/>`;
  }
  for (const gr of groups) {
    const d = gr.x.map((x, k) => `${k ? "L" : "M"}${X.f(x).toFixed(1)} ${clampY(gr.mean[k]).toFixed(1)}`).join("");
    g += `<path class="line cv-mean" d="${d}" stroke="${groupColor(gr.i)}" data-group="${gr.i}"><title>${esc(gr.label || "all runs")} (${gr.ids.length} runs)</title></path>`;
  }
  box.innerHTML = g + `</svg><div class="legend">${groups.map((gr) => `<span><i style="background:${groupColor(gr.i)}"></i>${esc(gr.label || "all runs")} (${gr.ids.length})</span>`).join("")}</div>` +
    (curves.errors.length ? `<p class="error">${curves.errors.length} run(s) without a readable history.csv</p>` : "");
}

function renderSweepTable(data) {
  const head = `<thead><tr><th>run</th>${data.differing.map((k) => `<th>${esc(k)}</th>`).join("")}<th>status</th>${data.metrics.map((k) => `<th class="num">${esc(k)}</th>`).join("")}</tr></thead>`;
  const acc = (k, v) => (k.endsWith("_acc") ? fmt.acc(v) : fmt.num(v, 4));
  const rows = data.runs.map((r) => `<tr data-id="${esc(r.id)}"><td class="id"><a href="#/run?id=${enc(r.id)}">${esc(r.id)}</a></td>` +
    data.differing.map((k) => `<td>${esc(fmt.value(r.settings[k]))}</td>`).join("") +
    `<td>${r.error ? `<span title="${esc(r.error)}">${badge("error")}</span>` : badge(r.status)}</td>` +
    data.metrics.map((k) => `<td class="num">${esc(acc(k, r.metrics[k]))}</td>`).join("") + `</tr>`).join("");
  $("#sweep-table").innerHTML = head + `<tbody>${rows}</tbody>`;
}
