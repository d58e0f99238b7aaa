// One experiment: cards, plots, live workers, rungs and the trial table, folded in incrementally.
"use strict";

const NAME = pageName();
const API = "/api/experiments/" + encodeURIComponent(NAME);
const MAX_ROWS = 500;
const state = { fidelity: null, version: 0, trials: new Map(), params: [], sortKey: "number", sortDir: 1,
  drawnVersion: -1, front: null, frontVersion: 0, shown: { name: "objective", label: "objective", sign: 1 } };
const PLOT_CONFIG = { displaylogo: false, responsive: true };
const STATUS_COLORS = { completed: "#2f7d4f", pruned: "#6b7785", reserved: "#1f5fa8", broken: "#b3261e", interrupted: "#c98a00", new: "#8a96a3" };

// The objective as returned (the API's are stored minimised: a "max" objective negated).
function sv(value) {
  return shownValue(state.shown, value);
}

// The experiment named by the address; a '%' that starts no escape (typed by hand) is taken as it is,
// so the page says there is no such experiment instead of stopping on a URIError.
function pageName() {
  const raw = location.pathname.replace(/^\/experiments\//, "").replace(/\/$/, "");
  try {
    return decodeURIComponent(raw);
  } catch (error) {
    return raw;
  }
}

function renderSummary(detail) {
  document.title = detail.name + " - Orchard";
  setText("name", detail.name);
  setText("storage", detail.storage);
  const c = detail.counts;
  setText("count-completed", c.completed);
  setText("budget", detail.max_trials ? "of max_trials " + detail.max_trials : "no max_trials");
  setText("count-reserved", c.reserved);
  setText("count-waiting", c.new + c.interrupted);
  setText("count-broken", c.broken);
  setText("count-pruned", c.pruned || 0);
  document.getElementById("best").previousElementSibling.textContent = "best " + detail.shown.name;
  setText("best", fmtNumber(shownValue(detail.shown, detail.best_objective)));
  setText("best-params", fmtSomeParams(detail.best_params));
  setText("algorithm", detail.algorithm);
  setText("stale-after", fmtAge(detail.stale_after));
  const odd = document.getElementById("config-problem");  // settings Orchard would refuse, shown at their defaults
  odd.hidden = !detail.problem;
  odd.textContent = detail.problem || "";
  const stopping = document.getElementById("stopping");  // the stopping rules, and which one fired
  stopping.hidden = !detail.stopping;
  if (detail.stopping) stopping.textContent = "Stopping rules: " + detail.stopping.line;
  const broken = document.getElementById("broken-stop");  // max_broken trials are broken: no trial starts
  broken.hidden = !detail.broken_stop;
  broken.textContent = detail.broken_stop ? detail.broken_stop.line : "";
}

function renderWorkers(workers) {
  const body = document.querySelector("#workers tbody");
  if (!workers.length) {
    const tr = el("tr");
    const td = el("td", "no trial is being evaluated", "muted");
    td.colSpan = 6;
    tr.appendChild(td);
    body.replaceChildren(tr);
    return;
  }
  body.replaceChildren(...workers.map((w) => {
    const tr = el("tr");
    tr.appendChild(el("td", w.worker));
    tr.appendChild(el("td", w.trial.slice(0, 12)));
    tr.appendChild(el("td", fmtSomeParams(w.params), "wrap"));
    const age = (w.heartbeat_age_is_lower_bound ? "\u2265 " : "") + fmtAge(w.heartbeat_age) + (w.stale ? " (lost?)" : "");
    tr.appendChild(el("td", age, w.stale ? "stale" : "num"));
    tr.appendChild(el("td", w.devices.length ? w.devices.join(", ") : "-"));
    tr.appendChild(el("td", w.attempts, "num"));
    return tr;
  }));
}

function renderRungs(rungs) {
  const section = document.getElementById("rungs-section");
  section.hidden = !rungs;
  if (!rungs) return;
  document.querySelector("#rungs tbody").replaceChildren(...rungs.map((r) => {
    const tr = el("tr");
    [r.label, r.completed, r.pruned, r.running, r.broken, r.promoted, fmtNumber(sv(r.best_objective))]
      .forEach((v) => tr.appendChild(el("td", v, "num")));
    return tr;
  }));
}

// The Pareto front (several objectives): the server computes it; a table of its trials and a scatter of
// the first two objectives, the front in red, dominated trials grey, infeasible ones as crosses.
function renderFront(front) {
  const section = document.getElementById("front-section");
  section.hidden = !front;
  if (!front) return;
  renderFrontCard(front);
  const names = Object.keys(front.objectives);
  const label = (n) => n + " (" + front.objectives[n] + ")";
  const infeasible = front.points.filter((p) => !p[1]).length;
  // Beyond ±1e300 (or infinite: null) a point squeezes the others onto one spot: left out and named.
  const drawable = (p) => [p[3], p[4]].every((v) => v !== null && Math.abs(v) <= DRAWN_LIMIT);
  const far = front.points.filter((p) => !drawable(p)).map((p) => p[0]).sort((a, b) => a - b);
  setText("front-note", front.trials.length + " feasible trials no other feasible trial dominates" +
    (front.constraints.length ? "; constraints: " + front.constraints.join(", ") + " (" + infeasible + " infeasible)" : "") +
    (names.length > 2 ? "; the scatter shows the first two objectives" : "") +
    (front.points.length < front.scored ? "; " + front.points.length + " of " + front.scored +
      " completed trials drawn: the front's and the latest" : "") +
    (far.length ? "; " + farNote(far, "the scatter") : ""));
  document.querySelector("#front thead tr").replaceChildren(
    ...["#", "params", ...names.map(label)].map((h) => el("th", h)));
  document.querySelector("#front tbody").replaceChildren(...front.trials.map((t) => {
    const tr = el("tr");
    tr.dataset.id = t.id;
    tr.appendChild(el("td", t.number, "num"));
    tr.appendChild(el("td", fmtSomeParams(t.params), "wrap"));
    t.values.forEach((v) => tr.appendChild(el("td", fmtNumber(v), "num")));
    return tr;
  }));
  if (typeof Plotly === "undefined") return;
  const group = (keep) => front.points.filter((p) => drawable(p) && keep(p));
  const trace = (points, name, marker, mode) => ({ x: points.map((p) => p[3]), y: points.map((p) => p[4]), name, marker,
    mode: mode || "markers", text: points.map((p) => "#" + p[0]), hovertemplate: "%{text}: %{x:.4g}, %{y:.4g}<extra></extra>" });
  const members = group((p) => p[2]).sort((a, b) => a[3] - b[3]);
  const data = [
    trace(group((p) => p[1] && !p[2]), "dominated", { color: "#8a96a3", size: 6 }),
    trace(group((p) => !p[1]), "infeasible", { color: "#8a96a3", symbol: "x", size: 7 }),
    trace(members, "front", { color: "#d62728", size: 9 }, names.length === 2 ? "lines+markers" : "markers"),
  ];
  const layout = { margin: { l: 60, r: 10, t: 10, b: 40 }, xaxis: { title: { text: plotText(label(names[0])) } },
    yaxis: { title: { text: plotText(label(names[1])) } }, legend: { orientation: "h", y: 1.12 } };
  Plotly.react("plot-front", data, layout, PLOT_CONFIG);
}

// No single best with several objectives: the card counts the front's trials instead.
function renderFrontCard(front) {
  if (!front) return;
  document.getElementById("best").previousElementSibling.textContent = "Pareto front";
  setText("best", front.trials.length);
  setText("best-params", "trials, feasible and non-dominated");
}

// -- the trial table ---------------------------------------------------------------------------------

// Params shown as columns at most: 10,000 of them made each redraw of 30 rows take 3 s (the filter still
// searches every param; the best card, the hovers and the API hold them all).
const MAX_PARAM_COLUMNS = 50;

function columns() {
  const cols = [{ key: "number", label: "#" }, { key: "status", label: "status" }];
  state.params.slice(0, MAX_PARAM_COLUMNS).forEach((p) => cols.push({ key: "param:" + p, label: p }));
  return cols.concat([{ key: "objective", label: state.shown.name }, { key: "worker", label: "worker" },
    { key: "duration", label: "duration" }, { key: "attempts", label: "attempts" }, { key: "error", label: "error" }]);
}

function cellValue(trial, key) {
  if (key.startsWith("param:")) return trial.params[key.slice(6)];
  if (key === "error") return trial.error ? trial.error.type + ": " + trial.error.message : null;
  if (key === "objective") return sv(trial.objective);
  return trial[key];
}

function compareBy(key, dir) {
  return (a, b) => {
    const x = cellValue(a, key), y = cellValue(b, key);
    if (x === y) return 0;
    if (x === null || x === undefined) return 1;
    if (y === null || y === undefined) return -1;
    return (x < y ? -1 : 1) * dir;
  };
}

function matches(trial, text, status) {
  if (status && trial.status !== status) return false;
  if (!text) return true;
  const hay = [trial.id, trial.status, trial.worker || "", fmtParams(trial.params), cellValue(trial, "error") || ""].join(" ");
  return hay.toLowerCase().includes(text);
}

function renderHeader() {
  const head = document.querySelector("#trials thead tr");
  head.replaceChildren(...columns().map((col) => {
    const th = el("th", col.label);
    th.dataset.key = col.key;
    if (col.key === state.sortKey) th.className = state.sortDir > 0 ? "asc" : "desc";
    th.addEventListener("click", () => {
      state.sortDir = state.sortKey === col.key ? -state.sortDir : 1;
      state.sortKey = col.key;
      renderHeader();
      renderTable();
    });
    return th;
  }));
}

function trialRow(trial, cols) {
  const tr = el("tr");
  tr.dataset.status = trial.status;
  cols.forEach((col) => {
    const value = cellValue(trial, col.key);
    let text = value;
    if (col.key === "duration") text = fmtAge(value);
    else if (typeof value === "number") text = fmtNumber(value);
    else if (value === null || value === undefined) text = "-";
    const td = el("td", text, typeof value === "number" ? "num" : "");
    if (col.key === "status") td.className = "status-" + trial.status;
    if (col.key === "error") td.className = "wrap";
    tr.appendChild(td);
  });
  return tr;
}

function renderTable() {
  const text = document.getElementById("filter").value.trim().toLowerCase();
  const status = document.getElementById("status-filter").value;
  const rows = [...state.trials.values()].filter((t) => matches(t, text, status));
  rows.sort(compareBy(state.sortKey, state.sortDir));
  const cols = columns();
  document.querySelector("#trials tbody").replaceChildren(...rows.slice(0, MAX_ROWS).map((t) => trialRow(t, cols)));
  const more = rows.length > MAX_ROWS ? " (first " + MAX_ROWS + " shown; filter or sort to see others)" : "";
  const params = state.params.length > MAX_PARAM_COLUMNS
    ? "; the first " + MAX_PARAM_COLUMNS + " of " + state.params.length + " params as columns" : "";
  setText("shown", rows.length + " of " + state.trials.size + " trials" + more + params);
}

// -- plots ---------------------------------------------------------------------------------------------

// The completed trials with an objective, in completion order, but those beyond DRAWN_LIMIT (said above
// the best-so-far chart).
function completedInOrder() {
  const done = [...state.trials.values()].filter((t) => t.status === "completed" && t.objective !== null);
  const far = done.filter((t) => Math.abs(t.objective) > DRAWN_LIMIT).sort((a, b) => a.number - b.number);
  const note = document.getElementById("best-note");
  note.hidden = far.length === 0;
  note.textContent = far.length ? farNote(far.map((t) => t.number), "the charts") : "";
  return done.filter((t) => Math.abs(t.objective) <= DRAWN_LIMIT).sort((a, b) => a.end_time - b.end_time);
}

// Charts draw at most MAX_POINTS markers, bars or lines: beyond that a browser spends seconds per redraw
// and nobody can tell the points apart. What is left out is said under the chart's data (the legend).
const MAX_POINTS = 5000;

// What a chart leaves out is said above it ("5000 of 18000 trials drawn: the best ones").
function noteDrawn(id, drawn, total, what, which) {
  const node = document.getElementById(id);
  node.hidden = drawn >= total;
  node.textContent = drawn >= total ? "" : drawn + " of " + total + " " + what + " drawn: " + which;
}

// Every k-th item, plus those keep() asks for, so that at most about MAX_POINTS remain.
function thinned(items, keep) {
  if (items.length <= MAX_POINTS) return items;
  const step = Math.ceil(items.length / MAX_POINTS);
  return items.filter((item, i) => i % step === 0 || i === items.length - 1 || keep(item, i));
}

// A trial's fidelity for the best-so-far line (single-fidelity: 0 for all; not a number: ranks lowest).
function fidelityOf(t) {
  const value = state.fidelity ? t.params[state.fidelity] : 0;
  return typeof value === "number" && Number.isFinite(value) ? value : -Infinity;
}

// Whether t is better than leader as exp.best_trial ranks them (orchard.fidelity.best_key): the highest
// fidelity first, then the lower objective (stored: lower is better).
function beats(t, leader) {
  if (leader === null) return true;
  const [level, other] = [fidelityOf(t), fidelityOf(leader)];
  return level > other || (level === other && t.objective < leader.objective);
}

function drawBest(all) {
  let leader = null;
  const improved = new Set();
  // a trial breaking a constraint is never the best (as exp.best_trial); under multi-fidelity the line is
  // what best_trial said then: a 1-epoch trial's low objective does not beat a 9-epoch trial's
  all.forEach((t, i) => {
    if (!t.infeasible && beats(t, leader)) { leader = t; improved.add(i); }
  });
  const ranked = all.map((t, i) => ({ t, x: i + 1, i }));
  const shown = thinned(ranked, (r) => improved.has(r.i));  // every improvement stays: the best line is exact
  const done = shown.map((r) => r.t);
  leader = null;
  const bestSoFar = shown.map((r) => {
    if (!all[r.i].infeasible && beats(all[r.i], leader)) leader = all[r.i];
    return leader === null ? null : sv(leader.objective);  // a gap before the first feasible trial
  });
  const xs = shown.map((r) => r.x);
  const marker = { color: "#8a96a3", size: 6 };
  if (state.fidelity) {  // multi-fidelity: say which rung each objective comes from
    const levels = done.map((t) => t.params[state.fidelity]);
    Object.assign(marker, { color: levels, colorscale: "Blues", reversescale: true, cmin: 0, cmax: Math.max(...levels),
      showscale: true, colorbar: { title: { text: plotText(state.fidelity) }, thickness: 12 } });
  }
  const reached = state.fidelity ? " (at the highest " + plotText(state.fidelity) + " reached)" : "";
  const data = [
    { x: xs, y: done.map((t) => sv(t.objective)), mode: "markers", marker,
      name: plotText(state.shown.name) + (done.length < all.length ? " (" + done.length + " of " + all.length + " drawn)" : ""),
      text: done.map((t) => plotText(fmtSomeParams(t.params))) },
    { x: xs, y: bestSoFar, mode: "lines", line: { color: "#2f7d4f", width: 2.5, shape: "hv" },
      name: "best so far" + reached },
  ];
  const layout = { margin: { l: 50, r: 10, t: 10, b: 40 }, xaxis: { title: { text: "completed trial" } },
    yaxis: { title: { text: plotText(state.shown.label) } }, legend: { orientation: "h", y: 1.12 } };
  Plotly.react("plot-best", data, layout, PLOT_CONFIG);
}

function dimension(name, values) {
  // Parallel coordinates draw an axis's label as plotly's HTML subset (a param named <a href=…> would be a
  // link) but its ticks as plain text: plotText for the label only. "~g" ticks: 2e+16, not plotly's own
  // "2×10<sup>16</sup>", which plain text shows with its tags.
  const label = plotText(name);
  if (values.every((v) => typeof v === "number")) return { label, values, tickformat: "~g" };
  const levels = [...new Set(values.map(String))].sort();
  return { label, values: values.map((v) => levels.indexOf(String(v))), tickvals: levels.map((_, i) => i),
    ticktext: levels };
}

// Plotly draws 60 axes of parallel coordinates and drops the others, the objective's (the last) first.
const MAX_AXES = 60;

function drawParallel(all) {
  // The best MAX_POINTS lines at most: the ones worth reading.
  const done = all.length <= MAX_POINTS ? all : [...all].sort((a, b) => a.objective - b.objective).slice(0, MAX_POINTS);
  noteDrawn("parallel-note", done.length, all.length, "completed trials", "the best ones");
  const params = state.params.slice(0, MAX_AXES - 1);
  if (params.length < state.params.length) {
    const note = document.getElementById("parallel-note");
    note.hidden = false;
    const axes = "the first " + params.length + " of " + state.params.length + " parameters drawn, and the "
      + "objective";
    note.textContent = (note.textContent ? note.textContent + "; " : "") + axes;
  }
  const objectives = done.map((t) => sv(t.objective));
  const dims = params.map((p) => dimension(p, done.map((t) => t.params[p])));
  dims.push({ label: plotText(state.shown.name), values: objectives, tickformat: "~g" });
  // Viridis is darkest at its low end: reversed for an objective to maximise, so darker is better either way.
  const data = [{ type: "parcoords", dimensions: dims,
    line: { color: objectives, colorscale: "Viridis", reversescale: state.shown.sign < 0, showscale: true } }];
  Plotly.react("plot-parallel", data, { margin: { l: 50, r: 40, t: 40, b: 20 } }, PLOT_CONFIG);
}

// Bars span each trial's start to its end. A running trial's bar reaches the latest time stamped by
// any worker of its host (the host part of host:pid:id): all from one machine's clock, so no two
// machines' clocks meet in one bar.
function hostOf(worker) {
  return worker.split(":")[0];
}

// Worker rows drawn at most: a row each for 2,000 workers (a cluster's job array) made a chart 68,000 px
// tall.
const MAX_WORKER_ROWS = 100;

function drawTimeline() {
  // The latest MAX_POINTS bars at most, of the MAX_WORKER_ROWS workers that started a trial last.
  let started = [...state.trials.values()].filter((t) => t.start_time !== null && t.worker);
  const total = started.length;
  const lastStart = new Map();
  started.forEach((t) => {
    const seen = lastStart.has(t.worker) ? lastStart.get(t.worker) : -Infinity;
    lastStart.set(t.worker, Math.max(seen, t.start_time));
  });
  if (lastStart.size > MAX_WORKER_ROWS) {
    const latest = [...lastStart].sort((a, b) => b[1] - a[1]).slice(0, MAX_WORKER_ROWS);
    const kept = new Set(latest.map(([worker]) => worker));
    started = started.filter((t) => kept.has(t.worker));
  }
  if (started.length > MAX_POINTS) started = started.sort((a, b) => b.start_time - a.start_time).slice(0, MAX_POINTS);
  noteDrawn("timeline-note", started.length, total, "trials", "the latest started");
  if (lastStart.size > MAX_WORKER_ROWS) {
    const note = document.getElementById("timeline-note");
    note.hidden = false;
    note.textContent += (note.textContent ? "; " : "") + "the " + MAX_WORKER_ROWS + " of " + lastStart.size +
      " workers that started a trial last";
  }
  const latest = {};
  started.forEach((t) => {
    const host = hostOf(t.worker);
    latest[host] = Math.max(latest[host] || 0, t.end_time || 0, t.heartbeat || 0, t.start_time);
  });
  const byStatus = {};
  started.forEach((t) => {
    const end = t.end_time !== null ? t.end_time : Math.max(t.heartbeat || 0, latest[hostOf(t.worker)]);
    (byStatus[t.status] = byStatus[t.status] || []).push({ t, end });
  });
  const data = Object.entries(byStatus).map(([status, items]) => ({
    type: "bar", orientation: "h", name: status, marker: { color: STATUS_COLORS[status] },
    y: items.map((i) => plotText(i.t.worker)), base: items.map((i) => new Date(i.t.start_time * 1000).toISOString()),
    x: items.map((i) => Math.max((i.end - i.t.start_time) * 1000, 1)),
    hovertext: items.map((i) => plotText("#" + i.t.number + " " + fmtSomeParams(i.t.params))),
    hoverinfo: "text+name",
    textposition: "none",
  }));
  const workers = new Set(started.map((t) => t.worker)).size;
  const layout = { barmode: "overlay", bargap: 0.35, height: Math.max(180, 90 + 34 * workers),
    margin: { l: 20, r: 10, t: 10, b: 40 }, xaxis: { type: "date" }, yaxis: { automargin: true, type: "category" },
    legend: { orientation: "h", y: 1.15 } };
  Plotly.react("plot-timeline", data, layout, PLOT_CONFIG);
}

// Learning curves: the reports of each trial against the step (at most MAX_CURVES of them: the best by
// their last value, then the latest); pruned trials end in a cross, the best completed trial is thick.
const MAX_CURVES = 300;

function drawCurves() {
  let reported = [...state.trials.values()].filter((t) => t.reports && t.reports.length);
  const section = document.getElementById("curves-section");
  section.hidden = reported.length === 0;
  if (!reported.length) return;
  const completed = reported.filter((t) => t.status === "completed" && t.objective !== null);
  const best = completed.reduce((a, t) => (a === null || t.objective < a.objective ? t : a), null);
  const total = reported.length;
  if (reported.length > MAX_CURVES) {
    // A last value sent as null (NaN or infinite, stored by another program) ranks last, not as 0.
    const last = (t) => { const v = t.reports[t.reports.length - 1][1]; return v === null ? Infinity : v; };
    const byValue = [...reported].sort((a, b) => last(a) - last(b)).slice(0, MAX_CURVES / 2);
    const latest = [...reported].sort((a, b) => b.number - a.number).slice(0, MAX_CURVES / 2);
    reported = [...new Set([...byValue, ...latest, ...(best ? [best] : [])])];
  }
  noteDrawn("curves-note", reported.length, total, "curves",
    "the lowest last values, the latest trials and the best");
  const data = [];
  reported.forEach((t) => {
    const isBest = best !== null && t.id === best.id;
    const color = isBest ? "#d62728" : t.status === "completed" ? "#1f77b4" : (STATUS_COLORS[t.status] || "#8a96a3");
    // The server sends at most 50 reports of a curve (evenly spaced; first, last and lowest kept): say so.
    const sampled = t.reported > t.reports.length ? " (" + t.reports.length + " of " + t.reported + " reports)" : "";
    const pruned = t.verdict ? " — pruned: " + t.verdict : "";
    const label = plotText("#" + t.number + " " + fmtSomeParams(t.params) + pruned + sampled);
    data.push({ x: t.reports.map((r) => r[0]), y: t.reports.map((r) => sv(r[1])), mode: "lines", showlegend: false,
      line: { color, width: isBest ? 3 : 1, dash: t.status === "reserved" ? "dash" : "solid" },
      opacity: isBest || t.status === "completed" ? 1 : 0.55, name: label,
      hovertemplate: "%{fullData.name}<br>step %{x}: %{y:.4g}<extra></extra>" });
    if (t.status === "pruned") {
      const end = t.reports[t.reports.length - 1];
      data.push({ x: [end[0]], y: [sv(end[1])], mode: "markers", showlegend: false, hoverinfo: "skip",
        marker: { symbol: "x", size: 8, color } });
    }
  });
  const layout = { margin: { l: 50, r: 10, t: 10, b: 40 }, xaxis: { title: { text: "step" } },
    yaxis: { title: { text: "reported " + plotText(state.shown.name) } } };
  Plotly.react("plot-curves", data, layout, PLOT_CONFIG);
}

function drawPlots() {
  if (state.drawnVersion === state.version || typeof Plotly === "undefined") return;
  const done = completedInOrder();
  drawBest(done);
  if (done.length) drawParallel(done);
  drawTimeline();
  drawCurves();
  state.drawnVersion = state.version;
}

// -- refresh -----------------------------------------------------------------------------------------

async function refreshExperiment() {
  // The front (up to 5,000 points) comes only when it changed since the version of the one shown.
  const detail = await getJSON(API + "?since=" + state.frontVersion);
  state.shown = detail.shown;
  renderSummary(detail);
  renderWorkers(detail.workers);
  renderRungs(detail.rungs);
  if ("front" in detail) {
    state.front = detail.front;
    state.frontVersion = detail.version;
    renderFront(state.front);
  } else {
    renderFrontCard(state.front);  // renderSummary wrote the best objective over it
  }
  state.fidelity = detail.fidelity;
  // The server restarted, the experiment was re-created, or the storage started over (an older copy of its
  // file restored): the rows held are not the storage's any more.
  if (detail.version < state.version || (state.version > 0 && state.version < detail.rebuilt_at)) {
    state.trials.clear();
    state.version = 0;
  }
  if (detail.version === state.version && state.drawnVersion === state.version) return;
  // The rows come in pages (in trial-number order); the next "since" is the first page's version, so
  // a trial that changed while the pages were read comes again on the next refresh.
  let page = await getJSON(API + "/trials?since=" + state.version);
  const version = page.version;
  const firstLoad = state.params.length === 0 && page.params.length > 0;
  state.params = page.params;
  page.trials.forEach((t) => state.trials.set(t.id, t));
  while (page.more) {
    page = await getJSON(API + "/trials?since=" + state.version + "&after=" + page.after);
    page.trials.forEach((t) => state.trials.set(t.id, t));
  }
  state.version = version;
  if (firstLoad) renderHeader();
  renderTable();
  drawPlots();
}

document.getElementById("filter").addEventListener("input", renderTable);
document.getElementById("status-filter").addEventListener("change", renderTable);
renderHeader();
poll(refreshExperiment);
