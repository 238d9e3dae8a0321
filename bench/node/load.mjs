// Load generator of the benchmark suite (bench/). One process, one scenario, one result.
//
//   node load.mjs '<json config>'
//
// It talks to the orchestrator (bench/loadgen.py) over stdio, one JSON object per line:
//   stdout  {"phase": NAME, ...}   a barrier: the orchestrator samples the server's /proc and
//                                  answers with one line on stdin before we go on
//           {"result": {...}}      the scenario's figures, last line
//           {"log": "..."}         progress, for the orchestrator's stderr
//
// Latency is measured inside this process: a publisher embeds {"t": ns, "seq": n} in `data`
// (t on this process's monotonic clock) and every subscriber computes now - t on arrival.
// Event frames are read without JSON.parse (a native Buffer.indexOf for "t" and "seq"), so the
// generator stays far below the server's cost per message; its own CPU is reported too.

import http from "node:http";
import { createInterface } from "node:readline";
import { performance } from "node:perf_hooks";
import WebSocket from "ws";

const cfg = JSON.parse(process.argv[2] ?? "{}");

// --- stdio protocol with the orchestrator -------------------------------------------------------

const stdinLines = [];
let stdinWaiter = null;
createInterface({ input: process.stdin }).on("line", (line) => {
  if (stdinWaiter) {
    const waiter = stdinWaiter;
    stdinWaiter = null;
    waiter(line);
  } else stdinLines.push(line);
});

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

function log(msg) {
  emit({ log: msg });
}

function phase(name, extra = {}) {
  emit({ phase: name, ...extra });
  return new Promise((resolve) => {
    if (stdinLines.length) resolve(stdinLines.shift());
    else stdinWaiter = resolve;
  });
}

// --- clocks and statistics -------------------------------------------------------------------

const nowNs = () => Math.round(performance.now() * 1e6);
const nowMs = () => performance.now();
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// A growable array of latency samples in milliseconds.
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

function cpuPercent(start, startWall) {
  const used = process.cpuUsage(start);
  const wall = (nowMs() - startWall) / 1000;
  return wall > 0 ? Math.round(((used.user + used.system) / 1e6 / wall) * 1000) / 10 : null;
}

// --- frames ------------------------------------------------------------------------------------

const EVENT_PREFIX = Buffer.from('{"channel"');
const T_KEY = Buffer.from('"t":');
const SEQ_KEY = Buffer.from('"seq":');

function isEvent(buf) {
  return buf.length > EVENT_PREFIX.length && buf.compare(EVENT_PREFIX, 0, EVENT_PREFIX.length, 0, EVENT_PREFIX.length) === 0;
}

// The non-negative integer after `key` in `buf`, or -1.
function intAfter(buf, key, from = 0) {
  let i = buf.indexOf(key, from);
  if (i < 0) return -1;
  i += key.length;
  let v = 0;
  let digits = 0;
  for (; i < buf.length; i++) {
    const c = buf[i];
    if (c < 48 || c > 57) break;
    v = v * 10 + (c - 48);
    digits++;
  }
  return digits ? v : -1;
}

const WS_OPTIONS = {
  perMessageDeflate: false, // neither server compresses: measure framing, not zlib
  skipUTF8Validation: true,
  maxPayload: 4 * 1024 * 1024,
  handshakeTimeout: 30000,
};

const counters = { errors: 0, errorSamples: [], closes: {}, connectFailures: 0 };

function countError(text) {
  counters.errors++;
  if (counters.errorSamples.length < 5) counters.errorSamples.push(String(text).slice(0, 200));
}

// Open one connection; resolve once the server's "connected" frame arrived.
function connect(url, onMessage) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, WS_OPTIONS);
    let ready = false;
    ws.on("message", (data, isBinary) => {
      if (!ready) {
        ready = true;
        resolve(ws);
        return;
      }
      onMessage(data, isBinary);
    });
    ws.on("error", (err) => {
      if (!ready) {
        ready = true;
        counters.connectFailures++;
        reject(err);
      }
    });
    ws.on("close", (code) => {
      if (!ws._benchClosing) counters.closes[code] = (counters.closes[code] ?? 0) + 1;
      if (!ready) {
        ready = true;
        counters.connectFailures++;
        reject(new Error(`closed ${code} before connected`));
      }
    });
  });
}

// A request/ack exchange on an open connection (only used outside the hot path).
function request(ws, pending, frame) {
  return new Promise((resolve) => {
    pending.set(frame.id, resolve);
    ws.send(JSON.stringify(frame));
  });
}

async function inBatches(count, batch, open) {
  const out = new Array(count);
  for (let start = 0; start < count; start += batch) {
    const end = Math.min(count, start + batch);
    const opened = [];
    for (let i = start; i < end; i++) opened.push(open(i).then((v) => (out[i] = v)));
    await Promise.all(opened);
  }
  return out;
}

async function closeAll(sockets) {
  await Promise.all(
    sockets.filter(Boolean).map(
      (ws) =>
        new Promise((resolve) => {
          ws._benchClosing = true;
          if (ws.readyState === WebSocket.CLOSED) return resolve();
          const timer = setTimeout(() => {
            ws.terminate();
            resolve();
          }, 3000);
          ws.once("close", () => {
            clearTimeout(timer);
            resolve();
          });
          ws.close(1000);
        }),
    ),
  );
}

// Parse a control frame (ack, error, connected, pong) the slow, general way.
function control(data) {
  try {
    return JSON.parse(data.toString());
  } catch {
    countError(`unparsable frame ${data.toString().slice(0, 80)}`);
    return null;
  }
}

// --- scenario: fan-out on one channel ----------------------------------------------------------
//
// `subscribers` connections on one channel; one more connection publishes, either at a fixed
// `rate` (events/s) or closed-loop (`rate` 0): at most `window` publications awaiting their ack,
// and never more than `maxLag` events ahead of the slowest subscriber (so a load generator that
// cannot keep up throttles the publisher instead of drowning the server in buffered frames).

async function fanout() {
  const n = cfg.subscribers;
  const channel = cfg.channel ?? "topics/bench-fanout";
  const last = new Float64Array(n).fill(-1);
  const winRecv = new Float64Array(n);
  let dup = 0;
  let ooo = 0;
  let seqStart = Infinity; // first seq published inside the measurement window
  let measuring = false;
  let windowArrivals = 0;
  let totalArrivals = 0;
  const lat = new Samples();
  let gated = false;
  let gateTick = 0;

  const subs = await inBatches(n, cfg.connectBatch ?? 200, async (i) => {
    const pending = new Map();
    const ws = await connect(cfg.url, (data) => {
      if (isEvent(data)) {
        const seq = intAfter(data, SEQ_KEY);
        const t = intAfter(data, T_KEY);
        totalArrivals++;
        if (measuring) windowArrivals++;
        const prev = last[i];
        if (seq === prev) dup++;
        else if (seq < prev) ooo++;
        else last[i] = seq;
        if (seq >= seqStart) {
          winRecv[i]++;
          lat.push((nowNs() - t) / 1e6);
        }
        if (gated && ++gateTick >= n) {
          gateTick = 0;
          pump();
        }
        return;
      }
      const msg = control(data);
      if (msg && msg.type === "ack" && pending.has(msg.id)) {
        pending.get(msg.id)(msg);
        pending.delete(msg.id);
      } else if (msg && msg.error) countError(msg.error + " " + msg.code);
    });
    const ack = await request(ws, pending, { type: "subscribe", channel, id: `sub-${i}` });
    if (!ack.success) throw new Error("subscribe refused");
    return ws;
  });
  log(`${n} subscribers on ${channel}`);

  let nextSeq = 0;
  let inflight = 0;
  let stopped = false;
  let minCache = -1;
  const window = cfg.window ?? 16;
  const maxLag = cfg.maxLag ?? 500;

  function minLast() {
    let m = Infinity;
    for (let i = 0; i < n; i++) if (last[i] < m) m = last[i];
    return m;
  }

  const pub = await connect(cfg.url, (data) => {
    const msg = control(data);
    if (!msg) return;
    if (msg.type === "ack") {
      inflight--;
      if (!cfg.rate) pump();
    } else if (msg.error) {
      countError(msg.error + " " + msg.code);
      inflight--;
      if (!cfg.rate) pump();
    }
  });

  function publishOne() {
    const seq = nextSeq++;
    inflight++;
    pub.send(
      `{"type":"publish","channel":"${channel}","event":"bench.tick","data":{"t":${nowNs()},"seq":${seq}},"id":${seq}}`,
    );
  }

  function pump() {
    while (!stopped && inflight < window) {
      if (nextSeq - minCache > maxLag) {
        minCache = minLast();
        if (nextSeq - minCache > maxLag) {
          gated = true;
          return;
        }
      }
      gated = false;
      publishOne();
    }
  }

  let rateTimer = null;
  function startRate() {
    const interval = 1000 / cfg.rate;
    const t0 = nowMs();
    let k = 0;
    const tick = () => {
      if (stopped) return;
      publishOne();
      k++;
      rateTimer = setTimeout(tick, Math.max(0, t0 + k * interval - nowMs()));
    };
    tick();
  }

  if (cfg.rate) startRate();
  else pump();
  await sleep((cfg.warmup ?? 1) * 1000);
  await phase("measure_start");
  seqStart = nextSeq;
  const cpu0 = process.cpuUsage();
  const t0 = nowMs();
  measuring = true;
  await sleep(cfg.duration * 1000);
  measuring = false;
  stopped = true;
  if (rateTimer) clearTimeout(rateTimer);
  const elapsed = (nowMs() - t0) / 1000;
  const loadCpu = cpuPercent(cpu0, t0);
  const seqEnd = nextSeq;
  await phase("measure_end");

  // Drain: everything published in the window should reach every subscriber.
  const expectedEach = seqEnd - seqStart;
  const deadline = nowMs() + (cfg.drain ?? 5) * 1000;
  while (nowMs() < deadline) {
    let done = true;
    for (let i = 0; i < n; i++) if (winRecv[i] < expectedEach && subs[i].readyState === WebSocket.OPEN) done = false;
    if (done) break;
    await sleep(20);
  }
  let lost = 0;
  for (let i = 0; i < n; i++) lost += Math.max(0, expectedEach - winRecv[i]);
  await closeAll([...subs, pub]);
  return {
    duration_s: elapsed,
    published: expectedEach,
    publish_per_s: expectedEach / elapsed,
    delivered: windowArrivals,
    delivered_per_s: windowArrivals / elapsed,
    latency_ms: lat.summary(),
    lost,
    duplicated: dup,
    out_of_order: ooo,
    load_cpu_pct: loadCpu,
    total_arrivals: totalArrivals,
  };
}

// --- scenario: many channels -------------------------------------------------------------------
//
// `clients` connections, client i subscribed to topics/c<i> and publishing to it closed-loop
// (at most `window` publications awaiting their ack), so every event has one subscriber.

async function channels() {
  const n = cfg.clients;
  const window = cfg.window ?? 1;
  const nextSeq = new Float64Array(n);
  const inflight = new Float64Array(n);
  const last = new Float64Array(n).fill(-1);
  const seqStart = new Float64Array(n).fill(Infinity);
  const winRecv = new Float64Array(n);
  const lat = new Samples();
  let dup = 0;
  let ooo = 0;
  let measuring = false;
  let windowArrivals = 0;
  let stopped = false;
  const sockets = new Array(n);
  const names = Array.from({ length: n }, (_, i) => `topics/c${i}`);

  function pump(i) {
    const ws = sockets[i];
    while (!stopped && inflight[i] < window) {
      const seq = nextSeq[i]++;
      inflight[i]++;
      ws.send(
        `{"type":"publish","channel":"${names[i]}","event":"bench.tick","data":{"t":${nowNs()},"seq":${seq}},"id":${seq}}`,
      );
    }
  }

  await inBatches(n, cfg.connectBatch ?? 200, async (i) => {
    const pending = new Map();
    const ws = await connect(cfg.url, (data) => {
      if (isEvent(data)) {
        const seq = intAfter(data, SEQ_KEY);
        const t = intAfter(data, T_KEY);
        if (measuring) windowArrivals++;
        const prev = last[i];
        if (seq === prev) dup++;
        else if (seq < prev) ooo++;
        else last[i] = seq;
        if (seq >= seqStart[i]) {
          winRecv[i]++;
          lat.push((nowNs() - t) / 1e6);
        }
        return;
      }
      const msg = control(data);
      if (!msg) return;
      if (msg.type === "ack" && pending.has(msg.id)) {
        pending.get(msg.id)(msg);
        pending.delete(msg.id);
      } else if (msg.type === "ack" || msg.error) {
        if (msg.error) countError(msg.error + " " + msg.code);
        inflight[i]--;
        pump(i);
      }
    });
    sockets[i] = ws;
    const ack = await request(ws, pending, { type: "subscribe", channel: names[i], id: `sub-${i}` });
    if (!ack.success) throw new Error("subscribe refused");
    return ws;
  });
  log(`${n} clients, one channel each`);

  for (let i = 0; i < n; i++) pump(i);
  await sleep((cfg.warmup ?? 1) * 1000);
  await phase("measure_start");
  for (let i = 0; i < n; i++) seqStart[i] = nextSeq[i];
  const cpu0 = process.cpuUsage();
  const t0 = nowMs();
  measuring = true;
  await sleep(cfg.duration * 1000);
  measuring = false;
  stopped = true;
  const elapsed = (nowMs() - t0) / 1000;
  const loadCpu = cpuPercent(cpu0, t0);
  const seqEnd = Float64Array.from(nextSeq);
  await phase("measure_end");

  const deadline = nowMs() + (cfg.drain ?? 5) * 1000;
  let published = 0;
  for (let i = 0; i < n; i++) published += seqEnd[i] - seqStart[i];
  while (nowMs() < deadline) {
    let done = true;
    for (let i = 0; i < n; i++) if (winRecv[i] < seqEnd[i] - seqStart[i]) done = false;
    if (done) break;
    await sleep(20);
  }
  let lost = 0;
  for (let i = 0; i < n; i++) lost += Math.max(0, seqEnd[i] - seqStart[i] - winRecv[i]);
  await closeAll(sockets);
  return {
    duration_s: elapsed,
    published,
    publish_per_s: published / elapsed,
    delivered: windowArrivals,
    delivered_per_s: windowArrivals / elapsed,
    latency_ms: lat.summary(),
    lost,
    duplicated: dup,
    out_of_order: ooo,
    load_cpu_pct: loadCpu,
  };
}

// --- scenario: idle connections ---------------------------------------------------------------

async function idle() {
  // One connection first, so what the server allocates once (buffers, caches) is not
  // counted per connection.
  const warm = await connect(cfg.url, () => {});
  await closeAll([warm]);
  await sleep(500);
  await phase("before");
  const t0 = nowMs();
  const sockets = [];
  await inBatches(cfg.connections, cfg.connectBatch ?? 250, async () => {
    try {
      sockets.push(await connect(cfg.url, () => {}));
    } catch (err) {
      if (counters.errorSamples.length < 5) counters.errorSamples.push(String(err).slice(0, 200));
    }
  });
  const openSeconds = (nowMs() - t0) / 1000;
  log(`${sockets.length} connections open in ${openSeconds.toFixed(1)} s`);
  await sleep((cfg.settle ?? 2) * 1000);
  const stillOpen = sockets.filter((ws) => ws.readyState === WebSocket.OPEN).length;
  await phase("open", { open: stillOpen });
  await closeAll(sockets);
  return {
    connections: cfg.connections,
    open: stillOpen,
    open_seconds: openSeconds,
    open_per_s: sockets.length / openSeconds,
    lost: 0,
    duplicated: 0,
    out_of_order: 0,
  };
}

// --- scenario: connect storm ------------------------------------------------------------------
//
// `clients` connections started at once; each subscribes as soon as the server says connected.
// Time to subscribed = from the connection's start to its subscribe ack.

async function stormRound(lat) {
  const n = cfg.clients;
  const sockets = [];
  const t0 = nowMs();
  let lastAck = t0;
  let failed = 0;
  await Promise.all(
    Array.from({ length: n }, (_, i) => {
      const start = nowMs();
      return new Promise((resolve) => {
        const ws = new WebSocket(cfg.url, WS_OPTIONS);
        sockets.push(ws);
        let state = 0;
        const fail = () => {
          if (state < 2) {
            state = 2;
            failed++;
            resolve();
          }
        };
        ws.on("message", (data) => {
          if (state === 0) {
            state = 1;
            ws.send(`{"type":"subscribe","channel":"topics/storm","id":"s${i}"}`);
            return;
          }
          const msg = control(data);
          if (state === 1 && msg && msg.type === "ack") {
            state = 2;
            const now = nowMs();
            lat.push(now - start);
            if (now > lastAck) lastAck = now;
            resolve();
          } else if (msg && msg.error) {
            countError(msg.error + " " + msg.code);
            fail();
          }
        });
        ws.on("error", fail);
        ws.on("close", fail);
      });
    }),
  );
  const seconds = (lastAck - t0) / 1000;
  await closeAll(sockets);
  return { seconds, ok: n - failed, failed };
}

async function storm() {
  const lat = new Samples();
  const rounds = [];
  await phase("measure_start");
  const cpu0 = process.cpuUsage();
  const t0 = nowMs();
  let busy = 0;
  for (let r = 0; r < (cfg.rounds ?? 1); r++) {
    const round = await stormRound(lat);
    busy += round.seconds;
    rounds.push({ ...round, conn_per_s: round.ok / round.seconds });
    await sleep(300);
  }
  const loadCpu = cpuPercent(cpu0, t0);
  await phase("measure_end");
  const rates = rounds.map((r) => r.conn_per_s).sort((a, b) => a - b);
  const failed = rounds.reduce((s, r) => s + r.failed, 0);
  return {
    clients: cfg.clients,
    rounds,
    conn_per_s: rates[Math.floor(rates.length / 2)],
    latency_ms: lat.summary(),
    busy_seconds: busy,
    lost: failed,
    duplicated: 0,
    out_of_order: 0,
    load_cpu_pct: loadCpu,
  };
}

// --- scenario: REST → WebSocket ---------------------------------------------------------------
//
// One subscriber on `global`; tasks created one at a time with POST /api/tasks on an otherwise
// idle service; latency from just before the request to the arrival of its task.created.

async function rest() {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const api = new URL(cfg.apiUrl);
  const arrivals = new Map(); // task id or title -> arrival time (ms)
  const waiters = new Map();
  const seen = (key, when) => {
    if (key == null) return;
    arrivals.set(String(key), when);
    const waiter = waiters.get(String(key));
    if (waiter) waiter();
  };
  const pending = new Map();
  const ws = await connect(cfg.url, (data) => {
    const when = nowMs();
    const msg = control(data);
    if (!msg) return;
    if (msg.type === "ack" && pending.has(msg.id)) {
      pending.get(msg.id)(msg);
      pending.delete(msg.id);
    } else if (msg.event === "task.created" && msg.data) {
      seen(msg.data.task_id ?? msg.data.id, when);
      seen(msg.data.title, when);
    }
  });
  await request(ws, pending, { type: "subscribe", channel: "global", id: "sub-global" });

  const post = (body) =>
    new Promise((resolve, reject) => {
      const payload = JSON.stringify(body);
      const req = http.request(
        {
          agent,
          host: api.hostname,
          port: api.port,
          path: "/api/tasks",
          method: "POST",
          headers: { "content-type": "application/json", "content-length": Buffer.byteLength(payload) },
        },
        (res) => {
          const chunks = [];
          res.on("data", (c) => chunks.push(c));
          res.on("end", () => resolve({ status: res.statusCode, body: Buffer.concat(chunks).toString() }));
        },
      );
      req.on("error", reject);
      req.end(payload);
    });

  const waitFor = (keys, timeoutMs) =>
    new Promise((resolve) => {
      const found = () => keys.find((k) => k != null && arrivals.has(String(k)));
      if (found() !== undefined) return resolve(arrivals.get(String(found())));
      const timer = setTimeout(() => {
        for (const k of keys) waiters.delete(String(k));
        resolve(null);
      }, timeoutMs);
      for (const k of keys) {
        if (k == null) continue;
        waiters.set(String(k), () => {
          clearTimeout(timer);
          for (const kk of keys) waiters.delete(String(kk));
          resolve(arrivals.get(String(k)));
        });
      }
    });

  const lat = new Samples();
  let missing = 0;
  const run = `${process.pid}-${Date.now()}`;
  const total = (cfg.warmupRequests ?? 5) + cfg.requests;
  let cpu0 = null;
  let t0 = 0;
  for (let k = 0; k < total; k++) {
    if (k === (cfg.warmupRequests ?? 5)) {
      await phase("measure_start");
      cpu0 = process.cpuUsage();
      t0 = nowMs();
    }
    const title = `bench ${run} ${k}`;
    const sent = nowMs();
    let res;
    try {
      res = await post({ title });
    } catch (err) {
      await closeAll([ws]);
      return { skipped: `API not reachable: ${err}` };
    }
    if (res.status === 404 || res.status === 405) {
      await closeAll([ws]);
      return { skipped: `API not available (POST /api/tasks answered ${res.status})` };
    }
    if (res.status >= 300) {
      countError(`POST /api/tasks ${res.status}: ${res.body.slice(0, 150)}`);
      if (k === 0) {
        await closeAll([ws]);
        return { skipped: `API not usable (POST /api/tasks answered ${res.status})`, error_samples: counters.errorSamples };
      }
      continue;
    }
    let id = null;
    try {
      const body = JSON.parse(res.body);
      id = body.id ?? body.task_id ?? null;
    } catch {
      /* the title still identifies it */
    }
    const arrived = await waitFor([id, title], 2000);
    if (arrived === null) {
      if (k >= (cfg.warmupRequests ?? 5)) missing++;
    } else if (k >= (cfg.warmupRequests ?? 5)) lat.push(arrived - sent);
    await sleep(cfg.gapMs ?? 20);
  }
  const elapsed = (nowMs() - t0) / 1000;
  const loadCpu = cpuPercent(cpu0, t0);
  await phase("measure_end");
  await closeAll([ws]);
  agent.destroy();
  const latency = lat.summary();
  return {
    duration_s: elapsed,
    requests: cfg.requests,
    delivered: latency.n,
    delivered_per_s: latency.n / elapsed,
    latency_ms: latency,
    lost: missing,
    duplicated: 0,
    out_of_order: 0,
    load_cpu_pct: loadCpu,
  };
}

// --- main --------------------------------------------------------------------------------------

const SCENARIOS = { fanout, channels, idle, storm, rest };

async function main() {
  const run = SCENARIOS[cfg.mode];
  if (!run) throw new Error(`unknown mode ${cfg.mode}`);
  const result = await run();
  result.errors = counters.errors;
  if (counters.errorSamples.length) result.error_samples = counters.errorSamples;
  if (Object.keys(counters.closes).length) result.unexpected_closes = counters.closes;
  if (counters.connectFailures) result.connect_failures = counters.connectFailures;
  emit({ result });
}

main().then(
  () => process.exit(0),
  (err) => {
    emit({ result: { failed: String(err && err.stack ? err.stack : err).slice(0, 1000), ...counters } });
    process.exit(1);
  },
);
