/** The Webhooks page: endpoints, their last deliveries (status, latency), retry and test. */

import { ago, api, h, initTheme, items } from "/static/common.js";

const $ = (selector) => document.querySelector(selector);
const REFRESH_MS = 2000;
let selected = null;

initTheme($("#theme"));

function banner(message) {
  $("#banner").textContent = message || "";
  $("#banner").classList.toggle("show", Boolean(message));
}

function list(text) {
  return text.split(",").map((part) => part.trim()).filter(Boolean);
}

function stateBadge(endpoint) {
  if (endpoint.enabled) return h("span", { class: "badge online" }, "enabled");
  return h("span", { class: "badge failed", title: endpoint.disabled_reason || "" }, "disabled");
}

function deliveryBadge(row) {
  const status = row.status_code === null ? "no answer" : String(row.status_code);
  const cls = row.succeeded ? "completed" : "failed";
  return h("span", { class: `badge ${cls}`, title: row.error || "" }, status);
}

async function act(label, call) {
  try {
    await call();
    banner("");
  } catch (error) {
    banner(`${label}: ${error.message}`);
  }
  await refresh();
}

function endpointRow(endpoint) {
  const toggle = endpoint.enabled ? "Disable" : "Enable";
  const row = h(
    "tr",
    { dataset: { id: endpoint.id }, class: endpoint.id === selected ? "selected" : "" },
    h("td", {}, h("span", { class: "primary" }, endpoint.url), h("span", { class: "secondary" }, endpoint.id)),
    h("td", {}, endpoint.events.join(", "), endpoint.channels ? h("span", { class: "secondary" }, endpoint.channels.join(", ")) : null),
    h("td", {}, stateBadge(endpoint)),
    h("td", { class: "num" }, String(endpoint.pending_deliveries)),
    h("td", { class: "num" }, endpoint.failing_since ? ago(endpoint.failing_since) : "—"),
    h(
      "td",
      { class: "nowrap" },
      h("button", { class: "btn", type: "button", "data-action": "show", onclick: () => { selected = endpoint.id; refresh(); } }, "Deliveries"),
      " ",
      h("button", { class: "btn", type: "button", "data-action": "test", onclick: () => act("Test", () => api(`/api/webhooks/${endpoint.id}/test`, { method: "POST" })) }, "Test"),
      " ",
      h("button", { class: "btn", type: "button", "data-action": "toggle", onclick: () => act(toggle, () => api(`/api/webhooks/${endpoint.id}`, { method: "PATCH", body: { enabled: !endpoint.enabled } })) }, toggle),
    ),
  );
  return row;
}

function deliveryRow(row) {
  const answer = row.error && !row.succeeded ? row.error : row.response || "";
  return h(
    "tr",
    { dataset: { delivery: row.delivery_id, state: row.delivery_state } },
    h("td", { class: "nowrap", title: row.attempted_at }, ago(row.attempted_at)),
    h("td", {}, h("span", { class: "primary" }, row.event_type), h("span", { class: "secondary" }, row.event_id)),
    h("td", { class: "num" }, String(row.attempt)),
    h("td", {}, deliveryBadge(row)),
    h("td", { class: "num" }, `${Math.round(row.latency_ms)} ms`),
    h("td", { title: answer }, answer.length > 80 ? `${answer.slice(0, 80)}…` : answer),
    h("td", {}, h("span", { class: `badge ${row.delivery_state === "succeeded" ? "completed" : row.delivery_state}` }, row.delivery_state)),
    h(
      "td",
      {},
      h("button", { class: "btn", type: "button", "data-action": "retry", onclick: () => act("Retry", () => api(`/api/webhooks/${selected}/deliveries/${row.delivery_id}/retry`, { method: "POST" })) }, "Retry"),
    ),
  );
}

async function refresh() {
  let endpoints;
  try {
    endpoints = items(await api("/api/webhooks", { query: { limit: 100 } }));
  } catch (error) {
    const forbidden = error.message.includes("HTTP 403");
    banner(forbidden ? "Webhooks need an admin token (open the page with ?token=<an admin token>)." : error.message);
    $("#updated").textContent = "—";
    return;
  }
  if (selected === null && endpoints.length) selected = endpoints[0].id;
  if (selected !== null && !endpoints.some((e) => e.id === selected)) selected = endpoints[0]?.id ?? null;
  const body = $("#endpoints tbody");
  body.replaceChildren(...(endpoints.length ? endpoints.map(endpointRow) : [h("tr", {}, h("td", { colspan: 6, class: "empty" }, "No endpoints yet: register one above."))]));
  $("#endpoints-meta").textContent = `${endpoints.length} endpoint${endpoints.length === 1 ? "" : "s"}`;
  const deliveries = $("#deliveries tbody");
  if (selected === null) {
    deliveries.replaceChildren();
    $("#deliveries-meta").textContent = "select an endpoint";
  } else {
    try {
      const rows = items(await api(`/api/webhooks/${selected}/deliveries`, { query: { limit: 50 } }));
      deliveries.replaceChildren(...(rows.length ? rows.map(deliveryRow) : [h("tr", {}, h("td", { colspan: 8, class: "empty" }, "No attempt yet."))]));
      $("#deliveries-meta").textContent = selected;
    } catch (error) {
      banner(error.message);
    }
  }
  $("#updated").textContent = `Updated ${new Date().toLocaleTimeString()}`;
}

$("#register").addEventListener("submit", async (event) => {
  event.preventDefault();
  const body = { url: $("#url").value.trim(), events: list($("#events").value) };
  const channels = list($("#channels").value);
  if (channels.length) body.channels = channels;
  try {
    const created = await api("/api/webhooks", { method: "POST", body });
    selected = created.id;
    $("#secret").textContent = `Registered ${created.id}. Its signing secret, shown only now: ${created.secret}`;
    $("#secret").classList.add("show");
    banner("");
  } catch (error) {
    banner(`Register: ${error.message}`);
  }
  await refresh();
});

window.cmWebhooks = { refresh };
refresh();
setInterval(refresh, REFRESH_MS);
