"""Channel and event grammar, and the one place where channel permissions are decided.

Channels (nothing else is a channel)::

    global                    system-wide broadcasts
    metrics                   metric.update every METRICS_INTERVAL seconds
    agents/{agent_id}         one agent's channel (direct messages, its task events)
    sessions/{session_id}     one session's events
    topics/{topic}            application topics

An id (agent, session, topic) is 1–128 characters of ``A–Z a–z 0–9 _ - . : @``, starting with a
letter, digit or underscore. An event name is two or more dot-separated lowercase segments of
``a–z 0–9 _ -``, each starting with a letter, at most 64 characters (``task.created``).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from functools import lru_cache

from app.realtime.protocol import ErrorCode, ProtocolError

ID_PATTERN = r"[A-Za-z0-9_][A-Za-z0-9_.:@-]{0,127}"
_ID_RE = re.compile(ID_PATTERN)
_EVENT_RE = re.compile(r"[a-z][a-z0-9_-]*(?:\.[a-z][a-z0-9_-]*)+")
MAX_EVENT_LENGTH = 64


class ChannelKind(enum.StrEnum):
    GLOBAL = "global"
    METRICS = "metrics"
    AGENT = "agents"
    SESSION = "sessions"
    TOPIC = "topics"


_SINGLETONS = {"global": ChannelKind.GLOBAL, "metrics": ChannelKind.METRICS}
_NAMESPACES = {
    "agents": ChannelKind.AGENT,
    "sessions": ChannelKind.SESSION,
    "topics": ChannelKind.TOPIC,
}


@dataclass(frozen=True, slots=True)
class Channel:
    name: str
    kind: ChannelKind
    id: str | None = None


def is_valid_id(value: str) -> bool:
    """Whether `value` is a valid agent, session or topic id."""
    return _ID_RE.fullmatch(value) is not None


@lru_cache(maxsize=8192)
def _parse(name: str) -> Channel | None:
    kind = _SINGLETONS.get(name)
    if kind is not None:
        return Channel(name, kind)
    namespace, sep, ident = name.partition("/")
    kind = _NAMESPACES.get(namespace)
    if kind is None or not sep or _ID_RE.fullmatch(ident) is None:
        return None
    return Channel(name, kind, ident)


def parse_channel(name: str) -> Channel:
    """Validate a channel name, or raise INVALID_CHANNEL."""
    channel = _parse(name) if len(name) <= 160 else None
    if channel is None:
        raise ProtocolError(ErrorCode.INVALID_CHANNEL, "Invalid channel")
    return channel


@lru_cache(maxsize=4096)
def _valid_event(name: str) -> bool:
    return len(name) <= MAX_EVENT_LENGTH and _EVENT_RE.fullmatch(name) is not None


def check_event(name: str) -> str:
    """Validate an event name, or raise INVALID_EVENT."""
    if len(name) > MAX_EVENT_LENGTH or not _valid_event(name):
        raise ProtocolError(ErrorCode.INVALID_EVENT, "Invalid event name")
    return name


def agent_channel(agent_id: str) -> str:
    return f"agents/{agent_id}"


def session_channel(session_id: str) -> str:
    return f"sessions/{session_id}"
