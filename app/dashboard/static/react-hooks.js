/**
 * The seed's React hooks, as a thin optional layer over client.js. React is a parameter, not an
 * import, so this module works with any React (17+, 18, 19) from any bundler or a <script> tag:
 *
 *   import React from "react";
 *   import { createRealtimeHooks } from "http://127.0.0.1:3848/static/react-hooks.js";
 *
 *   export const { useWebSocket, useRealtimeMetrics, useRealtimeEvents, useAgentChannel } =
 *     createRealtimeHooks(React, { url: "ws://127.0.0.1:3849/ws", agentId: "dashboard-ui" });
 *
 *   const { connected, lastMessage, send } = useWebSocket({ channels: ["global"], onEvent, onRecovery });
 *   const { metrics, connected } = useRealtimeMetrics();
 *   const { events, clear } = useRealtimeEvents({ channels: ["global"], event: "task.*", limit: 100 });
 *   const { messages, send } = useAgentChannel("backend-laravel");
 *
 * Every hook shares one RealtimeClient (created on first use, or the `client` you pass), so a
 * page opens one WebSocket however many components listen. Subscriptions are kept for the
 * life of that client (other components may rely on them); events are delivered only to the
 * components that asked for their channel.
 */

import { RealtimeClient, eventMatcher } from "./client.js";

export function createRealtimeHooks(React, options = {}) {
  const { useCallback, useEffect, useMemo, useRef, useState } = React;
  let shared = options.client || null;

  /** The shared client, connected on first use. */
  function getClient() {
    if (!shared) {
      const url = options.url || `ws://${globalThis.location?.hostname || "127.0.0.1"}:3849/ws`;
      shared = new RealtimeClient(url, options);
    }
    if (shared.state === "idle") shared.connect();
    return shared;
  }

  function useConnectionState(client) {
    const [state, setState] = useState(client.state);
    useEffect(() => {
      setState(client.state);
      return client.on("state", (change) => setState(change.state));
    }, [client]);
    return state;
  }

  /**
   * {connected, state, lastMessage, send(channel, event, data), client} for `channels`.
   * `onRecovery({channel, recovered, reason, offset, epoch})` is called when events of one of
   * them could not be recovered (after a reconnect, or the server's "unrecovered" notice):
   * reload that channel's state there.
   */
  function useWebSocket({ channels = ["global"], onEvent, onRecovery, client: own } = {}) {
    const client = own || getClient();
    const state = useConnectionState(client);
    const [lastMessage, setLastMessage] = useState(null);
    const handler = useRef(onEvent);
    handler.current = onEvent;
    const recovery = useRef(onRecovery);
    recovery.current = onRecovery;
    const key = channels.join("\n");
    useEffect(() => {
      const wanted = new Set(key ? key.split("\n") : []);
      for (const channel of wanted) client.subscribe(channel).catch((err) => console.warn(`subscribe ${channel}:`, err.message));
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
    const send = useCallback((channel, event, data) => client.publish(channel, event, data), [client]);
    return { connected: state === "connected", state, lastMessage, send, client };
  }

  /** {metrics, connected, state}: the latest `metric.update` snapshot from `metrics`. */
  function useRealtimeMetrics({ client } = {}) {
    const [metrics, setMetrics] = useState(null);
    const { connected, state } = useWebSocket({
      channels: ["metrics"],
      client,
      onEvent: (frame) => {
        if (frame.event === "metric.update") setMetrics(frame.data);
      },
    });
    return { metrics, connected, state };
  }

  /** {events (newest first, at most `limit`), clear, connected, state}, filtered by an event glob. */
  function useRealtimeEvents({ channels = ["global"], event = null, limit = 100, client } = {}) {
    const [events, setEvents] = useState([]);
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

  /**
   * {messages, send(toAgent, content, data), connected, state} on `agents/{agentId}`.
   * `send` publishes message.new to the recipient's channel (the server stores it first).
   */
  function useAgentChannel(agentId, { client, limit = 200 } = {}) {
    const [messages, setMessages] = useState([]);
    const result = useWebSocket({
      channels: agentId ? [`agents/${agentId}`] : [],
      client,
      onEvent: (frame) => setMessages((previous) => [...previous, frame].slice(-limit)),
    });
    const send = useCallback(
      (toAgent, content, data = {}) =>
        result.client.publish(`agents/${toAgent}`, "message.new", { from_agent: agentId, to_agent: toAgent, content, data }),
      [result.client, agentId],
    );
    return { messages, send, connected: result.connected, state: result.state };
  }

  return { useWebSocket, useRealtimeMetrics, useRealtimeEvents, useAgentChannel, getClient };
}

export default createRealtimeHooks;
