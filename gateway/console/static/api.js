// What every part of the page shares: the session's meta tags (user, scopes, CSRF token) and
// one fetch helper for the admin API (the cookie rides along; writes carry the CSRF token).

const meta = (name) => document.querySelector(`meta[name="${name}"]`).getAttribute("content");

export const CSRF = meta("sgw-csrf");
export const SCOPES = new Set(meta("sgw-scopes").split(" ").filter(Boolean));
export const CAN_WRITE = SCOPES.has("sre"); // change routes
export const CAN_READ_ADMIN = CAN_WRITE || SCOPES.has("analyst"); // the reports and route views
export const CAN_JUDGE = CAN_WRITE || SCOPES.has("reviewer"); // draw and judge review tasks

export class ApiError extends Error {
  constructor(status, message, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export async function api(path, params = {}, init = {}) {
  const url = new URL(path, location.origin);
  for (const [name, value] of Object.entries(params)) {
    for (const one of Array.isArray(value) ? value : [value]) {
      if (one !== null && one !== undefined && one !== "") url.searchParams.append(name, one);
    }
  }
  const headers = { accept: "application/json" };
  if (init.method && init.method !== "GET") {
    headers["content-type"] = "application/json";
    headers["x-csrf-token"] = CSRF;
  }
  const response = await fetch(url, { credentials: "same-origin", ...init, headers });
  const body = await response.json().catch(() => null);
  if (response.status === 401) {
    location.assign(`/console${location.search}`); // the session ended: log in, back to this state
  }
  if (!response.ok) {
    throw new ApiError(response.status, body?.error?.message ?? response.statusText, body?.error?.code);
  }
  return body;
}
