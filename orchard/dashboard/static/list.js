// The experiments list: one row per experiment, refreshed every POLL_MS.
"use strict";

function progressCell(row) {
  const td = el("td");
  const done = row.done;  // completed and pruned trials, those that count against max_trials
  if (row.max_trials) {
    const bar = el("span", null, "bar");
    const fill = el("span");
    fill.style.width = Math.min(100, 100 * row.progress).toFixed(1) + "%";
    bar.appendChild(fill);
    td.appendChild(bar);
    td.appendChild(document.createTextNode(done + " / " + row.max_trials));
  } else {
    td.textContent = done + " / no limit";
  }
  if (row.stopped) {  // a stopping rule fired: no worker runs it again, whatever the budget says
    td.appendChild(el("div", "stopped by " + row.stopped, "stopped"));
  }
  if (row.broken_stop) {  // max_broken trials are broken: no worker starts a trial until it is raised
    td.appendChild(el("div", row.broken_stop.said, "stopped"));
  }
  return td;
}

function experimentRow(row) {
  const tr = el("tr");
  tr.dataset.name = row.name;
  const name = el("td");
  const link = el("a", row.name);
  link.href = "/experiments/" + encodeURIComponent(row.name);
  name.appendChild(link);
  tr.appendChild(name);
  const algorithm = el("td", row.algorithm + (row.fidelity ? " (multi-fidelity)" : ""));
  if (row.problem) {  // settings Orchard would refuse (written by another program): shown at their defaults
    algorithm.appendChild(el("div", "odd settings: see the experiment's page", "problem"));
    algorithm.title = row.problem;
  }
  tr.appendChild(algorithm);
  tr.appendChild(progressCell(row));
  const best = el("td", fmtNumber(shownValue(row.shown, row.best_objective)), "num");
  best.title = row.shown.label;  // which objective, in its own direction
  tr.appendChild(best);
  tr.appendChild(el("td", row.live_workers, "num"));
  tr.appendChild(el("td", row.broken, "num" + (row.broken ? " status-broken" : "")));
  tr.appendChild(el("td", row.counts.completed, "num count-completed"));
  tr.appendChild(el("td", row.counts.reserved, "num"));
  tr.appendChild(el("td", row.counts.new + row.counts.interrupted, "num"));
  return tr;
}

async function refreshList() {
  const rows = await getJSON("/api/experiments");
  const body = document.querySelector("#experiments tbody");
  body.replaceChildren(...rows.map(experimentRow));
  document.getElementById("empty").hidden = rows.length > 0;
}

poll(refreshList);
