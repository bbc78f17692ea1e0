// The console page: reads the admin API with the session cookie, draws it, and (for sre keys)
// changes a route through the same API with the session's CSRF token.
import { api, CAN_READ_ADMIN, CAN_WRITE } from "./api.js";
import { calibrationChart, driftChart, el, pct, trendChart, utc } from "./charts.js";
import { wordDiff } from "./diff.js";
import { loadQuality } from "./quality.js";
import { initReview, loadReview } from "./review.js";
import { loadTeacherVersions } from "./teachers.js";

const $ = (id) => document.getElementById(id);

const state = { route: null, since: "7d", cursor: null, filters: {}, overrides: null, sliceCalibration: null };

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

const KNOBS = [["mode", "mode"], ["rollout_percent", "percent"], ["confidence_threshold", "threshold"]];
const given = (v) => v !== null && v !== undefined;

// An override's knobs in words: "threshold 0.45" or "mode teacher, percent 50%".
function knobs(view) {
  const parts = KNOBS.filter(([k]) => given(view?.[k]))
    .map(([k, label]) => `${label} ${k === "rollout_percent" ? `${view[k]}%` : view[k]}`);
  return parts.join(", ") || "no knobs";
}

function duration(seconds) {
  if (seconds >= 3600 && seconds % 360 === 0) return `${seconds / 3600} h`;
  if (seconds >= 60 && seconds % 6 === 0) return `${seconds / 60} min`;
  return `${seconds} s`;
}

function describeChange(event) {
  const detail = event.detail ?? {};
  if (event.new?.slices || event.old?.slices) { // a calibration: several slices in one change
    return (event.new?.slices ?? []).map((s) => `${s.slice}: ${knobs(s)}`).join("; ");
  }
  if (given(detail.slice) && (event.new || event.old)) { // one slice's override
    if (!event.new) return `${detail.slice}: cleared (was ${knobs(event.old)})`;
    return `${detail.slice}: ${event.old ? knobs(event.old) : "(none)"} → ${knobs(event.new)}`;
  }
  if (event.action?.startsWith("ramp_") && Array.isArray(detail.steps)) {
    return `steps ${detail.steps.map((p) => `${p}%`).join(", ")}` +
      (given(detail.step) ? `; stopped at step ${detail.step}` : "") +
      (given(detail.hold_s) ? `; each held ${duration(detail.hold_s)}` : "");
  }
  const keys = Object.keys(event.new ?? {}).filter((k) => k !== "version");
  return keys.map((k) => `${k}: ${event.old?.[k] ?? "–"} → ${event.new[k]}`).join("; ");
}

function renderEvents(events) {
  table(
    "events",
    [["at"], ["actor"], ["action"], ["change"], ["reason"]],
    events.map((e) =>
      el("tr", { "data-action": e.action }, el("td", { class: "mono when" }, utc(e.at)), el("td", {}, e.actor),
        el("td", {}, e.action), el("td", {}, describeChange(e)), el("td", {}, e.reason)),
    ),
  );
  if (!events.length) $("events").append(el("tr", {}, el("td", { colspan: 5, class: "muted" }, "No change recorded yet.")));
}

// A slice's name in a cell: cut short with an ellipsis (never over its neighbours), whole in
// the tooltip.
const clipped = (text, cls = "clip") => el("span", { class: cls, title: text }, text);

const RAMP_STATUS = { active: "pass", completed: "pass", stopped: "fail", cancelled: "muted" };

function renderRamp(ramp) {
  $("ramp-cancel-form").hidden = !(CAN_WRITE && ramp?.status === "active");
  if (!ramp) {
    $("ramp").replaceChildren(el("p", { class: "muted", "data-field": "no-ramp" },
      "No ramp: the rollout percent changes only when someone changes it."));
    return;
  }
  const steps = el("ol", { class: "steps", "aria-label": "ramp steps" }, ...ramp.steps.map((percent, i) => {
    const at = i + 1;
    const cls = at === ramp.step ? "current" : at < ramp.step ? "done" : null;
    return el("li", { class: cls, "data-step": at, "aria-current": at === ramp.step ? "step" : null,
      title: at === ramp.step ? `step ${at}: the current one` : `step ${at}` }, `${percent}%`);
  }));
  const last = ramp.last_event;
  const rows = [
    ["status", el("span", { class: `badge ${RAMP_STATUS[ramp.status] ?? ""}` }, ramp.status), "status"],
    ["step", `${ramp.step} of ${ramp.steps.length}, at ${ramp.percent}%`, "step"],
    ["hold", `${duration(ramp.hold_s)} per step, then the gate is checked`, "hold"],
    ["next check", ramp.status === "active" ? utc(ramp.next_at) : "– (not active)", "next_at"],
    ["started by", `${ramp.created_by}: ${ramp.reason}`, "created_by"],
    ["gate", last ? `${last.action} (${last.actor}, ${utc(last.at)}): ${last.reason}` : "not checked yet", "gate"],
  ];
  $("ramp").replaceChildren(steps, el("table", { class: "kv" },
    ...rows.map(([label, value, field]) => el("tr", {}, el("th", {}, label), el("td", { "data-field": field }, value)))));
}

function clearForm(override) {
  const form = el("form", { class: "row-action", "data-slice": override.slice },
    el("input", { name: "reason", required: true, maxlength: 1000, placeholder: "reason",
      "aria-label": `reason to clear ${override.slice}` }),
    el("button", { type: "submit", class: "danger" }, "Clear"));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const path = `${routePath()}/slices/${encodeURIComponent(override.dimension)}/${encodeURIComponent(override.value)}/clear`;
    send($("slices-result"), path, "POST", { reason: new FormData(form).get("reason") },
      () => `Cleared ${override.slice}: it follows the route's knobs again.`).then((answer) => answer && loadRoute());
  });
  return form;
}

function renderOverrides(overrides) {
  state.overrides = overrides;
  const dash = (v, suffix = "") => (given(v) ? `${v}${suffix}` : "–");
  const head = [["slice"], ["mode"], ["percent", "num"], ["threshold", "num"], ["set by"], ["when"], ["reason"]];
  table("slice-overrides", CAN_WRITE ? [...head, [""]] : head, overrides.map((o) =>
    el("tr", { "data-slice": o.slice },
      el("td", {}, clipped(o.slice)), el("td", { "data-field": "mode" }, dash(o.mode)),
      el("td", { class: "num", "data-field": "rollout_percent" }, dash(o.rollout_percent, "%")),
      el("td", { class: "num", "data-field": "confidence_threshold" }, dash(o.confidence_threshold)),
      el("td", { "data-field": "updated_by" }, o.updated_by), el("td", { class: "mono when" }, utc(o.updated_at)),
      el("td", { class: "reason", "data-field": "reason" }, o.reason),
      CAN_WRITE ? el("td", {}, clearForm(o)) : null)));
  if (!overrides.length) {
    $("slice-overrides").append(el("tr", {}, el("td", { colspan: head.length + (CAN_WRITE ? 1 : 0), class: "muted" },
      "No slice override: every slice follows the route's knobs.")));
  }
  if (state.sliceCalibration) renderSliceCalibration(state.sliceCalibration);
}

// -- agreement over time -------------------------------------------------------------------

function trendPanel(series, trend) {
  const failing = series.verdict === "fail";
  const badge = series.verdict ? el("span", { class: `badge ${series.verdict}` }, series.verdict.replaceAll("_", " ")) : null;
  const sub = `${series.agreed}/${series.samples} agree · ${pct(series.agreement)}` +
    (series.samples ? ` (95% CI ${pct(series.ci_low)}–${pct(series.ci_high)})` : "") +
    (series.bar !== null ? ` · bar ${pct(series.bar, 0)}, ${series.min_samples} samples` : "");
  return el("div", { class: failing ? "chart failing" : "chart", "data-slice": sliceName(series) },
    el("div", { class: "title" }, el("span", { title: sliceName(series) }, sliceName(series)), badge),
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
      el("div", { class: "title" }, el("span", { title: sliceName(curve) }, sliceName(curve)),
        curve.bar !== null ? el("span", { class: "muted" }, `bar ${pct(curve.bar, 0)}`) : null),
      el("div", { class: "sub" }, `${curve.total} comparisons`),
      calibrationChart(curve, report.current_threshold, rec.threshold))));
}

// Per slice, the plain and the conservative recommendation side by side; the conservative one
// is what the SRE may apply.
const STATUS_TITLE = {
  ok: "the lowest threshold at which the answers the student would serve reach the target",
  unreachable: "no threshold reaches the target: applying puts the slice on the teacher",
  not_enough_data: "too few comparisons to judge: applying leaves the slice as it is",
};
const target = (v) => `${Number((v * 100).toFixed(1))}%`;
// A figure and its detail, each kept whole: a narrow cell wraps between them only.
const pair = (main, detail) => [el("span", { class: "nowrap" }, main), " ", el("span", { class: "nowrap" }, detail)];

function recommendationCells(line, kind) {
  const at = line?.at_threshold;
  const cls = `num rec-${kind}`;
  const threshold = !line ? "–" : line.status === "ok" ? String(line.threshold)
    : line.status === "unreachable" ? "none: teacher" : "not enough data";
  return [
    el("td", { class: `${cls} group-start status-${line?.status ?? "none"}`, "data-field": `${kind}-threshold`,
      "data-status": line?.status ?? "", title: line ? `${kind}: ${STATUS_TITLE[line.status] ?? line.status}` : null }, threshold),
    el("td", { class: cls, "data-field": `${kind}-served` },
      ...(at ? pair(pct(at.share), `(${at.served}/${at.total})`) : ["–"])),
    el("td", { class: cls, "data-field": `${kind}-agreement` },
      ...(at ? pair(pct(at.agreement), `(${pct(at.ci_low)}–${pct(at.ci_high)})`) : ["–"])),
  ];
}

function renderSliceCalibration(data) {
  state.sliceCalibration = data;
  const { plain, conservative } = data;
  const goal = target(plain.target_agreement);
  const byName = new Map();
  for (const [kind, result] of [["plain", plain], ["conservative", conservative]]) {
    for (const line of result.slices) {
      const name = sliceName(line);
      byName.set(name, { ...(byName.get(name) ?? { name, comparisons: line.comparisons }), [kind]: line });
    }
  }
  const live = new Map((state.overrides ?? []).map((o) => [o.slice, o]));
  const header = [
    el("tr", {},
      el("th", { rowspan: 2 }, "slice"), el("th", { rowspan: 2, class: "num" }, "compared"),
      el("th", { colspan: 3, class: "rec-plain group-start", "data-group": "plain", scope: "colgroup" },
        `Plain recommendation: observed agreement ≥ ${goal}`),
      el("th", { colspan: 3, class: "rec-conservative group-start", "data-group": "conservative", scope: "colgroup" },
        `Conservative recommendation: 95% CI low end ≥ ${goal}`),
      el("th", { rowspan: 2 }, "override now")),
    el("tr", {}, ...["plain", "conservative"].flatMap((kind) => [
      el("th", { class: `num rec-${kind} group-start` }, "threshold"),
      el("th", { class: `num rec-${kind}` }, "served"),
      el("th", { class: `num rec-${kind}` }, "agreement (95% CI)"),
    ])),
  ];
  const rows = [...byName.values()].map((line) => {
    const differs = line.plain?.threshold !== line.conservative?.threshold || line.plain?.status !== line.conservative?.status;
    const now = live.get(line.name);
    return el("tr", { "data-slice": line.name, class: differs ? "differs" : null },
      el("td", {}, clipped(line.name)), num(line.comparisons),
      ...recommendationCells(line.plain, "plain"), ...recommendationCells(line.conservative, "conservative"),
      el("td", { "data-field": "override" }, now ? knobs(now) : state.overrides ? "–" : "…"));
  });
  $("slice-calibration").replaceChildren(el("thead", {}, ...header), el("tbody", {}, ...rows));
  const differing = rows.filter((r) => r.classList.contains("differs")).length;
  note("slice-calibration-note",
    `Target ${goal} over at least ${plain.min_served} served answers; shadow comparisons from ${utc(plain.since)} ` +
    `to ${utc(plain.until)}. ${rows.length} slices; the two recommendations differ on ${differing}.`);
  const changes = conservative.changes.map((c) => `${c.slice}: ${knobs(c)}`);
  $("calibration-preview").textContent = changes.length
    ? `Applying the conservative recommendation sets ${changes.join("; ")}. Slices with too few comparisons are left as they are.`
    : "The conservative recommendation changes nothing: no slice has enough comparisons.";
  $("calibration-apply-form").hidden = !CAN_WRITE || !changes.length;
}

function calibrationParams() {
  const form = $("slice-calibration-form");
  const goal = Number(form.elements.target_agreement.value);
  const minServed = Math.round(Number(form.elements.min_served.value));
  return {
    target_agreement: goal > 0 && goal <= 1 ? goal : 0.9,
    min_served: minServed >= 1 ? minServed : 30,
    since: state.since,
  };
}

async function loadSliceCalibration() {
  state.sliceCalibration = null;
  $("calibration-apply-form").hidden = true;
  $("calibration-preview").textContent = "";
  const params = calibrationParams();
  const path = `${routePath()}/calibration`;
  const [plain, conservative] = await Promise.all([
    api(path, { ...params, conservative: "false" }), api(path, { ...params, conservative: "true" }),
  ]);
  renderSliceCalibration({ plain, conservative, params });
}

// The reference: a window, or a registered dataset (the champion's training set).
function describeReference(ref) {
  if (ref.kind !== "registered") return `${ref.requests} requests from ${utc(ref.since)} to ${utc(ref.until)}`;
  const whose = ref.champion ? `, the training set of champion ${ref.champion}` : "";
  return `dataset ${ref.dataset_id} (${ref.dataset_kind}${whose}), ${ref.requests} of its ${ref.items} requests still logged`;
}

function describeContent(content) {
  if (!content) return "";
  const { current, held_out: heldOut } = content;
  return ` Prompt content: ${pct(current.share)} of ${current.prompts} sampled prompts are farther than ` +
    `${content.max_distance} from every training prompt, against ${pct(heldOut.share)} of held-out training prompts.`;
}

function renderDrift(report) {
  note("drift-note",
    `Current: ${report.current.requests} requests from ${utc(report.current.since)}; reference: ` +
    `${describeReference(report.reference)}. ` +
    (report.flagged.length ? `Flagged (PSI ≥ ${report.psi_threshold}): ${report.flagged.join(", ")}.`
      : `No dimension has PSI ≥ ${report.psi_threshold}.`) + describeContent(report.content));
  const dimensions = [...report.dimensions, ...(report.prompt_length ? [report.prompt_length] : []),
    ...(report.content ? [report.content] : [])];
  $("drift-charts").replaceChildren(...dimensions.map((d) =>
    el("div", { class: d.flagged ? "chart flagged" : "chart", "data-dimension": d.dimension },
      el("div", { class: "title" }, el("span", {}, d.dimension),
        el("span", { class: d.flagged ? "badge flagged" : "muted" }, `PSI ${d.psi.toFixed(3)}${d.flagged ? " flagged" : ""}`)),
      el("div", { class: "legend" },
        el("span", {}, el("span", { class: "swatch", "data-swatch": "reference" }), "reference"),
        el("span", {}, el("span", { class: "swatch", "data-swatch": "current" }), "current")),
      driftChart(d))));
}

// The rolling window (the API's default) or, when chosen, the champion's training set.
async function loadDrift() {
  const training = $("drift-reference").value === "champion";
  renderDrift(await api("/admin/reports/drift",
    { route: state.route, since: state.since, reference_dataset: training ? "champion" : null }));
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

const routePath = () => `/admin/routes/${encodeURIComponent(state.route)}`;

async function loadRoute() {
  note("route-note", "");
  const path = routePath();
  const [route, events, overrides] = await Promise.all([
    api(path), api(`${path}/events`, { limit: 50 }), api(`${path}/slices`),
  ]);
  renderRoute(route);
  renderRamp(route.ramp ?? null);
  renderOverrides(overrides.slices);
  renderEvents(events.events);
}

// -- pages ---------------------------------------------------------------------------------
// Two pages in one document: the route's overview (the sections above) and the review queue
// with the quality view. A key with only the reviewer scope has the review page alone, and the
// page never asks for what that key may not read.

const PAGES = CAN_READ_ADMIN ? ["overview", "review"] : ["review"];

function currentPage() {
  const wanted = location.hash.slice(1);
  return PAGES.includes(wanted) ? wanted : PAGES[0];
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

async function load() {
  $("status").textContent = "Loading…";
  document.body.dataset.loaded = "false";
  const page = currentPage();
  showPage(page);
  const { routes } = await api(CAN_READ_ADMIN ? "/admin/routes" : "/admin/reviews/routes");
  const select = $("route");
  if (!select.options.length) {
    select.replaceChildren(...routes.map((r) => el("option", { value: r.name }, r.name)));
  }
  state.route = select.value;
  if (page === "review") {
    await Promise.all([
      loadReview(state.route, state.since),
      CAN_READ_ADMIN ? loadQuality(state.route, state.since) : null,
    ]);
    $("status").textContent = `Route ${state.route}, review queue, updated ${utc(new Date().toISOString())}.`;
    document.body.dataset.loaded = "true";
    return;
  }
  const params = { route: state.route, since: state.since };
  await Promise.all([
    section(["route-state", "events", "ramp", "slice-overrides"], "route-note", loadRoute),
    section(["teacher-versions"], "teacher-versions-note", () => loadTeacherVersions(state.route)),
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
    section(["slice-calibration"], "slice-calibration-note", loadSliceCalibration),
    section(["drift-charts"], "drift-note", loadDrift),
    loadDisagreements(),
  ]);
  $("status").textContent = `Route ${state.route}, updated ${utc(new Date().toISOString())}.`;
  document.body.dataset.loaded = "true";
}

const TEXT_FIELDS = new Set(["reason", "mode", "slice"]);

function formBody(form) {
  const body = {};
  for (const [name, value] of new FormData(form).entries()) {
    if (value === "") continue;
    body[name] = TEXT_FIELDS.has(name) ? value : Number(value);
  }
  return body;
}

// Send one change; the answer's summary (or the refusal) goes into ``result``. Returns the
// answer, or null when the API said no.
async function send(result, path, method, body, describe) {
  result.textContent = "Sending…";
  result.className = "";
  try {
    const answer = await api(path, {}, { method, body: JSON.stringify(body) });
    result.textContent = describe(answer);
    return answer;
  } catch (error) {
    result.textContent = `Refused (${error.status}): ${error.message}`;
    result.className = "error";
    return null;
  }
}

async function write(form, path, method) {
  const answer = await send($("write-result"), path, method, formBody(form), (a) =>
    (a.changed ? `Done: ${state.route} is now ${a.route.mode} at ${a.route.rollout_percent}%.`
      : "Nothing changed: the route already had these values."));
  if (answer) {
    form.reset();
    await loadRoute();
  }
}

async function setSlice(form) {
  const body = formBody(form);
  const name = String(body.slice ?? "").trim();
  delete body.slice;
  const cut = name.indexOf("=");
  if (cut < 1 || cut === name.length - 1) {
    $("slices-result").textContent = "Give the slice as dimension=value, for example tier=free.";
    $("slices-result").className = "error";
    return;
  }
  const path = `${routePath()}/slices/${encodeURIComponent(name.slice(0, cut).trim())}/` +
    encodeURIComponent(name.slice(cut + 1).trim());
  const answer = await send($("slices-result"), path, "PATCH", body, (a) =>
    (a.changed ? `Set ${a.slice.slice}: ${knobs(a.slice)}.` : `Nothing changed: ${a.slice.slice} already had these values.`) +
    (a.warnings?.length ? ` Warning: ${a.warnings.join(" ")}` : ""));
  if (answer) {
    form.reset();
    await loadRoute();
  }
}

async function cancelRamp(form) {
  const answer = await send($("ramp-result"), `${routePath()}/plan/cancel`, "POST", formBody(form), (a) =>
    `Ramp cancelled at step ${a.ramp.step} of ${a.ramp.steps.length}; the route stays at ${a.route.rollout_percent}%.`);
  if (answer) {
    form.reset();
    await loadRoute();
  }
}

async function applyCalibration(form) {
  if (!state.sliceCalibration) return; // reloading: the button comes back with the figures
  const { params } = state.sliceCalibration;
  const body = { ...params, conservative: true, reason: new FormData(form).get("reason") };
  const answer = await send($("calibration-result"), `${routePath()}/calibration`, "POST", body, (a) =>
    (a.applied.length
      ? `Applied the conservative per-slice thresholds: ${a.applied.map((o) => `${o.slice} ${knobs(o)}`).join("; ")}.`
      : "Nothing changed: the overrides already had these values."));
  if (answer) {
    form.reset();
    await loadRoute();
  }
}

function main() {
  $("pages").hidden = PAGES.length < 2;
  window.addEventListener("hashchange", () => load().catch((error) => { $("status").textContent = error.message; }));
  let qualityTimer = null; // verdicts come in bursts: the quality view follows a second later
  initReview(() => {
    if (!CAN_READ_ADMIN) return;
    clearTimeout(qualityTimer);
    qualityTimer = setTimeout(() => loadQuality(state.route, state.since), 1000);
  });
  $("write-panel").hidden = !CAN_WRITE;
  $("read-only-note").hidden = CAN_WRITE;
  $("route").addEventListener("change", () => {
    state.filters = {};
    $("disagreement-filter").reset();
    load();
  });
  $("window").addEventListener("change", (e) => { state.since = e.target.value; load(); });
  $("refresh").addEventListener("click", () => load());
  $("drift-reference").addEventListener("change", () => section(["drift-charts"], "drift-note", loadDrift));
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
  $("slice-form").hidden = !CAN_WRITE;
  $("slice-form").addEventListener("submit", (e) => {
    e.preventDefault();
    setSlice(e.target);
  });
  $("ramp-cancel-form").addEventListener("submit", (e) => {
    e.preventDefault();
    cancelRamp(e.target);
  });
  $("calibration-apply-form").addEventListener("submit", (e) => {
    e.preventDefault();
    applyCalibration(e.target);
  });
  $("slice-calibration-form").addEventListener("submit", (e) => {
    e.preventDefault();
    section(["slice-calibration"], "slice-calibration-note", loadSliceCalibration);
  });
  state.since = $("window").value;
  load().catch((error) => { $("status").textContent = error.message; });
}

main();
