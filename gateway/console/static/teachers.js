// The route's teacher versions: each (reported model, system fingerprint) its teacher answered
// with, oldest first, from GET /admin/routes/{route}/teacher-versions. A new one is also a
// teacher_changed event in the route's history; `report slices` gives agreement per version.
import { api } from "./api.js";
import { el, utc } from "./charts.js";

export async function loadTeacherVersions(route) {
  const { versions } = await api(`/admin/routes/${encodeURIComponent(route)}/teacher-versions`);
  const head = ["version", "model", "fingerprint", "first seen", "last seen", "requests"];
  const rows = versions.map((v) =>
    el("tr", { "data-version": v.version },
      el("td", { class: "mono" }, v.version + (v.latest ? " (latest)" : "")),
      el("td", {}, v.model_reported ?? "–"), el("td", { class: "mono" }, v.fingerprint ?? "–"),
      el("td", { class: "mono when" }, utc(v.first_seen)), el("td", { class: "mono when" }, utc(v.last_seen)),
      el("td", { class: "num" }, String(v.requests))));
  if (!rows.length) {
    rows.push(el("tr", {}, el("td", { colspan: head.length, class: "muted" }, "No teacher answer logged yet.")));
  }
  document.getElementById("teacher-versions-note").textContent = "";
  document.getElementById("teacher-versions").replaceChildren(
    el("thead", {}, el("tr", {}, ...head.map((label) => el("th", { class: label === "requests" ? "num" : null }, label)))),
    el("tbody", {}, ...rows));
}
