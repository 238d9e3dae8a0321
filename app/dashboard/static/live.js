/**
 * /live: the real-time event stream, newest first.
 *
 * Filters (kept in the address bar so a view can be shared): `channel`, `event` (globs such as
 * `task.*`, comma-separated), `agent` (any agent id the event is about), `q` (free text in the
 * event's JSON). `channels=global,metrics` chooses the subscriptions, `buffer=2000` the number
 * of events kept: the oldest are dropped past it, so the page can stay open for days.
 *
 * On open (and for a channel added later) the page backfills the channel's last `backfill=100`
 * events from its history (the `history` request), below a line that marks where live begins,
 * so it does not start empty on a busy service; `backfill=0` turns that off.
 */

import { agentsOf, bindConnectionPill, clock, createClient, family, h, initTheme, option } from "/static/common.js";
import { eventMatcher } from "/static/client.js";

const $ = (selector) => document.querySelector(selector);
const BUFFER = Math.min(50_000, Math.max(10, Number(option("buffer", 2000)) || 2000));

const state = {
  entries: [], // oldest first, at most BUFFER
  seq: 0,
  received: 0,
  dropped: 0,
  paused: false,
  missed: 0, // arrived while paused
  selected: null,
  arrivals: [], // receive times of the last seconds, for the rate
  filters: { channel: "", event: "", agent: "", q: "" },
  test: () => true,
};

initTheme($("#theme"));
const client = createClient();
bindConnectionPill(client, $("#connection"));
window.cmClient = client; // for the console (and the browser tests)

// --- filters ------------------------------------------------------------------------------------

function compileFilters() {
  const { channel, event, agent, q } = state.filters;
  const matchesEvent = eventMatcher(event.trim());
  const agentNeedle = agent.trim().toLowerCase();
  const needle = q.trim().toLowerCase();
  state.test = (entry) =>
    (!channel || entry.frame.channel === channel) &&
    matchesEvent(entry.frame.event) &&
    (!agentNeedle || entry.agents.some((a) => a.toLowerCase().includes(agentNeedle))) &&
    (!needle || entry.search.includes(needle));
}

function syncUrl() {
  const params = new URLSearchParams(location.search);
  for (const [key, value] of Object.entries(state.filters)) {
    if (value) params.set(key, value);
    else params.delete(key);
  }
  params.set("channels", client.channels.join(","));
  history.replaceState(null, "", `${location.pathname}?${params}`);
}

function readFilters() {
  state.filters = {
    channel: $("#f-channel").value,
    event: $("#f-event").value,
    agent: $("#f-agent").value,
    q: $("#f-text").value,
  };
  compileFilters();
  syncUrl();
  render();
}

// --- rows ---------------------------------------------------------------------------------------

function text(value, max = 160) {
  const s = typeof value === "string" ? value : JSON.stringify(value);
  return s && s.length > max ? `${s.slice(0, max - 1)}…` : s ?? "";
}

function summary(frame) {
  const d = frame.data && typeof frame.data === "object" ? frame.data : {};
  const [head] = frame.event.split(".");
  if (head === "task" || head === "subtask") {
    const id = d[`${head}_id`] ?? d.id ?? "";
    const parts = [d.title ? `“${text(d.title, 60)}”` : null, id, d.status ? `→ ${d.status}` : null, d.agent_id ? `@${d.agent_id}` : null];
    return parts.filter(Boolean).join(" ");
  }
  if (head === "message") {
    const route = d.from_agent || d.to_agent ? `${d.from_agent ?? "?"} → ${d.to_agent ?? "?"}` : "";
    return [route, d.content !== undefined ? text(d.content, 100) : d.message_id].filter(Boolean).join(": ");
  }
  if (head === "agent") return [d.agent_id, d.session_id ? `session ${d.session_id}` : null].filter(Boolean).join(" · ");
  if (frame.event === "metric.update") {
    return `${d.active_agents ?? "?"} agents · ${d.connected_clients ?? "?"} clients · ${d.events_per_second ?? "?"} ev/s`;
  }
  return text(frame.data);
}

function rowFor(entry) {
  const { frame } = entry;
  const row = h(
    "tr",
    { dataset: { seq: entry.seq, event: frame.event, channel: frame.channel }, class: [entry === state.selected ? "selected" : "", entry.fromHistory ? "history" : ""].join(" ").trim() },
    h("td", { class: "time", title: new Date(frame.timestamp).toISOString() }, clock(frame.timestamp)),
    h("td", { class: "channel" }, frame.channel),
    h("td", {}, h("span", { class: `ev ${family(frame.event)}` }, frame.event)),
    h("td", { class: "summary" }, summary(frame)),
  );
  row.addEventListener("click", () => select(entry));
  entry.row = row;
  return row;
}

function render() {
  const body = $("#events tbody");
  for (const entry of state.entries) entry.row = null;
  const visible = [];
  let marked = false;
  for (let i = state.entries.length - 1; i >= 0; i--) {
    const entry = state.entries[i];
    if (!state.test(entry)) continue;
    if (entry.fromHistory && !marked) {
      visible.push(liveMarker());
      marked = true;
    }
    visible.push(rowFor(entry));
  }
  body.replaceChildren(...visible);
  state.missed = 0;
  updateCounts();
}

function updateCounts() {
  const shown = $("#events tbody").querySelectorAll("tr[data-seq]").length;
  $("#counts").textContent =
    `showing ${shown.toLocaleString()} · kept ${state.entries.length.toLocaleString()} of ${BUFFER.toLocaleString()}` +
    (state.dropped ? ` · ${state.dropped.toLocaleString()} older dropped` : "");
  $("#empty").style.display = shown ? "none" : "block";
  $("#empty").textContent = state.entries.length ? "No event matches these filters." : "Waiting for events…";
  const pause = $("#pause");
  pause.textContent = state.paused ? (state.missed ? `Resume (${state.missed} new)` : "Resume") : "Pause";
}

function onEvent(frame) {
  const entry = {
    seq: ++state.seq,
    frame,
    agents: agentsOf(frame),
    search: JSON.stringify(frame).toLowerCase(),
    row: null,
  };
  state.received += 1;
  state.arrivals.push(performance.now());
  state.entries.push(entry);
  // The bound: drop the oldest (and its row) so memory and DOM stay flat however long it runs.
  while (state.entries.length > BUFFER) {
    const old = state.entries.shift();
    old.row?.remove();
    state.dropped += 1;
  }
  if (!state.test(entry)) return updateCounts();
  if (state.paused) {
    state.missed += 1;
    return updateCounts();
  }
  const row = rowFor(entry);
  row.classList.add("fresh");
  $("#events tbody").prepend(row);
  updateCounts();
}

// --- backfill: each channel's last events, from its history --------------------------------------

const BACKFILL = Math.min(1000, Math.max(0, Math.floor(Number(option("backfill", 100))) || 0));
const HISTORY_LIMIT = 1000; // the most a `history` request returns
const liveSince = Date.now();

/** The row between the live events (above) and those loaded from history (below). */
function liveMarker() {
  return h(
    "tr",
    { class: "live-marker" },
    h("td", { colspan: 4 }, `▲ live since ${clock(liveSince)} · ▼ earlier, from the channels' history`),
  );
}

/** The `history` ack for the `count` publications up to the subscription's top `ack.offset`. */
async function lastPublications(channel, ack, count) {
  const since = { offset: Math.max(0, ack.offset - count), epoch: ack.epoch };
  const page = await client.request({ type: "history", channel, since, limit: count });
  if (page.recovered !== false) return page.publications || [];
  // Retention already dropped part of that range: take the oldest page and keep its end.
  const all = await client.request({ type: "history", channel, limit: HISTORY_LIMIT });
  return (all.publications || []).filter((f) => f.offset <= ack.offset).slice(-count);
}

/** Put `channel`'s last BACKFILL events, published before `ack`, below the live ones. */
async function backfill(channel, ack) {
  if (!BACKFILL || typeof ack?.offset !== "number" || ack.offset < 1 || typeof ack.epoch !== "string") return;
  let frames;
  try {
    frames = await lastPublications(channel, ack, Math.min(BACKFILL, BUFFER));
  } catch (err) {
    showBanner(`Could not load the history of ${channel}: ${err.message}`);
    return;
  }
  if (!client.channels.includes(channel)) return; // unsubscribed meanwhile
  // Only what came before the subscription (later publications arrive live), once each.
  const key = (f) => `${f.channel} ${f.epoch} ${f.offset}`;
  const known = new Set(state.entries.map((e) => key(e.frame)));
  const older = frames.filter((f) => f.epoch === ack.epoch && f.offset <= ack.offset && !known.has(key(f)));
  if (!older.length) return;
  const entries = older.map((frame) => ({
    seq: ++state.seq,
    frame,
    agents: agentsOf(frame),
    search: JSON.stringify(frame).toLowerCase(),
    row: null,
    fromHistory: true,
  }));
  // History sits below every live event, in time order across channels.
  const boundary = state.entries.findIndex((e) => !e.fromHistory);
  const history = boundary === -1 ? state.entries : state.entries.slice(0, boundary);
  const live = boundary === -1 ? [] : state.entries.slice(boundary);
  const merged = [...history, ...entries].sort((a, b) => a.frame.timestamp - b.frame.timestamp || a.seq - b.seq);
  const room = Math.max(0, BUFFER - live.length);
  state.dropped += Math.max(0, merged.length - room);
  state.entries = [...merged.slice(Math.max(0, merged.length - room)), ...live];
  if (state.paused) updateCounts(); // shown on resume, like live events
  else render();
}

// --- detail -------------------------------------------------------------------------------------

/** Pretty JSON with spans for keys, strings, numbers and literals (text only, never HTML). */
function highlight(value) {
  const json = JSON.stringify(value, null, 2);
  const out = [];
  const re = /("(?:\\.|[^"\\])*")(\s*:)?|\b(true|false|null)\b|(-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)/g;
  let last = 0;
  for (const m of json.matchAll(re)) {
    out.push(json.slice(last, m.index));
    if (m[1] && m[2]) out.push(h("span", { class: "j-key" }, m[1]), m[2]);
    else if (m[1]) out.push(h("span", { class: "j-str" }, m[1]));
    else if (m[3]) out.push(h("span", { class: "j-lit" }, m[3]));
    else out.push(h("span", { class: "j-num" }, m[4]));
    last = m.index + m[0].length;
  }
  out.push(json.slice(last));
  return out;
}

function select(entry) {
  state.selected?.row?.classList.remove("selected");
  state.selected = entry;
  entry.row?.classList.add("selected");
  const { frame } = entry;
  $("#detail-title").textContent = `${frame.event} · ${frame.channel}${typeof frame.offset === "number" ? ` · #${frame.offset}` : ""}`;
  $("#detail").replaceChildren(...highlight(frame));
  $("#copy").disabled = false;
}

$("#copy").addEventListener("click", async () => {
  if (!state.selected) return;
  try {
    await navigator.clipboard.writeText(JSON.stringify(state.selected.frame, null, 2));
    $("#copy").textContent = "Copied";
  } catch {
    $("#copy").textContent = "Copy failed";
  }
  setTimeout(() => ($("#copy").textContent = "Copy JSON"), 1200);
});

// --- channels -----------------------------------------------------------------------------------

function showBanner(message) {
  $("#banner").textContent = message || "";
  $("#banner").classList.toggle("show", Boolean(message));
}

function renderChannels() {
  const chips = client.channels.map((channel) =>
    h(
      "span",
      { class: "chip", dataset: { channel } },
      channel,
      h("button", { type: "button", title: `Unsubscribe from ${channel}`, "aria-label": `Unsubscribe from ${channel}`, onclick: () => removeChannel(channel) }, "×"),
    ),
  );
  const container = $("#channels");
  container.querySelectorAll(".chip").forEach((chip) => chip.remove());
  container.prepend(...chips);
  const select = $("#f-channel");
  const current = select.value || state.filters.channel;
  select.replaceChildren(
    h("option", { value: "" }, "All channels"),
    ...client.channels.map((channel) => h("option", { value: channel }, channel)),
  );
  if (current && !client.channels.includes(current)) select.append(h("option", { value: current }, current));
  select.value = current;
}

async function addChannel(channel) {
  channel = channel.trim();
  if (!channel || client.channels.includes(channel)) return;
  const pending = client.subscribe(channel);
  renderChannels();
  let ack = null;
  try {
    ack = await pending;
    showBanner("");
  } catch (err) {
    showBanner(`Cannot subscribe to ${channel}: ${err.message}`);
  }
  renderChannels();
  syncUrl();
  if (ack) await backfill(channel, ack);
}

function removeChannel(channel) {
  client.unsubscribe(channel).catch(() => {});
  renderChannels();
  syncUrl();
}

// --- wiring -------------------------------------------------------------------------------------

const initial = new URLSearchParams(location.search);
$("#f-event").value = initial.get("event") || "";
$("#f-agent").value = initial.get("agent") || "";
$("#f-text").value = initial.get("q") || "";
state.filters.channel = initial.get("channel") || "";

for (const id of ["#f-event", "#f-agent", "#f-text"]) $(id).addEventListener("input", readFilters);
$("#f-channel").addEventListener("change", readFilters);
$("#filters").addEventListener("submit", (e) => e.preventDefault());
$("#add-channel").addEventListener("submit", (e) => {
  e.preventDefault();
  const input = $("#new-channel");
  addChannel(input.value);
  input.value = "";
});
$("#pause").addEventListener("click", () => {
  state.paused = !state.paused;
  $("#pause").setAttribute("aria-pressed", String(state.paused));
  if (!state.paused) render();
  else updateCounts();
});
$("#clear").addEventListener("click", () => {
  state.entries = [];
  state.selected = null;
  render();
});

client.on("event", onEvent);
client.on("recovery", ({ channel, recovered }) => {
  if (!recovered) showBanner(`Events on ${channel} published while disconnected could not be recovered.`);
});
client.connect();
for (const channel of (initial.get("channels") || "global").split(",").map((c) => c.trim()).filter(Boolean)) {
  addChannel(channel);
}
renderChannels();
$("#f-channel").value = state.filters.channel;
readFilters();

setInterval(() => {
  const now = performance.now();
  while (state.arrivals.length && now - state.arrivals[0] > 10_000) state.arrivals.shift();
  $("#rate").textContent = `${(state.arrivals.length / 10).toFixed(1)} events/s · ${state.received.toLocaleString()} received`;
}, 1_000);
