/**
 * The realtime client: one WebSocket to context-manager, kept open until close().
 *
 *   import { RealtimeClient } from "@context-manager/client";
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
 *   - reconnect with exponential backoff and jitter, then resubscribe every channel; no
 *     reconnect after a "do not reconnect" close code (closeAdvice() says why);
 *   - the seed's keepalive: {"type":"ping"} every 25 s; no answer within `pongTimeout`
 *     counts as a dead connection and triggers a reconnect;
 *   - remembers the last `offset`/`epoch` seen per channel and sends it as `since` when it
 *     resubscribes, so the server replays what was missed;
 *   - a "recovery" event whenever that did not work — the resubscribe's ack says
 *     recovered:false, or the server sends {"type":"unrecovered"} (it lost publications of the
 *     channel, e.g. Redis restarted without persistence): reload that channel's state. After
 *     the notice the position is the server's, so a later reconnect recovers from there;
 *   - connection states: connecting → connected → reconnecting … → connected, or offline
 *     (gave up: a "do not reconnect" close code, retries exhausted, or the browser is offline),
 *     or closed (you called close()).
 */

import type {
  AckFrame,
  AuthAck,
  Channel,
  ClientMessage,
  ConnectedFrame,
  ErrorFrame,
  EventFrame,
  HistoryAck,
  PresenceAck,
  PresenceStatsAck,
  PublishAck,
  ServerFrame,
  StreamPosition,
  SubscribeAck,
  UnrecoveredFrame,
  UnsubscribeAck,
} from "./protocol.js";
import { shouldReconnect } from "./protocol.js";

export const ConnectionState = Object.freeze({
  IDLE: "idle",
  CONNECTING: "connecting",
  CONNECTED: "connected",
  RECONNECTING: "reconnecting",
  OFFLINE: "offline",
  CLOSED: "closed",
} as const);
export type ConnectionState = (typeof ConnectionState)[keyof typeof ConnectionState];

/**
 * Local failure codes of a request, beside the server's error codes: TIMEOUT, DISCONNECTED (the
 * connection dropped before the answer: a publish may or may not have been delivered), CLOSED,
 * OFFLINE, QUEUE_FULL, UNSUBSCRIBED.
 */
export type LocalErrorCode = "TIMEOUT" | "DISCONNECTED" | "CLOSED" | "OFFLINE" | "QUEUE_FULL" | "UNSUBSCRIBED";

/** An error frame from the server, or a local failure of a request. */
export class RealtimeError extends Error {
  readonly code: string;
  readonly frame: ErrorFrame | null;

  constructor(code: string, message: string, frame: ErrorFrame | null = null) {
    super(message);
    this.name = "RealtimeError";
    this.code = code;
    this.frame = frame;
  }
}

/** Compile a glob such as "task.*" or "*.failed" (comma-separated alternatives) to a test. */
export function eventMatcher(pattern?: string | null): (name: string) => boolean {
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

export interface BackoffOptions {
  /** First delay, ms (500). */
  initial: number;
  /** Longest delay, ms (10 000). */
  max: number;
  factor: number;
  /** 0–1: the delay is scaled by a random factor in [1 − jitter, 1] (0.5). */
  jitter: number;
}

/** The delay before reconnect attempt `attempt` (0-based): exponential, capped, jittered. */
export function backoffDelay(attempt: number, backoff: BackoffOptions, random: () => number = Math.random): number {
  const { initial, max, factor, jitter } = backoff;
  const base = Math.min(max, initial * factor ** attempt);
  // "Equal jitter": never less than half the base delay, so a crowd of clients spreads out
  // without any of them hammering the server right after it comes back.
  return Math.round(base * (1 - jitter * random()));
}

/** The subset of the WebSocket API the client uses (the browser's, Node 22's, or `ws`). */
export interface WebSocketLike {
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
  onopen: ((event: unknown) => void) | null;
}
export type WebSocketConstructor = new (url: string) => WebSocketLike;

export interface ClientOptions {
  agentId?: string | null;
  sessionId?: string | null;
  /** Sent as `?token=` (token mode). */
  token?: string | null;
  /** ms between keepalive pings (25 000); 0 disables them. */
  pingInterval?: number;
  /** ms without any frame after a ping before the connection counts as dead (10 000). */
  pongTimeout?: number;
  /** ms to wait for an ack (10 000). */
  requestTimeout?: number;
  backoff?: Partial<BackoffOptions>;
  /** Reconnect attempts before going offline (Infinity). */
  maxRetries?: number;
  /** Resubscribe with `since` to recover missed events (true). */
  recover?: boolean;
  /** Requests kept while disconnected (1 000). */
  maxQueued?: number;
  /** A WebSocket implementation (default: the global one). */
  WebSocket?: WebSocketConstructor;
}

interface ResolvedOptions extends Required<Omit<ClientOptions, "backoff" | "WebSocket">> {
  backoff: BackoffOptions;
  WebSocket: WebSocketConstructor | undefined;
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
};

export interface StateChange {
  state: ConnectionState;
  previous: ConnectionState;
  attempt: number;
  delay?: number;
  code?: number | null;
  reason?: string;
}

/** Whether a channel's missed events were recovered; on `recovered: false` reload its state. */
export interface Recovery {
  channel: string;
  recovered: boolean;
  /** "resubscribe" (the ack of a resubscribe with `since`), or the server's "new_epoch" / "gap". */
  reason: string;
  offset: number | null;
  epoch: string | null;
  ack: SubscribeAck | UnrecoveredFrame;
}

/** What `on(type, fn)` passes to `fn`, by type. */
export interface ClientEvents {
  state: StateChange;
  connected: { clientId: string | null };
  reconnecting: { attempt: number; delay?: number; code?: number | null; reason?: string };
  offline: { attempt: number; reason?: string; code?: number | null };
  event: EventFrame;
  error: ErrorFrame;
  recovery: Recovery;
  frame: ServerFrame;
}

export interface RequestOptions {
  timeout?: number;
}

interface Pending {
  resolve: (ack: AckFrame) => void;
  reject: (err: RealtimeError) => void;
  timer: ReturnType<typeof setTimeout>;
  message: ClientMessage & { id: string };
}

interface Waiter {
  resolve: (ack: SubscribeAck) => void;
  reject: (err: RealtimeError) => void;
  timer?: ReturnType<typeof setTimeout>;
}

interface Subscription {
  confirmed: boolean;
  ack: SubscribeAck | null;
  waiters: Waiter[];
  inflight: boolean;
}

type Listener<K extends keyof ClientEvents> = (detail: ClientEvents[K]) => void;

export class RealtimeClient {
  url: string;
  options: ResolvedOptions;
  state: ConnectionState = ConnectionState.IDLE;
  clientId: string | null = null;
  attempt = 0;
  lastError: unknown = null;
  /** The code of the last close (null before any). */
  lastCloseCode: number | null = null;

  private _ws: WebSocketLike | null = null;
  private _seq = 0;
  private readonly _idPrefix = `c${Math.random().toString(36).slice(2, 8)}-`;
  private readonly _listeners = new Map<keyof ClientEvents, Set<Listener<never>>>();
  private readonly _pending = new Map<string, Pending>();
  private _outbox: string[] = []; // frames waiting for a connection
  private readonly _subscriptions = new Map<string, Subscription>();
  private readonly _positions = new Map<string, { offset: number; epoch: string | null }>();
  private _retryTimer: ReturnType<typeof setTimeout> | undefined;
  private _pingTimer: ReturnType<typeof setInterval> | undefined;
  private _pongTimer: ReturnType<typeof setTimeout> | undefined;
  private _wantOpen = false;
  private readonly _onOnline = (): void => {
    if (this.state === ConnectionState.OFFLINE && this._wantOpen) this._reconnectNow();
    else if (this.state === ConnectionState.RECONNECTING) this._reconnectNow();
  };

  constructor(url: string, options: ClientOptions = {}) {
    this.url = url;
    this.options = {
      ...DEFAULTS,
      ...options,
      backoff: { ...DEFAULTS.backoff, ...(options.backoff || {}) },
      WebSocket: options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket,
    } as ResolvedOptions;
  }

  // --- events ------------------------------------------------------------------------------

  /**
   * Listen to "state", "connected", "reconnecting", "offline", "event", "error" (error frames
   * without a request), "recovery" (on recovered:false reload the channel's state), "frame"
   * (every decoded frame). Returns a function that removes the listener.
   */
  on<K extends keyof ClientEvents>(type: K, fn: Listener<K>): () => void {
    let set = this._listeners.get(type);
    if (!set) {
      set = new Set();
      this._listeners.set(type, set);
    }
    set.add(fn as Listener<never>);
    return () => {
      this._listeners.get(type)?.delete(fn as Listener<never>);
    };
  }

  /** Call `fn(event)` for events matching {channel?, event? (glob)}; returns an unlisten function. */
  listen(
    { channel = null, event = null }: { channel?: string | null; event?: string | null },
    fn: (frame: EventFrame) => void,
  ): () => void {
    const matches = eventMatcher(event);
    return this.on("event", (frame) => {
      if ((channel === null || frame.channel === channel) && matches(frame.event)) fn(frame);
    });
  }

  private _emit<K extends keyof ClientEvents>(type: K, detail: ClientEvents[K]): void {
    for (const fn of [...(this._listeners.get(type) || [])]) {
      try {
        (fn as Listener<K>)(detail);
      } catch (err) {
        // A listener's bug must not break the connection or the other listeners.
        console.error(`context-manager client: ${type} listener failed`, err);
      }
    }
  }

  private _setState(state: ConnectionState, extra: Partial<StateChange> = {}): void {
    if (this.state === state && state !== ConnectionState.RECONNECTING) return;
    const previous = this.state;
    this.state = state;
    this._emit("state", { state, previous, attempt: this.attempt, ...extra });
    if (state === ConnectionState.RECONNECTING) this._emit("reconnecting", { attempt: this.attempt, ...extra });
    if (state === ConnectionState.OFFLINE) this._emit("offline", { attempt: this.attempt, ...extra });
  }

  get connected(): boolean {
    return this.state === ConnectionState.CONNECTED;
  }

  // --- lifecycle ---------------------------------------------------------------------------

  /** Open the connection (and keep it open until close()). */
  connect(): this {
    this._wantOpen = true;
    if (typeof window !== "undefined") window.addEventListener("online", this._onOnline);
    if (this._ws) return this;
    this._open(ConnectionState.CONNECTING);
    return this;
  }

  /** Close for good: no reconnect; pending requests reject with CLOSED. */
  close(code = 1000, reason = "client closed"): void {
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
  ready(timeout: number = this.options.requestTimeout): Promise<this> {
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

  private _buildUrl(): string {
    const base = typeof location !== "undefined" ? location.href : undefined;
    const url = new URL(this.url, base);
    const { agentId, sessionId, token } = this.options;
    if (agentId) url.searchParams.set("agent_id", agentId);
    if (sessionId) url.searchParams.set("session_id", sessionId);
    if (token) url.searchParams.set("token", token);
    return url.toString();
  }

  private _open(state: ConnectionState): void {
    this._setState(state);
    let ws: WebSocketLike;
    try {
      const Impl = this.options.WebSocket;
      if (!Impl) throw new Error("no WebSocket implementation: pass options.WebSocket (Node 20: `ws`)");
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
      /* onclose follows with the code */
    };
  }

  private _detach(ws: WebSocketLike): void {
    ws.onmessage = null;
    ws.onclose = null;
    ws.onerror = null;
    ws.onopen = null;
  }

  private _onClose(ws: WebSocketLike, code: number, reason: string): void {
    if (ws !== this._ws) return;
    this._ws = null;
    this.lastCloseCode = code;
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
  private _connectionLost(): void {
    // A publish may or may not have reached the server: say so and let the caller decide.
    this._failPending(
      "DISCONNECTED",
      "connection lost before the server answered",
      (p) => p.message.type !== "subscribe",
    );
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

  private _scheduleReconnect(code: number | null, reason: string): void {
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
    const delay = hint
      ? Math.min(Number(hint[1]), this.options.backoff.max)
      : backoffDelay(this.attempt, this.options.backoff);
    this.attempt += 1;
    this._setState(ConnectionState.RECONNECTING, { delay, code, reason });
    clearTimeout(this._retryTimer);
    this._retryTimer = setTimeout(() => this._open(ConnectionState.RECONNECTING), delay);
  }

  private _reconnectNow(): void {
    if (this._ws) return;
    clearTimeout(this._retryTimer);
    this._open(ConnectionState.RECONNECTING);
  }

  // --- frames ------------------------------------------------------------------------------

  private _onMessage(msg: { data: unknown }): void {
    let frame: Record<string, unknown>;
    try {
      const parsed: unknown = JSON.parse(String(msg.data));
      if (parsed === null || typeof parsed !== "object") return;
      frame = parsed as Record<string, unknown>;
    } catch {
      return;
    }
    clearTimeout(this._pongTimer);
    this._pongTimer = undefined;
    this._emit("frame", frame as unknown as ServerFrame);
    if (frame.type === "connected") return this._onConnected(frame as unknown as ConnectedFrame);
    if (frame.type === "ack") return this._settle(frame.id as string, frame as unknown as AckFrame, null);
    if (frame.type === "pong") return;
    if (frame.type === "unrecovered") return this._onUnrecovered(frame as unknown as UnrecoveredFrame);
    if (frame.error !== undefined && frame.code !== undefined) {
      const error = frame as unknown as ErrorFrame;
      const err = new RealtimeError(error.code, error.error, error);
      if (error.id !== undefined && this._pending.has(String(error.id))) return this._settle(String(error.id), null, err);
      this._emit("error", error);
      return;
    }
    if (typeof frame.event === "string" && typeof frame.channel === "string") {
      const event = frame as unknown as EventFrame;
      if (typeof event.offset === "number") {
        const seen = this._positions.get(event.channel);
        // Already delivered (a replay overlapping what arrived live): drop it, once is enough.
        if (seen && seen.epoch === (event.epoch ?? null) && event.offset <= seen.offset) return;
        this._positions.set(event.channel, { offset: event.offset, epoch: event.epoch ?? null });
      }
      this._emit("event", event);
    }
  }

  /** The server lost publications of a channel up to (offset, epoch); events go on from there. */
  private _onUnrecovered(frame: UnrecoveredFrame): void {
    const { channel, offset, epoch } = frame;
    if (!this._subscriptions.has(channel) || typeof offset !== "number" || typeof epoch !== "string") return;
    // Even behind our position in the same epoch: the stream was rolled back, and the offsets
    // that follow are new publications, not repeats to drop.
    this._positions.set(channel, { offset, epoch });
    this._emit("recovery", { channel, recovered: false, reason: frame.reason || "", offset, epoch, ack: frame });
  }

  private _onConnected(frame: ConnectedFrame): void {
    this.clientId = frame.client_id;
    this.attempt = 0;
    this.lastError = null;
    this._setState(ConnectionState.CONNECTED);
    this._startKeepalive();
    // Resubscribe before anything queued goes out, so a queued publish sees its own echo.
    for (const channel of this._subscriptions.keys()) this._sendSubscribe(channel);
    const queued = this._outbox.splice(0);
    for (const text of queued) this._ws?.send(text);
    this._emit("connected", { clientId: this.clientId });
  }

  private _settle(id: string, ack: AckFrame | null, err: RealtimeError | null): void {
    const pending = this._pending.get(id);
    if (!pending) return;
    this._pending.delete(id);
    clearTimeout(pending.timer);
    if (err) pending.reject(err);
    else if (ack) pending.resolve(ack);
  }

  private _failPending(code: string, message: string, predicate: (p: Pending) => boolean = () => true): void {
    for (const [id, p] of [...this._pending]) {
      if (!predicate(p)) continue;
      this._pending.delete(id);
      clearTimeout(p.timer);
      p.reject(new RealtimeError(code, message));
    }
    if (code === "CLOSED") this._outbox.length = 0;
  }

  // --- keepalive -----------------------------------------------------------------------------

  private _startKeepalive(): void {
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

  private _stopKeepalive(): void {
    clearInterval(this._pingTimer);
    clearTimeout(this._pongTimer);
    this._pingTimer = undefined;
    this._pongTimer = undefined;
  }

  private _deadConnection(): void {
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
  request<A extends AckFrame = AckFrame>(
    message: ClientMessage,
    { timeout = this.options.requestTimeout }: RequestOptions = {},
  ): Promise<A> {
    if (this.state === ConnectionState.CLOSED) {
      return Promise.reject(new RealtimeError("CLOSED", "client closed"));
    }
    const id = `${this._idPrefix}${++this._seq}`;
    const frame = { ...message, id, timestamp: Date.now() } as ClientMessage & { id: string };
    return new Promise<A>((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(id);
        reject(new RealtimeError("TIMEOUT", `no answer to ${message.type} within ${timeout} ms`));
      }, timeout);
      this._pending.set(id, { resolve: resolve as (ack: AckFrame) => void, reject, timer, message: frame });
      this._send(frame);
    });
  }

  private _send(frame: ClientMessage & { id: string }): void {
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
  subscribe(channel: Channel, { timeout = this.options.requestTimeout }: RequestOptions = {}): Promise<SubscribeAck> {
    let sub = this._subscriptions.get(channel);
    if (sub && sub.confirmed && sub.ack) return Promise.resolve(sub.ack);
    return new Promise<SubscribeAck>((resolve, reject) => {
      const waiter: Waiter = { resolve, reject };
      waiter.timer = setTimeout(() => {
        if (sub) sub.waiters = sub.waiters.filter((w) => w !== waiter);
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

  private _sendSubscribe(channel: string): void {
    const sub = this._subscriptions.get(channel);
    if (!sub) return;
    const message: { type: "subscribe"; channel: Channel; since?: StreamPosition } = {
      type: "subscribe",
      channel: channel as Channel,
    };
    const position = this.options.recover ? this._positions.get(channel) : null;
    // Recovery: ask for what was missed since the last position seen; the server replays it
    // right after the ack, or answers recovered:false when its history cannot cover the gap.
    if (position && typeof position.epoch === "string") {
      message.since = { offset: position.offset, epoch: position.epoch };
    }
    sub.inflight = true;
    this.request<SubscribeAck>(message)
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
          this._emit("recovery", {
            channel,
            recovered: ack.recovered === true,
            reason: "resubscribe",
            offset: ack.offset ?? null,
            epoch: ack.epoch ?? null,
            ack,
          });
        }
        for (const w of sub.waiters.splice(0)) {
          clearTimeout(w.timer);
          w.resolve(ack);
        }
      })
      .catch((err: RealtimeError) => {
        if (this._subscriptions.get(channel) !== sub) return;
        if (err.code === "DISCONNECTED" || err.code === "TIMEOUT" || err.code === "CLOSED") return;
        // The server refused (invalid channel, forbidden, too many): stop asking.
        this._subscriptions.delete(channel);
        this._rejectWaiters(sub, err.code, err.message, err.frame);
      });
  }

  private _rejectWaiters(sub: Subscription, code: string, message: string, frame: ErrorFrame | null = null): void {
    for (const w of sub.waiters.splice(0)) {
      clearTimeout(w.timer);
      w.reject(new RealtimeError(code, message, frame));
    }
  }

  private _failWaiters(code: string, message: string): void {
    for (const sub of this._subscriptions.values()) this._rejectWaiters(sub, code, message);
    this._failPending(code, message);
  }

  /** Stop receiving `channel` (and stop resubscribing to it). */
  unsubscribe(channel: Channel): Promise<UnsubscribeAck | null> {
    const sub = this._subscriptions.get(channel);
    this._subscriptions.delete(channel);
    this._positions.delete(channel);
    if (sub) this._rejectWaiters(sub, "UNSUBSCRIBED", "unsubscribed");
    if (!this.connected) return Promise.resolve(null);
    return this.request<UnsubscribeAck>({ type: "unsubscribe", channel });
  }

  /** Channels this client keeps subscribed. */
  get channels(): string[] {
    return [...this._subscriptions.keys()];
  }

  /** The last {offset, epoch} seen on `channel`, for apps that keep their own position. */
  position(channel: string): { offset: number; epoch: string | null } | null {
    return this._positions.get(channel) ?? null;
  }

  /** Publish `event` on `channel`; resolves with the ack ({offset, …}). */
  publish<D = unknown>(channel: Channel, event: string, data?: D, options?: RequestOptions): Promise<PublishAck> {
    return this.request<PublishAck>({ type: "publish", channel, event, data: data ?? {} }, options);
  }

  /** Change identity (agent, session, token); reconnects reuse it. */
  auth(
    { agentId, sessionId, token }: { agentId?: string | null; sessionId?: string | null; token?: string | null } = {},
    options?: RequestOptions,
  ): Promise<AuthAck> {
    if (agentId !== undefined) this.options.agentId = agentId;
    if (sessionId !== undefined) this.options.sessionId = sessionId;
    if (token !== undefined) this.options.token = token;
    const message: ClientMessage = { type: "auth" };
    if (agentId) message.agent_id = agentId;
    if (sessionId) message.session_id = sessionId;
    if (token) message.token = token;
    return this.request<AuthAck>(message, options);
  }

  /** The channel's retained publications after `since` (oldest first) and its top. */
  history(channel: Channel, { since, limit }: { since?: StreamPosition; limit?: number } = {}, options?: RequestOptions): Promise<HistoryAck> {
    const message: ClientMessage = { type: "history", channel };
    if (since) message.since = since;
    if (limit !== undefined) message.limit = limit;
    return this.request<HistoryAck>(message, options);
  }

  /** Who is subscribed to `channel`, cluster-wide. */
  presence(channel: Channel, options?: RequestOptions): Promise<PresenceAck> {
    return this.request<PresenceAck>({ type: "presence", channel }, options);
  }

  /** How many clients and agents are subscribed to `channel`. */
  presenceStats(channel: Channel, options?: RequestOptions): Promise<PresenceStatsAck> {
    return this.request<PresenceStatsAck>({ type: "presence_stats", channel }, options);
  }
}

export default RealtimeClient;
