// The disagreements: teacher and student side by side, the differing words marked, newest
// first, a page at a time; each with a link to its row.
import { api } from "./api.js";
import { el, utc } from "./charts.js";
import { wordDiff } from "./diff.js";
import { rowLink } from "./rowview.js";
import { $, clear, note, state } from "./shared.js";

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
      rowLink(row.request_id, `row ${row.request_id}`)),
    row.prompt !== null ? el("div", { class: "prompt" }, row.prompt) : null,
    el("div", { class: "side-by-side" }, diffColumn("teacher", teacher, "del"), diffColumn("student", student, "ins")));
}

// The first page (``more``: the next one). A refresh (``quiet``) reloads the first page in
// place, and leaves the list alone once more pages were loaded.
export async function loadDisagreements(more = false, quiet = false) {
  if (quiet && state.pages > 1) return;
  if (!more && !quiet) {
    state.cursor = null;
    clear("disagreements");
  }
  const { slice, since, until, served_by } = state.filters;
  if (!quiet) note("disagreement-note", "");
  try {
    const page = await api("/admin/reports/disagreements", {
      route: state.route, since: since || state.since, until, served_by, slice, limit: 20,
      cursor: more ? state.cursor : null,
    });
    const items = page.disagreements.map(disagreementItem);
    if (more) $("disagreements").append(...items);
    else $("disagreements").replaceChildren(...items);
    state.pages = more ? state.pages + 1 : 1;
    state.cursor = page.next_cursor;
    $("more").hidden = !page.next_cursor;
    note("disagreement-note", $("disagreements").children.length ? "" : "No disagreement matches these filters.");
  } catch (error) {
    if (!quiet) $("more").hidden = true;
    note("disagreement-note", quiet ? `Not refreshed: ${error.message}` : error.message);
  }
}
