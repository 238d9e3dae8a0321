"""Channel and event grammar, and the registry of channel kinds: the one home of a kind.

A channel is a singleton kind's name (``global``, ``metrics``) or ``<namespace>/<id>``
(``agents/backend-laravel``); nothing else is a channel. Each kind is one member of
`ChannelKind`, which declares all there is to know about it: its namespace, who may subscribe
(and read its history and presence), who may publish, whether the server's events are reserved
on it, and which settings give its history retention. The rest is derived from the registry:
the checks of permissions.py, history.py's policies, the REST pattern (`channel_pattern`), the
PostgreSQL broker's cleanup, and the permission table in docs/security.md
(`python -m app.realtime.permissions`). docs/architecture.md says how to add a kind.

An id (agent, session, topic) is 1–128 characters of ``A–Z a–z 0–9 _ - . : @``, starting with a
letter, digit or underscore. An event name is two or more dot-separated lowercase segments of
``a–z 0–9 _ -``, each starting with a letter, at most 64 characters (``task.created``).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Protocol

from app.realtime.protocol import ErrorCode, ProtocolError

if TYPE_CHECKING:
    from app.core.config import Settings
    from app.core.security import Role

ID_PATTERN = r"[A-Za-z0-9_][A-Za-z0-9_.:@-]{0,127}"
_ID_RE = re.compile(ID_PATTERN)
_EVENT_RE = re.compile(r"[a-z][a-z0-9_-]*(?:\.[a-z][a-z0-9_-]*)+")
MAX_EVENT_LENGTH = 64
MAX_CHANNEL_LENGTH = 160


class Principal(Protocol):
    """Who asks: an `Identity` (REST) or a `Connection` itself (WebSocket, no allocation)."""

    @property
    def agent_id(self) -> str | None: ...

    @property
    def session_id(self) -> str | None: ...

    @property
    def role(self) -> Role: ...


# --- rules: who may subscribe to or publish on a channel --------------------------------------

# Roles by their value: app.core.security, where `Role` (a StrEnum) lives, imports this module
# for the id grammar, so it cannot be imported here. tests/test_channels.py checks the names.
_PRIVILEGED = frozenset({"dashboard", "admin"})


@dataclass(frozen=True, slots=True)
class Rule:
    """A permission: `allows(principal, channel)`; `text` is its cell in docs/security.md."""

    text: str
    allows: Callable[[Principal, Channel], bool]

    def noted(self, note: str) -> Rule:
        """The same rule, with a remark for the docs."""
        return Rule(f"{self.text} ({note})", self.allows)


EVERYONE = Rule("anyone authenticated", lambda who, channel: True)
ADMIN = Rule("admin only (and the server)", lambda who, channel: who.role == "admin")
THE_AGENT = Rule(
    "agent `{id}`, dashboard, admin",
    lambda who, channel: who.role in _PRIVILEGED or who.agent_id == channel.id,
)
THE_SESSION = Rule(
    "agents whose session is `{id}`, dashboard, admin",
    lambda who, channel: (
        who.role in _PRIVILEGED or (who.session_id is not None and who.session_id == channel.id)
    ),
)

# (size in publications, ttl in seconds) of a kind's history, from the HISTORY_* settings.
Retention = Callable[["Settings"], tuple[int, float]]


@dataclass(frozen=True, slots=True)
class KindSpec:
    """What a channel kind is: the value of one `ChannelKind` member."""

    subscribe: Rule
    publish: Rule
    retention: Retention
    # A singleton kind is one channel named like its namespace (`global`); else `<ns>/<id>`.
    singleton: bool = False
    # Whether the server's events (app/events.py) are refused from clients on this kind.
    reserves_server_events: bool = True
    # What the id means, for the docs: `agents/{id}`, `topics/{name}`.
    id_label: str = "id"


class ChannelKind(enum.StrEnum):
    """The registry of channel kinds; a member's value is its namespace (``agents``)."""

    _value_: str
    subscribe: Rule
    publish: Rule
    retention: Retention
    singleton: bool
    reserves_server_events: bool
    id_label: str

    def __new__(cls, namespace: str, spec: KindSpec) -> ChannelKind:
        member = str.__new__(cls, namespace)
        member._value_ = namespace
        # Flat attributes, so a permission check is one attribute and one call away.
        member.subscribe = spec.subscribe
        member.publish = spec.publish
        member.retention = spec.retention
        member.singleton = spec.singleton
        member.reserves_server_events = spec.reserves_server_events
        member.id_label = spec.id_label
        return member

    GLOBAL = (
        "global",
        KindSpec(
            subscribe=EVERYONE,
            publish=ADMIN,
            retention=lambda s: (s.history_global_size, s.history_global_ttl),
            singleton=True,
        ),
    )
    METRICS = (
        "metrics",
        KindSpec(
            subscribe=EVERYONE,
            publish=ADMIN,
            retention=lambda s: (1, s.history_metrics_ttl),  # the latest update only
            singleton=True,
        ),
    )
    AGENT = (
        "agents",
        KindSpec(
            subscribe=THE_AGENT,
            publish=EVERYONE.noted("a direct message"),
            retention=lambda s: (s.history_agents_size, s.history_agents_ttl),
        ),
    )
    SESSION = (
        "sessions",
        KindSpec(
            subscribe=THE_SESSION,
            publish=THE_SESSION,
            retention=lambda s: (s.history_sessions_size, s.history_sessions_ttl),
        ),
    )
    TOPIC = (
        "topics",
        KindSpec(
            subscribe=EVERYONE,
            publish=EVERYONE,
            retention=lambda s: (s.history_topics_size, s.history_topics_ttl),
            id_label="name",
        ),
    )

    @property
    def pattern(self) -> str:
        """How the docs write this kind's channels: `global`, `agents/{id}`."""
        return self.value if self.singleton else f"{self.value}/{{{self.id_label}}}"


_SINGLETONS = {kind.value: kind for kind in ChannelKind if kind.singleton}
_NAMESPACES = {kind.value: kind for kind in ChannelKind if not kind.singleton}


def channel_pattern() -> str:
    """The channel grammar as one anchored regex (the REST API's OpenAPI pattern)."""
    singletons = "|".join(re.escape(name) for name in _SINGLETONS)
    namespaces = "|".join(re.escape(name) for name in _NAMESPACES)
    return f"^({singletons}|({namespaces})/{ID_PATTERN})$"


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
    channel = _parse(name) if len(name) <= MAX_CHANNEL_LENGTH else None
    if channel is None:
        raise ProtocolError(ErrorCode.INVALID_CHANNEL, "Invalid channel")
    return channel


@lru_cache(maxsize=4096)
def _valid_event(name: str) -> bool:
    return len(name) <= MAX_EVENT_LENGTH and _EVENT_RE.fullmatch(name) is not None


def is_valid_event(name: str) -> bool:
    """Whether `name` follows the event grammar."""
    return len(name) <= MAX_EVENT_LENGTH and _valid_event(name)


def check_event(name: str) -> str:
    """Validate an event name, or raise INVALID_EVENT."""
    if len(name) > MAX_EVENT_LENGTH or not _valid_event(name):
        raise ProtocolError(ErrorCode.INVALID_EVENT, "Invalid event name")
    return name


def agent_channel(agent_id: str) -> str:
    return f"agents/{agent_id}"


def session_channel(session_id: str) -> str:
    return f"sessions/{session_id}"
