// The quality view: per slice, how often the teacher and each student were judged wrong (from
// review verdicts and app feedback), and how often a student was right where it disagreed.
// Every slice is shown, worst first, the route as a whole last: a bad slice is never hidden
// behind a good average.
import { api } from "./api.js";
import { el, pct, utc } from "./charts.js";

const $ = (id) => document.getElementById(id);
const sliceName = (s) => (s.dimension === "all" ? "all" : `${s.dimension}=${s.value}`);
const num = (value, field) => el("td", { class: "num", "data-field": field }, value);
const interval = (r) => (r.ci_low === null || r.ci_low === undefined ? "–" : `${pct(r.ci_low)}–${pct(r.ci_high)}`);

// A slice's badness: the highest low end of an error interval among its answerers.
const worst = (line) => Math.max(...Object.values(line.subjects).map((f) => f.error.ci_low ?? 0));

function rows(line, overall) {
  return Object.entries(line.subjects).map(([subject, f], i) => {
    const routeWide = overall[subject]?.error.rate;
    // Wrong significantly more often here than on the route as a whole.
    const worse = line.dimension !== "all" && routeWide !== undefined && routeWide !== null &&
      f.error.ci_low !== null && f.error.ci_low > routeWide;
    const right = f.student_right_in_disagreements;
    return el("tr", { class: worse ? "fail" : null, "data-slice": sliceName(line), "data-subject": subject,
      "data-worse": worse ? "true" : null },
    el("td", {}, i === 0 ? el("span", { class: "clip", title: sliceName(line) }, sliceName(line)) : ""),
    el("td", { "data-field": "subject" }, subject),
    num(f.judged, "judged"), num(f.wrong, "wrong"),
    num(pct(f.error.rate), "error"), num(interval(f.error), "error-ci"),
    num(f.from_reviews, "from-reviews"), num(f.from_feedback, "from-feedback"),
    num(subject === "teacher" ? "–" : f.reviewed_disagreements, "disagreements"),
    num(right ? pct(right.rate) : "–", "student-right"),
    num(right ? interval(right) : "–", "student-right-ci"));
  });
}

function render(report) {
  const slices = [...report.slices].sort((a, b) => worst(b) - worst(a));
  const overall = { dimension: "all", value: "all", subjects: report.overall };
  const head = [["slice"], ["answers of"], ["judged", "num"], ["wrong", "num"], ["error rate", "num"],
    ["95% CI", "num"], ["by review", "num"], ["by feedback", "num"], ["disagreements reviewed", "num"],
    ["student right", "num"], ["95% CI", "num"]];
  $("quality").replaceChildren(
    el("thead", {}, el("tr", {}, ...head.map(([label, cls]) => el("th", { class: cls }, label)))),
    ...[...slices, overall].map((line) =>
      el("tbody", { "data-slice": sliceName(line), class: line === overall ? "overall" : null }, ...rows(line, report.overall))),
  );
  const summary = Object.entries(report.overall).map(([subject, f]) =>
    `${subject} wrong in ${f.wrong} of ${f.judged} (${pct(f.error.rate)})`);
  const worse = [...$("quality").querySelectorAll("tr[data-worse]")].map((r) => `${r.dataset.slice} (${r.dataset.subject})`);
  $("quality-note").textContent =
    `Judged answers on requests from ${utc(report.since)} to ${utc(report.until)}: ${summary.join("; ")}. ` +
    (worse.length ? `Wrong more often than on the route as a whole: ${worse.join(", ")}.` : "No slice stands out from the route as a whole.");
  $("quality-rules").textContent = report.rules ?? "";
}

// ``quiet`` (auto-refresh): the figures shown stay until the new ones come, and stay when
// they cannot be had.
export async function loadQuality(route, since, quiet = false) {
  if (!quiet) {
    $("quality-note").textContent = "Loading…";
    $("quality-rules").textContent = "";
  }
  try {
    render(await api("/admin/reports/quality", { route, since }));
  } catch (error) {
    if (!quiet) $("quality").replaceChildren();
    $("quality-note").textContent = quiet ? `Not refreshed: ${error.message}` : error.message;
  }
}
