/**
 * @context-manager/client: the realtime client and the wire protocol's types.
 *
 *   import { RealtimeClient } from "@context-manager/client";
 *
 * The React hooks are at "@context-manager/client/react".
 */

export {
  ConnectionState,
  RealtimeClient,
  RealtimeError,
  backoffDelay,
  eventMatcher,
} from "./client.js";
export type {
  BackoffOptions,
  ClientEvents,
  ClientOptions,
  LocalErrorCode,
  Recovery,
  RequestOptions,
  StateChange,
  WebSocketConstructor,
  WebSocketLike,
} from "./client.js";
export {
  CLOSE_ADVICE,
  CloseCode,
  ErrorCode,
  MessageType,
  ResetReason,
  SERVER_EVENTS,
  closeAdvice,
  isServerEvent,
  shouldReconnect,
} from "./protocol.js";
export type * from "./protocol.js";
export { RealtimeClient as default } from "./client.js";
