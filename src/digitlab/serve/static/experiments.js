// digitlab serve: the experiments `digitlab reproduce` wrote under the root, with the report's
// own published-vs-reproduced marks (computed by digitlab.report.document through
// /api/experiments and /api/experiment; nothing is recomputed here), their figures and members.
// Uses app.js's helpers ($, esc, enc, getJSON, fmt, PAGES, routeToken, view).
"use strict";

PAGES.experiments = { nav: "experiments", show: showExperiments };
PAGES.experiment = { nav: "experiments", show: (params, token) => showExperiment(params.get("id"), token) };

const expSeconds = (s) => (s ? fmt.secs(s) : "–");
const markCell = (c) => (c && typeof c === "object"
  ? `<span class="mark ${esc(c.css)}" data-status="${esc(c.status)}" title="${esc(c.title)}">${esc(c.symbol)} ${esc(c.status)}</span>`
  : esc(c));

// The list: the report's summary table (one row per task of each experiment), its experiment
// cell a link to the experiment's page, and each experiment's marks.
async function showExperiments(params, token) {
  const data = await getJSON("/api/experiments");
  if (token !== routeToken) return;
  $("#root").textContent = data.root;
  const at = data.columns.indexOf("experiment");
  const link = (e, text) => `<a href="#/experiment?id=${enc(e.id)}">${esc(text)}</a>`;
  const marksOf = (e) => e.symbols.map((s, i) => `<span class="mark-${esc(e.statuses[i].replace(/ /g, "-"))}${e.alternative[i] ? " alternative" : ""}" title="${esc(e.statuses[i])}">${esc(s)}</span>`).join("");
  const rows = data.experiments.flatMap((e) => (e.error
    ? [`<tr data-id="${esc(e.id)}"><td colspan="${at}"></td><td>${link(e, e.id)}</td><td colspan="${data.columns.length - at}" class="error">${esc(e.error)}</td></tr>`]
    : e.summary.rows.map((row) => `<tr data-id="${esc(e.id)}">${row.map((c, i) => `<td>${i === at ? link(e, c) : esc(c)}</td>`).join("")}<td class="marks">${marksOf(e)}</td></tr>`))).join("");
  view().innerHTML = `<div class="card"><h2>Experiments (${data.experiments.length})</h2>
    ${data.experiments.length ? `<div class="table-wrap"><table class="runs" id="experiments-table"><thead><tr>${data.columns.map((c) => `<th>${esc(c)}</th>`).join("")}<th>marks</th></tr></thead><tbody>${rows}</tbody></table></div>
      <p class="muted">The summary of <span class="mono">report.md</span>, made by the same code: ✓ at or better than published, ≈ within tolerance, ✗ outside it, ? missing, – not comparable (other data than the published numbers'); marks of alternative readings are faint and not counted.</p>`
      : `<p class="muted">No experiment folders (<span class="mono">*/experiment.json</span>) under <span class="mono">${esc(data.root)}</span>. Write some with <span class="mono">digitlab reproduce --out ${esc(data.root)}</span>.</p>`}</div>`;
}

function expTable(id, header, rows, cell = esc, classes = []) { // classes: one CSS class per row
  return `<div style="overflow:auto"><table class="kv exp-table" id="${id}"><thead><tr>${header.map((h) => `<th>${esc(h)}</th>`).join("")}</tr></thead><tbody>` +
    rows.map((r, i) => `<tr class="${esc(classes[i] || "")}">${r.map((c) => `<td>${cell(c)}</td>`).join("")}</tr>`).join("") + `</tbody></table></div>`;
}

async function showExperiment(id, token) {
  if (!id) { location.hash = "#/experiments"; return; }
  const e = await getJSON(`/api/experiment?id=${enc(id)}`);
  if (token !== routeToken) return;
  const file = (name) => `/api/experiment/file?id=${enc(e.id)}&name=${enc(name)}`;
  const figures = e.figures.map((f, i) => {
    const png = f.files.find((n) => n.endsWith(".png")), svg = f.files.find((n) => n.endsWith(".svg"));
    const img = png ? `<img class="exp-figure" alt="${esc(e.title)}: ${esc(f.kind)}" src="${file(png)}">` : `<p class="muted">not drawn yet: <span class="mono">digitlab report</span> draws it</p>`;
    return `<figure class="card" data-kind="${esc(f.kind)}">${img}<figcaption><b>Figure ${i + 1} (${esc(f.kind)}).</b> ${esc(f.caption)}${svg ? ` <a href="${file(svg)}">SVG</a>` : ""}</figcaption></figure>`;
  }).join("");
  const runsOf = (i) => {
    const ids = e.member_runs[i] || [];
    if (!ids.length) return `<span class="muted">no run folder</span>`;
    const links = ids.slice(0, 6).map((r) => `<a href="#/run?id=${enc(r)}">${esc(r.split("/").slice(1).join("/"))}</a>`).join(" ");
    return links + (ids.length > 1 ? ` <a class="muted" href="#/sweep?ids=${enc(ids.join(","))}">sweep of ${ids.length}</a>` : "");
  };
  const mt = e.members_table;
  const memberRows = mt.rows.map((r, i) => [...r.map(esc), runsOf(i)]);
  const prose = (title, text) => (text ? `<h2>${esc(title)}</h2><p class="prose">${esc(text)}</p>` : "");
  const pub = e.published;
  view().innerHTML = `
    <div class="row"><h1>${esc(e.title)}</h1><span class="spacer"></span><a href="#/sweep?prefix=${enc(e.id)}">Sweep of its runs</a></div>
    <div class="muted">${[e.source && `source ${esc(e.source)}`, e.section && `section ${esc(e.section)}`, `experiment <span class="mono">${esc(e.name)}</span>`, e.seconds && `run time ${esc(expSeconds(e.seconds))}`].filter(Boolean).join(" · ")}</div>
    ${e.sample ? `<div class="card sample"><b>Sample data.</b> Run on the embedded 5,000-digit sample with scaled-down splits; numbers are not comparable to the published ones.</div>` : ""}
    <div class="card" id="exp-summary"><h2>Summary</h2>${expTable("exp-summary-table", e.summary.header, e.summary.rows)}</div>
    <div class="card" id="exp-published"><h2>Published vs reproduced</h2>
      ${pub.rows.length ? expTable("exp-published-table", pub.header, pub.rows, markCell, pub.classes) : `<p class="muted">no published numbers</p>`}
      <p class="muted">Marks computed by the report's own code, as in <span class="mono">report.md</span>${pub.classes.includes("alternative") ? "; rows of an alternative reading (faint) are evidence, not counted" : ""}.</p></div>
    <div class="card"><h2>Settings</h2>${expTable("exp-members", [...mt.header, "runs"], memberRows, (c) => c, mt.classes.map((c) => (c === "chosen" ? "diff" : "")))}</div>
    <div class="exp-figures">${figures}</div>
    <div class="card">${prose("Protocol", e.protocol)}${prose("Choices", e.choices)}${e.notes.map((n) => `<p class="muted">${esc(n)}</p>`).join("")}</div>`;
}
