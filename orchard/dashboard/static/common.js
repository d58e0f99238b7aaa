// Shared helpers of the dashboard's pages. Everything is built with textContent: no HTML from data.
"use strict";

const POLL_MS = 2000;

async function getJSON(path) {
  const response = await fetch(path, { cache: "no-store", headers: { Accept: "application/json" } });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

// An objective as the experiment's objective returned it: the API sends them as stored, minimised (a "max"
// objective negated); `shown` is the experiment's {name, label, sign}.
function shownValue(shown, value) {
  return value === null || value === undefined || !shown ? value : shown.sign * value;
}

function fmtNumber(value) {
  if (value === null || value === undefined) return "-";
  if (typeof value !== "number") return String(value);
  if (Number.isInteger(value)) return String(value);
  const size = Math.abs(value);
  if (size < 1e-3 || size >= 1e6) return Number(value.toPrecision(6)).toExponential();
  return Number(value.toPrecision(6)).toString();
}

function fmtAge(seconds) {
  if (seconds === null || seconds === undefined) return "-";
  if (seconds < 120) return seconds.toFixed(1) + " s";
  if (seconds < 7200) return (seconds / 60).toFixed(0) + " min";
  return (seconds / 3600).toFixed(1) + " h";
}

// Every param, as the filter searches them.
function fmtParams(params) {
  if (!params) return "-";
  return Object.entries(params).map(([k, v]) => k + "=" + fmtNumber(v)).join(", ");
}

// The first SHOWN_PARAMS params, each value cut to SHOWN_CHARS, and how many are left out: what a card or a
// cell shows (10,000 params printed in full pushed everything else off the page).
const SHOWN_PARAMS = 20, SHOWN_CHARS = 100;

function fmtSomeParams(params) {
  if (!params) return "-";
  const entries = Object.entries(params);
  const cut = (text) => (text.length > SHOWN_CHARS ? text.slice(0, SHOWN_CHARS) + "\u2026" : text);
  const shown = entries.slice(0, SHOWN_PARAMS).map(([k, v]) => cut(k) + "=" + cut(fmtNumber(v))).join(", ");
  const more = entries.length - SHOWN_PARAMS;
  return more > 0 ? shown + " (and " + more + " more)" : shown;
}

// Plotly reads every text it draws (hover labels, ticks, axis titles) as a subset of HTML: <a href> would be
// a working link and <b> or <span style> would style it. Every string from data goes through plotText first;
// plotly shows the entities as the characters themselves.
function plotText(text) {
  return String(text).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}

function setText(id, text) {
  const node = document.getElementById(id);
  if (node) node.textContent = text;
}

function showProblem(error) {
  const node = document.getElementById("problem");
  if (!node) return;
  node.hidden = !error;
  node.textContent = error ? error.message + " (retrying every " + POLL_MS / 1000 + " s)" : "";
}

function stamp() {
  setText("updated", "updated " + new Date().toLocaleTimeString());
}

// Run refresh() now and every POLL_MS, never two at once.
function poll(refresh) {
  let busy = false;
  const tick = async () => {
    if (busy) return;
    busy = true;
    try { await refresh(); showProblem(null); stamp(); } catch (error) { showProblem(error); } finally { busy = false; }
  };
  tick();
  setInterval(tick, POLL_MS);
}

// The largest objective drawn (as orchard plot): an axis reaching -1e308 from 0.5 ran off every chart, the
// best-so-far line with it, and a parallel axis to 1e308 squeezed every other line onto one point.
const DRAWN_LIMIT = 1e300;

// "2 completed trials with an objective beyond ±1e300 left out of WHERE: #3, #5" (at most 3 numbers named).
function farNote(numbers, where) {
  const named = numbers.slice(0, 3).map((n) => "#" + n).join(", ") + (numbers.length > 3 ? ", \u2026" : "");
  return numbers.length + " completed trial" + (numbers.length > 1 ? "s" : "") +
    " with an objective beyond \u00b11e300 left out of " + where + ": " + named;
}
