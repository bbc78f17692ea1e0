// The page's state in its query string, so a link can be shared and a reload keeps it: the page,
// the route and window, every filter, the row in view and auto-refresh. Values equal to their
// default are left out; the route and the window are always written.
//
//   /console?route=support-bot&window=30d&page=overview&slice=tier%3Dfree&row=req-42

const DEFAULTS = { page: "overview", reference: "window", target: "0.9", min_served: "30", status: "open" };
const KEYS = [
  "page", "route", "window", // where
  "slice", "since", "until", "served_by", // the disagreement filters
  "reference", "target", "min_served", // drift's reference; the per-slice calibration's inputs
  "status", "student", // the review queue's filters
  "row", // the row in view
  "refresh", // auto-refresh on
];
const PAGES = new Set(["overview", "review"]);

// The state the URL holds (keys with a value only). The page's old links, #review and
// #overview, still choose the page.
export function readUrl() {
  const params = new URLSearchParams(location.search);
  const found = {};
  for (const key of KEYS) {
    const value = params.get(key);
    if (value !== null && value !== "") found[key] = value;
  }
  const hash = location.hash.slice(1);
  if (!found.page && PAGES.has(hash)) found.page = hash;
  return found;
}

export function urlFor(state) {
  const params = new URLSearchParams();
  for (const key of KEYS) {
    const value = state[key];
    if (value === null || value === undefined || value === "" || value === DEFAULTS[key]) continue;
    params.set(key, String(value));
  }
  const query = params.toString();
  return `${location.pathname}${query ? `?${query}` : ""}`;
}

// Write the state: ``push`` makes a history entry (a new place: Back returns), else the
// current entry is replaced (a filter, a toggle). ``marker`` is kept as the entry's state.
export function writeUrl(state, { push = false, marker = null } = {}) {
  const url = urlFor(state);
  if (!push && url === `${location.pathname}${location.search}` && !location.hash) return;
  history[push ? "pushState" : "replaceState"](marker, "", url);
}
