// Auto-refresh: while the toggle is on, the page reloads its figures every INTERVAL_S seconds,
// in place (nothing is cleared first). It waits while the tab is hidden (and refreshes when it
// is shown again, if one was due), and while someone is typing in a form or has typed
// something not yet sent (a reason, a filter, a correction): their text is never lost to it.

export const INTERVAL_S = 60;
const RETRY_S = 5; // while someone types, look again this soon

const NOT_TEXT = new Set(["checkbox", "radio", "button", "submit", "reset", "hidden", "range", "color", "file"]);
const isText = (node) =>
  node instanceof HTMLTextAreaElement || node?.isContentEditable === true ||
  (node instanceof HTMLInputElement && !NOT_TEXT.has(node.type));

// A field's value when its form was last sent (or set from the URL); else its default.
const sent = (field) => field.dataset.sent ?? field.defaultValue;

export function markSent(form) {
  for (const field of form.elements) if (isText(field)) field.dataset.sent = field.value;
}

// Someone is typing: the focus is in a text field, or a visible form holds text not sent.
export function typing() {
  const focused = document.activeElement;
  if (isText(focused) && focused.closest("main, dialog")) return true;
  for (const form of document.querySelectorAll("main form")) {
    if (form.closest("[hidden]")) continue;
    for (const field of form.elements) if (isText(field) && field.value !== sent(field)) return true;
  }
  return false;
}

export class AutoRefresh {
  // ``refresh``: reload the figures (a promise); ``show(state, words)``: say what it does.
  constructor(refresh, show) {
    this.refresh = refresh;
    this.show = show;
    this.enabled = false;
    this.timer = null;
    this.due = false;
    document.addEventListener("submit", (event) => markSent(event.target), true);
    document.addEventListener("reset", (event) => {
      for (const field of event.target.elements) delete field.dataset.sent;
    }, true);
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden && this.enabled && this.due) this.tick();
    });
  }

  set(enabled) {
    this.enabled = enabled;
    this.due = false;
    clearTimeout(this.timer);
    if (enabled) this.wait(INTERVAL_S);
    this.show(enabled ? "on" : "off", enabled ? `every ${INTERVAL_S} s` : "");
  }

  // The page was just loaded by hand: the next refresh is a whole interval away.
  restart() {
    if (this.enabled) this.wait(INTERVAL_S);
  }

  wait(seconds) {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.tick(), seconds * 1000);
  }

  async tick() {
    if (!this.enabled) return;
    if (document.hidden) {
      this.due = true;
      this.show("hidden", "paused while the tab is hidden");
      return;
    }
    if (typing()) {
      this.show("typing", "paused while you type");
      this.wait(RETRY_S);
      return;
    }
    this.due = false;
    this.show("on", `every ${INTERVAL_S} s`);
    try {
      await this.refresh();
    } finally {
      if (this.enabled) this.wait(INTERVAL_S);
    }
  }
}
