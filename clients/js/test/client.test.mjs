// RealtimeClient against a real server (started by scripts/test.mjs).
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  CloseCode,
  ConnectionState,
  RealtimeClient,
  RealtimeError,
  closeAdvice,
  isServerEvent,
  shouldReconnect,
} from "../dist/index.js";

const WS = process.env.CM_WS_URL;
const API = process.env.CM_API_URL;
const FAST = { initial: 50, max: 300, factor: 2, jitter: 0.5 };

function nextEvent(client, predicate, timeout = 5000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error("no such event in time"));
    }, timeout);
    const off = client.on("event", (frame) => {
      if (!predicate(frame)) return;
      clearTimeout(timer);
      off();
      resolve(frame);
    });
  });
}

async function open(options = {}) {
  const client = new RealtimeClient(WS, { backoff: FAST, ...options });
  client.connect();
  await client.ready(5000);
  return client;
}

test("subscribe, publish, receive the event with its offset", async () => {
  const client = await open({ agentId: "js-a" });
  try {
    assert.equal(client.state, ConnectionState.CONNECTED);
    assert.match(client.clientId, /^ws_/);
    const ack = await client.subscribe("topics/js");
    assert.equal(ack.success, true);
    assert.equal(ack.channel, "topics/js");
    const arrived = nextEvent(client, (f) => f.event === "note.added");
    const published = await client.publish("topics/js", "note.added", { n: 1 });
    const event = await arrived;
    assert.deepEqual(event.data, { n: 1 });
    assert.equal(event.offset, published.offset);
    assert.deepEqual(client.position("topics/js"), { offset: event.offset, epoch: event.epoch });
  } finally {
    client.close();
  }
});

test("an error frame rejects the request with the server's code", async () => {
  const client = await open();
  try {
    await assert.rejects(client.subscribe("nope/x y"), (err) => err instanceof RealtimeError && err.code === "INVALID_CHANNEL");
    await assert.rejects(client.publish("topics/a", "Not An Event"), (err) => err.code === "INVALID_EVENT");
    assert.deepEqual(client.channels, []);
    const history = await client.history("topics/a", { limit: 10 });
    assert.equal(history.recovered, true);
    const stats = await client.presenceStats("topics/a");
    assert.equal(typeof stats.num_clients, "number");
  } finally {
    client.close();
  }
});

test("a REST change arrives as a typed server event", async () => {
  const client = await open({ agentId: "js-worker" });
  try {
    await client.subscribe("agents/js-worker");
    const arrived = nextEvent(client, (f) => f.event === "task.created");
    const response = await fetch(`${API}/api/tasks`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ title: "For the JS worker", agent_id: "js-worker" }),
    });
    const task = await response.json();
    const event = await arrived;
    assert.ok(isServerEvent(event, "task.created"));
    assert.equal(event.data.task_id, task.id);
    assert.equal(event.data.status, "pending");
  } finally {
    client.close();
  }
});

test("after a dropped connection it reconnects, resubscribes with since and recovers", async () => {
  const client = await open({ agentId: "js-survivor" });
  const publisher = await open();
  try {
    await client.subscribe("topics/gap");
    const first = nextEvent(client, (f) => f.data?.n === 0);
    await publisher.publish("topics/gap", "note.added", { n: 0 });
    await first;
    const received = [];
    client.listen({ channel: "topics/gap" }, (f) => received.push(f.data.n));
    const recoveries = [];
    client.on("recovery", (r) => recoveries.push(r));
    const states = [];
    client.on("state", (s) => states.push(s.state));

    // Drop the socket as a network blip would (a code that means "reconnect").
    client._ws.close(4001, "blip");
    client._onClose(client._ws, 4001, "blip");
    assert.equal(client.state, ConnectionState.RECONNECTING);
    for (let n = 1; n <= 5; n += 1) await publisher.publish("topics/gap", "note.added", { n });
    await client.ready(5000);
    const deadline = Date.now() + 5000;
    while (received.length < 5 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    assert.deepEqual(received, [1, 2, 3, 4, 5]); // in order, none lost, none twice
    assert.equal(recoveries.length, 1);
    assert.equal(recoveries[0].recovered, true);
    assert.equal(recoveries[0].reason, "resubscribe");
    assert.ok(states.includes(ConnectionState.RECONNECTING) && states.at(-1) === ConnectionState.CONNECTED);
  } finally {
    client.close();
    publisher.close();
  }
});

test("close codes: which reconnect, and the advice for each", () => {
  for (const code of [null, 1001, 1006, 1011, 1012, 3001, 3005, 3008, 4000]) assert.ok(shouldReconnect(code), String(code));
  for (const code of [1000, 1007, 1008, 1009, 3500, 3503, 3504, 3999]) assert.ok(!shouldReconnect(code), String(code));
  for (const code of Object.values(CloseCode)) assert.ok(closeAdvice(code).length > 10, String(code));
  assert.match(closeAdvice(3500), /token/);
  assert.match(closeAdvice(4999), /do not reconnect|reconnect/);
});

test("requests made before the connection wait for it; close() rejects what is left", async () => {
  const client = new RealtimeClient(WS, { backoff: FAST });
  client.connect();
  const ack = await client.publish("topics/early", "note.added", { early: true });
  assert.equal(ack.success, true);
  client.close();
  assert.equal(client.state, ConnectionState.CLOSED);
  await assert.rejects(client.publish("topics/early", "note.added"), (err) => err.code === "CLOSED");
});
