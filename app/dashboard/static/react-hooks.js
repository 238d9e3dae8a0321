// @context-manager/client 0.1.0: generated from clients/js by `npm run build`; do not edit.

// dist/hooks.js
import { ConnectionState, RealtimeClient, eventMatcher } from "./client.js";
function defaultUrl() {
  const host = globalThis.location?.hostname || "127.0.0.1";
  return `ws://${host.includes(":") ? `[${host}]` : host}:3849/ws`;
}
function createClient(config) {
  const { url, client, ...options } = config;
  return client ?? new RealtimeClient(url || defaultUrl(), options);
}
function createRealtimeHooks(React, initial = {}) {
  const { useCallback, useContext, useEffect, useMemo, useRef, useState } = React;
  let config = { ...initial };
  let shared = initial.client ?? null;
  const Context = React.createContext(null);
  function configure(next) {
    config = { ...config, ...next };
    if (shared && shared !== next.client) {
      if (shared !== initial.client)
        shared.close();
      shared = null;
    }
    if (next.client)
      shared = next.client;
  }
  function getClient() {
    if (!shared)
      shared = createClient(config);
    if (shared.state === ConnectionState.IDLE)
      shared.connect();
    return shared;
  }
  function useRealtimeClient() {
    return useContext(Context) ?? getClient();
  }
  function RealtimeProvider({ children, ...props }) {
    const key = JSON.stringify([props.url, props.agentId, props.sessionId, props.token]);
    const client = useMemo(() => createClient(props), [key, props.client]);
    useEffect(() => {
      if (client.state === ConnectionState.IDLE || client.state === ConnectionState.CLOSED)
        client.connect();
      return () => {
        if (client !== props.client)
          client.close();
      };
    }, [client]);
    return React.createElement(Context.Provider, { value: client }, children);
  }
  function useConnectionState(client) {
    const [state, setState] = useState(client.state);
    useEffect(() => {
      setState(client.state);
      return client.on("state", (change) => setState(change.state));
    }, [client]);
    return state;
  }
  function useWebSocket({ channels = ["global"], onEvent, onRecovery, client: own } = {}) {
    const fromContext = useContext(Context);
    const client = own ?? fromContext ?? getClient();
    const state = useConnectionState(client);
    const [lastMessage, setLastMessage] = useState(null);
    const handler = useRef(onEvent);
    handler.current = onEvent;
    const recovery = useRef(onRecovery);
    recovery.current = onRecovery;
    const key = channels.join("\n");
    useEffect(() => {
      const wanted = new Set(key ? key.split("\n") : []);
      for (const channel of wanted) {
        client.subscribe(channel).catch((err) => console.warn(`subscribe ${channel}:`, err.message));
      }
      const offEvent = client.on("event", (frame) => {
        if (!wanted.has(frame.channel))
          return;
        setLastMessage(frame);
        handler.current?.(frame);
      });
      const offRecovery = client.on("recovery", (detail) => {
        if (wanted.has(detail.channel))
          recovery.current?.(detail);
      });
      return () => {
        offEvent();
        offRecovery();
      };
    }, [client, key]);
    const send = useCallback((channel, event, data) => client.publish(channel, event, data), [client]);
    return { connected: state === ConnectionState.CONNECTED, state, lastMessage, send, client };
  }
  function useRealtimeMetrics({ client } = {}) {
    const [metrics, setMetrics] = useState(null);
    const { connected, state } = useWebSocket({
      channels: ["metrics"],
      client,
      onEvent: (frame) => {
        if (frame.event === "metric.update")
          setMetrics(frame.data);
      }
    });
    return { metrics, connected, state };
  }
  function useRealtimeEvents({ channels = ["global"], event = null, limit = 100, client } = {}) {
    const [events, setEvents] = useState([]);
    const matches = useMemo(() => eventMatcher(event), [event]);
    const { connected, state } = useWebSocket({
      channels,
      client,
      onEvent: (frame) => {
        if (matches(frame.event))
          setEvents((previous) => [frame, ...previous].slice(0, limit));
      }
    });
    const clear = useCallback(() => setEvents([]), []);
    return { events, clear, connected, state };
  }
  function useAgentChannel(agentId, { client, limit = 200 } = {}) {
    const [messages, setMessages] = useState([]);
    const result = useWebSocket({
      channels: agentId ? [`agents/${agentId}`] : [],
      client,
      onEvent: (frame) => setMessages((previous) => [...previous, frame].slice(-limit))
    });
    const own = result.client;
    const send = useCallback((toAgent, content, data = {}) => {
      const message = { from_agent: agentId ?? void 0, to_agent: toAgent, content, data };
      return own.publish(`agents/${toAgent}`, "message.new", message);
    }, [own, agentId]);
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
    getClient
  };
}
var hooks_default = createRealtimeHooks;
export {
  createRealtimeHooks,
  hooks_default as default
};
