"""The WebSocket protocol as an AsyncAPI 3.1 document, built from the code that speaks it.

    python -m app.realtime.asyncapi > docs/asyncapi.yaml

Message types, error codes, close codes and reset reasons come from protocol.py, the channels
and their id grammar from channels.py's registry, the server's event names from app/events.py;
what they mean, and the shapes of the messages, are written here beside them, and a test fails
when a code, a kind or an event is added without its entry. tests/test_asyncapi.py checks that
docs/asyncapi.yaml is this document, and the JS package's tests validate it against the official
AsyncAPI 3.1 JSON schema (the `@asyncapi/specs` package) and real frames against its schemas.
The WebSocket port serves it at /asyncapi.yaml (app/realtime/http.py).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import yaml

from app import __version__
from app.events import DECLARED, ServerEvents
from app.realtime.channels import _EVENT_RE, ID_PATTERN, MAX_EVENT_LENGTH, ChannelKind
from app.realtime.channels import channel_pattern as _channel_pattern
from app.realtime.protocol import CloseCode, ErrorCode, MessageType, ResetReason

ASYNCAPI_VERSION = "3.1.0"

ERROR_CODES: dict[ErrorCode, str] = {
    ErrorCode.INVALID_JSON: "the frame is not JSON (or a binary frame is not UTF-8)",
    ErrorCode.INVALID_MESSAGE: "not a JSON object; `type` missing; a field missing or of the "
    "wrong type; nesting deeper than 128 levels",
    ErrorCode.UNKNOWN_TYPE: "`type` names no message of the protocol",
    ErrorCode.INVALID_CHANNEL: "the channel is outside the grammar",
    ErrorCode.INVALID_EVENT: "the event name is outside the grammar",
    ErrorCode.MESSAGE_TOO_LARGE: "the frame is larger than MAX_MESSAGE_BYTES (no `id`: refused "
    "before it is parsed)",
    ErrorCode.NOT_SUBSCRIBED: "unsubscribe from a channel the connection is not on",
    ErrorCode.TOO_MANY_SUBSCRIPTIONS: "MAX_SUBSCRIPTIONS reached",
    ErrorCode.FORBIDDEN: "the identity may not do this on that channel, or the event is the "
    "server's",
    ErrorCode.UNAUTHORIZED: "token mode: a message other than auth/ping before authenticating, "
    "or an auth without a valid token",
    ErrorCode.RATE_LIMITED: "more publishes or messages per second than allowed",
    ErrorCode.INTERNAL: "the server's fault; the text carries a reference that is in its log",
}

CLOSE_CODES: dict[int, tuple[str, str]] = {
    CloseCode.NORMAL: ("normal", "the client closed"),
    CloseCode.GOING_AWAY: ("going away", "the server is going away"),
    CloseCode.POLICY_VIOLATION: (
        "policy violation",
        "more than FRAME_RATE frames per second, or more than MAX_MESSAGE_FRAGMENTS fragments",
    ),
    CloseCode.MESSAGE_TOO_BIG: ("message too big", "a frame above MAX_FRAME_BYTES"),
    CloseCode.INTERNAL_ERROR: (
        "internal error",
        "a protocol ping was not answered within WS_PING_TIMEOUT",
    ),
    CloseCode.SERVICE_RESTART: (
        "service restart",
        "the node is shutting down; the reason `reconnect:<ms>` names the client's delay",
    ),
    CloseCode.IDLE_TIMEOUT: ("idle timeout", "no message for WS_IDLE_TIMEOUT seconds"),
    CloseCode.TOKEN_EXPIRED: ("token expired", "reconnect with a fresh token"),
    CloseCode.SLOW_CONSUMER: ("slow consumer", "the outbound queue exceeded OUTBOUND_QUEUE_BYTES"),
    CloseCode.INVALID_TOKEN: (
        "invalid token",
        "bad or missing credentials, or no auth within AUTH_TIMEOUT",
    ),
    CloseCode.FORBIDDEN: ("forbidden", "the browser's Origin is not in ALLOWED_ORIGINS"),
    CloseCode.CONNECTION_LIMIT: (
        "connection limit",
        "MAX_CONNECTIONS or MAX_CONNECTIONS_PER_IP reached",
    ),
}
# Sent by the WebSocket layer rather than by the application's code (no CloseCode member).
TRANSPORT_CLOSE_CODES: dict[int, tuple[str, str]] = {
    1007: ("invalid data", "a text message that is not UTF-8"),
}

RESET_REASONS: dict[ResetReason, str] = {
    ResetReason.NEW_EPOCH: "the stream restarted (history lost): the old epoch's last "
    "publications may be gone",
    ResetReason.GAP: "same epoch, publications trimmed from history before this node could "
    "deliver them, or the stream was rolled back",
}

CHANNELS: dict[ChannelKind, str] = {
    ChannelKind.GLOBAL: "System-wide broadcasts: every task, subtask, message, reservation and "
    "agent event.",
    ChannelKind.METRICS: "`metric.update` every METRICS_INTERVAL seconds.",
    ChannelKind.AGENT: "One agent: its tasks, its direct messages, its reservations, its presence.",
    ChannelKind.SESSION: "One session's events.",
    ChannelKind.TOPIC: "Application topics: any event a client publishes.",
}

# Which resources' events reach which kind: every one on `global`; on `agents/{id}` and
# `sessions/{id}` those whose row names the agent or session (app/bridge.py routes by columns).
EVENTS_ON: dict[ChannelKind, tuple[str, ...]] = {
    ChannelKind.GLOBAL: ("tasks", "subtasks", "messages", "reservations", "agents", "webhooks"),
    ChannelKind.METRICS: ("metrics",),
    ChannelKind.AGENT: ("tasks", "subtasks", "messages", "reservations", "agents"),
    ChannelKind.SESSION: ("tasks", "subtasks", "messages"),
    ChannelKind.TOPIC: (),
}

_NULLABLE_STR: dict[str, Any] = {"type": ["string", "null"]}
_TIME: dict[str, Any] = {"type": "string", "description": "ISO 8601, UTC, milliseconds"}
_NULLABLE_TIME: dict[str, Any] = {**_NULLABLE_STR, "description": _TIME["description"]}
_TASK_STATUS: dict[str, Any] = {
    "type": "string",
    "enum": ["pending", "in_progress", "completed", "failed", "cancelled"],
}

# The data of each resource's events: the keys every one of them carries (more may follow).
EVENT_DATA: dict[str, dict[str, Any]] = {
    "tasks": {
        "description": "The task as stored, with `task_id` and `previous_status`.",
        "required": ["task_id", "title", "status"],
        "properties": {
            "task_id": {"type": "string"},
            "session_id": _NULLABLE_STR,
            "agent_id": _NULLABLE_STR,
            "title": {"type": "string"},
            "description": _NULLABLE_STR,
            "status": _TASK_STATUS,
            "previous_status": {"type": ["string", "null"]},
            "priority": {"type": "integer"},
            "payload": {},
            "result": {},
            "error": _NULLABLE_STR,
            "created_at": _TIME,
            "updated_at": _TIME,
            "started_at": _NULLABLE_TIME,
            "completed_at": _NULLABLE_TIME,
            "capabilities": {"type": ["array", "null"], "items": {"type": "string"}},
            "attempts": {"type": "integer"},
            "max_attempts": {"type": "integer"},
            "ready_at": _NULLABLE_TIME,
            "lease": {"oneOf": [{"type": "null"}, {"$ref": "#/components/schemas/Lease"}]},
            "lease_outcome": {"type": ["string", "null"], "enum": ["expired", "released", None]},
        },
    },
    "subtasks": {
        "description": "The subtask, with `subtask_id`, its `task_id` and `previous_status`.",
        "required": ["subtask_id", "task_id", "title", "status"],
        "properties": {
            "subtask_id": {"type": "string"},
            "task_id": {"type": "string"},
            "session_id": _NULLABLE_STR,
            "agent_id": _NULLABLE_STR,
            "title": {"type": "string"},
            "description": _NULLABLE_STR,
            "status": _TASK_STATUS,
            "previous_status": {"type": ["string", "null"]},
            "payload": {},
            "result": {},
            "error": _NULLABLE_STR,
            "created_at": _TIME,
            "updated_at": _TIME,
            "started_at": _NULLABLE_TIME,
            "completed_at": _NULLABLE_TIME,
        },
    },
    "messages": {
        "description": "The message, with `message_id`.",
        "required": ["message_id", "from_agent", "to_agent", "content"],
        "properties": {
            "message_id": {"type": "string"},
            "from_agent": {"type": "string"},
            "to_agent": {"type": "string"},
            "session_id": _NULLABLE_STR,
            "content": {"type": "string"},
            "data": {},
            "created_at": _TIME,
            "expires_at": _NULLABLE_TIME,
            "read_at": _NULLABLE_TIME,
            "expired_at": _NULLABLE_TIME,
            "seq": {"type": ["integer", "null"]},
            "thread_id": _NULLABLE_STR,
            "reply_to": _NULLABLE_STR,
        },
    },
    "reservations": {
        "description": "The reservation, with `reservation_id`.",
        "required": ["reservation_id", "agent_id", "paths"],
        "properties": {
            "reservation_id": {"type": "string"},
            "agent_id": {"type": "string"},
            "paths": {"type": "array", "items": {"type": "string"}},
            "exclusive": {"type": "boolean"},
            "reason": _NULLABLE_STR,
            "created_at": _TIME,
            "expires_at": _TIME,
            "released_at": _NULLABLE_TIME,
            "expired_at": _NULLABLE_TIME,
        },
    },
    "webhooks": {
        "description": "`webhook.disabled`: an endpoint was disabled (410, or failing for "
        "WEBHOOK_DISABLE_AFTER); `webhook.test` goes to webhook receivers only.",
        "required": ["webhook_id"],
        "properties": {
            "webhook_id": {"type": "string"},
            "reason": {"type": "string"},
            "failing_since": _NULLABLE_TIME,
        },
    },
    "agents": {
        "description": "Presence of an agent: `agent.connected` when its first connection "
        "opens, `agent.disconnected` (with `close_code`) when its last closes, "
        "`agent.heartbeat` on its pings (at most once per HEARTBEAT_INTERVAL).",
        "required": ["agent_id"],
        "properties": {
            "agent_id": {"type": "string"},
            "session_id": _NULLABLE_STR,
            "client_id": {"type": "string"},
            "node_id": {"type": "string"},
            "connected_at": {"type": "number", "description": "seconds since the epoch"},
            "close_code": {"type": "integer"},
        },
    },
    "metrics": {
        "description": "The KPI snapshot, as GET /api/metrics.",
        "required": ["active_sessions", "active_agents", "tasks_by_status", "timestamp"],
        "properties": {
            "active_sessions": {"type": "integer"},
            "active_agents": {"type": "integer"},
            "connected_clients": {"type": "integer"},
            "actions_per_minute": {"type": "number"},
            "tasks_by_status": {"type": "object", "additionalProperties": {"type": "integer"}},
            "tasks_completed_last_hour": {"type": "integer"},
            "tasks_failed_last_hour": {"type": "integer"},
            "failure_rate": {"type": "number"},
            "mean_task_duration_seconds": {"type": ["number", "null"]},
            "unread_messages": {"type": "integer"},
            "events_per_second": {"type": "number"},
            "timestamp": _TIME,
        },
    },
}


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def _channel(path: str) -> dict[str, str]:
    """A reference into the document's own `channels` (operations point there)."""
    return {"$ref": f"#/channels/{path}"}


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _request(kind: MessageType, summary: str, fields: dict[str, Any], required: list[str]) -> Any:
    properties = {"type": {"const": kind.value}, **fields}
    properties.setdefault("id", _ref("schemas", "RequestId"))
    properties.setdefault("timestamp", _ref("schemas", "Timestamp"))
    return {
        "name": kind.value,
        "title": kind.value,
        "summary": summary,
        "payload": {
            "type": "object",
            "required": ["type", *required],
            "properties": properties,
        },
    }


def _client_messages() -> dict[str, Any]:
    channel = _ref("schemas", "Channel")
    since = _ref("schemas", "StreamPosition")
    messages = {
        MessageType.SUBSCRIBE: _request(
            MessageType.SUBSCRIBE,
            "Subscribe to a channel; with `since`, replay what followed that position.",
            {"channel": channel, "since": since},
            ["channel"],
        ),
        MessageType.UNSUBSCRIBE: _request(
            MessageType.UNSUBSCRIBE, "Stop receiving a channel.", {"channel": channel}, ["channel"]
        ),
        MessageType.PUBLISH: _request(
            MessageType.PUBLISH,
            "Publish an event; `message.new` to `agents/{id}` sends a stored direct message.",
            {"channel": channel, "event": _ref("schemas", "EventName"), "data": {}},
            ["channel", "event"],
        ),
        MessageType.AUTH: _request(
            MessageType.AUTH,
            "Set the identity: agent_id/session_id in open mode, a token in token mode.",
            {
                "agent_id": _ref("schemas", "Id"),
                "session_id": _ref("schemas", "Id"),
                "token": {"type": "string"},
            },
            [],
        ),
        MessageType.PING: _request(
            MessageType.PING, "Keepalive (every 25 s); answered with pong.", {}, []
        ),
        MessageType.HISTORY: _request(
            MessageType.HISTORY,
            "A channel's retained publications after `since` (oldest first).",
            {
                "channel": channel,
                "since": since,
                "limit": {"type": "integer", "minimum": 1, "maximum": 1000},
            },
            ["channel"],
        ),
        MessageType.PRESENCE: _request(
            MessageType.PRESENCE,
            "Who is subscribed to a channel.",
            {"channel": channel},
            ["channel"],
        ),
        MessageType.PRESENCE_STATS: _request(
            MessageType.PRESENCE_STATS,
            "How many clients and agents are subscribed to a channel.",
            {"channel": channel},
            ["channel"],
        ),
    }
    return {_camel(kind.value): message for kind, message in messages.items()}


def _server_messages() -> dict[str, Any]:
    timestamp = _ref("schemas", "Timestamp")
    return {
        "connected": {
            "name": "connected",
            "summary": "Sent once, as soon as the WebSocket opens.",
            "payload": {
                "type": "object",
                "required": ["type", "client_id", "timestamp"],
                "properties": {
                    "type": {"const": "connected"},
                    "client_id": {"type": "string", "pattern": "^ws_[0-9a-z]+_[0-9a-f]{12}$"},
                    "timestamp": timestamp,
                },
            },
        },
        "ack": {
            "name": "ack",
            "summary": "A request succeeded. Keys beyond these depend on the request: "
            "subscribe {channel, offset, epoch, recovered?, replayed?}, publish "
            "{channel, offset | message_id}, auth {agent_id, session_id, role, expires_at}, "
            "history {channel, offset, epoch, recovered, publications}, presence {channel, "
            "presence}, presence_stats {channel, num_clients, num_agents}.",
            "payload": {
                "type": "object",
                "required": ["type", "success", "timestamp"],
                "properties": {
                    "type": {"const": "ack"},
                    "id": _ref("schemas", "RequestId"),
                    "success": {"const": True},
                    "channel": {"type": "string"},
                    "offset": {"type": "integer", "minimum": 0},
                    "epoch": {"type": "string"},
                    "recovered": {"type": "boolean"},
                    "replayed": {"type": "integer", "minimum": 0},
                    "message_id": {"type": "string"},
                    "publications": {
                        "type": "array",
                        "items": _ref("schemas", "EventFrame"),
                    },
                    "num_clients": {"type": "integer"},
                    "num_agents": {"type": "integer"},
                    "presence": {"type": "object"},
                    "timestamp": timestamp,
                },
            },
        },
        "pong": {
            "name": "pong",
            "summary": "The answer to ping.",
            "payload": {
                "type": "object",
                "required": ["type", "timestamp"],
                "properties": {"type": {"const": "pong"}, "timestamp": timestamp},
            },
        },
        "error": {
            "name": "error",
            "summary": "A request was refused; the connection stays open.",
            "payload": {
                "type": "object",
                "required": ["error", "code", "timestamp"],
                "properties": {
                    "error": {"type": "string"},
                    "code": _ref("schemas", "ErrorCode"),
                    "id": _ref("schemas", "RequestId"),
                    "timestamp": timestamp,
                },
            },
        },
        "unrecovered": {
            "name": "unrecovered",
            "summary": "Publications of the channel up to (offset, epoch) may be lost: reload "
            "its state and take that position as the last seen.",
            "payload": {
                "type": "object",
                "required": ["type", "channel", "offset", "epoch", "recovered", "reason"],
                "properties": {
                    "type": {"const": "unrecovered"},
                    "channel": {"type": "string"},
                    "offset": {"type": "integer", "minimum": 0},
                    "epoch": {"type": "string"},
                    "recovered": {"const": False},
                    "reason": {
                        "type": "string",
                        "enum": [reason.value for reason in ResetReason],
                        "description": "; ".join(
                            f"`{reason.value}`: {text}" for reason, text in RESET_REASONS.items()
                        ),
                    },
                    "timestamp": timestamp,
                },
            },
        },
    }


def _event_message(declared: ServerEvents) -> dict[str, Any]:
    data = EVENT_DATA[declared.resource]
    return {
        "name": f"{declared.resource} events",
        "summary": f"`{'`, `'.join(declared.names)}`. {data['description']}",
        "payload": {
            "allOf": [
                _ref("schemas", "EventFrame"),
                {
                    "type": "object",
                    "properties": {
                        "event": {"type": "string", "enum": list(declared.names)},
                        "data": {
                            "type": "object",
                            "required": data["required"],
                            "properties": data["properties"],
                        },
                    },
                },
            ]
        },
    }


def _schemas() -> dict[str, Any]:
    return {
        "RequestId": {
            "description": "Chosen by the client; echoed in the ack or error of its request.",
            "type": ["string", "integer"],
        },
        "Timestamp": {"description": "Milliseconds since the Unix epoch.", "type": "integer"},
        "Id": {"type": "string", "pattern": f"^{ID_PATTERN}$"},
        "Channel": {"type": "string", "pattern": _channel_pattern()},
        "EventName": {
            "type": "string",
            "maxLength": MAX_EVENT_LENGTH,
            "pattern": f"^{_EVENT_RE.pattern}$",
        },
        "StreamPosition": {
            "description": "The last publication seen of a channel: its offset and the epoch "
            "(identity) of the channel's stream.",
            "type": "object",
            "required": ["offset", "epoch"],
            "properties": {
                "offset": {"type": "integer", "minimum": 0},
                "epoch": {"type": "string"},
            },
        },
        "ErrorCode": {
            "type": "string",
            "enum": [code.value for code in ErrorCode],
            "description": "; ".join(
                f"`{code.value}`: {text}" for code, text in ERROR_CODES.items()
            ),
        },
        "Lease": {
            "type": "object",
            "required": ["id", "agent_id", "fence", "expires_at"],
            "properties": {
                "id": {"type": "string"},
                "agent_id": {"type": "string"},
                "fence": {"type": "integer"},
                "expires_at": _TIME,
            },
        },
        "EventFrame": {
            "description": "One publication: the seed's four keys, then its place in the "
            "channel's stream (`offset` +1 each, no gaps, within `epoch`).",
            "type": "object",
            "required": ["channel", "event", "data", "timestamp"],
            "properties": {
                "channel": {"type": "string"},
                "event": _ref("schemas", "EventName"),
                "data": {},
                "timestamp": _ref("schemas", "Timestamp"),
                "offset": {"type": "integer", "minimum": 1},
                "epoch": {"type": "string"},
            },
        },
    }


def _close_codes() -> list[dict[str, Any]]:
    codes = {int(code): CLOSE_CODES[code] for code in CloseCode} | TRANSPORT_CLOSE_CODES
    rows = []
    for code in sorted(codes):
        name, when = codes[code]
        # Reconnect after anything but a normal close, the RFC's "fix the client" codes and the
        # 3500–3999 range (the clients' shouldReconnect / should_reconnect).
        reconnect = code not in (1000, 1007, 1008, 1009) and not 3500 <= code <= 3999
        rows.append({"code": code, "name": name, "reconnect": reconnect, "when": when})
    return rows


def document() -> dict[str, Any]:
    """The AsyncAPI document, as a dict."""
    server_events = {f"{d.resource}Events": _event_message(d) for d in DECLARED}
    client_event = {
        "name": "client event",
        "summary": "An event a client published (any name of the grammar but the server's).",
        "payload": _ref("schemas", "EventFrame"),
    }
    messages = {
        **_client_messages(),
        **_server_messages(),
        **server_events,
        "clientEvent": client_event,
    }
    control = [*_client_messages(), *_server_messages()]
    channels: dict[str, Any] = {
        "connection": {
            "address": "/",
            "title": "The WebSocket connection",
            "description": "Requests and their answers, on `/` or `/ws`. Open mode names the "
            "identity in the query (`?agent_id=…&session_id=…`), token mode carries `?token=…` "
            "or sends `auth` first.",
            "messages": {name: _ref("messages", name) for name in control},
            "bindings": {
                "ws": {
                    "method": "GET",
                    "query": {
                        "type": "object",
                        "properties": {
                            "agent_id": _ref("schemas", "Id"),
                            "session_id": _ref("schemas", "Id"),
                            "token": {"type": "string"},
                        },
                    },
                    "bindingVersion": "0.1.0",
                }
            },
        }
    }
    operations: dict[str, Any] = {}
    for name in _client_messages():
        operation: dict[str, Any] = {
            "action": "receive",
            "channel": _channel("connection"),
            "messages": [_channel(f"connection/messages/{name}")],
        }
        answer = ["pong"] if name == "ping" else ["ack", "error"]
        operation["reply"] = {
            "channel": _channel("connection"),
            "messages": [_channel(f"connection/messages/{m}") for m in answer],
        }
        operations[name] = operation
    for name in ("connected", "unrecovered"):
        operations[name] = {
            "action": "send",
            "channel": _channel("connection"),
            "messages": [_channel(f"connection/messages/{name}")],
        }
    for kind in ChannelKind:
        on = [f"{resource}Events" for resource in EVENTS_ON[kind]]
        if kind is not ChannelKind.METRICS:
            on.append("clientEvent")  # published by clients (admin only on `global`)
        channel: dict[str, Any] = {
            "address": kind.pattern,
            "title": kind.pattern,
            "description": CHANNELS[kind],
            "messages": {name: _ref("messages", name) for name in on},
        }
        if not kind.singleton:
            channel["parameters"] = {
                kind.id_label: {
                    "description": f"1–128 characters matching `{ID_PATTERN}`.",
                    "examples": [
                        {"agents": "backend-laravel", "sessions": "abc123"}.get(
                            kind.value, "deployments"
                        )
                    ],
                }
            }
        channels[kind.value] = channel
        operations[f"{kind.value}Events"] = {
            "action": "send",
            "channel": _channel(kind.value),
            "summary": f"Events delivered to the subscribers of {kind.pattern}.",
            "messages": [_channel(f"{kind.value}/messages/{name}") for name in on],
        }
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "context-manager WebSocket protocol",
            "version": __version__,
            "description": "The wire protocol of the WebSocket server (docs/protocol.md): JSON "
            "text frames, request/ack by `id`, channels with offsets and epochs for recovery. "
            "Close codes are listed in `x-close-codes`: 3000–3499 mean reconnect, 3500–3999 do "
            "not reconnect without changing something.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "local": {
                "host": "127.0.0.1:3849",
                "protocol": "ws",
                "pathname": "/ws",
                "description": "`context-manager serve` (WS_PORT); `/` works too.",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": _schemas()},
        "x-close-codes": _close_codes(),
    }


@lru_cache(maxsize=1)
def render() -> str:
    """The document as YAML text (what docs/asyncapi.yaml holds and /asyncapi.yaml serves)."""
    header = "# Generated by `python -m app.realtime.asyncapi > docs/asyncapi.yaml`; do not edit.\n"
    return header + yaml.safe_dump(document(), sort_keys=False, allow_unicode=True, width=100)


if __name__ == "__main__":
    print(render(), end="")
