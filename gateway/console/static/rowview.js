// The row view: one logged request as a person reads it, over the page in a dialog. The prompt
// (every turn), the teacher's and the student's answers side by side with the differing words
// marked, the verdict, and the student's tokens shaded by their probability (the top
// alternatives of the token under the pointer or the focus beside them); the raw JSON as
// stored stays one click away. Every value is text, never HTML.
import { api } from "./api.js";
import { el, pct, utc } from "./charts.js";
import { turns } from "./conversation.js";
import { wordDiff } from "./diff.js";

const $ = (id) => document.getElementById(id);
const MAX_TOKENS = 4000; // drawn one by one; a longer answer shows its first ones
// Probability bands, from sure to unsure: a token's shade is its band's (docs/console.md).
const BANDS = [0.9, 0.7, 0.5, 0.3, 0.1, 0];
const band = (p) => BANDS.findIndex((low) => p >= low);

const links = { open: () => {}, href: () => "#" };

// Tell the row links what opening a row means on this page (its URL and its history).
export function onRowLink(open, href) {
  links.open = open;
  links.href = href;
}

// A link to a row: it opens the view in place (its own URL, for a new tab, too).
export function rowLink(requestId, text) {
  const link = el("a", { href: links.href(requestId), class: "mono row-link", "data-row": requestId,
    title: "the logged row: prompt, answers, verdict, the student's token probabilities" }, text);
  link.addEventListener("click", (event) => {
    if (event.button !== 0 || event.ctrlKey || event.metaKey || event.shiftKey || event.altKey) return;
    event.preventDefault();
    links.open(requestId);
  });
  return link;
}

const fmt = (v, digits = 2) => (v === null || v === undefined ? "–" : Number(v).toFixed(digits));
const ms = (v) => (v === null || v === undefined ? "–" : `${Math.round(v)} ms`);
const given = (...values) => values.filter((v) => v !== null && v !== undefined && v !== "");
const kvTable = (id, rows) => el("table", { class: "kv", id },
  ...rows.map(([label, value, field]) => el("tr", {}, el("th", {}, label), el("td", { "data-field": field }, value))));

function summary(row) {
  const slices = Object.entries(row.slices ?? {}).map(([k, v]) => `${k}=${v}`).join(", ");
  const teacher = given(row.teacher_model, row.teacher_model_reported && row.teacher_model_reported !== row.teacher_model
    ? `reported ${row.teacher_model_reported}` : null, row.teacher_fingerprint).join(" · ");
  const student = given(row.served_student ?? row.student_model, row.student_status).join(" · ");
  return kvTable("row-summary", [
    ["logged", utc(row.created_at), "created_at"],
    ["route", `${row.route} (${row.endpoint}, mode ${row.mode})`, "route"],
    ["served by", given(row.served_by ?? "–", row.fallback_reason ? `fallback: ${row.fallback_reason}` : null).join(", "), "served_by"],
    ["status", given(row.status_code, row.error_type, row.error_message).join(" · ") || "–", "status"],
    ["slices", slices || "(none)", "slices"],
    ["teacher", teacher || "–", "teacher"],
    ["student", student || "–", "student"],
    ["latency", `teacher ${ms(row.teacher_latency_ms)} · student ${ms(row.student_latency_ms)} · gateway ${ms(row.gateway_overhead_ms)}`, "latency"],
    ["tokens", `teacher ${row.teacher_prompt_tokens ?? "–"} in, ${row.teacher_completion_tokens ?? "–"} out · ` +
      `student ${row.student_prompt_tokens ?? "–"} in, ${row.student_completion_tokens ?? "–"} out`, "tokens"],
    ...(row.client_request_id ? [["app's request id", row.client_request_id, "client_request_id"]] : []),
  ]);
}

function verdict(row) {
  const [word, cls] = row.agree === true ? ["Agrees", "pass"] : row.agree === false ? ["Disagrees", "fail"]
    : ["Not compared", "muted"];
  const detail = row.agreement_detail;
  const flat = detail && typeof detail === "object" && !Array.isArray(detail) &&
    Object.values(detail).every((v) => v === null || typeof v !== "object");
  return el("div", { id: "row-verdict", "data-agree": String(row.agree) },
    el("h3", {}, "Verdict"),
    el("p", {}, el("span", { class: `badge ${cls}`, "data-field": "agree" }, word),
      ` score ${fmt(row.agreement_score)} · student confidence ${fmt(row.student_confidence)}`,
      row.agreement_reason ? ` · ${row.agreement_reason}` : ""),
    detail === null || detail === undefined ? null
      : flat ? kvTable("row-detail", Object.entries(detail).map(([k, v]) => [k, String(v), k]))
        : el("pre", { class: "json" }, JSON.stringify(detail, null, 2)));
}

function prompt(row) {
  const list = turns(row.request_payload) ?? [];
  return el("div", {}, el("h3", {}, "Prompt"),
    list.length ? el("div", { class: "conversation", id: "row-conversation" },
      ...list.map((turn) => el("div", { class: "turn", "data-role": turn.role },
        el("span", { class: "role" }, turn.role), el("div", { class: "text" }, turn.text))))
      : el("p", { class: "muted" }, "The request's payload was not stored."));
}

// An answer's text, or what stood for it: tool calls, a refusal, the error.
function answerText(row, side) {
  const calls = row[`${side}_tool_calls`];
  const parts = given(row[`${side}_output`],
    Array.isArray(calls) ? calls.map((c) => `→ ${c.function?.name ?? c.type ?? "tool"}(${c.function?.arguments ?? ""})`).join("\n") : null,
    row[`${side}_refusal`] ? `(refused) ${row[`${side}_refusal`]}` : null);
  return parts.join("\n");
}

function answers(row) {
  const teacherText = answerText(row, "teacher"), studentText = answerText(row, "student");
  const [teacher, student] = wordDiff(teacherText, studentText);
  const column = (side, title, text, parts, tag, error) => el("div", { "data-side": side }, el("h4", {}, title),
    ...(text ? parts.map((p) => (p.changed ? el(tag, { class: "diff" }, p.text) : p.text))
      : [el("span", { class: "muted" }, error ? `(no answer: ${error})` : "(no answer logged)")]));
  return el("div", {}, el("h3", {}, "Answers"), el("div", { class: "side-by-side", id: "row-answers" },
    column("teacher", `teacher${row.teacher_finish_reason ? ` (${row.teacher_finish_reason})` : ""}`, teacherText, teacher, "del",
      row.teacher_error),
    column("student", `student ${row.served_student ?? row.student_model ?? ""}`.trim(), studentText, student, "ins",
      row.student_error ?? row.student_status)));
}

// -- the student's token probabilities -----------------------------------------------------

const shown = (token) => (token === null || token === undefined ? "▮" : token.replaceAll("\n", "↵\n") || "∅");
const quoted = (token) => (token === null || token === undefined ? "(redacted)" : JSON.stringify(token));

function describe(entry, index) {
  const p = entry.logprob === null ? null : Math.exp(entry.logprob);
  const alternatives = [...(entry.top_logprobs ?? [])].sort((a, b) => (b.logprob ?? -Infinity) - (a.logprob ?? -Infinity));
  return el("div", { "data-index": index },
    el("p", {}, el("strong", {}, quoted(entry.token)), ` token ${index + 1}: probability ${pct(p)}`),
    alternatives.length
      ? el("table", { class: "grid alternatives" }, el("thead", {}, el("tr", {}, el("th", {}, "top alternatives"),
        el("th", { class: "num" }, "probability"))), el("tbody", {}, ...alternatives.map((alt) =>
        el("tr", { class: alt.token === entry.token ? "chosen" : null },
          el("td", { class: "mono" }, quoted(alt.token)),
          el("td", { class: "num" }, pct(alt.logprob === null ? null : Math.exp(alt.logprob)))))))
      : el("p", { class: "muted" }, "No alternatives were logged for this token."));
}

function tokens(row) {
  const logprobs = Array.isArray(row.student_logprobs) ? row.student_logprobs : [];
  const holder = el("div", { id: "row-tokens" }, el("h3", {}, "Student's token probabilities"));
  if (!logprobs.length) {
    holder.append(el("p", { class: "muted" }, "No token probabilities were logged for this answer " +
      "(the student did not return logprobs, or it did not answer)."));
    return holder;
  }
  const list = logprobs.slice(0, MAX_TOKENS);
  const probabilities = list.map((e) => (e.logprob === null || e.logprob === undefined ? null : Math.exp(e.logprob)));
  const unsure = probabilities.filter((p) => p !== null && p < 0.5).length;
  const detail = el("div", { class: "token-detail", id: "row-token-detail", "aria-live": "polite" },
    el("p", { class: "muted" }, "Point at a token, or focus one (arrow keys move), to see its top alternatives."));
  const line = el("div", { class: "tokens", role: "group", "aria-label": "the student's answer, token by token",
    "aria-describedby": "row-token-detail" });
  const select = (index) => detail.replaceChildren(describe(list[index], index));
  list.forEach((entry, index) => {
    const p = probabilities[index];
    const alternatives = (entry.top_logprobs ?? []).filter((a) => a.token !== entry.token).slice(0, 3)
      .map((a) => `${quoted(a.token)} ${pct(a.logprob === null ? null : Math.exp(a.logprob))}`);
    const token = el("span", {
      class: `tok band-${p === null ? "none" : band(p)}`, tabindex: index === 0 ? 0 : -1, "data-index": index,
      "data-p": p === null ? "" : p.toFixed(4),
      title: `${quoted(entry.token)}: ${pct(p)}${alternatives.length ? `; else ${alternatives.join(", ")}` : ""}`,
    }, shown(entry.token));
    token.addEventListener("mouseenter", () => select(index));
    token.addEventListener("focus", () => select(index));
    line.append(token);
  });
  // One tab stop for the whole answer; the arrow keys, Home and End move between tokens.
  line.addEventListener("keydown", (event) => {
    const at = Number(event.target.dataset?.index);
    const to = { ArrowRight: at + 1, ArrowLeft: at - 1, Home: 0, End: list.length - 1 }[event.key];
    if (Number.isNaN(at) || to === undefined || to < 0 || to >= list.length) return;
    event.preventDefault();
    event.target.tabIndex = -1;
    const next = line.children[to];
    next.tabIndex = 0;
    next.focus();
  });
  const legend = el("div", { class: "legend token-legend" }, "probability of the chosen token:",
    ...BANDS.map((low, i) => el("span", {}, el("span", { class: `swatch tok band-${i}` }),
      i === 0 ? `≥ ${pct(low, 0)}` : `${pct(low, 0)}–${pct(BANDS[i - 1], 0)}`)));
  holder.append(
    el("p", { class: "muted", "data-field": "token-summary" },
      `${logprobs.length} tokens, ${unsure} below 50%` +
      (logprobs.length > list.length ? `; the first ${list.length} are shown` : "") +
      (list.some((e) => e.token === null) ? "; the text was redacted, so only the probabilities were kept" : "") + "."),
    legend, line, detail);
  return holder;
}

function raw(row, requestId) {
  return el("details", { id: "row-raw" },
    el("summary", {}, "Raw JSON, every column as stored"),
    el("p", {}, el("a", { href: `/console/api/requests/${encodeURIComponent(requestId)}`, target: "_blank", rel: "noopener" },
      "open the JSON on its own")),
    el("pre", { class: "json" }, JSON.stringify(row, null, 2)));
}

let showing = 0; // the latest row asked for (an older answer is dropped)

// Open the view on a row (fetched anew each time).
export async function showRow(requestId) {
  const dialog = $("row-view");
  const ticket = ++showing;
  dialog.dataset.row = requestId;
  dialog.dataset.ready = "false";
  $("row-title").textContent = `Request ${requestId}`;
  $("row-body").replaceChildren();
  $("row-note").textContent = "Loading…";
  if (!dialog.open) dialog.showModal();
  try {
    const row = await api(`/console/api/requests/${encodeURIComponent(requestId)}`);
    if (ticket !== showing) return;
    $("row-note").textContent = "";
    $("row-body").replaceChildren(summary(row), verdict(row), prompt(row), answers(row), tokens(row), raw(row, requestId));
  } catch (error) {
    if (ticket !== showing) return;
    $("row-note").textContent = error.message;
  }
  dialog.dataset.ready = "true";
}

export function hideRow() {
  showing++;
  const dialog = $("row-view");
  dialog.dataset.row = "";
  if (dialog.open) dialog.close();
}

export const rowShown = () => ($("row-view").open ? $("row-view").dataset.row : null);
