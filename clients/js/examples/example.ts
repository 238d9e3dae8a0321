// Every export of @context-manager/client, type-checked by `npm run typecheck` and, from the
// packed tarball in an empty folder, by tests/test_client_js.py (which also runs it).
import RealtimeClientDefault, {
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
  eventMatcher,
  isServerEvent,
  shouldReconnect,
} from "@context-manager/client";
import type {
  AckFrame,
  BackoffOptions,
  Channel,
  ClientEvents,
  ClientMessage,
  ClientOptions,
  ErrorFrame,
  EventFrame,
  LocalErrorCode,
  MetricsSnapshot,
  Recovery,
  ServerEvent,
  ServerEvents,
  ServerFrame,
  StateChange,
  StreamPosition,
  SubscribeAck,
  TaskEventData,
} from "@context-manager/client";

const url = process.env.CM_WS_URL ?? "ws://127.0.0.1:3849/ws";
const backoff: BackoffOptions = { initial: 100, max: 1000, factor: 2, jitter: 0.5 };
const options: ClientOptions = { agentId: "example", backoff };
const client: RealtimeClient = new RealtimeClientDefault(url, options);

client.on("state", (change: StateChange) => console.log("state", change.state));
client.on("recovery", (r: Recovery) => r.recovered || console.log("reload", r.channel));
client.on("error", (frame: ErrorFrame) => console.log("error", frame.code));
client.on("frame", (_frame: ServerFrame) => undefined);
const onEvent: (e: ClientEvents["event"]) => void = () => undefined;
client.on("event", onEvent);
const tasks = eventMatcher("task.*");
client.listen({ channel: "agents/example" }, (frame: EventFrame) => {
  if (isServerEvent(frame, "task.created")) {
    const task: TaskEventData = frame.data;
    console.log("task.created", task.task_id, tasks(frame.event));
  }
});
client.connect();
await client.ready(5000);

const channel: Channel = "agents/example";
const ack: SubscribeAck = await client.subscribe(channel);
const since: StreamPosition = { offset: ack.offset, epoch: ack.epoch };
const published = await client.publish("topics/examples", "example.ran", { at: Date.now() });
console.log("published at offset", published.offset);
const history = await client.history("topics/examples", { limit: 5 });
console.log("history", history.publications.length, (await client.presenceStats(channel)).num_clients);
await client.presence(channel);

const ping: ClientMessage = { type: MessageType.PING };
console.log(ping.type, since.offset >= 0);
try {
  await client.subscribe("no such channel" as Channel);
} catch (err) {
  const code: string = err instanceof RealtimeError ? err.code : "?";
  console.log("refused", code === ErrorCode.INVALID_CHANNEL);
}
const local: LocalErrorCode = "TIMEOUT";
const anAck: AckFrame | null = null;
const snapshot: MetricsSnapshot | null = null;
const anyEvent: ServerEvent | null = null;
const name: keyof ServerEvents = SERVER_EVENTS[0];
console.log(local, anAck, snapshot, anyEvent, name, ResetReason.NEW_EPOCH);
console.log(shouldReconnect(CloseCode.IDLE_TIMEOUT), closeAdvice(3500), CLOSE_ADVICE[1012], backoffDelay(2, backoff));
await client.unsubscribe(channel);
client.close();
console.log("done", client.state === ConnectionState.CLOSED);
