// digitlab serve: view options of the line charts of the run and compare pages (app.js's
// lineChart): a log y axis and exponential-moving-average smoothing, chosen under each chart
// and kept per chart title (y label) while the page redraws (a running run's charts every 2 s).
"use strict";

// Exponential moving average with the start-up bias removed (as TensorBoard smooths):
// s_t = a s_{t-1} + (1 - a) y_t, shown as s_t / (1 - a^t); nulls stay null.
function emaSmooth(ys, a) {
  if (!a) return ys.slice();
  let s = 0, w = 0;
  return ys.map((y) => {
    if (y == null || !isFinite(y)) return null;
    s = a * s + (1 - a) * y; w = a * w + (1 - a);
    return s / w;
  });
}

const chartPrefs = {}; // y label -> {log, ema}

// The series and options lineChart draws: smoothed, on log10 values where asked (charts that
// are already log-scaled, yfmt = pow10, and charts without positive values offer no toggle).
function chartView(series, opts) {
  const key = opts.ylabel || "";
  const p = chartPrefs[key] || { log: false, ema: 0 };
  const canLog = opts.yfmt !== pow10 && series.some((s) => (s.ys || []).some((v) => v > 0));
  const log = p.log && canLog;
  const shown = series.map((s) => {
    const ys = p.ema ? emaSmooth(s.ys || [], p.ema) : s.ys;
    return { ...s, ys: log ? log10s(ys) : ys };
  });
  const tools = `<div class="chart-tools row muted" data-key="${esc(key)}" data-log="${log ? 1 : 0}" data-ema="${p.ema}">` +
    (canLog ? `<label><input type="checkbox" class="chart-log"${log ? " checked" : ""}> log y</label>` : "") +
    `<label>smoothing <input type="range" class="chart-ema" min="0" max="0.99" step="0.01" value="${p.ema}"> <span class="mono">${p.ema.toFixed(2)}</span></label></div>`;
  if (!log) return [shown, { ...opts, tools }];
  const guides = (opts.guides || []).filter((v) => v > 0).map(Math.log10);
  return [shown, { ...opts, y0: undefined, y1: undefined, guides, yfmt: pow10, tools }];
}

// A changed option redraws its chart (the slider when let go) from the data it was drawn from.
document.addEventListener("change", (e) => {
  const tools = e.target.closest && e.target.closest(".chart-tools");
  if (!tools) return;
  const key = tools.dataset.key;
  const p = (chartPrefs[key] = chartPrefs[key] || { log: false, ema: 0 });
  if (e.target.matches(".chart-log")) p.log = e.target.checked;
  else if (e.target.matches(".chart-ema")) p.ema = +e.target.value;
  const box = tools.parentElement, svg = box.querySelector("svg.chart");
  const chart = svg && CHARTS[+svg.dataset.chart];
  if (chart && chart.raw) box.innerHTML = lineChart(...chart.raw);
});
document.addEventListener("input", (e) => {
  if (e.target.matches && e.target.matches(".chart-tools .chart-ema")) e.target.nextElementSibling.textContent = (+e.target.value).toFixed(2);
});
