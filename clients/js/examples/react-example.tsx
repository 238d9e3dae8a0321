// Every export of @context-manager/client/react (tests/test_client_js.py renders it).
import {
  RealtimeProvider,
  configure,
  createRealtimeHooks,
  getClient,
  useAgentChannel,
  useRealtimeClient,
  useRealtimeEvents,
  useRealtimeMetrics,
  useWebSocket,
} from "@context-manager/client/react";
import type {
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
} from "@context-manager/client/react";
import React from "react";

const config: RealtimeConfig = { url: "ws://127.0.0.1:3849/ws", agentId: "dashboard-ui" };
configure(config);

export function Status(): React.ReactElement {
  const options: UseWebSocketOptions = { channels: ["global"] };
  const { connected, lastMessage }: UseWebSocketResult = useWebSocket(options);
  const { metrics }: UseRealtimeMetricsResult = useRealtimeMetrics();
  const eventsOptions: UseRealtimeEventsOptions = { event: "task.*", limit: 10 };
  const { events }: UseRealtimeEventsResult = useRealtimeEvents(eventsOptions);
  const agentOptions: UseAgentChannelOptions = { limit: 10 };
  const { messages }: UseAgentChannelResult = useAgentChannel("dashboard-ui", agentOptions);
  const client = useRealtimeClient();
  return (
    <p>
      {connected ? "live" : "…"} {metrics?.active_agents} {events.length} {messages.length} {lastMessage?.event} {client.state}
    </p>
  );
}

const props: RealtimeProviderProps = { url: "ws://127.0.0.1:3849/ws", agentId: "other" };
export const WithItsOwnConnection = () => (
  <RealtimeProvider {...props}>
    <Status />
  </RealtimeProvider>
);

const reactLike: ReactLike = React;
const hooks: RealtimeHooks = createRealtimeHooks(reactLike, config);
export const shared = [hooks.getClient, getClient];
