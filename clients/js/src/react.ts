/**
 * The seed's React hooks, ready to import (React is a peer dependency):
 *
 *   import { configure, useWebSocket, useRealtimeMetrics } from "@context-manager/client/react";
 *   configure({ url: "ws://127.0.0.1:3849/ws", agentId: "dashboard-ui" });
 *
 *   const { connected, lastMessage, send } = useWebSocket({ channels: ["global"], onEvent });
 *   const { metrics, connected } = useRealtimeMetrics();
 *   const { events, clear } = useRealtimeEvents({ channels: ["global"], event: "task.*" });
 *   const { messages, send } = useAgentChannel("backend-laravel");
 *
 * Or give a subtree its own connection: <RealtimeProvider url=… agentId=… token=…>.
 */

import React from "react";

import { createRealtimeHooks } from "./hooks.js";

const hooks = createRealtimeHooks(React);

export const {
  useWebSocket,
  useRealtimeMetrics,
  useRealtimeEvents,
  useAgentChannel,
  useRealtimeClient,
  RealtimeProvider,
  configure,
  getClient,
} = hooks;

export { createRealtimeHooks };
export type {
  ReactLike,
  RealtimeConfig,
  RealtimeHooks,
  RealtimeProviderProps,
  UseAgentChannelOptions,
  UseAgentChannelResult,
  UseRealtimeEventsOptions,
  UseRealtimeEventsResult,
  UseRealtimeMetricsResult,
  UseWebSocketOptions,
  UseWebSocketResult,
} from "./hooks.js";
