/**
 * The wire protocol of context-manager's WebSocket server, as types and tables.
 *
 * The server's source of truth is app/realtime/protocol.py (shapes, error and close codes),
 * app/realtime/channels.py (channels) and app/events.py (the server's events); docs/asyncapi.yaml
 * is generated from them, and the tests hold the tables below to both.
 */

/** A request id chosen by the client: echoed back in the ack or error of that request. */
export type RequestId = string | number;

/** A channel: `global`, `metrics`, `agents/{agent_id}`, `sessions/{session_id}`, `topics/{name}`. */
export type Channel = "global" | "metrics" | `agents/${string}` | `sessions/${string}` | `topics/${string}`;

/** A position in a channel's stream: the last offset seen, and the stream's identity. */
export interface StreamPosition {
  offset: number;
  epoch: string;
}

// --- client → server --------------------------------------------------------------------------

/** Values of `type` a client may send. */
export const MessageType = Object.freeze({
  SUBSCRIBE: "subscribe",
  UNSUBSCRIBE: "unsubscribe",
  PUBLISH: "publish",
  AUTH: "auth",
  PING: "ping",
  HISTORY: "history",
  PRESENCE: "presence",
  PRESENCE_STATS: "presence_stats",
} as const);
export type MessageType = (typeof MessageType)[keyof typeof MessageType];

interface Request {
  id?: RequestId;
  /** Milliseconds since the epoch; accepted and ignored by the server. */
  timestamp?: number;
}

export interface SubscribeMessage extends Request {
  type: "subscribe";
  channel: Channel;
  /** Replay what was published after this position (recovery). */
  since?: StreamPosition;
}

export interface UnsubscribeMessage extends Request {
  type: "unsubscribe";
  channel: Channel;
}

export interface PublishMessage<D = unknown> extends Request {
  type: "publish";
  channel: Channel;
  event: string;
  data?: D;
}

export interface AuthMessage extends Request {
  type: "auth";
  /** Open mode: the connection's identity. */
  agent_id?: string;
  session_id?: string;
  /** Token mode: a signed token (`context-manager token create`). */
  token?: string;
}

export interface PingMessage {
  type: "ping";
  timestamp?: number;
}

export interface HistoryMessage extends Request {
  type: "history";
  channel: Channel;
  since?: StreamPosition;
  /** 1–1000 (default 1000). */
  limit?: number;
}

export interface PresenceMessage extends Request {
  type: "presence";
  channel: Channel;
}

export interface PresenceStatsMessage extends Request {
  type: "presence_stats";
  channel: Channel;
}

export type ClientMessage =
  | SubscribeMessage
  | UnsubscribeMessage
  | PublishMessage
  | AuthMessage
  | PingMessage
  | HistoryMessage
  | PresenceMessage
  | PresenceStatsMessage;

// --- server → client --------------------------------------------------------------------------

export interface ConnectedFrame {
  type: "connected";
  client_id: string;
  timestamp: number;
}

/** An ack: `success` true, the request's `id`, and what the request type adds. */
export interface AckFrame {
  type: "ack";
  id: RequestId;
  success: true;
  timestamp: number;
  channel?: string;
  [key: string]: unknown;
}

export interface SubscribeAck extends AckFrame {
  channel: string;
  /** The channel's top when subscribed (or the recovered position). */
  offset: number;
  epoch: string;
  /** With `since`: whether every missed publication follows (else reload the state). */
  recovered?: boolean;
  replayed?: number;
}

export interface UnsubscribeAck extends AckFrame {
  channel: string;
}

export interface PublishAck extends AckFrame {
  channel: string;
  /** The publication's offset; absent for a direct message (then `message_id`). */
  offset?: number;
  message_id?: string;
}

export interface AuthAck extends AckFrame {
  agent_id: string | null;
  session_id: string | null;
  role: string;
  expires_at: number | null;
}

export interface HistoryAck extends AckFrame {
  channel: string;
  offset: number;
  epoch: string;
  recovered: boolean;
  publications: EventFrame[];
}

export interface PresenceMember {
  client_id: string;
  agent_id: string | null;
  session_id: string | null;
  connected_at: number;
  node_id: string;
}

export interface PresenceAck extends AckFrame {
  channel: string;
  presence: Record<string, PresenceMember>;
}

export interface PresenceStatsAck extends AckFrame {
  channel: string;
  num_clients: number;
  num_agents: number;
}

export interface PongFrame {
  type: "pong";
  timestamp: number;
}

/** Stable error codes in `code` of an error frame. The connection stays open. */
export const ErrorCode = Object.freeze({
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
  INTERNAL: "INTERNAL",
} as const);
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

export interface ErrorFrame {
  error: string;
  code: ErrorCode;
  timestamp: number;
  /** The id of the request refused, when it could be read. */
  id?: RequestId;
}

/** Why an `unrecovered` notice was sent. */
export const ResetReason = Object.freeze({ NEW_EPOCH: "new_epoch", GAP: "gap" } as const);
export type ResetReason = (typeof ResetReason)[keyof typeof ResetReason];

/** Publications of `channel` up to (offset, epoch) may be lost: reload its state. */
export interface UnrecoveredFrame {
  type: "unrecovered";
  channel: string;
  offset: number;
  epoch: string;
  recovered: false;
  reason: ResetReason;
  timestamp: number;
}

/** One publication on a channel. `offset`/`epoch`: its place in the channel's stream. */
export interface EventFrame<E extends string = string, D = unknown> {
  channel: string;
  event: E;
  data: D;
  timestamp: number;
  offset?: number;
  epoch?: string;
}

export type ServerFrame = ConnectedFrame | AckFrame | PongFrame | ErrorFrame | UnrecoveredFrame | EventFrame;

// --- close codes ------------------------------------------------------------------------------

/** WebSocket close codes the server sends: 3000–3499 mean "reconnect", 3500–3999 "do not". */
export const CloseCode = Object.freeze({
  NORMAL: 1000,
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
  CONNECTION_LIMIT: 3504,
} as const);
export type CloseCode = (typeof CloseCode)[keyof typeof CloseCode];

/** What a close code tells the client to do (docs/protocol.md, "Close codes"). */
export const CLOSE_ADVICE: Readonly<Record<CloseCode, string>> = Object.freeze({
  1000: "closed normally: do not reconnect",
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
  3504: "too many connections: reconnect later",
});

/** Close codes after which reconnecting without changing something is pointless. */
const FINAL_CODES: ReadonlySet<number> = new Set([1000, 1007, 1008, 1009]);

/** Whether a connection closed with `code` (null: it never opened) is worth retrying. */
export function shouldReconnect(code: number | null | undefined): boolean {
  if (code === null || code === undefined) return true;
  if (FINAL_CODES.has(code)) return false;
  // 3500–3999: "do not reconnect" (bad token, forbidden, connection limit).
  return !(code >= 3500 && code <= 3999);
}

/** What to do after a close with `code`, in words (for logs and status lines). */
export function closeAdvice(code: number | null | undefined): string {
  if (code === null || code === undefined) return "could not connect: retrying";
  const known = (CLOSE_ADVICE as Record<number, string>)[code];
  if (known) return known;
  return shouldReconnect(code) ? `closed with ${code}: reconnect` : `closed with ${code}: do not reconnect`;
}

// --- the server's events and their data -------------------------------------------------------

export type TaskStatus = "pending" | "in_progress" | "completed" | "failed" | "cancelled";

export interface Lease {
  id: string;
  agent_id: string;
  fence: number;
  expires_at: string;
}

/** `data` of `task.*`: the task as stored, with `task_id`. */
export interface TaskEventData {
  task_id: string;
  session_id: string | null;
  agent_id: string | null;
  title: string;
  description: string | null;
  status: TaskStatus;
  previous_status: TaskStatus | null;
  priority: number;
  payload: unknown;
  result: unknown;
  error: string | null;
  created_at: string;
  updated_at: string;
  started_at: string | null;
  completed_at: string | null;
  capabilities?: string[] | null;
  attempts?: number;
  max_attempts?: number;
  ready_at?: string | null;
  lease?: Lease | null;
  lease_outcome?: "expired" | "released" | null;
  [key: string]: unknown;
}

/** `data` of `subtask.*`: the subtask, with `subtask_id` and its `task_id`. */
export interface SubtaskEventData {
  subtask_id: string;
  task_id: string;
  session_id: string | null;
  agent_id: string | null;
  title: string;
  description: string | null;
  status: TaskStatus;
  previous_status: TaskStatus | null;
  payload: unknown;
  result: unknown;
  error: string | null;
  created_at: string;
  updated_at: string;
  started_at: string | null;
  completed_at: string | null;
  [key: string]: unknown;
}

/** `data` of `message.*`: the message, with `message_id`. */
export interface MessageEventData {
  message_id: string;
  from_agent: string;
  to_agent: string;
  session_id: string | null;
  content: string;
  data: unknown;
  created_at: string;
  expires_at: string | null;
  read_at: string | null;
  expired_at: string | null;
  seq?: number | null;
  thread_id?: string | null;
  reply_to?: string | null;
  [key: string]: unknown;
}

/** `data` of `reservation.*`. */
export interface ReservationEventData {
  reservation_id: string;
  agent_id: string;
  paths: string[];
  exclusive: boolean;
  reason: string | null;
  created_at: string;
  expires_at: string;
  released_at: string | null;
  expired_at: string | null;
  [key: string]: unknown;
}

/** `data` of `agent.connected`, `agent.disconnected` (with `close_code`), `agent.heartbeat`. */
export interface AgentEventData {
  agent_id: string;
  session_id: string | null;
  client_id?: string;
  node_id?: string;
  connected_at?: number;
  close_code?: number;
  [key: string]: unknown;
}

/** `data` of `webhook.disabled` (on `global`) and `webhook.test` (to webhook receivers). */
export interface WebhookEventData {
  webhook_id: string;
  reason?: string;
  failing_since?: string | null;
  [key: string]: unknown;
}

/** `data` of `metric.update` (as GET /api/metrics). */
export interface MetricsSnapshot {
  active_sessions: number;
  active_agents: number;
  connected_clients: number;
  actions_per_minute: number;
  tasks_by_status: Record<string, number>;
  tasks_completed_last_hour: number;
  tasks_failed_last_hour: number;
  failure_rate: number;
  mean_task_duration_seconds: number | null;
  unread_messages: number;
  events_per_second: number;
  timestamp: string;
  [key: string]: unknown;
}

/** The server's events (clients may not publish them) and the shape of their `data`. */
export interface ServerEvents {
  "task.created": TaskEventData;
  "task.updated": TaskEventData;
  "task.completed": TaskEventData;
  "task.failed": TaskEventData;
  "task.claimed": TaskEventData;
  "task.released": TaskEventData;
  "task.lease_expired": TaskEventData;
  "task.ready": TaskEventData;
  "subtask.created": SubtaskEventData;
  "subtask.updated": SubtaskEventData;
  "subtask.completed": SubtaskEventData;
  "subtask.failed": SubtaskEventData;
  "message.new": MessageEventData;
  "message.read": MessageEventData;
  "message.expired": MessageEventData;
  "reservation.created": ReservationEventData;
  "reservation.released": ReservationEventData;
  "reservation.expired": ReservationEventData;
  "agent.connected": AgentEventData;
  "agent.disconnected": AgentEventData;
  "agent.heartbeat": AgentEventData;
  "metric.update": MetricsSnapshot;
  "webhook.disabled": WebhookEventData;
  "webhook.test": WebhookEventData;
}

export type ServerEventName = keyof ServerEvents;

/** The names in ServerEvents, as a value (for tests and filters). */
export const SERVER_EVENTS: readonly ServerEventName[] = Object.freeze([
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
  "webhook.test",
]);

/** Any event frame of the server's own events, `data` typed by `event`. */
export type ServerEvent = { [E in ServerEventName]: EventFrame<E, ServerEvents[E]> }[ServerEventName];

/** Whether `frame` is one of the server's events named `name` (narrows `data`). */
export function isServerEvent<E extends ServerEventName>(
  frame: EventFrame,
  name: E,
): frame is EventFrame<E, ServerEvents[E]> {
  return frame.event === name;
}
