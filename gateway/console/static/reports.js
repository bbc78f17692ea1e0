// The overview's figures: agreement per slice over time and the slice table (which sets the
// one slice order the other sections follow), the candidates, confidence calibration (per
// route and per slice) and drift.
import { api, CAN_WRITE } from "./api.js";
import { calibrationChart, driftChart, el, pct, trendChart, utc } from "./charts.js";
import { $, clipped, knobs, note, num, ranked, routePath, sliceName, state, table } from "./shared.js";

// -- agreement over time -------------------------------------------------------------------

// A slice with fewer comparisons than it needs is ranked last and says so (a critical slice's
// verdict already reads "not enough data").
const few = (s) => `few samples: ${s.samples} of ${s.samples_needed}`;

function trendPanel(series, trend, maxSamples) {
  const failing = series.verdict === "fail";
  const thin = series.enough_samples === false;
  const badge = series.verdict ? el("span", { class: `badge ${series.verdict}` }, series.verdict.replaceAll("_", " "))
    : thin ? el("span", { class: "badge not_enough_data", title: "ranked last until it has enough comparisons" }, "few samples")
      : null;
  const sub = `${series.agreed}/${series.samples} agree · ${pct(series.agreement)}` +
    (series.samples ? ` (95% CI ${pct(series.ci_low)}–${pct(series.ci_high)})` : "") +
    (series.bar !== null ? ` · bar ${pct(series.bar, 0)}, ${series.min_samples} samples` : "") +
    (thin ? ` · ${few(series)}` : "");
  const cls = ["chart", failing ? "failing" : null, thin ? "thin" : null].filter(Boolean).join(" ");
  return el("div", { class: cls, "data-slice": sliceName(series), "data-enough": String(series.enough_samples) },
    el("div", { class: "title" }, el("span", { title: sliceName(series) }, sliceName(series)), badge),
    el("div", { class: "sub" }, sub),
    trendChart(series, trend.buckets, trend.step, maxSamples));
}

export function renderTrend(trend) {
  // one size scale for every slice's points, so a small slice looks small beside a big one
  const most = Math.max(1, ...trend.slices.flatMap((s) => s.points.map((p) => p.samples)));
  $("aggregate-chart").replaceChildren(el("h3", {}, "Aggregate"), trendPanel(trend.aggregate, trend, null));
  $("slice-charts").replaceChildren(...trend.slices.map((s) => trendPanel(s, trend, most)));
  const failing = trend.slices.filter((s) => s.verdict === "fail").map(sliceName);
  const thin = trend.slices.filter((s) => !s.enough_samples).length;
  note("agreement-note",
    `${trend.step === "hour" ? "Hourly" : "Daily"} (UTC) from ${utc(trend.since)} to ${utc(trend.until)}; ` +
    "failing critical slices first, then by the low end of the interval, slices with too few comparisons last. " +
    (failing.length ? `Below their bar: ${failing.join(", ")}.` : "No critical slice is below its bar.") +
    (thin ? ` ${thin} with too few comparisons to rank.` : "") +
    (trend.omitted_slices ? ` ${trend.omitted_slices} more slices are in the table only.` : ""));
}

export function renderSliceTable(report) {
  state.rank = new Map(report.slices.map((s, i) => [sliceName(s), i]));
  const verdict = (s) => s.verdict?.replaceAll("_", " ") ?? (s.enough_samples ? "–" : "few samples");
  const row = (s) => el("tr", {
    class: s.verdict === "fail" ? "fail" : s.enough_samples ? null : "thin", "data-slice": sliceName(s),
    "data-enough": String(s.enough_samples),
  },
  el("td", {}, clipped(sliceName(s))), num(s.requests),
  el("td", { class: "num", title: s.enough_samples ? null : few(s) }, s.samples), num(pct(s.agreement)),
  num(s.samples ? `${pct(s.ci_low)}–${pct(s.ci_high)}` : "–"), num(s.bar === null ? "–" : pct(s.bar, 0)),
  el("td", { class: s.verdict ? `verdict-${s.verdict}` : s.enough_samples ? null : "verdict-not_enough_data",
    title: s.enough_samples ? null : `${few(s)}: ranked last` }, verdict(s)),
  num(pct(s.fallback_rate)), num(pct(s.student_share)));
  table("slice-table",
    [["slice"], ["requests", "num"], ["compared", "num"], ["agreement", "num"], ["95% CI", "num"], ["bar", "num"],
      ["verdict"], ["fallbacks", "num"], ["student served", "num"]],
    [...report.slices.map(row), row(report.aggregate)]);
  const select = document.querySelector("#disagreement-filter select[name=slice]");
  const chosen = state.filters.slice ?? "";
  const names = report.slices.map(sliceName);
  select.replaceChildren(el("option", { value: "" }, "(any)"), ...names.map((n) => el("option", { value: n }, n)),
    ...(chosen && !names.includes(chosen) ? [el("option", { value: chosen }, chosen)] : []));
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

export function renderCandidates(report) {
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

export function renderCalibration(report) {
  const rec = report.recommendation;
  note("calibration-note",
    `${report.comparisons} shadow comparisons from ${utc(report.since)}. Live threshold ${report.current_threshold}; ` +
    `recommended ${rec.threshold ?? "none"}: ${rec.reason}`);
  $("calibration-charts").replaceChildren(...ranked(report.curves).map((curve) =>
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

export function renderSliceCalibration(data) {
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
  const rows = ranked([...byName.values()], (line) => line.name).map((line) => {
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

export async function loadSliceCalibration(quiet = false) {
  if (!quiet) { // a refresh keeps the figures (and the apply button) until the new ones come
    state.sliceCalibration = null;
    $("calibration-apply-form").hidden = true;
    $("calibration-preview").textContent = "";
  }
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
export async function loadDrift() {
  const training = $("drift-reference").value === "champion";
  renderDrift(await api("/admin/reports/drift",
    { route: state.route, since: state.since, reference_dataset: training ? "champion" : null }));
}
