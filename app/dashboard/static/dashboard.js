/**
 * /dashboard: KPI cards from `metric.update` on `metrics`, a chart of the last minutes, the
 * agents (live from agent.* on `global`) and the latest tasks with their subtasks' progress
 * (live from task.* and subtask.*). Initial state comes from the REST API; it is reloaded when
 * a reconnect could not recover the events missed meanwhile.
 *
 * It opens with a past: the chart is seeded with the server's last ten minutes of snapshots
 * (GET /api/metrics/history), and the agents table also lists agents that tasks and messages
 * name but that never connected nor registered ("known", offline).
 */

import { ago, api, bindConnectionPill, config, createClient, h, initTheme, items } from "/static/common.js";
import { LineChart } from "/static/linechart.js";

const STATUSES = ["pending", "in_progress", "completed", "failed", "cancelled"];
const STATUS_LABELS = {
  pending: "Pending",
  in_progress: "In progress",
  completed: "Completed",
  failed: "Failed",
  cancelled: "Cancelled",
};
const MAX_AGENT_ROWS = 50;
const MAX_TASK_ROWS = 15;

const $ = (selector) => document.querySelector(selector);
const state = {
  agents: new Map(), // id → agent
  livePresence: new Map(), // id → {status, last_seen} from agent.* events (newer than REST)
  tasks: new Map(), // id → task
  subtasks: new Map(), // task id → Map(subtask id → subtask)
  metricsAt: null,
};

initTheme($("#theme"));
const client = createClient();
bindConnectionPill(client, $("#connection"));
window.cmClient = client; // for the console (and the browser tests)

const chart = new LineChart($("#chart"), {
  windowMs: 10 * 60_000,
  emptyText: "Waiting for metrics…",
  minMax: { left: 1, right: 5 },
  series: [
    { key: "eps", label: "events/s", color: "--accent", axis: "left", fill: true },
    { key: "open", label: "open tasks", color: "--ok", axis: "right", step: true },
    { key: "failed", label: "failed (1 h)", color: "--bad", axis: "right", step: true },
  ],
});
window.cmChart = chart; // for the console (and the browser tests)

// --- formatting ---------------------------------------------------------------------------------

const int = (v) => (typeof v === "number" ? Math.round(v).toLocaleString() : "—");
const rate = (v) => (typeof v !== "number" ? "—" : v >= 100 ? Math.round(v).toLocaleString() : v.toFixed(1));
const percent = (v) => (typeof v !== "number" ? "—" : `${(v * 100).toFixed(v > 0 && v < 0.1 ? 1 : 0)}%`);

function duration(seconds) {
  if (typeof seconds !== "number") return "—";
  if (seconds < 10) return `${seconds.toFixed(1)} s`;
  if (seconds < 60) return `${Math.round(seconds)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m ${Math.round(seconds % 60)}s`;
  return `${Math.floor(seconds / 3600)}h ${Math.round((seconds % 3600) / 60)}m`;
}

const FORMATS = {
  active_sessions: int,
  active_agents: int,
  connected_clients: int,
  actions_per_minute: rate,
  failure_rate: percent,
  mean_task_duration_seconds: duration,
  unread_messages: int,
  events_per_second: rate,
};

// --- metrics ------------------------------------------------------------------------------------

function setKpi(key, text) {
  const value = document.querySelector(`[data-kpi="${key}"] .value`);
  if (!value || value.textContent === text) return;
  value.textContent = text;
  value.classList.add("flash");
  setTimeout(() => value.classList.remove("flash"), 50);
}

function applyMetrics(m, receivedAt = Date.now()) {
  if (!m || typeof m !== "object") return;
  for (const [key, format] of Object.entries(FORMATS)) setKpi(key, format(m[key]));
  const failure = document.querySelector('[data-kpi="failure_rate"] .value');
  failure.classList.toggle("bad", typeof m.failure_rate === "number" && m.failure_rate >= 0.2);
  $('[data-sub="failure_rate"]').textContent =
    `${int(m.tasks_failed_last_hour)} failed · ${int(m.tasks_completed_last_hour)} completed · 1 h`;

  const byStatus = m.tasks_by_status || {};
  const total = STATUSES.reduce((sum, s) => sum + (byStatus[s] || 0), 0);
  $("#tasks-total").textContent = `${total.toLocaleString()} total`;
  $("#status-bar").replaceChildren(
    ...STATUSES.filter((s) => byStatus[s]).map((s) => {
      const span = h("span", { class: `s-${s}`, title: `${STATUS_LABELS[s]}: ${byStatus[s]}` });
      span.style.width = `${(100 * byStatus[s]) / total}%`;
      return span;
    }),
  );
  $("#status-legend").replaceChildren(
    ...STATUSES.map((s) =>
      h("li", { dataset: { status: s } }, h("span", { class: `swatch s-${s}` }), STATUS_LABELS[s], h("span", { class: "count" }, int(byStatus[s] || 0))),
    ),
  );

  chart.push(receivedAt, chartValues(m));
  state.metricsAt = Date.now();
  const when = m.timestamp ? new Date(m.timestamp) : new Date();
  $("#updated").textContent = `Updated ${when.toLocaleTimeString()} · every ${config.metricsInterval} s`;
}

/** What the activity chart plots of one snapshot. */
function chartValues(m) {
  const byStatus = m.tasks_by_status || {};
  return {
    eps: Number(m.events_per_second) || 0,
    open: (byStatus.pending || 0) + (byStatus.in_progress || 0),
    failed: Number(m.tasks_failed_last_hour) || 0,
  };
}

/** The minutes before the page opened: the server keeps its recent snapshots. */
async function seedChart() {
  let history;
  try {
    history = await api("/api/metrics/history");
  } catch {
    return; // an older server without the series: the chart starts from now
  }
  // On the browser's clock, as live points are: shift by how far the server's clock is off.
  const skew = Date.now() - Date.parse(history.timestamp);
  const offset = Number.isFinite(skew) ? skew : 0;
  chart.seed((history.items || []).map((m) => ({ t: Date.parse(m.timestamp) + offset, values: chartValues(m) })));
}

// --- agents -------------------------------------------------------------------------------------

function upsertAgent(id, fields) {
  const agent = { id, name: null, kind: null, status: "offline", last_seen: null, ...state.agents.get(id), ...fields };
  state.agents.set(id, agent);
  renderAgents();
}

function renderAgents() {
  const rows = [...state.agents.values()].sort((a, b) => {
    if ((a.status === "online") !== (b.status === "online")) return a.status === "online" ? -1 : 1;
    return (Date.parse(b.last_seen) || 0) - (Date.parse(a.last_seen) || 0);
  });
  const online = rows.filter((a) => a.status === "online").length;
  $("#agents-meta").textContent = `${online} online · ${rows.length} known`;
  const body = $("#agents tbody");
  if (!rows.length) {
    body.replaceChildren(h("tr", {}, h("td", { colspan: 4, class: "empty" }, "No agents yet. Agents appear when they connect or register.")));
    return;
  }
  body.replaceChildren(
    ...rows.slice(0, MAX_AGENT_ROWS).map((a) =>
      h(
        "tr",
        { dataset: { agent: a.id } },
        h(
          "td",
          {},
          h("span", { class: "primary" }, a.name || a.id),
          a.name ? h("span", { class: "secondary" }, a.id) : a.named_on ? h("span", { class: "secondary" }, `named on ${a.named_on}, never connected`) : null,
        ),
        h("td", {}, a.kind || "—"),
        h("td", {}, h("span", { class: `badge ${a.status}` }, a.status)),
        h("td", { class: "num", title: a.last_seen || "" }, a.status === "online" && !a.last_seen ? "now" : ago(a.last_seen)),
      ),
    ),
  );
}

const fetchingAgents = new Set();

/** An agent first seen in an event: its name and kind are in the API. */
async function fetchAgent(id) {
  if (fetchingAgents.has(id)) return;
  fetchingAgents.add(id);
  try {
    const agent = await api(`/api/agents/${encodeURIComponent(id)}`);
    const live = state.agents.get(id) || {};
    // The event is newer than the row for presence; the row knows the name and kind.
    upsertAgent(id, { ...agent, status: live.status ?? agent.status, last_seen: live.last_seen ?? agent.last_seen });
  } catch {
    /* not registered (yet): the id is all there is */
  } finally {
    fetchingAgents.delete(id);
  }
}

function onAgentEvent(frame) {
  const data = frame.data || {};
  const id = data.agent_id;
  if (typeof id !== "string") return;
  if (!state.agents.get(id)?.created_at) fetchAgent(id);
  const seen = data.last_seen || new Date(frame.timestamp).toISOString();
  let fields = { last_seen: seen };
  if (frame.event === "agent.connected") fields = { status: "online", last_seen: seen, named_on: null };
  else if (frame.event === "agent.disconnected") fields = { status: "offline", last_seen: seen };
  else if (frame.event !== "agent.heartbeat") return;
  state.livePresence.set(id, { ...state.livePresence.get(id), ...fields });
  upsertAgent(id, fields);
}

// --- known agents: named on tasks and messages, never connected nor registered ------------------

const namedAgents = new Map(); // id → where it was seen ("tasks", "messages")

/** Note the agents a task or message names; those the table lacks join it as known, offline. */
function noteNamedAgents(source, ...ids) {
  let added = false;
  for (const id of ids) {
    if (typeof id !== "string" || !id) continue;
    if (!namedAgents.has(id)) namedAgents.set(id, source);
    if (!state.agents.has(id)) {
      state.agents.set(id, { id, name: null, kind: null, status: "offline", last_seen: null, named_on: namedAgents.get(id) });
      added = true;
    }
  }
  if (added) renderAgents();
}

/** After the table was reloaded from /api/agents: add back the agents only named elsewhere. */
function mergeNamedAgents() {
  for (const [id, source] of namedAgents) noteNamedAgents(source, id);
}

async function loadNamedAgents(tasks) {
  noteNamedAgents("tasks", ...tasks.map((t) => t.agent_id));
  try {
    const messages = items(await api("/api/messages", { query: { limit: 200, order: "desc" } }));
    noteNamedAgents("messages", ...messages.flatMap((m) => [m.from_agent, m.to_agent]));
  } catch {
    /* the messages are optional here: the tasks already named their agents */
  }
}

// --- tasks --------------------------------------------------------------------------------------

function taskTime(task) {
  return Date.parse(task.updated_at || task.created_at) || 0;
}

function progressOf(taskId) {
  const subs = [...(state.subtasks.get(taskId)?.values() || [])];
  const done = subs.filter((s) => s.status === "completed").length;
  const failed = subs.filter((s) => s.status === "failed" || s.status === "cancelled").length;
  return { total: subs.length, done, failed };
}

function progressBar(taskId) {
  const { total, done, failed } = progressOf(taskId);
  if (!total) return h("span", { class: "secondary" }, "—");
  const doneBar = h("span", { class: "done" });
  doneBar.style.width = `${(100 * done) / total}%`;
  const failBar = h("span", { class: "fail" });
  failBar.style.width = `${(100 * failed) / total}%`;
  return h(
    "div",
    { class: "progress", title: `${done} completed, ${failed} failed or cancelled, ${total - done - failed} open` },
    h("div", { class: "bar" }, doneBar, failBar),
    h("span", { class: "label" }, `${done}/${total}`),
  );
}

function renderTasks() {
  const rows = [...state.tasks.values()].sort((a, b) => taskTime(b) - taskTime(a)).slice(0, MAX_TASK_ROWS);
  $("#tasks-meta").textContent = state.tasks.size ? `latest ${rows.length}` : "—";
  const body = $("#tasks tbody");
  if (!rows.length) {
    body.replaceChildren(h("tr", {}, h("td", { colspan: 5, class: "empty" }, "No tasks yet. Create one with POST /api/tasks.")));
    return;
  }
  body.replaceChildren(
    ...rows.map((t) =>
      h(
        "tr",
        { dataset: { task: t.id, status: t.status } },
        h("td", {}, h("span", { class: "primary" }, t.title || t.id), h("span", { class: "secondary" }, t.id)),
        h("td", { class: "nowrap" }, t.agent_id || "—"),
        h("td", {}, h("span", { class: `badge ${t.status}` }, STATUS_LABELS[t.status] || t.status)),
        h("td", {}, progressBar(t.id)),
        h("td", { class: "num nowrap", title: t.updated_at || "" }, ago(t.updated_at || t.created_at)),
      ),
    ),
  );
}

function taskFromEvent(data, timestamp) {
  const id = data.task_id ?? data.id;
  if (typeof id !== "string") return null;
  const { task_id: _drop, ...fields } = data;
  const stamp = new Date(timestamp).toISOString();
  return { id, ...fields, updated_at: fields.updated_at || stamp, created_at: fields.created_at || stamp };
}

function onTaskEvent(frame) {
  const data = frame.data || {};
  if (frame.event.startsWith("task.")) {
    const task = taskFromEvent(data, frame.timestamp);
    if (!task) return;
    state.tasks.set(task.id, { ...state.tasks.get(task.id), ...task });
    noteNamedAgents("tasks", task.agent_id);
  } else {
    const taskId = data.task_id;
    const id = data.subtask_id ?? data.id;
    if (typeof taskId !== "string" || typeof id !== "string") return;
    if (!state.subtasks.has(taskId)) state.subtasks.set(taskId, new Map());
    const subs = state.subtasks.get(taskId);
    subs.set(id, { ...subs.get(id), ...data, id });
  }
  renderTasks();
}

// --- loading ------------------------------------------------------------------------------------

const problems = new Map(); // what is wrong, by source; the banner lists each once

function setProblem(source, message) {
  if (message) problems.set(source, message);
  else problems.delete(source);
  const banner = $("#banner");
  banner.replaceChildren(...[...problems.values()].map((text) => h("div", {}, text)));
  banner.classList.toggle("show", problems.size > 0);
}

async function loadSubtasks(taskId) {
  const page = await api(`/api/tasks/${encodeURIComponent(taskId)}/subtasks`, { query: { limit: 500 } });
  state.subtasks.set(taskId, new Map(items(page).map((s) => [s.id, s])));
}

async function reload() {
  const failures = [];
  const [metrics, agents, tasks] = await Promise.allSettled([
    api("/api/metrics"),
    api("/api/agents", { query: { limit: 500 } }),
    api("/api/tasks", { query: { limit: 50, order: "desc" } }),
  ]);
  if (metrics.status === "fulfilled") applyMetrics(metrics.value);
  else failures.push(`metrics (${metrics.reason.message})`);
  if (agents.status === "fulfilled") {
    const fresh = new Map(items(agents.value).map((a) => [a.id, a]));
    // Presence events that arrived while the list was loading are newer than the list.
    for (const [id, live] of state.livePresence) fresh.set(id, { id, ...fresh.get(id), ...live });
    state.agents = fresh;
    mergeNamedAgents();
    renderAgents();
  } else failures.push(`agents (${agents.reason.message})`);
  if (tasks.status === "fulfilled") {
    state.tasks = new Map(items(tasks.value).map((t) => [t.id, t]));
    const latest = [...state.tasks.values()].sort((a, b) => taskTime(b) - taskTime(a)).slice(0, MAX_TASK_ROWS);
    await Promise.allSettled([...latest.map((t) => loadSubtasks(t.id)), loadNamedAgents([...state.tasks.values()])]);
    renderTasks();
  } else failures.push(`tasks (${tasks.reason.message})`);
  setProblem("rest", failures.length ? `Could not load ${failures.join(", ")}. Live updates continue.` : "");
}

// --- wiring -------------------------------------------------------------------------------------

client.listen({ channel: "metrics", event: "metric.update" }, (frame) => applyMetrics(frame.data));
client.listen({ channel: "global", event: "agent.*" }, onAgentEvent);
client.listen({ channel: "global", event: "task.*,subtask.*" }, onTaskEvent);
client.listen({ channel: "global", event: "message.new" }, (frame) => noteNamedAgents("messages", frame.data?.from_agent, frame.data?.to_agent));
client.on("recovery", ({ recovered }) => {
  // The server could not replay what we missed while away: the tables may be stale.
  if (!recovered) reload();
});

client.connect();
for (const channel of ["metrics", "global"]) {
  client
    .subscribe(channel)
    .then(() => setProblem(channel, null))
    .catch((err) => setProblem(channel, `Cannot subscribe to ${channel}: ${err.message}`));
}
reload();
seedChart();
setInterval(() => {
  renderAgents();
  renderTasks();
}, 5_000);

$("#footer").textContent = `WebSocket ${config.wsUrl} · REST ${config.apiBase || location.origin}/api · v${config.version}`;
