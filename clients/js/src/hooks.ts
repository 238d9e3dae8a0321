/**
 * The seed's React hooks over RealtimeClient, built from the React you pass in.
 *
 * `@context-manager/client/react` calls this with the `react` package (a peer dependency) and
 * exports the result; the dashboard's /static/react-hooks.js serves this factory itself, so a
 * page without a bundler passes its own React (UMD, import map, any version 17+):
 *
 *   const { useWebSocket, useRealtimeMetrics } = createRealtimeHooks(React, { url, agentId });
 *
 * Every hook shares one RealtimeClient (created on first use from configure()'s options, or
 * the one a <RealtimeProvider> or the `client` option gives), so a page opens one WebSocket
 * however many components listen. Subscriptions are kept for the life of that client (other
 * components may rely on them); events are delivered only to the components that asked for
 * their channel.
 */

import type * as ReactTypes from "react";

import { ConnectionState, RealtimeClient, eventMatcher } from "./client.js";
import type { ClientOptions, Recovery } from "./client.js";
import type { Channel, EventFrame, MessageEventData, MetricsSnapshot, PublishAck } from "./protocol.js";

/** What the hooks need of React. */
export type ReactLike = Pick<
  typeof ReactTypes,
  "useCallback" | "useContext" | "useEffect" | "useMemo" | "useRef" | "useState" | "createContext" | "createElement"
>;

/** Where the shared client connects: the URL, the identity, and any RealtimeClient option. */
export interface RealtimeConfig extends ClientOptions {
  /** The WebSocket URL (default ws://<this page's host>:3849/ws). */
  url?: string;
  /** Use this client instead of creating one. */
  client?: RealtimeClient;
}

export interface UseWebSocketOptions {
  /** Channels to subscribe to (default ["global"]). */
  channels?: Channel[];
  /** Called with every event of those channels. */
  onEvent?: (event: EventFrame) => void;
  /** Called when events of those channels could not be recovered: reload their state. */
  onRecovery?: (recovery: Recovery) => void;
  /** A client of your own instead of the shared one. */
  client?: RealtimeClient;
}

export interface UseWebSocketResult {
  connected: boolean;
  state: ConnectionState;
  lastMessage: EventFrame | null;
  send: <D = unknown>(channel: Channel, event: string, data?: D) => Promise<PublishAck>;
  client: RealtimeClient;
}

export interface UseRealtimeMetricsResult {
  /** The latest `metric.update` snapshot (null until the first one). */
  metrics: MetricsSnapshot | null;
  connected: boolean;
  state: ConnectionState;
}

export interface UseRealtimeEventsOptions {
  channels?: Channel[];
  /** An event glob: "task.*", "*.failed", comma-separated alternatives. */
  event?: string | null;
  /** Events kept, newest first (100). */
  limit?: number;
  client?: RealtimeClient;
}

export interface UseRealtimeEventsResult {
  /** Newest first. */
  events: EventFrame[];
  clear: () => void;
  connected: boolean;
  state: ConnectionState;
}

export interface UseAgentChannelOptions {
  client?: RealtimeClient;
  /** Messages kept, oldest first (200). */
  limit?: number;
}

export interface UseAgentChannelResult {
  /** Events on `agents/{agentId}`, oldest first. */
  messages: EventFrame[];
  /** Send a direct message: `message.new` to `agents/{toAgent}` (stored, then delivered). */
  send: (toAgent: string, content: string, data?: Record<string, unknown>) => Promise<PublishAck>;
  connected: boolean;
  state: ConnectionState;
}

export interface RealtimeProviderProps extends RealtimeConfig {
  children?: ReactTypes.ReactNode;
}

export interface RealtimeHooks {
  useWebSocket(options?: UseWebSocketOptions): UseWebSocketResult;
  useRealtimeMetrics(options?: { client?: RealtimeClient }): UseRealtimeMetricsResult;
  useRealtimeEvents(options?: UseRealtimeEventsOptions): UseRealtimeEventsResult;
  useAgentChannel(agentId: string | null | undefined, options?: UseAgentChannelOptions): UseAgentChannelResult;
  /** The client the hooks use here (the provider's, or the shared one). */
  useRealtimeClient(): RealtimeClient;
  /** Give the components below their own client (closed when the provider unmounts). */
  RealtimeProvider(props: RealtimeProviderProps): ReactTypes.ReactElement;
  /** Set where the shared client connects; call once, before the first hook renders. */
  configure(config: RealtimeConfig): void;
  /** The shared client, created and connected on first use. */
  getClient(): RealtimeClient;
}

function defaultUrl(): string {
  const host = (globalThis as { location?: { hostname?: string } }).location?.hostname || "127.0.0.1";
  return `ws://${host.includes(":") ? `[${host}]` : host}:3849/ws`;
}

function createClient(config: RealtimeConfig): RealtimeClient {
  const { url, client, ...options } = config;
  return client ?? new RealtimeClient(url || defaultUrl(), options);
}

/** Build the seed's hooks (useWebSocket, useRealtimeMetrics, …) over `React`. */
export function createRealtimeHooks(React: ReactLike, initial: RealtimeConfig = {}): RealtimeHooks {
  const { useCallback, useContext, useEffect, useMemo, useRef, useState } = React;
  let config: RealtimeConfig = { ...initial };
  let shared: RealtimeClient | null = initial.client ?? null;
  const Context = React.createContext<RealtimeClient | null>(null);

  function configure(next: RealtimeConfig): void {
    config = { ...config, ...next };
    if (shared && shared !== next.client) {
      // Reconfigured: the next hook to render gets a client with the new settings.
      if (shared !== initial.client) shared.close();
      shared = null;
    }
    if (next.client) shared = next.client;
  }

  function getClient(): RealtimeClient {
    if (!shared) shared = createClient(config);
    if (shared.state === ConnectionState.IDLE) shared.connect();
    return shared;
  }

  function useRealtimeClient(): RealtimeClient {
    return useContext(Context) ?? getClient();
  }

  function RealtimeProvider({ children, ...props }: RealtimeProviderProps): ReactTypes.ReactElement {
    const key = JSON.stringify([props.url, props.agentId, props.sessionId, props.token]);
    const client = useMemo(() => createClient(props), [key, props.client]); // eslint-disable-line react-hooks/exhaustive-deps
    useEffect(() => {
      if (client.state === ConnectionState.IDLE || client.state === ConnectionState.CLOSED) client.connect();
      return () => {
        if (client !== props.client) client.close();
      };
    }, [client]); // eslint-disable-line react-hooks/exhaustive-deps
    return React.createElement(Context.Provider, { value: client }, children);
  }

  function useConnectionState(client: RealtimeClient): ConnectionState {
    const [state, setState] = useState<ConnectionState>(client.state);
    useEffect(() => {
      setState(client.state);
      return client.on("state", (change) => setState(change.state));
    }, [client]);
    return state;
  }

  function useWebSocket({ channels = ["global"], onEvent, onRecovery, client: own }: UseWebSocketOptions = {}): UseWebSocketResult {
    const fromContext = useContext(Context);
    const client = own ?? fromContext ?? getClient();
    const state = useConnectionState(client);
    const [lastMessage, setLastMessage] = useState<EventFrame | null>(null);
    const handler = useRef(onEvent);
    handler.current = onEvent;
    const recovery = useRef(onRecovery);
    recovery.current = onRecovery;
    const key = channels.join("\n");
    useEffect(() => {
      const wanted = new Set(key ? key.split("\n") : []);
      for (const channel of wanted) {
        client.subscribe(channel as Channel).catch((err: Error) => console.warn(`subscribe ${channel}:`, err.message));
      }
      const offEvent = client.on("event", (frame) => {
        if (!wanted.has(frame.channel)) return;
        setLastMessage(frame);
        handler.current?.(frame);
      });
      const offRecovery = client.on("recovery", (detail) => {
        if (wanted.has(detail.channel)) recovery.current?.(detail);
      });
      return () => {
        offEvent();
        offRecovery();
      };
    }, [client, key]);
    const send = useCallback(
      <D = unknown>(channel: Channel, event: string, data?: D) => client.publish(channel, event, data),
      [client],
    );
    return { connected: state === ConnectionState.CONNECTED, state, lastMessage, send, client };
  }

  function useRealtimeMetrics({ client }: { client?: RealtimeClient } = {}): UseRealtimeMetricsResult {
    const [metrics, setMetrics] = useState<MetricsSnapshot | null>(null);
    const { connected, state } = useWebSocket({
      channels: ["metrics"],
      client,
      onEvent: (frame) => {
        if (frame.event === "metric.update") setMetrics(frame.data as MetricsSnapshot);
      },
    });
    return { metrics, connected, state };
  }

  function useRealtimeEvents({ channels = ["global"], event = null, limit = 100, client }: UseRealtimeEventsOptions = {}): UseRealtimeEventsResult {
    const [events, setEvents] = useState<EventFrame[]>([]);
    const matches = useMemo(() => eventMatcher(event), [event]);
    const { connected, state } = useWebSocket({
      channels,
      client,
      onEvent: (frame) => {
        if (matches(frame.event)) setEvents((previous) => [frame, ...previous].slice(0, limit));
      },
    });
    const clear = useCallback(() => setEvents([]), []);
    return { events, clear, connected, state };
  }

  function useAgentChannel(agentId: string | null | undefined, { client, limit = 200 }: UseAgentChannelOptions = {}): UseAgentChannelResult {
    const [messages, setMessages] = useState<EventFrame[]>([]);
    const result = useWebSocket({
      channels: agentId ? [`agents/${agentId}`] : [],
      client,
      onEvent: (frame) => setMessages((previous) => [...previous, frame].slice(-limit)),
    });
    const own = result.client;
    const send = useCallback(
      (toAgent: string, content: string, data: Record<string, unknown> = {}) => {
        const message: Partial<MessageEventData> = { from_agent: agentId ?? undefined, to_agent: toAgent, content, data };
        return own.publish(`agents/${toAgent}`, "message.new", message);
      },
      [own, agentId],
    );
    return { messages, send, connected: result.connected, state: result.state };
  }

  return {
    useWebSocket,
    useRealtimeMetrics,
    useRealtimeEvents,
    useAgentChannel,
    useRealtimeClient,
    RealtimeProvider,
    configure,
    getClient,
  };
}

export default createRealtimeHooks;
