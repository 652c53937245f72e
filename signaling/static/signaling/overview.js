// The admin's cluster overview (/admin/signaling/overview/): refreshes its
// table from the figures' URL (data-source) every few seconds, without
// reloading the page.
// A file of its own and no third-party code, so the page works under a
// Content-Security-Policy that allows only the site's own scripts. The server
// formats every cell (signaling/overview.py); this only puts them in place,
// as text.
"use strict";

(function () {
  const table = document.getElementById("overview");
  if (!table) {
    return;
  }
  const every = Number(table.dataset.refreshSeconds) * 1000;
  const status = document.getElementById("overview-status");
  const at = document.getElementById("overview-at");
  const problem = document.createElement("span");
  problem.className = "overview-problem";
  status.append(" ", problem);

  function row(figures) {
    const tr = document.createElement("tr");
    if (figures.name) {
      tr.dataset.worker = figures.name;
    }
    if (figures.stale) {
      tr.className = "stale";
    }
    for (const [column, text] of figures.cells) {
      const td = document.createElement("td");
      td.className = "column-" + column;
      td.textContent = text;
      tr.append(td);
    }
    return tr;
  }

  function show(overview) {
    table.tBodies[0].replaceChildren(...overview.workers.map(row));
    table.tFoot.replaceChildren(row(overview.totals));
    at.textContent = overview.at;
    problem.textContent = "";
  }

  async function refresh() {
    try {
      const response = await fetch(table.dataset.source, {
        headers: { Accept: "application/json" },
        credentials: "same-origin",
        cache: "no-store",
      });
      // A session that ended is sent to the login page, which is not JSON.
      const type = response.headers.get("Content-Type") || "";
      if (!response.ok || !type.startsWith("application/json")) {
        problem.textContent = "Not refreshed: log in again (reload the page).";
      } else {
        show(await response.json());
      }
    } catch (error) {
      problem.textContent = "Not refreshed: the server does not answer; retrying.";
    }
    // After the answer, not on a fixed interval: a slow server gets no pile-up.
    setTimeout(refresh, every);
  }

  setTimeout(refresh, every);
})();
