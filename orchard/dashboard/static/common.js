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

function fmtParams(params) {
  if (!params) return "-";
  return Object.entries(params).map(([k, v]) => k + "=" + fmtNumber(v)).join(", ");
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
