// What the overview's modules share: the page's state, a few DOM helpers, slice names, a route
// override's knobs in words, and the one slice order (set by the slice table, from the API).
import { el } from "./charts.js";

export const $ = (id) => document.getElementById(id);

export const state = {
  page: "overview", route: null, since: "7d", cursor: null, pages: 0, filters: {}, overrides: null,
  sliceCalibration: null,
  rank: new Map(), // slice name → its place in the one slice order (the slice table's, from the API)
};

export const sliceName = (s) => (s.dimension === "all" ? "all" : `${s.dimension}=${s.value}`);
export const num = (value) => el("td", { class: "num" }, value);
export const routePath = () => `/admin/routes/${encodeURIComponent(state.route)}`;

export function note(id, text) {
  $(id).textContent = text ?? "";
}

export function clear(...ids) {
  for (const id of ids) $(id).replaceChildren();
}

export function table(id, head, rows) {
  const header = el("tr", {}, ...head.map(([label, cls]) => el("th", { class: cls }, label)));
  $(id).replaceChildren(el("thead", {}, header), el("tbody", {}, ...rows));
}

// A slice's name in a cell: cut short with an ellipsis (never over its neighbours), whole in
// the tooltip.
export const clipped = (text, cls = "clip") => el("span", { class: cls, title: text }, text);

const KNOBS = [["mode", "mode"], ["rollout_percent", "percent"], ["confidence_threshold", "threshold"]];
export const given = (v) => v !== null && v !== undefined;

// An override's knobs in words: "threshold 0.45" or "mode teacher, percent 50%".
export function knobs(view) {
  const parts = KNOBS.filter(([k]) => given(view?.[k]))
    .map(([k, label]) => `${label} ${k === "rollout_percent" ? `${view[k]}%` : view[k]}`);
  return parts.join(", ") || "no knobs";
}

// A list of slices (or curves, or lines) in the one slice order, the route as a whole last.
export function ranked(lines, name = sliceName) {
  const place = (line) => (name(line) === "all" ? Infinity : state.rank.get(name(line)) ?? state.rank.size);
  return [...lines].sort((a, b) => place(a) - place(b));
}
