// The review page: a route's queue of review tasks, one in focus (the conversation, the
// teacher's answer against the task's student's, word-diffed, every other student's), and the
// four verdicts, by button or key. After a verdict the next open task comes up. Reviewer and
// sre keys judge and draw tasks; analysts read.
import { api, CAN_JUDGE, CAN_READ_ADMIN } from "./api.js";
import { el, utc } from "./charts.js";
import { turns } from "./conversation.js";
import { wordDiff } from "./diff.js";
import { rowLink } from "./rowview.js";

const $ = (id) => document.getElementById(id);
const PAGE = 50; // tasks fetched at a time; more when the focus nears the end
const VERDICTS = {
  teacher_correct: "Teacher correct",
  student_correct: "Student correct",
  both_correct: "Both correct",
  both_wrong: "Both wrong",
};
const KEYS = {
  1: "teacher_correct", t: "teacher_correct",
  2: "student_correct", s: "student_correct",
  3: "both_correct", b: "both_correct",
  4: "both_wrong", w: "both_wrong",
};

const review = {
  route: null,
  since: null,
  tasks: [], // the loaded part of the queue, oldest first
  index: -1, // the task in focus
  next: null, // the API's next_after_id: more tasks to load
  counts: { open: 0, judged: 0 }, // the route's, whatever the filters
  loading: 0, // the latest queue load (older answers are dropped)
  focusing: 0, // the latest task fetch
  busy: false, // a verdict is on its way
  onChange: () => {},
  wantedStudent: null, // the student filter a link asked for, until the route's students are known
};

const sliceText = (slices) => Object.entries(slices ?? {}).map(([k, v]) => `${k}=${v}`).join(", ");
const fmt = (v) => (v === null || v === undefined ? "–" : Number(v).toFixed(2));

function filters() {
  const form = $("review-filter");
  return { status: form.elements.status.value, student: form.elements.student.value };
}

// -- the conversation ----------------------------------------------------------------------

function renderConversation(task) {
  const shown = task.request_payload !== undefined ? turns(task.request_payload) : null;
  const list = shown ?? (task.prompt !== null ? [{ role: "user", text: task.prompt }] : []);
  $("review-conversation").replaceChildren(
    ...list.map((turn) => el("div", { class: "turn", "data-role": turn.role },
      el("span", { class: "role" }, turn.role), el("div", { class: "text" }, turn.text))),
  );
  if (!list.length) $("review-conversation").append(el("p", { class: "muted" }, "The request's payload was not stored."));
}

// -- the answers ---------------------------------------------------------------------------

const ownAnswer = (task) =>
  task.students.find((s) => s.student === task.student && s.source === "live") ??
  task.students.find((s) => s.student === task.student) ?? null;

function diffColumn(side, title, parts, tag) {
  return el("div", { "data-side": side }, el("h4", {}, title),
    ...parts.map((p) => (p.changed ? el(tag, { class: "diff" }, p.text) : p.text)));
}

function renderAnswers(task) {
  const own = ownAnswer(task);
  const studentText = own && own.status === "ok" ? own.answer : "";
  const [teacher, student] = wordDiff(task.teacher_answer, studentText);
  const missing = own ? `(no answer: ${own.status ?? "not called"})` : "(this student did not answer)";
  $("review-answers").replaceChildren(el("div", { class: "side-by-side" },
    diffColumn("teacher", "teacher", teacher, "del"),
    studentText ? diffColumn("student", `student ${task.student}`, student, "ins")
      : el("div", { "data-side": "student" }, el("h4", {}, `student ${task.student}`), el("span", { class: "muted" }, missing))));
  const others = task.students.filter((s) => s !== own);
  $("review-others").replaceChildren(...(others.length ? [el("h4", {}, "Other answers")] : []),
    ...others.map((s) => el("div", { class: "other", "data-student": s.student, "data-source": s.source },
      el("div", { class: "meta" },
        el("strong", {}, s.student), ` ${s.source} · `,
        s.agree === true ? "agrees" : s.agree === false ? "disagrees" : "not compared",
        ` · score ${fmt(s.score)} · confidence ${fmt(s.confidence)}`),
      el("div", { class: "text" }, s.status === "ok" ? s.answer : `(no answer: ${s.status ?? "not called"})`))));
}

// -- the task in focus ---------------------------------------------------------------------

function teacherVersion(version) {
  const parts = [version?.model, version?.fingerprint].filter(Boolean);
  return parts.length ? `teacher ${parts.join(" · ")}` : "teacher version not reported";
}

function renderHead(task) {
  const compared = task.disagreement === true ? "disagreed" : task.disagreement === false ? "agreed" : "not compared";
  const request = CAN_READ_ADMIN
    ? rowLink(task.request_id, `request ${task.request_id}`)
    : el("span", { class: "mono" }, `request ${task.request_id}`);
  $("review-task-head").replaceChildren(
    el("strong", {}, `Task #${task.id}`),
    request,
    el("span", { class: "mono" }, utc(task.request_created_at)),
    el("span", { "data-field": "student" }, `student ${task.student} (${compared})`),
    el("span", { "data-field": "slices" }, sliceText(task.slices) || "(no slices)"),
    el("span", { "data-field": "teacher-version" }, teacherVersion(task.teacher_version)),
    el("span", {}, `served by ${task.served_by ?? "–"}`),
  );
}

function renderJudged(task) {
  const holder = $("review-judged");
  holder.replaceChildren();
  if (task.verdict) {
    holder.append(el("p", { class: `judged verdict-${task.verdict}`, "data-field": "verdict" },
      `Judged: ${VERDICTS[task.verdict] ?? task.verdict}, by ${task.reviewer} at ${utc(task.judged_at)}.`,
      task.corrected_output ? el("span", { class: "correction-text" }, ` Corrected answer: ${task.corrected_output}`) : null));
  }
  if (task.history?.length) {
    const rows = task.history.map((h) => el("tr", {},
      el("td", { class: "mono when" }, utc(h.at)), el("td", {}, h.reviewer), el("td", {}, VERDICTS[h.verdict] ?? h.verdict),
      el("td", {}, h.corrected_output ?? "–"), el("td", {}, h.via_review ? `with its group, from task #${h.via_review}` : "this task")));
    holder.append(el("h4", {}, "History"), el("table", { class: "grid history" },
      el("thead", {}, el("tr", {}, ...["at", "reviewer", "verdict", "corrected answer", "given"].map((h) => el("th", {}, h)))),
      el("tbody", {}, ...rows)));
  }
}

function renderGroup(task) {
  const others = task.group_open - (task.verdict === null ? 1 : 0);
  const box = $("review-group");
  $("review-task").dataset.groupOpen = String(task.group_open);
  box.disabled = others < 1;
  if (others < 1) box.checked = false;
  $("review-group-size").textContent = others < 1 ? "No other open task has this answer pair."
    : `This answer pair repeats in ${task.group_open} open task${task.group_open === 1 ? "" : "s"}` +
      (task.verdict === null ? ` (this one and ${others} more).` : ".");
}

// Draw the task; ``fresh`` when it is another task than the one shown (the checkbox and the
// correction start empty), not when the full version of the same task arrives.
function renderTask(task, fresh) {
  const article = $("review-task");
  article.hidden = false;
  article.dataset.taskId = String(task.id);
  article.dataset.verdict = task.verdict ?? "";
  if (fresh) {
    $("review-group").checked = false;
    $("review-correction").value = "";
  }
  renderHead(task);
  renderConversation(task);
  renderAnswers(task);
  renderJudged(task);
  renderGroup(task);
}

function renderProgress() {
  const { open, judged } = review.counts;
  const progress = $("review-progress");
  progress.dataset.open = String(open);
  progress.dataset.judged = String(judged);
  progress.replaceChildren(
    el("progress", { max: Math.max(open + judged, 1), value: judged }),
    ` ${open} open · ${judged} judged (the route's tasks)`,
  );
}

function renderQueue() {
  $("review-queue").replaceChildren(...review.tasks.map((task, i) => {
    const item = el("li", { "data-task-id": task.id, "data-verdict": task.verdict ?? "", class: i === review.index ? "current" : null,
      "aria-current": i === review.index ? "true" : null },
    el("button", { type: "button", tabindex: -1 },
      el("span", { class: "mono" }, `#${task.id}`), " ", el("span", { class: "clip" }, sliceText(task.slices) || "(no slices)"),
      task.group_open > 1 ? el("span", { class: "badge", title: "open tasks with this answer pair" }, `×${task.group_open}`) : null,
      task.verdict ? el("span", { class: `badge verdict-${task.verdict}` }, VERDICTS[task.verdict]) : null));
    item.querySelector("button").addEventListener("click", () => focusOn(i));
    return item;
  }));
  $("review-queue").querySelector("li.current")?.scrollIntoView({ block: "nearest" });
}

function renderEmpty() {
  $("review-task").hidden = true;
  $("review-task").dataset.taskId = "";
  const { status } = filters();
  const message = status === "open" ? "No open task here: every drawn task is judged." : "No task matches these filters.";
  $("review-note").textContent = message + (CAN_JUDGE ? " Draw more below." : "");
}

// Put a task in focus: drawn at once from the queue's copy, again when the full task (the
// whole request and the verdict history) arrives.
function focusOn(index) {
  review.index = index;
  renderQueue();
  const task = review.tasks[index];
  if (!task) {
    renderEmpty();
    return;
  }
  $("review-note").textContent = "";
  renderTask(task, $("review-task").dataset.taskId !== String(task.id));
  $("review-task").dataset.ready = "false"; // until this task's full version is drawn
  const ticket = ++review.focusing;
  api(`/admin/reviews/${task.id}`).then((full) => {
    if (ticket !== review.focusing) return;
    const at = review.tasks.findIndex((t) => t.id === full.id);
    if (at >= 0) review.tasks[at] = full;
    renderTask(full, false);
    $("review-task").dataset.ready = "true";
  }).catch((error) => { if (ticket === review.focusing) $("review-note").textContent = error.message; });
  if (index >= review.tasks.length - 5 && review.next !== null) {
    loadQueue(true).catch((error) => { $("review-note").textContent = error.message; });
  }
}

async function loadQueue(more = false) {
  const ticket = ++review.loading;
  const { status, student } = filters();
  const page = await api("/admin/reviews", {
    route: review.route, status, student, limit: PAGE, after_id: more ? review.next : null,
  });
  if (ticket !== review.loading) return;
  review.tasks = more ? [...review.tasks, ...page.tasks] : page.tasks;
  review.next = page.next_after_id;
  review.counts = page.counts;
  renderProgress();
  if (more) renderQueue();
  else focusOn(review.tasks.length ? 0 : -1);
}

function move(step) {
  const to = review.index + step;
  if (to >= 0 && to < review.tasks.length) focusOn(to);
}

// The next task to show after a verdict: the next open one after the focus (or before it),
// else simply the next.
function nextIndex(from) {
  const open = (i) => review.tasks[i] && review.tasks[i].verdict === null;
  for (let i = from; i < review.tasks.length; i++) if (open(i)) return i;
  for (let i = 0; i < from; i++) if (open(i)) return i;
  return Math.min(from, review.tasks.length - 1);
}

async function judge(verdict) {
  const task = review.tasks[review.index];
  if (!CAN_JUDGE || review.busy || !task) return;
  const correction = $("review-correction").value.trim();
  const group = $("review-group").checked && !$("review-group").disabled;
  const result = $("review-result");
  review.busy = true;
  result.className = "";
  result.textContent = `Sending the verdict on task #${task.id}…`;
  try {
    const body = { verdict, group, ...(correction ? { corrected_output: correction } : {}) };
    const answer = await api(`/admin/reviews/${task.id}`, {}, { method: "POST", body: JSON.stringify(body) });
    result.textContent = `Task #${task.id}: ${VERDICTS[verdict]}` +
      (answer.judged > 1 ? `, with ${answer.judged - 1} more of its group (${answer.ids.slice(1).map((id) => `#${id}`).join(", ")}).` : ".");
    review.onChange();
    const position = review.tasks.findIndex((t) => t.id === task.id);
    if (position < 0) return; // the queue was loaded anew meanwhile (another route, a filter)
    const newly = answer.ids.length - (task.verdict === null ? 0 : 1);
    review.counts = { open: review.counts.open - newly, judged: review.counts.judged + newly };
    const judged = new Set(answer.ids);
    if (filters().status === "open") {
      review.tasks = review.tasks.filter((t) => !judged.has(t.id));
    } else {
      for (const t of review.tasks) if (judged.has(t.id)) Object.assign(t, { verdict, corrected_output: correction || null });
    }
    renderProgress();
    const kept = filters().status === "open" ? position : position + 1;
    if (!review.tasks.length && review.next !== null) await loadQueue(true);
    focusOn(review.tasks.length ? nextIndex(Math.min(kept, review.tasks.length - 1)) : -1);
  } catch (error) {
    result.textContent = `Refused (${error.status}): ${error.message}`;
    result.className = "error";
  } finally {
    review.busy = false;
  }
}

// -- keys ----------------------------------------------------------------------------------

const typing = (node) =>
  node instanceof HTMLTextAreaElement || node instanceof HTMLSelectElement || node?.isContentEditable ||
  (node instanceof HTMLInputElement && !["checkbox", "radio", "button", "submit"].includes(node.type));

function onKey(event) {
  if (document.body.dataset.page !== "review" || event.ctrlKey || event.metaKey || event.altKey) return;
  if (document.querySelector("dialog[open]")) return; // the row view is over the task: keys are its own
  if (event.target === $("review-correction")) {
    if (event.key === "Escape") {
      event.preventDefault();
      event.target.blur();
    }
    return;
  }
  if (typing(event.target) || review.busy || !review.tasks[review.index]) return;
  const key = event.key.length === 1 ? event.key.toLowerCase() : event.key;
  const actions = {
    j: () => move(1), n: () => move(1), k: () => move(-1), p: () => move(-1),
    g: () => { if (CAN_JUDGE && !$("review-group").disabled) $("review-group").checked = !$("review-group").checked; },
    e: () => { if (CAN_JUDGE) $("review-correction").focus(); },
  };
  if (KEYS[key]) actions[key] = () => judge(KEYS[key]);
  if (!actions[key]) return;
  event.preventDefault();
  actions[key]();
}

// -- drawing tasks -------------------------------------------------------------------------

async function draw(form) {
  const data = new FormData(form);
  const body = {
    route: review.route,
    per_slice: Number(data.get("per_slice")),
    disagreements_only: data.get("disagreements_only") === "on",
    since: review.since,
  };
  for (const name of ["student", "dimension"]) {
    const value = String(data.get(name) ?? "").trim();
    if (value) body[name] = value;
  }
  const result = $("review-draw-result");
  result.className = "";
  result.textContent = "Drawing…";
  try {
    const answer = await api("/admin/reviews/sample", {}, { method: "POST", body: JSON.stringify(body) });
    const per = Object.entries(answer.slices).map(([slice, n]) => `${slice}: ${n}`).join("; ");
    result.textContent = `Drew ${answer.created} new task${answer.created === 1 ? "" : "s"} for ${answer.student}` +
      (per ? ` (${per}).` : ": nothing new in this window.");
    await loadReview(review.route, review.since);
    review.onChange();
  } catch (error) {
    result.textContent = `Refused (${error.status}): ${error.message}`;
    result.className = "error";
  }
}

// The route's students (for the filter and the draw form), then the queue.
export async function loadReview(route, since) {
  review.route = route;
  review.since = since;
  $("review-note").textContent = "";
  try {
    const { routes } = await api("/admin/reviews/routes");
    const students = routes.find((r) => r.name === route)?.students ?? [];
    const filter = $("review-filter").elements.student;
    for (const [select, first] of [[filter, "(any)"], [$("review-draw").elements.student, "(champion)"]]) {
      const chosen = select === filter && review.wantedStudent !== null ? review.wantedStudent : select.value;
      select.replaceChildren(el("option", { value: "" }, first),
        ...students.map((s) => el("option", { value: s.name }, `${s.name} (${s.status ?? "gone"}, ${s.open} open)`)));
      select.value = students.some((s) => s.name === chosen) ? chosen : "";
    }
    review.wantedStudent = null;
    await loadQueue();
  } catch (error) {
    review.tasks = [];
    renderQueue();
    $("review-task").hidden = true;
    $("review-note").textContent = error.message;
  }
}

// The queue's filters from a link (the page's URL): applied by the next loadReview.
export function setReviewFilters({ status, student }) {
  const form = $("review-filter");
  form.elements.status.value = ["open", "judged", "all"].includes(status) ? status : "open";
  review.wantedStudent = student ?? "";
}

// Wire the page's controls once; ``onChange`` is told after each verdict or draw.
export function initReview(onChange) {
  review.onChange = onChange;
  $("review-form").hidden = !CAN_JUDGE;
  $("review-draw-panel").hidden = !CAN_JUDGE;
  $("review-read-only").hidden = CAN_JUDGE;
  for (const button of document.querySelectorAll("#review-form button[data-verdict]")) {
    button.addEventListener("click", () => judge(button.dataset.verdict));
  }
  $("review-form").addEventListener("submit", (e) => e.preventDefault());
  $("review-filter").addEventListener("change", (e) => {
    e.target.blur(); // back to the keys
    loadQueue().catch((error) => { $("review-note").textContent = error.message; });
  });
  $("review-draw").addEventListener("submit", (e) => {
    e.preventDefault();
    draw(e.target);
  });
  document.addEventListener("keydown", onKey);
}
