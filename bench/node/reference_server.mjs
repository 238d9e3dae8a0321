// BASELINE ONLY — not the service. The second bar the benchmark suite measures context-manager
// against: the same pub/sub server as bench/reference_server.py, on Node.js and the `ws` package
// (pinned in package-lock.json) instead of Python's bare `websockets`.
//
// Same JSON protocol, same behaviour: a `connected` frame first; subscribe / unsubscribe /
// publish → ack (after the fan-out, when the message has an id), ping → pong, anything else an
// INVALID_MESSAGE error; an event is encoded once and the same buffer sent to every open
// subscriber (framed per client, as websockets.broadcast()). No validation beyond the frame's
// shape, no limits, no presence, no history. No compression, a listen backlog of 2048, 1 MiB
// frames at most, a ping every 20 s (a client that has not answered the last one is dropped).
//
//   node bench/node/reference_server.mjs --port 3849 [--host 127.0.0.1]    (or HOST=, PORT=)

import { randomBytes } from "node:crypto";
import { parseArgs } from "node:util";
import { WebSocketServer } from "ws";

const { values: args } = parseArgs({
  options: { host: { type: "string" }, port: { type: "string" } },
});
const host = args.host ?? process.env.HOST ?? "127.0.0.1";
const port = Number(args.port ?? process.env.PORT ?? 3849);

const channels = new Map(); // channel → Set of sockets
const frame = (fields) => JSON.stringify({ ...fields, timestamp: Date.now() });

const wss = new WebSocketServer({
  host,
  port,
  backlog: 2048,
  perMessageDeflate: false,
  maxPayload: 1 << 20,
});

wss.on("connection", (ws) => {
  const mine = new Set();
  ws.alive = true;
  ws.on("pong", () => (ws.alive = true));
  ws.send(frame({ type: "connected", client_id: `ws_${randomBytes(6).toString("hex")}` }));
  ws.on("message", (raw) => {
    let msg = null;
    try {
      msg = JSON.parse(raw);
    } catch {}
    if (msg === null || typeof msg !== "object" || Array.isArray(msg)) msg = {};
    const { type: kind, id: rid = null, channel } = msg;
    if (kind === "ping") return ws.send(frame({ type: "pong" }));
    if (kind === "subscribe" && typeof channel === "string") {
      if (!channels.has(channel)) channels.set(channel, new Set());
      channels.get(channel).add(ws);
      mine.add(channel);
    } else if (kind === "unsubscribe" && typeof channel === "string") {
      channels.get(channel)?.delete(ws);
      mine.delete(channel);
    } else if (kind === "publish" && typeof channel === "string" && typeof msg.event === "string") {
      const event = Buffer.from(frame({ channel, event: msg.event, data: msg.data ?? null }));
      for (const peer of channels.get(channel) ?? []) {
        if (peer.readyState === peer.OPEN) peer.send(event, { binary: false }); // encoded once
      }
    } else {
      return ws.send(frame({ error: "Invalid message", code: "INVALID_MESSAGE", id: rid }));
    }
    // The ack follows the fan-out, as in the service.
    if (rid !== null) ws.send(frame({ type: "ack", id: rid, success: true, channel }));
  });
  ws.on("close", () => {
    for (const channel of mine) {
      const subscribers = channels.get(channel);
      subscribers?.delete(ws);
      if (subscribers?.size === 0) channels.delete(channel);
    }
  });
});

setInterval(() => {
  for (const ws of wss.clients) {
    if (!ws.alive) ws.terminate();
    else {
      ws.alive = false;
      ws.ping();
    }
  }
}, 20_000);

wss.on("listening", () => console.log(`node ws reference listening on ws://${host}:${port}/`));
for (const signal of ["SIGINT", "SIGTERM"]) process.on(signal, () => process.exit(0));
