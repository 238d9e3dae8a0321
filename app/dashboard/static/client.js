/**
 * context-manager browser client: one dependency-free ES module.
 *
 *   import { RealtimeClient } from "http://127.0.0.1:3848/static/client.js";
 *   const client = new RealtimeClient("ws://127.0.0.1:3849/ws", { agentId: "ui" });
 *   client.on("state", ({ state }) => console.log(state));
 *   client.listen({ channel: "global", event: "task.*" }, (e) => console.log(e.event, e.data));
 *   client.connect();
 *   await client.subscribe("global");
 *   await client.publish("topics/deploys", "deploy.started", { sha: "abc" });
 *
 * What it does for you:
 *   - request/ack: subscribe, unsubscribe, publish and auth return promises that resolve with
 *     the server's ack (matched by `id`) and reject with a RealtimeError on its error frame;
 *   - reconnect with exponential backoff and jitter, then resubscribe every channel;
 *   - the seed's keepalive: {"type":"ping"} every 25 s; no answer within `pongTimeout`
 *     counts as a dead connection and triggers a reconnect;
 *   - remembers the last `offset`/`epoch` seen per channel and sends it as `since` when it
 *     resubscribes (servers that keep history replay what was missed; others ignore it);
 *   - a "recovery" event whenever that did not work — the resubscribe's ack says
 *     recovered:false, or the server sends {"type":"unrecovered"} (it lost publications of the
 *     channel, e.g. Redis restarted without persistence): reload that channel's state. After
 *     the notice the position is the server's, so a later reconnect recovers from there;
 *   - connection states: connecting → connected → reconnecting … → connected, or offline
 *     (gave up: a "do not reconnect" close code, retries exhausted, or the browser is offline),
 *     or closed (you called close()).
 */

export const ConnectionState = Object.freeze({
  IDLE: "idle",
  CONNECTING: "connecting",
  CONNECTED: "connected",
  RECONNECTING: "reconnecting",
  OFFLINE: "offline",
  CLOSED: "closed",
});

/** Close codes after which reconnecting without changing something is pointless. */
export function shouldReconnect(code) {
  if (code === 1000 || code === 1008 || code === 1009) return false;
  // 3500–3999: "do not reconnect" (bad token, forbidden, connection limit).
  return !(code >= 3500 && code <= 3999);
}

/** An error frame from the server, or a local failure of a request. */
export class RealtimeError extends Error {
  constructor(code, message, frame = null) {
    super(message);
    this.name = "RealtimeError";
    this.code = code;
    this.frame = frame;
  }
}

/** Compile a glob such as "task.*" or "*.failed" (comma-separated alternatives) to a test. */
export function eventMatcher(pattern) {
  if (!pattern || pattern === "*") return () => true;
  const parts = String(pattern)
    .split(",")
    .map((p) => p.trim())
    .filter(Boolean)
    .map((p) => {
      const escaped = p.replace(/[.+^${}()|[\]\\]/g, "\\$&").replace(/\*/g, ".*").replace(/\?/g, ".");
      return new RegExp(`^${escaped}$`);
    });
  if (!parts.length) return () => true;
  return (name) => parts.some((re) => re.test(name));
}

const DEFAULTS = {
  agentId: null,
  sessionId: null,
  token: null,
  pingInterval: 25_000,
  pongTimeout: 10_000,
  requestTimeout: 10_000,
  backoff: { initial: 500, max: 10_000, factor: 2, jitter: 0.5 },
  maxRetries: Infinity,
  recover: true,
  maxQueued: 1_000,
  WebSocket: globalThis.WebSocket,
};

/** The delay before reconnect attempt `attempt` (0-based): exponential, capped, jittered. */
export function backoffDelay(attempt, { initial, max, factor, jitter }, random = Math.random) {
  const base = Math.min(max, initial * factor ** attempt);
  // "Equal jitter": never less than half the base delay, so a crowd of clients spreads out
  // without any of them hammering the server right after it comes back.
  return Math.round(base * (1 - jitter * random()));
}

export class RealtimeClient {
  constructor(url, options = {}) {
    this.url = url;
    this.options = { ...DEFAULTS, ...options, backoff: { ...DEFAULTS.backoff, ...(options.backoff || {}) } };
    this.state = ConnectionState.IDLE;
    this.clientId = null;
    this.attempt = 0;
    this.lastError = null;
    this._ws = null;
    this._seq = 0;
    this._idPrefix = `c${Math.random().toString(36).slice(2, 8)}-`;
    this._listeners = new Map();
    this._pending = new Map(); // id → {resolve, reject, timer, message}
    this._outbox = []; // frames waiting for a connection
    this._subscriptions = new Map(); // channel → {confirmed, waiters: [{resolve, reject, timer}]}
    this._positions = new Map(); // channel → {offset, epoch}
    this._retryTimer = null;
    this._pingTimer = null;
    this._pongTimer = null;
    this._onOnline = () => {
      if (this.state === ConnectionState.OFFLINE && this._wantOpen) this._reconnectNow();
      else if (this.state === ConnectionState.RECONNECTING) this._reconnectNow();
    };
    this._wantOpen = false;
  }

  // --- events ------------------------------------------------------------------------------

  /**
   * Listen to "state" ({state, previous, attempt, delay}), "connected" ({clientId}),
   * "reconnecting" ({attempt, delay, code}), "offline" ({reason, code}), "event" (frame),
   * "error" (error frame without a request id), "recovery" ({channel, recovered, reason,
   * offset, epoch, ack}: reason "resubscribe", or the server's "new_epoch" / "gap"; on
   * recovered:false reload the channel's state), "frame" (every decoded frame).
   * Returns a function that removes the listener.
   */
  on(type, fn) {
    if (!this._listeners.has(type)) this._listeners.set(type, new Set());
    this._listeners.get(type).add(fn);
    return () => this._listeners.get(type)?.delete(fn);
  }

  /** Call `fn(event)` for events matching {channel?, event? (glob)}; returns an unlisten function. */
  listen({ channel = null, event = null } = {}, fn) {
    const matches = eventMatcher(event);
    return this.on("event", (frame) => {
      if ((channel === null || frame.channel === channel) && matches(frame.event)) fn(frame);
    });
  }

  _emit(type, detail) {
    for (const fn of [...(this._listeners.get(type) || [])]) {
      try {
        fn(detail);
      } catch (err) {
        // A listener's bug must not break the connection or the other listeners.
        console.error(`context-manager client: ${type} listener failed`, err);
      }
    }
  }

  _setState(state, extra = {}) {
    if (this.state === state && state !== ConnectionState.RECONNECTING) return;
    const previous = this.state;
    this.state = state;
    this._emit("state", { state, previous, attempt: this.attempt, ...extra });
    if (state === ConnectionState.RECONNECTING || state === ConnectionState.OFFLINE) {
      this._emit(state, { attempt: this.attempt, ...extra });
    }
  }

  get connected() {
    return this.state === ConnectionState.CONNECTED;
  }

  // --- lifecycle ---------------------------------------------------------------------------

  /** Open the connection (and keep it open until close()). */
  connect() {
    this._wantOpen = true;
    if (typeof window !== "undefined") window.addEventListener("online", this._onOnline);
    if (this._ws) return this;
    this._open(ConnectionState.CONNECTING);
    return this;
  }

  /** Close for good: no reconnect; pending requests reject with CLOSED. */
  close(code = 1000, reason = "client closed") {
    this._wantOpen = false;
    if (typeof window !== "undefined") window.removeEventListener("online", this._onOnline);
    clearTimeout(this._retryTimer);
    this._stopKeepalive();
    const ws = this._ws;
    this._ws = null;
    if (ws) {
      this._detach(ws);
      try {
        ws.close(code, reason);
      } catch {
        /* already closed */
      }
    }
    this._failPending("CLOSED", "client closed");
    for (const sub of this._subscriptions.values()) this._rejectWaiters(sub, "CLOSED", "client closed");
    this._setState(ConnectionState.CLOSED);
  }

  /** Resolve once connected (or reject after `timeout` ms). */
  ready(timeout = this.options.requestTimeout) {
    if (this.connected) return Promise.resolve(this);
    return new Promise((resolve, reject) => {
      const off = this.on("connected", () => {
        clearTimeout(timer);
        off();
        resolve(this);
      });
      const timer = setTimeout(() => {
        off();
        reject(new RealtimeError("TIMEOUT", "not connected in time"));
      }, timeout);
    });
  }

  _buildUrl() {
    const url = new URL(this.url, typeof location !== "undefined" ? location.href : undefined);
    const { agentId, sessionId, token } = this.options;
    if (agentId) url.searchParams.set("agent_id", agentId);
    if (sessionId) url.searchParams.set("session_id", sessionId);
    if (token) url.searchParams.set("token", token);
    return url.toString();
  }

  _open(state) {
    this._setState(state);
    let ws;
    try {
      ws = new this.options.WebSocket(this._buildUrl());
    } catch (err) {
      this.lastError = err;
      this._scheduleReconnect(null, String(err));
      return;
    }
    this._ws = ws;
    ws.onmessage = (msg) => this._onMessage(msg);
    ws.onclose = (ev) => this._onClose(ws, ev.code, ev.reason);
    ws.onerror = () => {
      /* onclose follows with the code */
    };
  }

  _detach(ws) {
    ws.onmessage = ws.onclose = ws.onerror = ws.onopen = null;
  }

  _onClose(ws, code, reason) {
    if (ws !== this._ws) return;
    this._ws = null;
    this._detach(ws);
    this._stopKeepalive();
    this.clientId = null;
    this._connectionLost();
    if (!this._wantOpen) return;
    if (!shouldReconnect(code)) {
      this._setState(ConnectionState.OFFLINE, { reason: reason || `closed with ${code}`, code });
      this._failWaiters("OFFLINE", reason || `closed with ${code}`);
      return;
    }
    this._scheduleReconnect(code, reason);
  }

  /** What a dropped connection means for requests in flight. */
  _connectionLost() {
    // A publish may or may not have reached the server: say so and let the caller decide.
    this._failPending("DISCONNECTED", "connection lost before the server answered", (p) => p.message.type !== "subscribe");
    // Subscriptions are re-sent on reconnect; their waiters resolve with that ack.
    for (const [id, p] of this._pending) {
      if (p.message.type === "subscribe") {
        clearTimeout(p.timer);
        this._pending.delete(id);
      }
    }
    for (const sub of this._subscriptions.values()) {
      sub.confirmed = false;
      sub.inflight = false;
    }
  }

  _scheduleReconnect(code, reason) {
    if (this.attempt >= this.options.maxRetries) {
      this._setState(ConnectionState.OFFLINE, { reason: "gave up reconnecting", code });
      this._failWaiters("OFFLINE", "gave up reconnecting");
      return;
    }
    if (typeof navigator !== "undefined" && navigator.onLine === false) {
      // Retrying while the browser knows it has no network only burns battery; "online" resumes.
      this._setState(ConnectionState.OFFLINE, { reason: "browser offline", code });
      return;
    }
    // A draining server names each client's own delay ("reconnect:<ms>", 1012) so a restarted
    // node's clients come back spread out; otherwise: backoff.
    const hint = /^reconnect:(\d{1,7})$/.exec(reason || "");
    const delay = hint ? Math.min(Number(hint[1]), this.options.backoff.max) : backoffDelay(this.attempt, this.options.backoff);
    this.attempt += 1;
    this._setState(ConnectionState.RECONNECTING, { delay, code, reason });
    clearTimeout(this._retryTimer);
    this._retryTimer = setTimeout(() => this._open(ConnectionState.RECONNECTING), delay);
  }

  _reconnectNow() {
    if (this._ws) return;
    clearTimeout(this._retryTimer);
    this._open(ConnectionState.RECONNECTING);
  }

  // --- frames ------------------------------------------------------------------------------

  _onMessage(msg) {
    let frame;
    try {
      frame = JSON.parse(msg.data);
    } catch {
      return;
    }
    clearTimeout(this._pongTimer);
    this._pongTimer = null;
    this._emit("frame", frame);
    if (frame.type === "connected") return this._onConnected(frame);
    if (frame.type === "ack") return this._settle(frame.id, frame, null);
    if (frame.type === "pong") return;
    if (frame.type === "unrecovered") return this._onUnrecovered(frame);
    if (frame.error !== undefined && frame.code !== undefined) {
      const err = new RealtimeError(frame.code, frame.error, frame);
      if (frame.id !== undefined && this._pending.has(frame.id)) return this._settle(frame.id, null, err);
      this._emit("error", frame);
      return;
    }
    if (typeof frame.event === "string" && typeof frame.channel === "string") {
      if (typeof frame.offset === "number") {
        const seen = this._positions.get(frame.channel);
        // Already delivered (a replay overlapping what arrived live): drop it, once is enough.
        if (seen && seen.epoch === (frame.epoch ?? null) && frame.offset <= seen.offset) return;
        this._positions.set(frame.channel, { offset: frame.offset, epoch: frame.epoch ?? null });
      }
      this._emit("event", frame);
    }
  }

  /** The server lost publications of a channel up to (offset, epoch); events go on from there. */
  _onUnrecovered(frame) {
    const { channel, offset, epoch } = frame;
    if (!this._subscriptions.has(channel) || typeof offset !== "number" || typeof epoch !== "string") return;
    // Even behind our position in the same epoch: the stream was rolled back, and the offsets
    // that follow are new publications, not repeats to drop.
    this._positions.set(channel, { offset, epoch });
    this._emit("recovery", { channel, recovered: false, reason: frame.reason || "", offset, epoch, ack: frame });
  }

  _onConnected(frame) {
    this.clientId = frame.client_id;
    this.attempt = 0;
    this.lastError = null;
    this._setState(ConnectionState.CONNECTED);
    this._startKeepalive();
    // Resubscribe before anything queued goes out, so a queued publish sees its own echo.
    for (const channel of this._subscriptions.keys()) this._sendSubscribe(channel);
    const queued = this._outbox.splice(0);
    for (const text of queued) this._ws.send(text);
    this._emit("connected", { clientId: this.clientId });
  }

  _settle(id, ack, err) {
    const pending = this._pending.get(id);
    if (!pending) return;
    this._pending.delete(id);
    clearTimeout(pending.timer);
    if (err) pending.reject(err);
    else pending.resolve(ack);
  }

  _failPending(code, message, predicate = () => true) {
    for (const [id, p] of [...this._pending]) {
      if (!predicate(p)) continue;
      this._pending.delete(id);
      clearTimeout(p.timer);
      p.reject(new RealtimeError(code, message));
    }
    if (code === "CLOSED") this._outbox.length = 0;
  }

  // --- keepalive -----------------------------------------------------------------------------

  _startKeepalive() {
    this._stopKeepalive();
    const { pingInterval, pongTimeout } = this.options;
    if (!pingInterval) return;
    this._pingTimer = setInterval(() => {
      if (!this.connected || !this._ws) return;
      this._ws.send(JSON.stringify({ type: "ping", timestamp: Date.now() }));
      clearTimeout(this._pongTimer);
      // Any frame clears this timer; silence means the TCP connection is gone (sleep, NAT).
      this._pongTimer = setTimeout(() => this._deadConnection(), pongTimeout);
    }, pingInterval);
  }

  _stopKeepalive() {
    clearInterval(this._pingTimer);
    clearTimeout(this._pongTimer);
    this._pingTimer = this._pongTimer = null;
  }

  _deadConnection() {
    const ws = this._ws;
    if (!ws) return;
    try {
      ws.close(4000, "keepalive timeout");
    } catch {
      /* ignore */
    }
    // Do not wait for the close handshake a dead peer will never answer.
    this._onClose(ws, 4000, "keepalive timeout");
  }

  // --- requests ------------------------------------------------------------------------------

  /** Send `message` with a fresh id; resolve with its ack, reject with its error frame. */
  request(message, { timeout = this.options.requestTimeout } = {}) {
    if (this.state === ConnectionState.CLOSED) {
      return Promise.reject(new RealtimeError("CLOSED", "client closed"));
    }
    const id = `${this._idPrefix}${++this._seq}`;
    const frame = { ...message, id, timestamp: Date.now() };
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(id);
        reject(new RealtimeError("TIMEOUT", `no answer to ${message.type} within ${timeout} ms`));
      }, timeout);
      this._pending.set(id, { resolve, reject, timer, message: frame });
      this._send(frame);
    });
  }

  _send(frame) {
    const text = JSON.stringify(frame);
    if (this.connected && this._ws) {
      this._ws.send(text);
    } else if (frame.type !== "subscribe") {
      if (this._outbox.length >= this.options.maxQueued) {
        this._settle(frame.id, null, new RealtimeError("QUEUE_FULL", "too many messages waiting for a connection"));
        return;
      }
      this._outbox.push(text);
    }
  }

  /**
   * Subscribe to `channel`; kept across reconnects until unsubscribe(). Resolves with the ack
   * (after a reconnect: the ack of the resubscribe); rejects on the server's error frame.
   */
  subscribe(channel, { timeout = this.options.requestTimeout } = {}) {
    let sub = this._subscriptions.get(channel);
    if (sub && sub.confirmed) return Promise.resolve(sub.ack);
    return new Promise((resolve, reject) => {
      const waiter = { resolve, reject };
      waiter.timer = setTimeout(() => {
        sub.waiters = sub.waiters.filter((w) => w !== waiter);
        reject(new RealtimeError("TIMEOUT", `no answer to subscribe ${channel} within ${timeout} ms`));
      }, timeout);
      if (!sub) {
        sub = { confirmed: false, ack: null, waiters: [], inflight: false };
        this._subscriptions.set(channel, sub);
        sub.waiters.push(waiter);
        if (this.connected) this._sendSubscribe(channel);
      } else {
        sub.waiters.push(waiter);
        // An earlier attempt timed out: ask again rather than wait for the next reconnect.
        if (this.connected && !sub.inflight) this._sendSubscribe(channel);
      }
    });
  }

  _sendSubscribe(channel) {
    const sub = this._subscriptions.get(channel);
    if (!sub) return;
    const message = { type: "subscribe", channel };
    const position = this.options.recover ? this._positions.get(channel) : null;
    // Recovery: ask for what was missed since the last position seen; the server replays it
    // right after the ack, or answers recovered:false when its history cannot cover the gap.
    if (position && typeof position.epoch === "string") {
      message.since = { offset: position.offset, epoch: position.epoch };
    }
    sub.inflight = true;
    this.request(message)
      .finally(() => {
        sub.inflight = false;
      })
      .then((ack) => {
        if (this._subscriptions.get(channel) !== sub) return;
        sub.confirmed = true;
        sub.ack = ack;
        const top = typeof ack.offset === "number" ? { offset: ack.offset, epoch: ack.epoch ?? null } : null;
        // Start from the stream's top when there was nothing to recover from, or when the gap
        // could not be recovered; after a successful recovery the replayed events advance it.
        if (top && (!message.since || ack.recovered === false)) this._positions.set(channel, top);
        if (message.since && ack.recovered !== undefined) {
          const detail = { channel, recovered: ack.recovered === true, reason: "resubscribe", ack };
          this._emit("recovery", { ...detail, offset: ack.offset ?? null, epoch: ack.epoch ?? null });
        }
        for (const w of sub.waiters.splice(0)) {
          clearTimeout(w.timer);
          w.resolve(ack);
        }
      })
      .catch((err) => {
        if (this._subscriptions.get(channel) !== sub) return;
        if (err.code === "DISCONNECTED" || err.code === "TIMEOUT" || err.code === "CLOSED") return;
        // The server refused (invalid channel, forbidden, too many): stop asking.
        this._subscriptions.delete(channel);
        this._rejectWaiters(sub, err.code, err.message, err.frame);
      });
  }

  _rejectWaiters(sub, code, message, frame = null) {
    for (const w of sub.waiters.splice(0)) {
      clearTimeout(w.timer);
      w.reject(new RealtimeError(code, message, frame));
    }
  }

  _failWaiters(code, message) {
    for (const sub of this._subscriptions.values()) this._rejectWaiters(sub, code, message);
    this._failPending(code, message);
  }

  /** Stop receiving `channel` (and stop resubscribing to it). */
  unsubscribe(channel) {
    const sub = this._subscriptions.get(channel);
    this._subscriptions.delete(channel);
    this._positions.delete(channel);
    if (sub) this._rejectWaiters(sub, "UNSUBSCRIBED", "unsubscribed");
    if (!this.connected) return Promise.resolve(null);
    return this.request({ type: "unsubscribe", channel });
  }

  /** Channels this client keeps subscribed. */
  get channels() {
    return [...this._subscriptions.keys()];
  }

  /** The last {offset, epoch} seen on `channel`, for apps that keep their own position. */
  position(channel) {
    return this._positions.get(channel) ?? null;
  }

  /** Publish `event` on `channel`; resolves with the ack ({offset, …}). */
  publish(channel, event, data = {}, options) {
    return this.request({ type: "publish", channel, event, data }, options);
  }

  /** Change identity (agent, session, token); reconnects reuse it. */
  auth({ agentId, sessionId, token } = {}, options) {
    if (agentId !== undefined) this.options.agentId = agentId;
    if (sessionId !== undefined) this.options.sessionId = sessionId;
    if (token !== undefined) this.options.token = token;
    const message = { type: "auth" };
    if (agentId) message.agent_id = agentId;
    if (sessionId) message.session_id = sessionId;
    if (token) message.token = token;
    return this.request(message, options);
  }
}

export default RealtimeClient;
