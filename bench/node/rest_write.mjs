// Load generator of the rest-write bench (bench/rest_write.py). One process, one row.
//
//   node rest_write.mjs '<json config>'
//
// config: {apiUrl, wsUrl (null: no event accounting), op: create|patch|message|claim|complete,
//          concurrency, warmup (s), duration (s), seed (tasks pre-created for patch/claim/
//          complete),
//          drain (s to wait for the last events)}
//
// `concurrency` clients, each a closed loop of one request at a time over its own keep-alive
// connection (node:http Agent, maxSockets = concurrency), so that many requests are in flight.
// After `warmup` seconds the window opens (phase `measure_start`: the orchestrator samples the
// server's /proc) and closes `duration` seconds later (`measure_end`); requests answered inside
// it are counted, with their latency. A claim answered 204 (the seeded queue is empty) closes
// the window early. `complete`: each client claims a task, then completes it with the claim's
// lease (POST /api/tasks/{id}/complete {lease_id}), and claims again: an agent's work loop, two
// requests per task, both counted.
//
// With `wsUrl`, a WebSocket subscriber on `global` (opened before anything is written) checks
// that every successful write's event arrived: task.created per POST /api/tasks (the seed
// too), task.updated per PATCH, task.claimed per claim, task.completed per completion,
// message.new per POST /api/messages,
// each by its task_id / message_id; lost = expected but never received (waiting up to `drain`
// seconds after the load stops), duplicated = received more often than written.
//
// Same stdio protocol as load.mjs: {"phase": …} barriers answered on stdin, {"result": …} last.

import http from "node:http";
import { createInterface } from "node:readline";
import { performance } from "node:perf_hooks";
import WebSocket from "ws";

const cfg = JSON.parse(process.argv[2] ?? "{}");
const api = new URL(cfg.apiUrl);

const stdinLines = [];
let stdinWaiter = null;
createInterface({ input: process.stdin }).on("line", (line) => {
  if (stdinWaiter) {
    const waiter = stdinWaiter;
    stdinWaiter = null;
    waiter(line);
  } else stdinLines.push(line);
});

const emit = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
const log = (msg) => emit({ log: msg });
function phase(name, extra = {}) {
  emit({ phase: name, ...extra });
  return new Promise((resolve) => {
    if (stdinLines.length) resolve(stdinLines.shift());
    else stdinWaiter = resolve;
  });
}

const nowMs = () => performance.now();
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

class Samples {
  constructor() {
    this.buf = new Float64Array(1 << 16);
    this.n = 0;
  }
  push(v) {
    if (this.n === this.buf.length) {
      const bigger = new Float64Array(this.buf.length * 2);
      bigger.set(this.buf);
      this.buf = bigger;
    }
    this.buf[this.n++] = v;
  }
  summary() {
    if (this.n === 0) return { p50: null, p99: null, max: null, n: 0 };
    const sorted = this.buf.subarray(0, this.n).sort();
    const at = (q) => sorted[Math.min(this.n - 1, Math.floor(q * this.n))];
    const r = (v) => Math.round(v * 1000) / 1000;
    return { p50: r(at(0.5)), p99: r(at(0.99)), max: r(sorted[this.n - 1]), n: this.n };
  }
}

const errors = { count: 0, samples: [], statuses: {} };
function countError(status, text) {
  errors.count++;
  errors.statuses[status] = (errors.statuses[status] ?? 0) + 1;
  if (errors.samples.length < 5) errors.samples.push(`${status}: ${String(text).slice(0, 200)}`);
}

// --- HTTP ------------------------------------------------------------------------------------

const agent = new http.Agent({
  keepAlive: true,
  maxSockets: Math.max(cfg.concurrency, 64),
  maxFreeSockets: Math.max(cfg.concurrency, 64),
});

function call(method, path, body) {
  return new Promise((resolve, reject) => {
    const payload = JSON.stringify(body);
    const req = http.request(
      {
        agent,
        host: api.hostname,
        port: api.port,
        path,
        method,
        headers: { "content-type": "application/json", "content-length": Buffer.byteLength(payload) },
      },
      (res) => {
        const chunks = [];
        res.on("data", (c) => chunks.push(c));
        res.on("end", () => resolve({ status: res.statusCode, body: Buffer.concat(chunks) }));
      },
    );
    req.on("error", reject);
    req.end(payload);
  });
}

// --- events ----------------------------------------------------------------------------------

const expected = new Map(); // "event:id" -> count written
const received = new Map(); // "event:id" -> count arrived
let expectedTotal = 0;
const bump = (map, key) => map.set(key, (map.get(key) ?? 0) + 1);
const WATCHED = new Set(["task.created", "task.updated", "task.claimed", "task.completed", "message.new"]);

function expect(event, id) {
  if (!cfg.wsUrl || id == null) return;
  bump(expected, `${event}:${id}`);
  expectedTotal++;
}

async function subscribe() {
  const ws = new WebSocket(cfg.wsUrl, { perMessageDeflate: false, maxPayload: 4 << 20 });
  let acked;
  const subscribed = new Promise((resolve) => (acked = resolve));
  ws.on("message", (data) => {
    let msg;
    try {
      msg = JSON.parse(data.toString());
    } catch {
      return;
    }
    if (msg.type === "connected") {
      ws.send(JSON.stringify({ type: "subscribe", channel: "global", id: "g" }));
    } else if (msg.type === "ack" && msg.id === "g") acked();
    else if (msg.event && WATCHED.has(msg.event) && msg.data) {
      const id = msg.data.task_id ?? msg.data.message_id ?? msg.data.id;
      bump(received, `${msg.event}:${id}`);
    }
  });
  await subscribed;
  return ws;
}

function eventCounts() {
  let delivered = 0;
  let lost = 0;
  let duplicated = 0;
  for (const [key, want] of expected) {
    const got = received.get(key) ?? 0;
    delivered += Math.min(got, want);
    if (got < want) lost += want - got;
    if (got > want) duplicated += got - want;
  }
  return { emitted: expectedTotal, delivered, lost, duplicated };
}

// --- the load --------------------------------------------------------------------------------

const bodyOf = (res) => {
  try {
    return JSON.parse(res.body.toString());
  } catch {
    return {};
  }
};
const idOf = (res) => {
  const body = bodyOf(res);
  return body.id ?? body.task?.id ?? null;
};
// The claim's lease: ours answers {task, lease: {id, …}}, the naive reference the row with lease_id.
const leaseOf = (res) => {
  const body = bodyOf(res);
  return body.lease?.id ?? body.lease_id ?? null;
};

async function seed(count) {
  const ids = [];
  let next = 0;
  const worker = async () => {
    while (next < count) {
      const k = next++;
      const res = await call("POST", "/api/tasks", { title: `seed ${k}`, priority: 0 });
      if (res.status !== 201) {
        countError(res.status, res.body.toString());
        continue;
      }
      const id = idOf(res);
      ids.push(id);
      expect("task.created", id);
    }
  };
  await Promise.all(Array.from({ length: 64 }, worker));
  return ids;
}

async function main() {
  const ws = cfg.wsUrl ? await subscribe() : null;
  const seeded = ["patch", "claim", "complete"].includes(cfg.op) ? await seed(cfg.seed) : [];
  if (seeded.length) log(`seeded ${seeded.length} tasks`);
  let k = 0; // requests issued
  let running = true;
  let inWindow = false;
  let windowStart = 0;
  let windowEnd = 0;
  let ok = 0;
  let okInWindow = 0;
  let exhausted = false;
  const lat = new Samples();
  const patchCount = new Map();
  const held = new Map(); // client -> [task id, lease id] claimed and not yet completed

  function request(client) {
    const n = k++;
    switch (cfg.op) {
      case "create":
        return ["POST", "/api/tasks", { title: `bench task ${n}`, description: "rest-write", priority: n % 5 }, "task.created"];
      case "patch": {
        const id = seeded[n % seeded.length];
        const i = (patchCount.get(id) ?? 0) + 1;
        patchCount.set(id, i);
        // Every PATCH changes something: the description, or the priority (1, 2, 3, 4, 1, …).
        const body = i % 2 ? { description: `d${i}` } : { priority: ((i / 2) % 4) + 1 };
        return ["PATCH", `/api/tasks/${id}`, body, "task.updated", id];
      }
      case "message":
        return ["POST", "/api/messages", { from_agent: `c${client}`, to_agent: `a${n % 100}`, content: `m${n}` }, "message.new"];
      case "claim":
        return ["POST", "/api/tasks/claim", { agent_id: `w${client}` }, "task.claimed"];
      case "complete": {
        const claimed = held.get(client);
        if (!claimed) return ["POST", "/api/tasks/claim", { agent_id: `w${client}` }, "task.claimed"];
        const [id, lease] = claimed;
        return ["POST", `/api/tasks/${id}/complete`, { lease_id: lease }, "task.completed", id];
      }
      default:
        throw new Error(`unknown op ${cfg.op}`);
    }
  }

  let closeWindow = null;
  async function client(c) {
    while (running) {
      const [method, path, body, event, knownId] = request(c);
      const sent = nowMs();
      let res;
      try {
        res = await call(method, path, body);
      } catch (err) {
        countError("io", err);
        await sleep(10);
        continue;
      }
      const done = nowMs();
      if (res.status === 204 && (cfg.op === "claim" || cfg.op === "complete")) {
        exhausted = true;
        if (closeWindow) closeWindow();
        return;
      }
      if (res.status >= 300) {
        countError(res.status, res.body.toString());
        if (cfg.op === "complete") held.delete(c); // claim anew rather than repeat a refusal
        continue;
      }
      ok++;
      if (cfg.op === "complete") {
        if (event === "task.claimed") held.set(c, [idOf(res), leaseOf(res)]);
        else held.delete(c);
      }
      expect(event, knownId ?? idOf(res));
      if (inWindow && done <= windowEnd) {
        okInWindow++;
        lat.push(done - sent);
      }
    }
  }

  const clients = Array.from({ length: cfg.concurrency }, (_, c) => client(c));
  const windowDone = new Promise((resolve) => (closeWindow = resolve));
  await Promise.race([sleep(cfg.warmup * 1000), windowDone]);
  if (exhausted) throw new Error("the seeded queue ran out during the warm-up: raise seed");
  windowStart = nowMs();
  windowEnd = Infinity;
  inWindow = true;
  let cpu0 = process.cpuUsage();
  await phase("measure_start");
  await Promise.race([sleep(cfg.duration * 1000), windowDone]);
  windowEnd = nowMs();
  const used = process.cpuUsage(cpu0);
  await phase("measure_end");
  inWindow = false;
  running = false;
  await Promise.all(clients);
  const seconds = (windowEnd - windowStart) / 1000;
  const result = {
    op: cfg.op,
    concurrency: cfg.concurrency,
    window_s: Math.round(seconds * 1000) / 1000,
    requests: okInWindow,
    requests_per_s: Math.round((okInWindow / seconds) * 10) / 10,
    latency_ms: lat.summary(),
    requests_ok_total: ok,
    seeded: seeded.length,
    queue_exhausted: exhausted,
    load_cpu_pct: Math.round(((used.user + used.system) / 1e6 / seconds) * 1000) / 10,
    errors: errors.count,
  };
  if (errors.count) {
    result.error_statuses = errors.statuses;
    result.error_samples = errors.samples;
  }
  if (ws) {
    const deadline = nowMs() + (cfg.drain ?? 10) * 1000;
    while (nowMs() < deadline && eventCounts().lost > 0) await sleep(20);
    await sleep(200); // a duplicate would arrive right after
    result.events = eventCounts();
    ws.close();
  }
  agent.destroy();
  emit({ result });
}

main().then(
  () => process.exit(0),
  (err) => {
    emit({ result: { failed: String(err && err.stack ? err.stack : err).slice(0, 1000), errors: errors.count, error_samples: errors.samples } });
    process.exit(1);
  },
);
