// docs/asyncapi.yaml: valid AsyncAPI 3.1 (the official JSON schema from @asyncapi/specs), in
// agreement with this package's protocol tables, and describing the frames a real server sends.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { test } from "node:test";

import Ajv from "ajv";
import addFormats from "ajv-formats";
import { parse } from "yaml";

import { CloseCode, ErrorCode, MessageType, ResetReason, SERVER_EVENTS, shouldReconnect } from "../dist/index.js";

const require = createRequire(import.meta.url);
const doc = parse(readFileSync(new URL("../../../docs/asyncapi.yaml", import.meta.url), "utf8"));

test("the document is valid against the official AsyncAPI 3.1 schema", () => {
  const schema = require("@asyncapi/specs/schemas/3.1.0-without-$id.json");
  const ajv = new Ajv({ allErrors: true, strict: false, validateFormats: true });
  addFormats(ajv);
  const validate = ajv.compile(schema);
  const ok = validate(doc);
  assert.ok(ok, JSON.stringify(validate.errors?.slice(0, 5), null, 2));
  assert.equal(doc.asyncapi, "3.1.0");
});

test("the package's protocol tables are the document's", () => {
  const schemas = doc.components.schemas;
  assert.deepEqual([...schemas.ErrorCode.enum].sort(), Object.values(ErrorCode).sort());
  const closes = doc["x-close-codes"];
  assert.deepEqual(closes.map((c) => c.code).sort(), Object.values(CloseCode).sort());
  for (const { code, reconnect } of closes) assert.equal(shouldReconnect(code), reconnect, String(code));
  const requests = Object.values(doc.components.messages)
    .map((m) => m.payload?.properties?.type?.const)
    .filter((type) => type && !["connected", "ack", "pong", "unrecovered"].includes(type));
  assert.deepEqual(requests.sort(), Object.values(MessageType).sort());
  const reasons = doc.components.messages.unrecovered.payload.properties.reason.enum;
  assert.deepEqual([...reasons].sort(), Object.values(ResetReason).sort());
  const events = Object.values(doc.components.messages).flatMap((m) => m.payload?.allOf?.[1]?.properties?.event?.enum ?? []);
  assert.deepEqual(events.sort(), [...SERVER_EVENTS].sort());
});

function validator() {
  // The document's components as one schema, so a message's $refs resolve.
  const ajv = new Ajv({ strict: false, allErrors: true });
  ajv.addSchema({ $id: "asyncapi", components: doc.components });
  return (name, frame) => {
    const validate = ajv.compile({ $ref: `asyncapi#/components/messages/${name}/payload` });
    assert.ok(validate(frame), `${name}: ${JSON.stringify(validate.errors)} for ${JSON.stringify(frame)}`);
  };
}

test("real frames match the document's message schemas", async () => {
  const check = validator();
  const ws = new WebSocket(`${process.env.CM_WS_URL}?agent_id=asyncapi-check`);
  const frames = [];
  const waiters = [];
  ws.onmessage = (m) => {
    const frame = JSON.parse(m.data);
    frames.push(frame);
    for (const w of [...waiters]) if (w.test(frame)) (waiters.splice(waiters.indexOf(w), 1), w.resolve(frame));
  };
  const next = (test) =>
    new Promise((resolve, reject) => {
      const found = frames.find(test);
      if (found) return resolve(found);
      waiters.push({ test, resolve });
      setTimeout(() => reject(new Error("no such frame")), 5000);
    });
  const send = (m) => ws.send(JSON.stringify(m));
  try {
    check("connected", await next((f) => f.type === "connected"));
    send({ type: "subscribe", channel: "agents/asyncapi-check", id: "s1" });
    check("ack", await next((f) => f.id === "s1"));
    send({ type: "subscribe", channel: "global", id: "s2" });
    check("ack", await next((f) => f.id === "s2"));
    send({ type: "ping" });
    check("pong", await next((f) => f.type === "pong"));
    send({ type: "subscribe", channel: "nope", id: "bad" });
    check("error", await next((f) => f.id === "bad"));
    send({ type: "publish", channel: "topics/x", event: "note.added", data: { n: 1 }, id: "p1" });
    check("ack", await next((f) => f.id === "p1"));
    send({ type: "history", channel: "topics/x", id: "h1" });
    check("ack", await next((f) => f.id === "h1"));
    send({ type: "presence", channel: "global", id: "pr" });
    check("ack", await next((f) => f.id === "pr"));
    send({ type: "presence_stats", channel: "global", id: "ps" });
    check("ack", await next((f) => f.id === "ps"));
    send({ type: "auth", agent_id: "asyncapi-check", id: "a1" });
    check("ack", await next((f) => f.id === "a1"));
    for (const request of ["subscribe", "publish", "history", "presence", "presenceStats", "auth", "ping", "unsubscribe"]) {
      assert.ok(doc.components.messages[request], request);
    }
    const api = process.env.CM_API_URL;
    const post = (path, body) =>
      fetch(`${api}${path}`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) }).then((r) => r.json());
    const task = await post("/api/tasks", { title: "schema", agent_id: "asyncapi-check" });
    await post(`/api/tasks/${task.id}/subtasks`, { title: "part" });
    await post("/api/messages", { from_agent: "x", to_agent: "asyncapi-check", content: "hi" });
    await post("/api/reservations", { agent_id: "asyncapi-check", paths: ["src/"] });
    for (const [event, message] of [
      ["task.created", "tasksEvents"],
      ["subtask.created", "subtasksEvents"],
      ["message.new", "messagesEvents"],
      ["reservation.created", "reservationsEvents"],
    ]) {
      check(message, await next((f) => f.channel === "agents/asyncapi-check" && f.event === event));
    }
    const metrics = new WebSocket(process.env.CM_WS_URL);
    metrics.onopen = () => metrics.send(JSON.stringify({ type: "subscribe", channel: "metrics", id: "m" }));
    const update = await new Promise((resolve) => {
      metrics.onmessage = (m) => {
        const frame = JSON.parse(m.data);
        if (frame.event === "metric.update") resolve(frame);
      };
    });
    metrics.close();
    check("metricsEvents", update);
    check("agentsEvents", await next((f) => f.event === "agent.connected" || f.event === "agent.heartbeat"));
  } finally {
    ws.close();
  }
});
