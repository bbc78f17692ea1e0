// The console page: reads the admin API with the session cookie, draws it, and (for sre keys)
// changes a route through the same API with the session's CSRF token.
import { calibrationChart, driftChart, el, pct, trendChart, utc } from "./charts.js";
import { wordDiff } from "./diff.js";

const meta = (name) => document.querySelector(`meta[name="${name}"]`).getAttribute("content");
const CSRF = meta("sgw-csrf");
const CAN_WRITE = meta("sgw-scopes").split(" ").includes("sre");
const $ = (id) => document.getElementById(id);

const state = { route: null, since: "7d", cursor: null, filters: {} };

class ApiError extends Error {
  constructor(status, message, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(path, params = {}, init = {}) {
  const url = new URL(path, location.origin);
  for (const [name, value] of Object.entries(params)) {
    for (const one of Array.isArray(value) ? value : [value]) {
      if (one !== null && one !== undefined && one !== "") url.searchParams.append(name, one);
    }
  }
  const headers = { accept: "application/json" };
  if (init.method && init.method !== "GET") {
    headers["content-type"] = "application/json";
    headers["x-csrf-token"] = CSRF;
  }
  const response = await fetch(url, { credentials: "same-origin", ...init, headers });
  const body = await response.json().catch(() => null);
  if (response.status === 401) {
    location.assign("/console"); // the session ended: back to the login form
  }
  if (!response.ok) {
    throw new ApiError(response.status, body?.error?.message ?? response.statusText, body?.error?.code);
  }
  return body;
}

const sliceName = (s) => (s.dimension === "all" ? "all" : `${s.dimension}=${s.value}`);
const num = (value) => el("td", { class: "num" }, value);

function note(id, text) {
  $(id).textContent = text ?? "";
}

function clear(...ids) {
  for (const id of ids) $(id).replaceChildren();
}

function table(id, head, rows) {
  const header = el("tr", {}, ...head.map(([label, cls]) => el("th", { class: cls }, label)));
  $(id).replaceChildren(el("thead", {}, header), el("tbody", {}, ...rows));
}

// -- route state and history ---------------------------------------------------------------

function renderRoute(route) {
  const critical = route.critical_slices.map((c) => `${c.dimension}=${c.value} ≥ ${pct(c.min_agreement, 0)}`);
  const rows = [
    ["mode", route.mode, "mode"],
    ["rollout percent", `${route.rollout_percent}%`, "rollout_percent"],
    ["confidence threshold", route.confidence_threshold, "confidence_threshold"],
    ["confidence method", route.confidence_method],
    ["audit sample", route.audit_sample],
    ["version", route.version],
    ["teacher", route.teacher_model],
    ["student", route.student_model ?? "(none)"],
    ["critical slices", critical.join(", ") || "(none)"],
  ];
  $("route-state").replaceChildren(
    ...rows.map(([label, value, field]) => el("tr", {}, el("th", {}, label), el("td", { "data-field": field }, value))),
  );
}

function describeChange(event) {
  const keys = Object.keys(event.new ?? {}).filter((k) => k !== "version");
  return keys.map((k) => `${k}: ${event.old?.[k] ?? "–"} → ${event.new[k]}`).join("; ");
}

function renderEvents(events) {
  table(
    "events",
    [["at"], ["actor"], ["action"], ["change"], ["reason"]],
    events.map((e) =>
      el("tr", { "data-action": e.action }, el("td", { class: "mono" }, utc(e.at)), el("td", {}, e.actor),
        el("td", {}, e.action), el("td", {}, describeChange(e)), el("td", {}, e.reason)),
    ),
  );
  if (!events.length) $("events").append(el("tr", {}, el("td", { colspan: 5, class: "muted" }, "No change recorded yet.")));
}

// -- agreement over time -------------------------------------------------------------------

function trendPanel(series, trend) {
  const failing = series.verdict === "fail";
  const badge = series.verdict ? el("span", { class: `badge ${series.verdict}` }, series.verdict.replaceAll("_", " ")) : null;
  const sub = `${series.agreed}/${series.samples} agree · ${pct(series.agreement)}` +
    (series.samples ? ` (95% CI ${pct(series.ci_low)}–${pct(series.ci_high)})` : "") +
    (series.bar !== null ? ` · bar ${pct(series.bar, 0)}, ${series.min_samples} samples` : "");
  return el("div", { class: failing ? "chart failing" : "chart", "data-slice": sliceName(series) },
    el("div", { class: "title" }, el("span", {}, sliceName(series)), badge),
    el("div", { class: "sub" }, sub),
    trendChart(series, trend.buckets, trend.step));
}

function renderTrend(trend) {
  $("aggregate-chart").replaceChildren(el("h3", {}, "Aggregate"), trendPanel(trend.aggregate, trend));
  $("slice-charts").replaceChildren(...trend.slices.map((s) => trendPanel(s, trend)));
  const failing = trend.slices.filter((s) => s.verdict === "fail").map(sliceName);
  note("agreement-note",
    `${trend.step === "hour" ? "Hourly" : "Daily"} (UTC) from ${utc(trend.since)} to ${utc(trend.until)}. ` +
    (failing.length ? `Below their bar: ${failing.join(", ")}.` : "No critical slice is below its bar.") +
    (trend.omitted_slices ? ` ${trend.omitted_slices} more slices are in the table only.` : ""));
}

function renderSliceTable(report) {
  const row = (s) => el("tr", { class: s.verdict === "fail" ? "fail" : null, "data-slice": sliceName(s) },
    el("td", {}, sliceName(s)), num(s.requests), num(s.samples), num(pct(s.agreement)),
    num(s.samples ? `${pct(s.ci_low)}–${pct(s.ci_high)}` : "–"), num(s.bar === null ? "–" : pct(s.bar, 0)),
    el("td", { class: s.verdict ? `verdict-${s.verdict}` : null }, s.verdict?.replaceAll("_", " ") ?? "–"),
    num(pct(s.fallback_rate)), num(pct(s.student_share)));
  table("slice-table",
    [["slice"], ["requests", "num"], ["compared", "num"], ["agreement", "num"], ["95% CI", "num"], ["bar", "num"],
      ["verdict"], ["fallbacks", "num"], ["student served", "num"]],
    [...report.slices.map(row), row(report.aggregate)]);
  const select = document.querySelector("#disagreement-filter select[name=slice]");
  const chosen = select.value;
  select.replaceChildren(el("option", { value: "" }, "(any)"),
    ...report.slices.map((s) => el("option", { value: sliceName(s) }, sliceName(s))));
  select.value = chosen;
}

// -- candidates ----------------------------------------------------------------------------

const signed = (v) => (v === null || v === undefined ? "–" : `${v >= 0 ? "+" : ""}${(v * 100).toFixed(1)}%`);
const ms = (v) => (v === null || v === undefined ? "–" : Math.round(v).toString());

function candidateRows(line) {
  return line.candidates.map((c, i) => {
    const p = c.paired;
    return el("tr", { class: c.verdict === "worse" ? "fail" : null, "data-slice": sliceName(line), "data-student": c.student },
      el("td", {}, i === 0 ? sliceName(line) : ""), el("td", {}, c.student), num(c.compared),
      num(pct(c.agreement)), num(c.compared ? `${pct(c.ci_low)}–${pct(c.ci_high)}` : "–"),
      num(p ? p.pairs : "–"), num(p ? signed(p.difference) : "–"),
      num(p && p.ci_low !== null ? `${signed(p.ci_low)} to ${signed(p.ci_high)}` : "–"),
      el("td", { class: `verdict-${c.verdict}` }, c.verdict.replaceAll("_", " ")),
      num(ms(c.latency_p50_ms)), num(ms(c.latency_p95_ms)),
      num(c.mean_confidence === null ? "–" : c.mean_confidence.toFixed(2)));
  });
}

function renderCandidates(report) {
  const students = report.students.map((s) => `${s.name} (${s.status})`).join(", ");
  note("candidates-note", `Students: ${students}. Baseline ${report.baseline}; a verdict needs ${report.min_pairs} paired comparisons.`);
  const head = [["slice"], ["student"], ["compared", "num"], ["agreement", "num"], ["95% CI", "num"], ["pairs", "num"],
    ["difference", "num"], ["difference 95% CI", "num"], ["verdict"], ["p50 ms", "num"], ["p95 ms", "num"], ["confidence", "num"]];
  $("candidates").replaceChildren(...report.sources.map((source) => {
    const id = `candidates-${source.source}`;
    const block = el("div", { "data-source": source.source }, el("h3", {}, `${source.source} answers`),
      el("div", { class: "scroll" }, el("table", { id, class: "grid" })));
    const header = el("tr", {}, ...head.map(([label, cls]) => el("th", { class: cls }, label)));
    block.querySelector("table").append(el("thead", {}, header),
      el("tbody", {}, ...[...source.slices, source.overall].flatMap(candidateRows)));
    return block;
  }));
}

// -- calibration and drift -----------------------------------------------------------------

function renderCalibration(report) {
  const rec = report.recommendation;
  note("calibration-note",
    `${report.comparisons} shadow comparisons from ${utc(report.since)}. Live threshold ${report.current_threshold}; ` +
    `recommended ${rec.threshold ?? "none"}: ${rec.reason}`);
  $("calibration-charts").replaceChildren(...report.curves.map((curve) =>
    el("div", { class: "chart", "data-curve": sliceName(curve) },
      el("div", { class: "title" }, el("span", {}, sliceName(curve)),
        curve.bar !== null ? el("span", { class: "muted" }, `bar ${pct(curve.bar, 0)}`) : null),
      el("div", { class: "sub" }, `${curve.total} comparisons`),
      calibrationChart(curve, report.current_threshold, rec.threshold))));
}

function renderDrift(report) {
  const ref = report.reference;
  note("drift-note",
    `Current: ${report.current.requests} requests from ${utc(report.current.since)}; reference: ` +
    `${ref.requests} requests from ${utc(ref.since)} to ${utc(ref.until)}. ` +
    (report.flagged.length ? `Flagged (PSI ≥ ${report.psi_threshold}): ${report.flagged.join(", ")}.`
      : `No dimension has PSI ≥ ${report.psi_threshold}.`));
  const dimensions = [...report.dimensions, ...(report.prompt_length ? [report.prompt_length] : [])];
  $("drift-charts").replaceChildren(...dimensions.map((d) =>
    el("div", { class: d.flagged ? "chart flagged" : "chart", "data-dimension": d.dimension },
      el("div", { class: "title" }, el("span", {}, d.dimension),
        el("span", { class: d.flagged ? "badge flagged" : "muted" }, `PSI ${d.psi.toFixed(3)}${d.flagged ? " flagged" : ""}`)),
      el("div", { class: "legend" },
        el("span", {}, el("span", { class: "swatch", "data-swatch": "reference" }), "reference"),
        el("span", {}, el("span", { class: "swatch", "data-swatch": "current" }), "current")),
      driftChart(d))));
}

// -- disagreements -------------------------------------------------------------------------

function diffColumn(title, parts, tag) {
  return el("div", { "data-side": title }, el("h4", {}, title),
    ...parts.map((p) => (p.changed ? el(tag, { class: "diff" }, p.text) : p.text)));
}

function disagreementItem(row) {
  const [teacher, student] = wordDiff(row.teacher_answer, row.student_answer);
  const slices = Object.entries(row.slices ?? {}).map(([k, v]) => `${k}=${v}`).join(", ");
  const fmt = (v) => (v === null || v === undefined ? "–" : Number(v).toFixed(2));
  return el("article", { class: "disagreement", "data-request-id": row.request_id },
    el("header", {},
      el("span", { class: "mono" }, utc(row.created_at)),
      el("span", {}, `served by ${row.served_by ?? "–"}`),
      el("span", {}, slices || "(no slices)"),
      el("span", {}, `score ${fmt(row.agreement_score)}`),
      el("span", {}, `confidence ${fmt(row.student_confidence)}`),
      row.agreement_reason ? el("span", {}, row.agreement_reason) : null,
      el("a", { href: `/console/api/requests/${encodeURIComponent(row.request_id)}`, target: "_blank",
        rel: "noopener", class: "mono" }, `raw row ${row.request_id}`)),
    row.prompt !== null ? el("div", { class: "prompt" }, row.prompt) : null,
    el("div", { class: "side-by-side" }, diffColumn("teacher", teacher, "del"), diffColumn("student", student, "ins")));
}

async function loadDisagreements(more = false) {
  if (!more) {
    state.cursor = null;
    clear("disagreements");
  }
  const { slice, since, until, served_by } = state.filters;
  note("disagreement-note", "");
  try {
    const page = await api("/admin/reports/disagreements", {
      route: state.route, since: since || state.since, until, served_by, slice, limit: 20, cursor: state.cursor,
    });
    $("disagreements").append(...page.disagreements.map(disagreementItem));
    state.cursor = page.next_cursor;
    $("more").hidden = !page.next_cursor;
    if (!$("disagreements").children.length) note("disagreement-note", "No disagreement matches these filters.");
  } catch (error) {
    $("more").hidden = true;
    note("disagreement-note", error.message);
  }
}

// -- loading -------------------------------------------------------------------------------

async function section(ids, noteId, work) {
  clear(...ids);
  note(noteId, "Loading…");
  try {
    await work();
  } catch (error) {
    clear(...ids);
    note(noteId, error.message);
  }
}

async function loadRoute() {
  note("route-note", "");
  const [route, events] = await Promise.all([
    api(`/admin/routes/${encodeURIComponent(state.route)}`),
    api(`/admin/routes/${encodeURIComponent(state.route)}/events`, { limit: 50 }),
  ]);
  renderRoute(route);
  renderEvents(events.events);
}

async function load() {
  $("status").textContent = "Loading…";
  document.body.dataset.loaded = "false";
  const { routes } = await api("/admin/routes");
  const select = $("route");
  if (!select.options.length) {
    select.replaceChildren(...routes.map((r) => el("option", { value: r.name }, r.name)));
  }
  state.route = select.value;
  const params = { route: state.route, since: state.since };
  await Promise.all([
    section(["route-state", "events"], "route-note", loadRoute),
    section(["aggregate-chart", "slice-charts", "slice-table"], "agreement-note", async () => {
      const [trend, slices] = await Promise.all([
        api("/console/api/trend", params), api("/admin/reports/slices", params),
      ]);
      renderTrend(trend);
      renderSliceTable(slices);
    }),
    section(["candidates"], "candidates-note", async () =>
      renderCandidates(await api("/admin/reports/candidates", params))),
    section(["calibration-charts"], "calibration-note", async () =>
      renderCalibration(await api("/admin/reports/thresholds", params))),
    section(["drift-charts"], "drift-note", async () =>
      renderDrift(await api("/admin/reports/drift", params))),
    loadDisagreements(),
  ]);
  $("status").textContent = `Route ${state.route}, updated ${utc(new Date().toISOString())}.`;
  document.body.dataset.loaded = "true";
}

function formBody(form) {
  const body = {};
  for (const [name, value] of new FormData(form).entries()) {
    if (value === "") continue;
    body[name] = name === "reason" || name === "mode" ? value : Number(value);
  }
  return body;
}

async function write(form, path, method) {
  const result = $("write-result");
  result.textContent = "Sending…";
  result.className = "";
  try {
    const answer = await api(path, {}, { method, body: JSON.stringify(formBody(form)) });
    result.textContent = answer.changed ? `Done: ${state.route} is now ${answer.route.mode} at ${answer.route.rollout_percent}%.`
      : "Nothing changed: the route already had these values.";
    form.reset();
    await loadRoute();
  } catch (error) {
    result.textContent = `Refused (${error.status}): ${error.message}`;
    result.className = "error";
  }
}

function main() {
  $("write-panel").hidden = !CAN_WRITE;
  $("read-only-note").hidden = CAN_WRITE;
  $("route").addEventListener("change", () => {
    state.filters = {};
    $("disagreement-filter").reset();
    load();
  });
  $("window").addEventListener("change", (e) => { state.since = e.target.value; load(); });
  $("refresh").addEventListener("click", () => load());
  $("more").addEventListener("click", () => loadDisagreements(true));
  $("disagreement-filter").addEventListener("submit", (e) => {
    e.preventDefault();
    state.filters = Object.fromEntries(new FormData(e.target).entries());
    loadDisagreements();
  });
  $("change-form").addEventListener("submit", (e) => {
    e.preventDefault();
    write(e.target, `/admin/routes/${encodeURIComponent(state.route)}`, "PATCH");
  });
  $("rollback-form").addEventListener("submit", (e) => {
    e.preventDefault();
    write(e.target, `/admin/routes/${encodeURIComponent(state.route)}/rollback`, "POST");
  });
  state.since = $("window").value;
  load().catch((error) => { $("status").textContent = error.message; });
}

main();
