// The route's section: its state and history, its ramp, its slice overrides, and (for sre
// keys) the changes made from the page, each through the admin API with a reason.
import { api, CAN_WRITE } from "./api.js";
import { el, pct, utc } from "./charts.js";
import { renderSliceCalibration } from "./reports.js";
import { $, clipped, given, knobs, note, routePath, state, table } from "./shared.js";

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

export async function loadRoute() {
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

// -- changes (sre) -------------------------------------------------------------------------

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

export async function write(form, path, method) {
  const answer = await send($("write-result"), path, method, formBody(form), (a) =>
    (a.changed ? `Done: ${state.route} is now ${a.route.mode} at ${a.route.rollout_percent}%.`
      : "Nothing changed: the route already had these values."));
  if (answer) {
    form.reset();
    await loadRoute();
  }
}

export async function setSlice(form) {
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

export async function cancelRamp(form) {
  const answer = await send($("ramp-result"), `${routePath()}/plan/cancel`, "POST", formBody(form), (a) =>
    `Ramp cancelled at step ${a.ramp.step} of ${a.ramp.steps.length}; the route stays at ${a.route.rollout_percent}%.`);
  if (answer) {
    form.reset();
    await loadRoute();
  }
}

export async function applyCalibration(form) {
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
