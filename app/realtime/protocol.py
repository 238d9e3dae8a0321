"""The wire protocol in one file: inbound message shapes, outbound frames, error and close codes.

Client → server (JSON text frames, the seed's shapes)::

    {"type": "subscribe",   "channel": "global", "id": "sub-1", "timestamp": 1234567890}
    {"type": "unsubscribe", "channel": "global", "id": "sub-2"}
    {"type": "publish", "channel": "topics/x", "event": "note.added", "data": {}, "id": "p-1"}
    {"type": "auth",        "agent_id": "my-agent", "session_id": "abc123"}
    {"type": "ping",        "timestamp": 1234567890}

Server → client::

    {"type": "connected", "client_id": "ws_abc123_def456", "timestamp": ...}
    {"channel": "global", "event": "task.completed", "data": {...}, "timestamp": ...}
    {"type": "ack", "id": "sub-1", "success": true, "timestamp": ...}
    {"type": "pong", "timestamp": ...}
    {"error": "Invalid channel", "code": "INVALID_CHANNEL", "timestamp": ..., "id": "sub-1"}
    {"type": "unrecovered", "channel": "global", "offset": 0, "epoch": "19f755c2",
     "recovered": false, "reason": "new_epoch", "timestamp": ...}

`unrecovered` tells a subscriber that publications of the channel may have been lost before
the given position (the broker lost its history, or trimmed it past what this node had
delivered); the subscription goes on with every publication after that position. A seed client
ignores it (an unknown `type`); the SDKs move their position there and report a failed recovery.

Frames are encoded with orjson into UTF-8 bytes, which are framed as WebSocket text frames
without a round trip through `str`; an event frame is encoded once per publication and the
same bytes go to every subscriber.
"""

from __future__ import annotations

import enum
import json
import time
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from app.realtime.history import HistoryPage

# A client-chosen request id: the seed uses strings; numbers are accepted and echoed as given.
RequestId = str | int


def now_ms() -> int:
    """Milliseconds since the Unix epoch, the seed's `timestamp` unit."""
    return time.time_ns() // 1_000_000


class MessageType(enum.StrEnum):
    """Values of `type` a client may send."""

    SUBSCRIBE = "subscribe"
    UNSUBSCRIBE = "unsubscribe"
    PUBLISH = "publish"
    AUTH = "auth"
    PING = "ping"
    HISTORY = "history"
    PRESENCE = "presence"
    PRESENCE_STATS = "presence_stats"


class ErrorCode(enum.StrEnum):
    """Stable error codes carried in `code` of an error frame. The connection stays open."""

    INVALID_JSON = "INVALID_JSON"  # the frame is not JSON text
    INVALID_MESSAGE = "INVALID_MESSAGE"  # not an object, or a field missing or of the wrong type
    UNKNOWN_TYPE = "UNKNOWN_TYPE"  # `type` names no message we know
    INVALID_CHANNEL = "INVALID_CHANNEL"  # channel outside the grammar
    INVALID_EVENT = "INVALID_EVENT"  # event name outside the grammar
    MESSAGE_TOO_LARGE = "MESSAGE_TOO_LARGE"  # frame above MAX_MESSAGE_BYTES (below MAX_FRAME_BYTES)
    NOT_SUBSCRIBED = "NOT_SUBSCRIBED"  # unsubscribe from a channel this connection is not on
    TOO_MANY_SUBSCRIPTIONS = "TOO_MANY_SUBSCRIPTIONS"  # MAX_SUBSCRIPTIONS reached
    FORBIDDEN = "FORBIDDEN"  # the identity may not do this on that channel
    UNAUTHORIZED = "UNAUTHORIZED"  # a credential was required or was refused
    RATE_LIMITED = "RATE_LIMITED"  # too many messages per second
    INTERNAL = "INTERNAL"  # our fault; logged with a reference, nothing leaked


class CloseCode(enum.IntEnum):
    """WebSocket close codes the server sends.

    Following Centrifugo's split: 1000–2999 are the RFC's, 3000–3499 mean "reconnect",
    3500–3999 mean "do not reconnect without changing something".
    """

    NORMAL = 1000
    GOING_AWAY = 1001
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009  # a frame above MAX_FRAME_BYTES
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012  # SIGTERM: the node is going down, reconnect (elsewhere)
    IDLE_TIMEOUT = 3001  # nothing received for WS_IDLE_TIMEOUT seconds
    TOKEN_EXPIRED = 3005  # refresh the token, then reconnect
    SLOW_CONSUMER = 3008  # the outbound queue overflowed
    CONNECTION_LIMIT = 3504  # too many connections (total or per address)
    INVALID_TOKEN = 3500  # bad or missing credentials
    FORBIDDEN = 3503  # the identity may not connect here (e.g. Origin refused)

    @property
    def reconnect(self) -> bool:
        """Whether a client should reconnect after this code."""
        if self in (CloseCode.NORMAL, CloseCode.POLICY_VIOLATION, CloseCode.MESSAGE_TOO_BIG):
            return False
        return int(self) < 3500


class ProtocolError(Exception):
    """A client message we answer with an error frame; the connection goes on."""

    def __init__(self, code: ErrorCode, message: str, request_id: RequestId | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        # The request's `id` when it was read before the message was refused (echoed back).
        self.request_id = request_id


def _dumps(obj: dict[str, Any]) -> bytes:
    return orjson.dumps(obj)


def connected_frame(client_id: str) -> bytes:
    return _dumps({"type": "connected", "client_id": client_id, "timestamp": now_ms()})


def ack_frame(request_id: RequestId, extra: dict[str, Any] | None = None) -> bytes:
    frame: dict[str, Any] = {"type": "ack", "id": request_id, "success": True}
    if extra:
        frame.update(extra)
    frame["timestamp"] = now_ms()
    return _dumps(frame)


def pong_frame() -> bytes:
    return _dumps({"type": "pong", "timestamp": now_ms()})


def error_frame(code: ErrorCode, message: str, request_id: RequestId | None = None) -> bytes:
    frame: dict[str, Any] = {"error": message, "code": code.value, "timestamp": now_ms()}
    if request_id is not None:
        frame["id"] = request_id
    return _dumps(frame)


def event_frame(
    channel: str, event: str, data: Any, timestamp: int, offset: int, epoch: str
) -> bytes:
    """Encode one publication; the caller shares the result with every subscriber.

    The seed's four keys come first and stay as they are; `offset` and `epoch` are the
    publication's place in its channel's stream (history.py), for recovery.
    """
    return orjson.dumps(
        {
            "channel": channel,
            "event": event,
            "data": data,
            "timestamp": timestamp,
            "offset": offset,
            "epoch": epoch,
        }
    )


class ResetReason(enum.StrEnum):
    """Why an `unrecovered` frame was sent (its `reason`)."""

    NEW_EPOCH = "new_epoch"  # the stream restarted (history lost): the old epoch's tail may be gone
    GAP = "gap"  # same epoch, offsets missing: history trimmed past this node's last delivery


def unrecovered_frame(channel: str, offset: int, epoch: str, reason: ResetReason) -> bytes:
    """Tell a channel's subscribers that publications up to (offset, epoch) may be lost.

    The keys are those of a subscribe ack after a failed recovery (`offset`, `epoch`,
    `recovered: false`), so a client handles both the same way: reload its state, and take
    (offset, epoch) as its position. No `event` key: a seed client must not take it for one.
    """
    return _dumps(
        {
            "type": "unrecovered",
            "channel": channel,
            "offset": offset,
            "epoch": epoch,
            "recovered": False,
            "reason": reason.value,
            "timestamp": now_ms(),
        }
    )


def ensure_encodable(data: Any) -> Any:
    """`data` as orjson can encode it: integers beyond 64 bits become floats, unknown types
    strings, and what still cannot be encoded (nesting beyond 254 levels) a marker."""
    try:
        orjson.dumps(data)
        return data
    except (orjson.JSONEncodeError, TypeError):
        pass
    try:
        normalised = orjson.loads(json.dumps(data, default=str))
        orjson.dumps(normalised)
        return normalised
    except (ValueError, TypeError, RecursionError, orjson.JSONEncodeError):
        return {"unencodable": True, "type": type(data).__name__}


def history_frame(request_id: RequestId | None, channel: str, page: HistoryPage) -> bytes:
    """The ack of a `history` request: retained publications (oldest first) and the top."""
    frame: dict[str, Any] = {"type": "ack", "success": True, "channel": channel}
    if request_id is not None:
        frame["id"] = request_id
    frame.update(page.position.as_dict())
    frame["recovered"] = page.recoverable
    frame["publications"] = [orjson.Fragment(p.frame.payload) for p in page.publications]
    frame["timestamp"] = now_ms()
    return _dumps(frame)


# --- inbound ---------------------------------------------------------------------------------


# Deepest nesting of arrays and objects accepted in a client message. orjson encodes at most 254
# levels: anything deeper would be accepted here and then fail in fan-out or history.
MAX_NESTING = 128


def _nested_deeper_than(value: Any, limit: int) -> bool:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        for child in children:
            if isinstance(child, dict | list):
                if depth + 1 > limit:
                    return True
                stack.append((child, depth + 1))
    return False


def parse_message(text: str) -> dict[str, Any]:
    """Decode one client frame into a dict with a valid `type`, or raise ProtocolError."""
    try:
        message = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise ProtocolError(ErrorCode.INVALID_JSON, "Message is not valid JSON") from None
    if not isinstance(message, dict):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "Message must be a JSON object")
    kind = message.get("type")
    if not isinstance(kind, str):
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE,
            "Field 'type' is required and must be a string",
            request_id(message),
        )
    # Counting brackets is cheap and rules out almost every message before the exact walk.
    if text.count("[") + text.count("{") > MAX_NESTING and _nested_deeper_than(
        message, MAX_NESTING
    ):
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE,
            f"Message is nested deeper than {MAX_NESTING} levels",
            request_id(message),
        )
    return message


def request_id(message: dict[str, Any]) -> RequestId | None:
    """The message's `id`, or None; raise when present with a type we cannot echo."""
    value = message.get("id")
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ProtocolError(ErrorCode.INVALID_MESSAGE, "Field 'id' must be a string or an integer")


def require_str(message: dict[str, Any], field: str) -> str:
    value = message.get(field)
    if not isinstance(value, str):
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE, f"Field '{field}' is required and must be a string"
        )
    return value


def optional_str(message: dict[str, Any], field: str) -> str | None:
    value = message.get(field)
    if value is None or isinstance(value, str):
        return value
    raise ProtocolError(ErrorCode.INVALID_MESSAGE, f"Field '{field}' must be a string")
