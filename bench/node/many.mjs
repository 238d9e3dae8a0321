// Many-connection generator of the scale scenarios (bench/scale.py). One of several processes.
//
//   node many.mjs '<json config>'
//
// config: {urls: [ws url, ...], count, first (global index of this process's first
// connection), addressBase (second octet of 127.x.y.z source addresses), perAddress, batch}
//
// Connection i goes to urls[i % urls.length], from source address 127.<base+…>.<…>.<…> (so no
// address runs out of source ports), and is idle: it never sends after its subscriptions.
// Commands arrive on stdin, one JSON object per line; each is answered on stdout with
// {"done": cmd, ...} once finished:
//   {"cmd": "open"}                                   open `count` connections
//   {"cmd": "subscribe", "channel": C}                every connection subscribes to C
//   {"cmd": "subscribe", "spread": N}                 connection i: topics/c{(i / urls) % N}
//                                                     (each channel on every url)
//   {"cmd": "unsubscribe", "channel": C}
//   {"cmd": "arm"}                                    reset the arrival counters
//   {"cmd": "arrivals"}                               count, first and last arrival (epoch ms)
//   {"cmd": "latency"}                                p50/p99 of now - data.t (epoch ms)
//   {"cmd": "close"}
// Arrival times are wall-clock milliseconds (performance.timeOrigin + now): the orchestrator
// and every generator are on one machine, so "time until the last receives it" is the latest
// arrival over all processes minus the moment the orchestrator sent the publish.

import { createInterface } from "node:readline";
import { performance } from "node:perf_hooks";
import WebSocket from "ws";

const cfg = JSON.parse(process.argv[2] ?? "{}");
const wallMs = () => performance.timeOrigin + performance.now();
const emit = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
const WS_OPTIONS = {
  perMessageDeflate: false,
  skipUTF8Validation: true,
  handshakeTimeout: 60000,
};

const sockets = [];
let errors = 0;
const errorSamples = [];
const closes = {};
let arrivals = 0;
let firstArrival = null;
let lastArrival = null;
const latencies = [];
let pendingAcks = 0;
let ackWaiter = null;

function noteError(text) {
  errors++;
  if (errorSamples.length < 5) errorSamples.push(String(text).slice(0, 200));
}

function sourceAddress(i) {
  // 127.<base + hi>.<mid>.<lo>: perAddress connections per address.
  const a = Math.floor((cfg.first + i) / (cfg.perAddress ?? 50));
  const lo = (a % 250) + 1;
  const mid = Math.floor(a / 250) % 250;
  return `127.${(cfg.addressBase ?? 10) + Math.floor(a / 62500)}.${mid}.${lo}`;
}

function onMessage(data) {
  // An event carries "event"; acks and errors do not (cheap test before any parsing).
  const text = data.toString();
  if (text.includes('"event"')) {
    const now = wallMs();
    arrivals++;
    if (firstArrival === null) firstArrival = now;
    lastArrival = now;
    const at = text.indexOf('"t":');
    if (at >= 0) latencies.push(now - parseFloat(text.slice(at + 4)));
    return;
  }
  if (text.includes('"ack"')) {
    pendingAcks--;
    if (pendingAcks === 0 && ackWaiter) ackWaiter();
  } else if (text.includes('"error"')) {
    noteError(text);
    pendingAcks--;
    if (pendingAcks === 0 && ackWaiter) ackWaiter();
  }
}

function connect(i) {
  return new Promise((resolve) => {
    const url = cfg.urls[(cfg.first + i) % cfg.urls.length];
    const ws = new WebSocket(url, { ...WS_OPTIONS, localAddress: sourceAddress(i) });
    let ready = false;
    ws.on("message", (data) => {
      if (!ready) {
        ready = true;
        resolve(ws);
        return;
      }
      onMessage(data);
    });
    const fail = (err) => {
      if (!ready) {
        ready = true;
        noteError(err);
        resolve(null);
      }
    };
    ws.on("error", fail);
    ws.on("close", (code) => {
      if (!ws._closing) closes[code] = (closes[code] ?? 0) + 1;
      fail(`closed ${code}`);
    });
  });
}

async function open() {
  const t0 = wallMs();
  const batch = cfg.batch ?? 200;
  for (let start = 0; start < cfg.count; start += batch) {
    const end = Math.min(cfg.count, start + batch);
    const opening = [];
    for (let i = start; i < end; i++) opening.push(connect(i).then((ws) => ws && sockets.push(ws)));
    await Promise.all(opening);
  }
  return { open: sockets.length, open_seconds: (wallMs() - t0) / 1000 };
}

async function requestAll(message) {
  // Pipelined: every connection sends, then wait for every ack (or error).
  const t0 = wallMs();
  const done = new Promise((resolve) => (ackWaiter = resolve));
  pendingAcks = sockets.length;
  sockets.forEach((ws, i) => ws.send(JSON.stringify(message(i))));
  if (pendingAcks > 0) await done;
  ackWaiter = null;
  return { seconds: (wallMs() - t0) / 1000 };
}

function percentile(sorted, q) {
  return sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] : null;
}

const commands = {
  open,
  subscribe: (c) =>
    requestAll((i) => ({
      type: "subscribe",
      channel: c.channel ?? `topics/c${Math.floor((cfg.first + i) / cfg.urls.length) % c.spread}`,
      id: `s${i}`,
    })),
  unsubscribe: (c) => requestAll((i) => ({ type: "unsubscribe", channel: c.channel, id: `u${i}` })),
  arm: async () => {
    arrivals = 0;
    firstArrival = lastArrival = null;
    latencies.length = 0;
    return {};
  },
  arrivals: async () => ({ arrivals, first: firstArrival, last: lastArrival }),
  latency: async () => {
    const sorted = Float64Array.from(latencies).sort();
    return { n: sorted.length, p50: percentile(sorted, 0.5), p99: percentile(sorted, 0.99) };
  },
  close: async () => {
    for (const ws of sockets) {
      ws._closing = true;
      ws.terminate();
    }
    return {};
  },
};

createInterface({ input: process.stdin }).on("line", async (line) => {
  const command = JSON.parse(line);
  const run = commands[command.cmd];
  const result = run ? await run(command) : { error: `unknown command ${command.cmd}` };
  emit({ done: command.cmd, ...result, errors, error_samples: errorSamples, closes });
  if (command.cmd === "close") process.exit(0);
});
emit({ ready: true });
