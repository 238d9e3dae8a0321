/** What /dashboard and /live share: config, the client, the connection pill, theme, REST, DOM. */

import config from "/config.js";
import { RealtimeClient } from "/static/client.js";

export { config };

const params = new URLSearchParams(location.search);

/**
 * The dashboard's token (token auth mode): `?token=` once, then kept for this tab only and
 * removed from the address bar so it does not end up in history or screenshots.
 */
function takeToken() {
  const fromUrl = params.get("token");
  if (fromUrl) {
    sessionStorage.setItem("cm.token", fromUrl);
    params.delete("token");
    const query = params.toString();
    history.replaceState(null, "", `${location.pathname}${query ? `?${query}` : ""}${location.hash}`);
  }
  return sessionStorage.getItem("cm.token");
}

export const token = takeToken();

/** A page option from the query string, e.g. `?buffer=500`. */
export function option(name, fallback = null) {
  return params.has(name) ? params.get(name) : fallback;
}

/** The shared WebSocket client, built from /config.js. */
export function createClient(extra = {}) {
  const backoffMax = Number(option("backoff_max", 5000));
  return new RealtimeClient(config.wsUrl, {
    token,
    backoff: { initial: 500, max: backoffMax, factor: 2, jitter: 0.5 },
    ...extra,
  });
}

const STATE_LABELS = {
  idle: "Idle",
  connecting: "Connecting…",
  connected: "Live",
  reconnecting: "Reconnecting…",
  offline: "Offline",
  closed: "Disconnected",
};

/** Keep `pill` telling the client's real state (and why, in its tooltip). */
export function bindConnectionPill(client, pill) {
  const label = pill.querySelector(".label");
  const render = (detail = {}) => {
    const state = client.state;
    pill.dataset.state = state;
    let text = STATE_LABELS[state] || state;
    if (state === "reconnecting" && detail.delay !== undefined) {
      text = `Reconnecting… (attempt ${client.attempt})`;
    }
    label.textContent = text;
    const reason = detail.reason && !detail.reason.startsWith("closed with") ? detail.reason : "";
    const why = detail.code ? ` — closed with ${detail.code}${reason ? ` (${reason})` : ""}` : reason ? ` — ${reason}` : "";
    pill.title =
      state === "connected"
        ? `Connected to ${config.wsUrl} as ${client.clientId}`
        : `${STATE_LABELS[state] || state}${why}`;
  };
  client.on("state", render);
  client.on("connected", () => render());
  render();
}

/** Dark/light toggle, remembered; the default follows the system. */
export function initTheme(button) {
  const root = document.documentElement;
  const saved = localStorage.getItem("cm.theme");
  const prefersLight = window.matchMedia?.("(prefers-color-scheme: light)").matches;
  root.dataset.theme = saved || (prefersLight ? "light" : "dark");
  button?.addEventListener("click", () => {
    root.dataset.theme = root.dataset.theme === "light" ? "dark" : "light";
    localStorage.setItem("cm.theme", root.dataset.theme);
    window.dispatchEvent(new Event("themechange"));
  });
}

/** GET/POST the REST API (same origin unless DASHBOARD_API_URL says otherwise). */
export async function api(path, { method = "GET", body, query } = {}) {
  const url = new URL(`${config.apiBase || ""}${path}`, location.href);
  for (const [key, value] of Object.entries(query || {})) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(key, value);
  }
  const headers = { Accept: "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  if (!response.ok) {
    let detail = response.statusText;
    try {
      detail = (await response.json()).detail ?? detail;
    } catch {
      /* not JSON */
    }
    throw new Error(`${method} ${path}: HTTP ${response.status} ${typeof detail === "string" ? detail : JSON.stringify(detail)}`);
  }
  return response.status === 204 ? null : response.json();
}

/** The items of a list endpoint's page ({items, next_cursor}), or of a plain array. */
export function items(page) {
  if (Array.isArray(page)) return page;
  return page?.items ?? [];
}

/** Create an element: h("td", {class: "num"}, "3", childNode…). Text is never parsed as HTML. */
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

/** "3 s ago", "5 min ago", "2 h ago", or a date. */
export function ago(value, now = Date.now()) {
  if (value === null || value === undefined || value === "") return "—";
  const then = typeof value === "number" ? value : Date.parse(value);
  if (Number.isNaN(then)) return "—";
  const seconds = Math.max(0, Math.round((now - then) / 1000));
  if (seconds < 5) return "just now";
  if (seconds < 60) return `${seconds} s ago`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
  return new Date(then).toLocaleDateString();
}

/** Local wall-clock time with milliseconds, for event rows. */
export function clock(ms) {
  const d = new Date(ms);
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

/** The agent an event is about (or from/to), for filtering and display. */
export function agentsOf(frame) {
  const data = frame.data && typeof frame.data === "object" ? frame.data : {};
  const found = new Set();
  for (const key of ["agent_id", "from_agent", "to_agent"]) {
    if (typeof data[key] === "string") found.add(data[key]);
  }
  if (frame.channel.startsWith("agents/")) found.add(frame.channel.slice(7));
  return [...found];
}

/** Family of an event name, used for its colour: task, subtask, message, agent, metric. */
export function family(eventName) {
  const [head, tail] = [eventName.split(".")[0], eventName.split(".").pop()];
  const classes = [head];
  if (tail === "failed" || tail === "expired") classes.push(tail);
  return classes.join(" ");
}
