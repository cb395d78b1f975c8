// digitlab serve: the Train page (digitlab serve --allow-train). Plain JavaScript, loaded after
// app.js, whose helpers it uses ($, $$, esc, enc, getJSON, view, badge, lineChart, xAxis,
// routeToken, pollTimer). The form is generated from GET /api/train/schema; the server
// validates every value as the command line does and answers one-line errors.
"use strict";

const TOKEN_KEY = "digitlab-token";
const JOB_STATES = { running: "running", stopping: "running", stopped: "interrupted", finished: "finished", failed: "failed" };

// The session token arrives once in the URL (?token=..., printed by digitlab serve): keep it in
// this tab's sessionStorage and take it out of the address bar and history.
(function keepToken() {
  const url = new URL(location.href);
  const token = url.searchParams.get("token");
  if (!token) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  url.searchParams.delete("token");
  history.replaceState(null, "", url.pathname + url.search + url.hash);
})();

function trainPost(action, body) {
  return getJSON(`/api/train/${action}`, {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-Digitlab-Token": sessionStorage.getItem(TOKEN_KEY) || "" },
    body: JSON.stringify(body || {}),
  });
}

// The Train link shows only when the server allows training.
window.addEventListener("DOMContentLoaded", async () => {
  try {
    const s = await getJSON("/api/train/status");
    $('nav a[data-nav="train"]').hidden = !s.allowed;
  } catch (e) { /* the link stays hidden */ }
});

// ------------------------------------------------------------------------------ form
function rangeHint(f) {
  const parts = [];
  if (f.low != null) parts.push(`${f.open_low ? ">" : "≥"} ${f.low}`);
  if (f.high != null) parts.push(`${f.open_high ? "<" : "≤"} ${f.high}`);
  return parts.join(", ");
}

// One input per setting, by kind: checkbox (bool), select (choices), number (int/float),
// text (lists, batch, eval_every, optional numbers: "none"). Empty means the default.
function settingInput(f) {
  const attrs = `data-setting="${esc(f.name)}" id="set-${esc(f.name)}"`;
  if (f.kind === "bool") return `<input type="checkbox" ${attrs}${f.default ? " checked" : ""}>`;
  if (f.choices) {
    const opts = f.choices.concat(f.optional ? ["none"] : []);
    return `<select ${attrs}><option value="">default (${esc(f.default_text)})</option>${opts.map((c) => `<option>${esc(c)}</option>`).join("")}</select>`;
  }
  const number = (f.kind === "int" || f.kind === "float") && !f.optional;
  const step = f.kind === "int" ? "1" : "any";
  const kind = number ? `type="number" step="${step}"` : `type="text"`;
  return `<input ${kind} ${attrs} placeholder="${esc(f.default_text)}" size="14">`;
}

function formHtml(fields) {
  const groups = [...new Set(fields.map((f) => f.group))];
  return groups.map((g) => `<fieldset class="train-group"><legend>${esc(g)}</legend>${fields.filter((f) => f.group === g).map((f) => {
    const hint = [f.help, rangeHint(f)].filter(Boolean).join(" — ");
    return `<label class="train-field" title="${esc(hint)}"><span>${esc(f.name)}</span>${settingInput(f)}</label>`;
  }).join("")}</fieldset>`).join("");
}

// The settings given: text as typed (parsed by the server as command-line options), switches
// that differ from their default.
function formValues(fields) {
  const out = {};
  for (const f of fields) {
    const el = $(`#set-${f.name}`);
    if (!el) continue;
    if (f.kind === "bool") { if (el.checked !== f.default) out[f.name] = el.checked; continue; }
    if (el.validity && el.validity.badInput) throw new Error(`${f.name}: not a number`);
    if (el.value.trim() !== "") out[f.name] = el.value.trim();
  }
  return out;
}

// ------------------------------------------------------------------------------ page
async function showTrain(token) {
  const [schema, status] = await Promise.all([getJSON("/api/train/schema"), getJSON("/api/train/status")]);
  if (token !== routeToken) return;
  if (!schema.allowed) {
    view().innerHTML = `<div class="card muted">Training from the browser is off. Start the server with <span class="mono">digitlab serve --allow-train</span> and open the URL it prints.</div>`;
    return;
  }
  const noToken = sessionStorage.getItem(TOKEN_KEY) ? "" : `<div class="card error">No session token in this tab: open the URL with <span class="mono">?token=…</span> that digitlab serve printed.</div>`;
  view().innerHTML = `<h1>Train</h1>${noToken}
    <div class="card"><h2>Current training</h2>
      <div class="row"><span id="job-state" class="muted">none yet</span><a id="job-link"></a><span class="spacer"></span><button id="train-stop" disabled>Stop</button></div>
      <div class="error-line" id="job-error"></div>
      <div id="train-live" data-points="0"></div></div>
    <div class="card"><h2>Resume a run</h2>
      <div class="row"><select id="resume-id"></select>
        <label>lr <input id="resume-lr" type="number" step="any" size="10"></label>
        <label>l2 <input id="resume-l2" type="number" step="any" size="10"></label>
        <label>epochs (total) <input id="resume-epochs" type="number" step="1" size="6"></label>
        <label>or more epochs <input id="resume-more" type="number" step="1" size="6"></label>
        <button id="train-resume">Resume</button></div>
      <div class="error-line" id="resume-error"></div></div>
    <div class="card"><h2>Start a new run</h2>
      <div class="row"><label>name <input id="train-name" type="text" placeholder="model and time"></label>
        <button id="train-start">Start</button><span class="muted">empty fields take their default; hover a name for its meaning</span></div>
      <div class="error-line" id="train-error"></div>
      <div class="train-form">${formHtml(schema.settings)}</div></div>`;
  $("#train-start").addEventListener("click", () => startRun(schema.settings, token));
  $("#train-stop").addEventListener("click", () => stopRun(token));
  $("#train-resume").addEventListener("click", () => resumeRun(token));
  await fillResumeRuns(status.job);
  followJob(token);
}

async function fillResumeRuns(job) {
  const data = await getJSON("/api/runs");
  const runs = data.runs.filter((r) => r.has_checkpoint);
  const chosen = job && job.run_id;
  const sel = $("#resume-id");
  if (!sel) return;
  sel.innerHTML = runs.map((r) => `<option value="${esc(r.id)}"${r.id === chosen ? " selected" : ""}>${esc(r.id)}</option>`).join("") || `<option value="">no run with a checkpoint</option>`;
  const hint = () => {
    const r = runs.find((x) => x.id === sel.value);
    const s = (r && r.settings) || {};
    $("#resume-lr").placeholder = s.lr ?? "";
    $("#resume-l2").placeholder = s.l2 ?? "";
    $("#resume-epochs").placeholder = s.epochs ?? "";
  };
  sel.onchange = hint;
  hint();
}

function showError(id, e) { $(id).textContent = e ? e.message : ""; }

async function startRun(fields, token) {
  showError("#train-error", null);
  try {
    const body = { settings: formValues(fields) };
    const name = $("#train-name").value.trim();
    if (name) body.name = name;
    await trainPost("start", body);
    followJob(token);
  } catch (e) { showError("#train-error", e); }
}

async function stopRun(token) {
  showError("#job-error", null);
  try { await trainPost("stop"); followJob(token); } catch (e) { showError("#job-error", e); }
}

async function resumeRun(token) {
  showError("#resume-error", null);
  const settings = {};
  for (const k of ["lr", "l2", "epochs"]) {
    const el = $(`#resume-${k}`);
    if (el.validity.badInput) { showError("#resume-error", new Error(`${k}: not a number`)); return; }
    if (el.value.trim() !== "") settings[k] = el.value.trim();
  }
  const body = { id: $("#resume-id").value, settings };
  const more = $("#resume-more").value.trim();
  if (more) body.more_epochs = Number(more);
  try { await trainPost("resume", body); followJob(token); } catch (e) { showError("#resume-error", e); }
}

// The current job's state and its run's live curves, polled while it runs.
async function followJob(token) {
  clearTimeout(pollTimer);
  if (token !== routeToken) return;
  let job = null;
  try {
    job = (await getJSON("/api/train/status")).job;
    if (token !== routeToken) return;
    drawJob(job);
    if (job && job.run_id) {
      const hist = await getJSON(`/api/run/history?id=${enc(job.run_id)}`);
      if (token !== routeToken) return;
      drawLive(hist.columns);
    }
  } catch (e) { /* the run may be between two writes: try again */ }
  if (!job) return;
  if (job.state === "running" || job.state === "stopping") {
    if (token === routeToken) pollTimer = setTimeout(() => followJob(token), 1000);
  } else await fillResumeRuns(job).catch(() => {});
}

function drawJob(job) {
  const stop = $("#train-stop");
  if (!job) { stop.disabled = true; return; }
  const state = $("#job-state");
  state.innerHTML = `${esc(job.kind)} <b>${esc(job.name)}</b> ${badge(job.state)}`;
  state.dataset.state = job.state;
  const link = $("#job-link");
  if (job.run_id) { link.href = `#/run?id=${enc(job.run_id)}`; link.textContent = job.run_id; }
  link.dataset.run = job.run_id || "";
  stop.disabled = !(job.state === "running");
  $("#job-error").textContent = job.error || "";
}

function drawLive(cols) {
  const box = $("#train-live");
  if (!box) return;
  const [xs, xlabel] = xAxis(cols);
  const series = Object.entries(SPLITS).filter(([s]) => cols[`${s}_loss`])
    .map(([s, color]) => ({ name: s === "val" ? "validation" : s, color, xs, ys: cols[`${s}_loss`] }));
  CHARTS.length = 0;
  box.innerHTML = lineChart(series, { xlabel, ylabel: "cross-entropy loss", empty: "waiting for the first evaluation" });
  box.dataset.points = String((cols.step || []).length);
}
