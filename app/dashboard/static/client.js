// @context-manager/client 0.1.0: generated from clients/js by `npm run build`; do not edit.

// dist/protocol.js
var MessageType = Object.freeze({
  SUBSCRIBE: "subscribe",
  UNSUBSCRIBE: "unsubscribe",
  PUBLISH: "publish",
  AUTH: "auth",
  PING: "ping",
  HISTORY: "history",
  PRESENCE: "presence",
  PRESENCE_STATS: "presence_stats"
});
var ErrorCode = Object.freeze({
  INVALID_JSON: "INVALID_JSON",
  INVALID_MESSAGE: "INVALID_MESSAGE",
  UNKNOWN_TYPE: "UNKNOWN_TYPE",
  INVALID_CHANNEL: "INVALID_CHANNEL",
  INVALID_EVENT: "INVALID_EVENT",
  MESSAGE_TOO_LARGE: "MESSAGE_TOO_LARGE",
  NOT_SUBSCRIBED: "NOT_SUBSCRIBED",
  TOO_MANY_SUBSCRIPTIONS: "TOO_MANY_SUBSCRIPTIONS",
  FORBIDDEN: "FORBIDDEN",
  UNAUTHORIZED: "UNAUTHORIZED",
  RATE_LIMITED: "RATE_LIMITED",
  INTERNAL: "INTERNAL"
});
var ResetReason = Object.freeze({ NEW_EPOCH: "new_epoch", GAP: "gap" });
var CloseCode = Object.freeze({
  NORMAL: 1e3,
  GOING_AWAY: 1001,
  INVALID_DATA: 1007,
  POLICY_VIOLATION: 1008,
  MESSAGE_TOO_BIG: 1009,
  INTERNAL_ERROR: 1011,
  SERVICE_RESTART: 1012,
  IDLE_TIMEOUT: 3001,
  TOKEN_EXPIRED: 3005,
  SLOW_CONSUMER: 3008,
  INVALID_TOKEN: 3500,
  FORBIDDEN: 3503,
  CONNECTION_LIMIT: 3504
});
var CLOSE_ADVICE = Object.freeze({
  1e3: "closed normally: do not reconnect",
  1001: "the server is going away: reconnect",
  1007: "a text message was not UTF-8: fix the client",
  1008: "policy violation (frame rate, fragments): fix the client",
  1009: "a frame above MAX_FRAME_BYTES: send smaller messages",
  1011: "a protocol ping went unanswered: reconnect",
  1012: "the node is restarting: reconnect (to another node), after the delay it names",
  3001: "idle: nothing received for WS_IDLE_TIMEOUT seconds; reconnect, and ping every 25 s",
  3005: "the token expired: reconnect with a fresh one",
  3008: "slow consumer: the send buffer overflowed; reconnect (and recover)",
  3500: "invalid or missing token: do not reconnect without a new one",
  3503: "forbidden (e.g. Origin refused): do not reconnect",
  3504: "too many connections: reconnect later"
});
var FINAL_CODES = /* @__PURE__ */ new Set([1e3, 1007, 1008, 1009]);
function shouldReconnect(code) {
  if (code === null || code === void 0)
    return true;
  if (FINAL_CODES.has(code))
    return false;
  return !(code >= 3500 && code <= 3999);
}
function closeAdvice(code) {
  if (code === null || code === void 0)
    return "could not connect: retrying";
  const known = CLOSE_ADVICE[code];
  if (known)
    return known;
  return shouldReconnect(code) ? `closed with ${code}: reconnect` : `closed with ${code}: do not reconnect`;
}
var SERVER_EVENTS = Object.freeze([
  "task.created",
  "task.updated",
  "task.completed",
  "task.failed",
  "task.claimed",
  "task.released",
  "task.lease_expired",
  "task.ready",
  "subtask.created",
  "subtask.updated",
  "subtask.completed",
  "subtask.failed",
  "message.new",
  "message.read",
  "message.expired",
  "reservation.created",
  "reservation.released",
  "reservation.expired",
  "agent.connected",
  "agent.disconnected",
  "agent.heartbeat",
  "metric.update",
  "webhook.disabled",
  "webhook.test"
]);
function isServerEvent(frame, name) {
  return frame.event === name;
}

// dist/client.js
var ConnectionState = Object.freeze({
  IDLE: "idle",
  CONNECTING: "connecting",
  CONNECTED: "connected",
  RECONNECTING: "reconnecting",
  OFFLINE: "offline",
  CLOSED: "closed"
});
var RealtimeError = class extends Error {
  code;
  frame;
  constructor(code, message, frame = null) {
    super(message);
    this.name = "RealtimeError";
    this.code = code;
    this.frame = frame;
  }
};
function eventMatcher(pattern) {
  if (!pattern || pattern === "*")
    return () => true;
  const parts = String(pattern).split(",").map((p) => p.trim()).filter(Boolean).map((p) => {
    const escaped = p.replace(/[.+^${}()|[\]\\]/g, "\\$&").replace(/\*/g, ".*").replace(/\?/g, ".");
    return new RegExp(`^${escaped}$`);
  });
  if (!parts.length)
    return () => true;
  return (name) => parts.some((re) => re.test(name));
}
function backoffDelay(attempt, backoff, random = Math.random) {
  const { initial, max, factor, jitter } = backoff;
  const base = Math.min(max, initial * factor ** attempt);
  return Math.round(base * (1 - jitter * random()));
}
var DEFAULTS = {
  agentId: null,
  sessionId: null,
  token: null,
  pingInterval: 25e3,
  pongTimeout: 1e4,
  requestTimeout: 1e4,
  backoff: { initial: 500, max: 1e4, factor: 2, jitter: 0.5 },
  maxRetries: Infinity,
  recover: true,
  maxQueued: 1e3
};
var RealtimeClient = class {
  url;
  options;
  state = ConnectionState.IDLE;
  clientId = null;
  attempt = 0;
  lastError = null;
  /** The code of the last close (null before any). */
  lastCloseCode = null;
  _ws = null;
  _seq = 0;
  _idPrefix = `c${Math.random().toString(36).slice(2, 8)}-`;
  _listeners = /* @__PURE__ */ new Map();
  _pending = /* @__PURE__ */ new Map();
  _outbox = [];
  // frames waiting for a connection
  _subscriptions = /* @__PURE__ */ new Map();
  _positions = /* @__PURE__ */ new Map();
  _retryTimer;
  _pingTimer;
  _pongTimer;
  _wantOpen = false;
  _onOnline = () => {
    if (this.state === ConnectionState.OFFLINE && this._wantOpen)
      this._reconnectNow();
    else if (this.state === ConnectionState.RECONNECTING)
      this._reconnectNow();
  };
  constructor(url, options = {}) {
    this.url = url;
    this.options = {
      ...DEFAULTS,
      ...options,
      backoff: { ...DEFAULTS.backoff, ...options.backoff || {} },
      WebSocket: options.WebSocket ?? globalThis.WebSocket
    };
  }
  // --- events ------------------------------------------------------------------------------
  /**
   * Listen to "state", "connected", "reconnecting", "offline", "event", "error" (error frames
   * without a request), "recovery" (on recovered:false reload the channel's state), "frame"
   * (every decoded frame). Returns a function that removes the listener.
   */
  on(type, fn) {
    let set = this._listeners.get(type);
    if (!set) {
      set = /* @__PURE__ */ new Set();
      this._listeners.set(type, set);
    }
    set.add(fn);
    return () => {
      this._listeners.get(type)?.delete(fn);
    };
  }
  /** Call `fn(event)` for events matching {channel?, event? (glob)}; returns an unlisten function. */
  listen({ channel = null, event = null }, fn) {
    const matches = eventMatcher(event);
    return this.on("event", (frame) => {
      if ((channel === null || frame.channel === channel) && matches(frame.event))
        fn(frame);
    });
  }
  _emit(type, detail) {
    for (const fn of [...this._listeners.get(type) || []]) {
      try {
        fn(detail);
      } catch (err) {
        console.error(`context-manager client: ${type} listener failed`, err);
      }
    }
  }
  _setState(state, extra = {}) {
    if (this.state === state && state !== ConnectionState.RECONNECTING)
      return;
    const previous = this.state;
    this.state = state;
    this._emit("state", { state, previous, attempt: this.attempt, ...extra });
    if (state === ConnectionState.RECONNECTING)
      this._emit("reconnecting", { attempt: this.attempt, ...extra });
    if (state === ConnectionState.OFFLINE)
      this._emit("offline", { attempt: this.attempt, ...extra });
  }
  get connected() {
    return this.state === ConnectionState.CONNECTED;
  }
  // --- lifecycle ---------------------------------------------------------------------------
  /** Open the connection (and keep it open until close()). */
  connect() {
    this._wantOpen = true;
    if (typeof window !== "undefined")
      window.addEventListener("online", this._onOnline);
    if (this._ws)
      return this;
    this._open(ConnectionState.CONNECTING);
    return this;
  }
  /** Close for good: no reconnect; pending requests reject with CLOSED. */
  close(code = 1e3, reason = "client closed") {
    this._wantOpen = false;
    if (typeof window !== "undefined")
      window.removeEventListener("online", this._onOnline);
    clearTimeout(this._retryTimer);
    this._stopKeepalive();
    const ws = this._ws;
    this._ws = null;
    if (ws) {
      this._detach(ws);
      try {
        ws.close(code, reason);
      } catch {
      }
    }
    this._failPending("CLOSED", "client closed");
    for (const sub of this._subscriptions.values())
      this._rejectWaiters(sub, "CLOSED", "client closed");
    this._setState(ConnectionState.CLOSED);
  }
  /** Resolve once connected (or reject after `timeout` ms). */
  ready(timeout = this.options.requestTimeout) {
    if (this.connected)
      return Promise.resolve(this);
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
    const base = typeof location !== "undefined" ? location.href : void 0;
    const url = new URL(this.url, base);
    const { agentId, sessionId, token } = this.options;
    if (agentId)
      url.searchParams.set("agent_id", agentId);
    if (sessionId)
      url.searchParams.set("session_id", sessionId);
    if (token)
      url.searchParams.set("token", token);
    return url.toString();
  }
  _open(state) {
    this._setState(state);
    let ws;
    try {
      const Impl = this.options.WebSocket;
      if (!Impl)
        throw new Error("no WebSocket implementation: pass options.WebSocket (Node 20: `ws`)");
      ws = new Impl(this._buildUrl());
    } catch (err) {
      this.lastError = err;
      this._scheduleReconnect(null, String(err));
      return;
    }
    this._ws = ws;
    ws.onmessage = (msg) => this._onMessage(msg);
    ws.onclose = (ev) => this._onClose(ws, ev.code, ev.reason);
    ws.onerror = () => {
    };
  }
  _detach(ws) {
    ws.onmessage = null;
    ws.onclose = null;
    ws.onerror = null;
    ws.onopen = null;
  }
  _onClose(ws, code, reason) {
    if (ws !== this._ws)
      return;
    this._ws = null;
    this.lastCloseCode = code;
    this._detach(ws);
    this._stopKeepalive();
    this.clientId = null;
    this._connectionLost();
    if (!this._wantOpen)
      return;
    if (!shouldReconnect(code)) {
      this._setState(ConnectionState.OFFLINE, { reason: reason || `closed with ${code}`, code });
      this._failWaiters("OFFLINE", reason || `closed with ${code}`);
      return;
    }
    this._scheduleReconnect(code, reason);
  }
  /** What a dropped connection means for requests in flight. */
  _connectionLost() {
    this._failPending("DISCONNECTED", "connection lost before the server answered", (p) => p.message.type !== "subscribe");
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
      this._setState(ConnectionState.OFFLINE, { reason: "browser offline", code });
      return;
    }
    const hint = /^reconnect:(\d{1,7})$/.exec(reason || "");
    const delay = hint ? Math.min(Number(hint[1]), this.options.backoff.max) : backoffDelay(this.attempt, this.options.backoff);
    this.attempt += 1;
    this._setState(ConnectionState.RECONNECTING, { delay, code, reason });
    clearTimeout(this._retryTimer);
    this._retryTimer = setTimeout(() => this._open(ConnectionState.RECONNECTING), delay);
  }
  _reconnectNow() {
    if (this._ws)
      return;
    clearTimeout(this._retryTimer);
    this._open(ConnectionState.RECONNECTING);
  }
  // --- frames ------------------------------------------------------------------------------
  _onMessage(msg) {
    let frame;
    try {
      const parsed = JSON.parse(String(msg.data));
      if (parsed === null || typeof parsed !== "object")
        return;
      frame = parsed;
    } catch {
      return;
    }
    clearTimeout(this._pongTimer);
    this._pongTimer = void 0;
    this._emit("frame", frame);
    if (frame.type === "connected")
      return this._onConnected(frame);
    if (frame.type === "ack")
      return this._settle(frame.id, frame, null);
    if (frame.type === "pong")
      return;
    if (frame.type === "unrecovered")
      return this._onUnrecovered(frame);
    if (frame.error !== void 0 && frame.code !== void 0) {
      const error = frame;
      const err = new RealtimeError(error.code, error.error, error);
      if (error.id !== void 0 && this._pending.has(String(error.id)))
        return this._settle(String(error.id), null, err);
      this._emit("error", error);
      return;
    }
    if (typeof frame.event === "string" && typeof frame.channel === "string") {
      const event = frame;
      if (typeof event.offset === "number") {
        const seen = this._positions.get(event.channel);
        if (seen && seen.epoch === (event.epoch ?? null) && event.offset <= seen.offset)
          return;
        this._positions.set(event.channel, { offset: event.offset, epoch: event.epoch ?? null });
      }
      this._emit("event", event);
    }
  }
  /** The server lost publications of a channel up to (offset, epoch); events go on from there. */
  _onUnrecovered(frame) {
    const { channel, offset, epoch } = frame;
    if (!this._subscriptions.has(channel) || typeof offset !== "number" || typeof epoch !== "string")
      return;
    this._positions.set(channel, { offset, epoch });
    this._emit("recovery", { channel, recovered: false, reason: frame.reason || "", offset, epoch, ack: frame });
  }
  _onConnected(frame) {
    this.clientId = frame.client_id;
    this.attempt = 0;
    this.lastError = null;
    this._setState(ConnectionState.CONNECTED);
    this._startKeepalive();
    for (const channel of this._subscriptions.keys())
      this._sendSubscribe(channel);
    const queued = this._outbox.splice(0);
    for (const text of queued)
      this._ws?.send(text);
    this._emit("connected", { clientId: this.clientId });
  }
  _settle(id, ack, err) {
    const pending = this._pending.get(id);
    if (!pending)
      return;
    this._pending.delete(id);
    clearTimeout(pending.timer);
    if (err)
      pending.reject(err);
    else if (ack)
      pending.resolve(ack);
  }
  _failPending(code, message, predicate = () => true) {
    for (const [id, p] of [...this._pending]) {
      if (!predicate(p))
        continue;
      this._pending.delete(id);
      clearTimeout(p.timer);
      p.reject(new RealtimeError(code, message));
    }
    if (code === "CLOSED")
      this._outbox.length = 0;
  }
  // --- keepalive -----------------------------------------------------------------------------
  _startKeepalive() {
    this._stopKeepalive();
    const { pingInterval, pongTimeout } = this.options;
    if (!pingInterval)
      return;
    this._pingTimer = setInterval(() => {
      if (!this.connected || !this._ws)
        return;
      this._ws.send(JSON.stringify({ type: "ping", timestamp: Date.now() }));
      clearTimeout(this._pongTimer);
      this._pongTimer = setTimeout(() => this._deadConnection(), pongTimeout);
    }, pingInterval);
  }
  _stopKeepalive() {
    clearInterval(this._pingTimer);
    clearTimeout(this._pongTimer);
    this._pingTimer = void 0;
    this._pongTimer = void 0;
  }
  _deadConnection() {
    const ws = this._ws;
    if (!ws)
      return;
    try {
      ws.close(4e3, "keepalive timeout");
    } catch {
    }
    this._onClose(ws, 4e3, "keepalive timeout");
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
    if (sub && sub.confirmed && sub.ack)
      return Promise.resolve(sub.ack);
    return new Promise((resolve, reject) => {
      const waiter = { resolve, reject };
      waiter.timer = setTimeout(() => {
        if (sub)
          sub.waiters = sub.waiters.filter((w) => w !== waiter);
        reject(new RealtimeError("TIMEOUT", `no answer to subscribe ${channel} within ${timeout} ms`));
      }, timeout);
      if (!sub) {
        sub = { confirmed: false, ack: null, waiters: [], inflight: false };
        this._subscriptions.set(channel, sub);
        sub.waiters.push(waiter);
        if (this.connected)
          this._sendSubscribe(channel);
      } else {
        sub.waiters.push(waiter);
        if (this.connected && !sub.inflight)
          this._sendSubscribe(channel);
      }
    });
  }
  _sendSubscribe(channel) {
    const sub = this._subscriptions.get(channel);
    if (!sub)
      return;
    const message = {
      type: "subscribe",
      channel
    };
    const position = this.options.recover ? this._positions.get(channel) : null;
    if (position && typeof position.epoch === "string") {
      message.since = { offset: position.offset, epoch: position.epoch };
    }
    sub.inflight = true;
    this.request(message).finally(() => {
      sub.inflight = false;
    }).then((ack) => {
      if (this._subscriptions.get(channel) !== sub)
        return;
      sub.confirmed = true;
      sub.ack = ack;
      const top = typeof ack.offset === "number" ? { offset: ack.offset, epoch: ack.epoch ?? null } : null;
      if (top && (!message.since || ack.recovered === false))
        this._positions.set(channel, top);
      if (message.since && ack.recovered !== void 0) {
        this._emit("recovery", {
          channel,
          recovered: ack.recovered === true,
          reason: "resubscribe",
          offset: ack.offset ?? null,
          epoch: ack.epoch ?? null,
          ack
        });
      }
      for (const w of sub.waiters.splice(0)) {
        clearTimeout(w.timer);
        w.resolve(ack);
      }
    }).catch((err) => {
      if (this._subscriptions.get(channel) !== sub)
        return;
      if (err.code === "DISCONNECTED" || err.code === "TIMEOUT" || err.code === "CLOSED")
        return;
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
    for (const sub of this._subscriptions.values())
      this._rejectWaiters(sub, code, message);
    this._failPending(code, message);
  }
  /** Stop receiving `channel` (and stop resubscribing to it). */
  unsubscribe(channel) {
    const sub = this._subscriptions.get(channel);
    this._subscriptions.delete(channel);
    this._positions.delete(channel);
    if (sub)
      this._rejectWaiters(sub, "UNSUBSCRIBED", "unsubscribed");
    if (!this.connected)
      return Promise.resolve(null);
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
  publish(channel, event, data, options) {
    return this.request({ type: "publish", channel, event, data: data ?? {} }, options);
  }
  /** Change identity (agent, session, token); reconnects reuse it. */
  auth({ agentId, sessionId, token } = {}, options) {
    if (agentId !== void 0)
      this.options.agentId = agentId;
    if (sessionId !== void 0)
      this.options.sessionId = sessionId;
    if (token !== void 0)
      this.options.token = token;
    const message = { type: "auth" };
    if (agentId)
      message.agent_id = agentId;
    if (sessionId)
      message.session_id = sessionId;
    if (token)
      message.token = token;
    return this.request(message, options);
  }
  /** The channel's retained publications after `since` (oldest first) and its top. */
  history(channel, { since, limit } = {}, options) {
    const message = { type: "history", channel };
    if (since)
      message.since = since;
    if (limit !== void 0)
      message.limit = limit;
    return this.request(message, options);
  }
  /** Who is subscribed to `channel`, cluster-wide. */
  presence(channel, options) {
    return this.request({ type: "presence", channel }, options);
  }
  /** How many clients and agents are subscribed to `channel`. */
  presenceStats(channel, options) {
    return this.request({ type: "presence_stats", channel }, options);
  }
};
export {
  CLOSE_ADVICE,
  CloseCode,
  ConnectionState,
  ErrorCode,
  MessageType,
  RealtimeClient,
  RealtimeError,
  ResetReason,
  SERVER_EVENTS,
  backoffDelay,
  closeAdvice,
  RealtimeClient as default,
  eventMatcher,
  isServerEvent,
  shouldReconnect
};
