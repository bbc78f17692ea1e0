// The console page: reads the admin API with the session cookie, draws it, and (for sre keys)
// changes a route through the same API with the session's CSRF token. This module loads the
// page's sections (route.js, reports.js, disagreements.js; review.js and quality.js on the
// Review page), keeps the page's state in its URL (urlstate.js), refreshes it on its own when
// asked (refresh.js), and opens the row view (rowview.js).
import { api, CAN_READ_ADMIN, CAN_WRITE } from "./api.js";
import { el, utc } from "./charts.js";
import { loadDisagreements } from "./disagreements.js";
import { loadQuality } from "./quality.js";
import { AutoRefresh, markSent } from "./refresh.js";
import {
  loadDrift, loadSliceCalibration, renderCalibration, renderCandidates, renderSliceTable, renderTrend,
} from "./reports.js";
import { initReview, loadReview, setReviewFilters } from "./review.js";
import { hideRow, onRowLink, rowShown, showRow } from "./rowview.js";
import { applyCalibration, cancelRamp, loadRoute, setSlice, write } from "./route.js";
import { $, clear, note, routePath, state } from "./shared.js";
import { loadTeacherVersions } from "./teachers.js";
import { readUrl, urlFor, writeUrl } from "./urlstate.js";

// -- loading -------------------------------------------------------------------------------

// Load one section: cleared and "Loading…" first, or (``quiet``, a refresh) in place, the
// figures shown kept when the new ones cannot be had.
async function section(ids, noteId, work, quiet = false) {
  if (!quiet) {
    clear(...ids);
    note(noteId, "Loading…");
  }
  try {
    await work();
  } catch (error) {
    if (!quiet) clear(...ids);
    note(noteId, quiet ? `Not refreshed: ${error.message}` : error.message);
  }
}

// -- pages and the URL ---------------------------------------------------------------------
// Two pages in one document: the route's overview and the review queue with the quality view;
// the row view opens over either. A key with only the reviewer scope has the review page
// alone, and the page never asks for what that key may not read.

const PAGES = CAN_READ_ADMIN ? ["overview", "review"] : ["review"];

// Everything the URL keeps (urlstate.js), from the page as it is.
function pageState(overrides = {}) {
  const calibration = $("slice-calibration-form").elements;
  const review = $("review-filter").elements;
  return {
    page: state.page, route: state.route, window: state.since, ...state.filters,
    reference: $("drift-reference").value,
    target: calibration.target_agreement.value, min_served: calibration.min_served.value,
    status: review.status.value, student: review.student.value,
    row: rowShown(), refresh: auto.enabled ? "on" : null, ...overrides,
  };
}

function remember(options = {}) {
  writeUrl(pageState(), options);
  for (const link of document.querySelectorAll("#pages a")) {
    link.href = urlFor(pageState({ page: link.dataset.page, row: null }));
  }
}

// Put the URL's state into the page's controls (on the first load, and on Back and Forward).
function applyUrl(found) {
  state.page = PAGES.includes(found.page) ? found.page : PAGES[0];
  if (found.route) state.route = found.route;
  const windows = $("window");
  const wanted = found.window ?? "7d";
  if (![...windows.options].some((o) => o.value === wanted) && /^\d+(\.\d+)?[mhdw]$/.test(wanted)) {
    windows.append(el("option", { value: wanted }, `last ${wanted}`));
  }
  windows.value = wanted;
  if (!windows.value) windows.value = "7d";
  state.since = windows.value;
  state.filters = Object.fromEntries(["slice", "since", "until", "served_by"]
    .filter((k) => found[k]).map((k) => [k, found[k]]));
  const filters = $("disagreement-filter").elements;
  for (const name of ["since", "until", "served_by"]) filters[name].value = state.filters[name] ?? "";
  filters.slice.value = state.filters.slice ?? "";
  $("drift-reference").value = found.reference === "champion" ? "champion" : "window";
  const calibration = $("slice-calibration-form").elements;
  calibration.target_agreement.value = found.target ?? calibration.target_agreement.defaultValue;
  calibration.min_served.value = found.min_served ?? calibration.min_served.defaultValue;
  for (const form of ["disagreement-filter", "slice-calibration-form"]) markSent($(form));
  setReviewFilters({ status: found.status, student: found.student });
  $("auto-refresh").checked = Boolean(found.refresh);
  if (auto.enabled !== Boolean(found.refresh)) auto.set(Boolean(found.refresh));
}

function showPage(page) {
  document.body.dataset.page = page;
  for (const node of document.querySelectorAll("main > section")) {
    node.hidden = (node.dataset.page ?? "overview") !== page || (node.dataset.needs === "reader" && !CAN_READ_ADMIN);
  }
  for (const link of document.querySelectorAll("#pages a")) {
    if (link.dataset.page === page) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

// The row in the URL, in view (or not); only for keys that may read rows.
function syncRow(row) {
  if (row && CAN_READ_ADMIN) {
    if (row !== rowShown()) showRow(row);
  } else if (rowShown()) {
    hideRow();
  }
}

// Load the page's figures: from scratch, or (``quiet``, auto-refresh) in place.
async function load({ quiet = false } = {}) {
  if (!quiet) {
    $("status").textContent = "Loading…";
    document.body.dataset.loaded = "false";
    auto.restart();
  }
  const page = state.page;
  showPage(page);
  const { routes } = await api(CAN_READ_ADMIN ? "/admin/routes" : "/admin/reviews/routes");
  const select = $("route");
  if (!select.options.length) {
    select.replaceChildren(...routes.map((r) => el("option", { value: r.name }, r.name)));
  }
  const unknown = state.route && !routes.some((r) => r.name === state.route) ? state.route : null;
  if (state.route && !unknown) select.value = state.route;
  state.route = select.value;
  remember();
  const missing = unknown ? ` (the link's route ${unknown} is not configured)` : "";
  const updated = `updated ${utc(new Date().toISOString())}${missing}.`;
  if (page === "review") {
    await Promise.all([
      quiet ? null : loadReview(state.route, state.since),
      CAN_READ_ADMIN ? loadQuality(state.route, state.since, quiet) : null,
    ]);
    $("status").textContent = `Route ${state.route}, review queue, ${updated}`;
    document.body.dataset.loaded = "true";
    return;
  }
  const params = { route: state.route, since: state.since };
  // the slice table sets the one slice order the other sections follow
  const table = api("/console/api/slices", params);
  const ordered = table.then(renderSliceTable).catch(() => {});
  await Promise.all([
    section(["route-state", "events", "ramp", "slice-overrides"], "route-note", loadRoute, quiet),
    section(["teacher-versions"], "teacher-versions-note", () => loadTeacherVersions(state.route), quiet),
    section(["aggregate-chart", "slice-charts", "slice-table"], "agreement-note", async () => {
      const [trend] = await Promise.all([api("/console/api/trend", params), table]);
      renderTrend(trend);
    }, quiet),
    section(["candidates"], "candidates-note", async () =>
      renderCandidates(await api("/admin/reports/candidates", params)), quiet),
    section(["calibration-charts"], "calibration-note", async () => {
      const [report] = await Promise.all([api("/admin/reports/thresholds", params), ordered]);
      renderCalibration(report);
    }, quiet),
    section(["slice-calibration"], "slice-calibration-note", async () => {
      await ordered;
      await loadSliceCalibration(quiet);
    }, quiet),
    section(["drift-charts"], "drift-note", loadDrift, quiet),
    loadDisagreements(false, quiet),
  ]);
  $("status").textContent = `Route ${state.route}, ${updated}`;
  document.body.dataset.loaded = "true";
}

function reload(options) {
  return load(options).catch((error) => {
    $("status").textContent = error.message;
    document.body.dataset.loaded = "true";
  });
}

let refreshes = 0;
const auto = new AutoRefresh(async () => {
  await reload({ quiet: true });
  document.body.dataset.refreshes = String(++refreshes);
}, (mode, words) => {
  document.body.dataset.autoRefresh = mode;
  $("auto-refresh-state").textContent = words;
});

// -- wiring --------------------------------------------------------------------------------

const onSubmit = (id, work) => $(id).addEventListener("submit", (e) => {
  e.preventDefault();
  work(e.target);
});

function go(page) {
  state.page = page;
  $("top").classList.remove("open");
  $("menu-toggle").setAttribute("aria-expanded", "false");
  remember({ push: true });
  reload();
}

function wireNavigation() {
  $("pages").hidden = PAGES.length < 2;
  for (const link of document.querySelectorAll("#pages a")) {
    link.addEventListener("click", (event) => {
      if (event.button !== 0 || event.ctrlKey || event.metaKey || event.shiftKey) return; // a new tab: its href
      event.preventDefault();
      if (link.dataset.page !== state.page) go(link.dataset.page);
    });
  }
  $("menu-toggle").addEventListener("click", () => {
    const open = $("top").classList.toggle("open");
    $("menu-toggle").setAttribute("aria-expanded", String(open));
  });
  // Back and Forward: a row opened or closed is only that; anything else loads the page anew.
  window.addEventListener("popstate", () => {
    const found = readUrl();
    const before = JSON.stringify({ ...pageState(), row: null });
    applyUrl(found);
    syncRow(found.row ?? null);
    if (JSON.stringify({ ...pageState(), row: null }) !== before) reload();
  });
  window.addEventListener("hashchange", () => { // an old link: #review or #overview
    const found = readUrl();
    if (found.page && found.page !== state.page) go(found.page);
  });
  onRowLink((id) => {
    showRow(id);
    remember({ push: true, marker: { row: id } });
  }, (id) => urlFor(pageState({ row: id })));
  $("row-view").addEventListener("close", () => {
    if (history.state?.row) history.back(); // opened here: Back is where it was
    else remember();
  });
  $("row-close").addEventListener("click", () => hideRow());
}

function wireControls() {
  $("write-panel").hidden = !CAN_WRITE;
  $("read-only-note").hidden = CAN_WRITE;
  $("route").addEventListener("change", () => {
    state.route = $("route").value;
    state.filters = {};
    $("disagreement-filter").reset();
    remember({ push: true });
    reload();
  });
  $("window").addEventListener("change", (e) => {
    state.since = e.target.value;
    remember({ push: true });
    reload();
  });
  $("refresh").addEventListener("click", () => reload());
  $("auto-refresh").addEventListener("change", (e) => {
    auto.set(e.target.checked);
    remember();
  });
  $("drift-reference").addEventListener("change", () => {
    remember();
    section(["drift-charts"], "drift-note", loadDrift);
  });
  $("more").addEventListener("click", () => loadDisagreements(true));
  onSubmit("disagreement-filter", (form) => {
    state.filters = Object.fromEntries([...new FormData(form).entries()].filter(([, v]) => v !== ""));
    remember();
    loadDisagreements();
  });
  $("review-filter").addEventListener("change", () => remember());
  onSubmit("change-form", (form) => write(form, routePath(), "PATCH"));
  onSubmit("rollback-form", (form) => write(form, `${routePath()}/rollback`, "POST"));
  $("slice-form").hidden = !CAN_WRITE;
  onSubmit("slice-form", setSlice);
  onSubmit("ramp-cancel-form", cancelRamp);
  onSubmit("calibration-apply-form", applyCalibration);
  onSubmit("slice-calibration-form", () => {
    remember();
    section(["slice-calibration"], "slice-calibration-note", loadSliceCalibration);
  });
}

function main() {
  let qualityTimer = null; // verdicts come in bursts: the quality view follows a second later
  initReview(() => {
    if (!CAN_READ_ADMIN) return;
    clearTimeout(qualityTimer);
    qualityTimer = setTimeout(() => loadQuality(state.route, state.since), 1000);
  });
  wireNavigation();
  wireControls();
  const found = readUrl();
  applyUrl(found);
  syncRow(found.row ?? null);
  reload();
}

main();
