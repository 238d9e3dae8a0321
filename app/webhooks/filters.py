"""Which events an endpoint gets: event-type globs and channel globs, checked and matched.

    events:   ["task.*", "message.new", "agent.disconnected", "*"]
    channels: ["agents/coder", "sessions/*", "global"]    (omitted: any channel)

`*` matches any run of characters (`task.*` is every task event); nothing else is special.
An event's channels are the bridge's (`global`, `sessions/{id}`, `agents/{id}`:
app/bridge.channels_for), so a channel filter picks the events of an agent or a session. A
pattern that can match no event webhooks carry is refused (a typo is a 422, not silence).
"""

from __future__ import annotations

import re
from fnmatch import fnmatchcase

from app.events import AGENTS, MESSAGES, RESERVATIONS, SUBTASKS, TASKS
from app.realtime.channels import ChannelKind, agent_channel

MAX_PATTERNS = 50
TEST_EVENT = "webhook.test"
PRESENCE_EVENTS = ("agent.connected", "agent.disconnected")
# What a webhook can carry: every outbox event (the triggers') and the agents' presence.
EVENT_TYPES: tuple[str, ...] = (
    *TASKS.names,
    *SUBTASKS.names,
    *MESSAGES.names,
    *RESERVATIONS.names,
    *(name for name in AGENTS.names if name in PRESENCE_EVENTS),
)

_EVENT_PATTERN = re.compile(r"\*|[a-z*][a-z0-9_*-]*(\.[a-z0-9_*-]+)*")
_ROUTED = (ChannelKind.AGENT.value, ChannelKind.SESSION.value)
_CHANNEL_PATTERN = re.compile(
    rf"\*|{ChannelKind.GLOBAL.value}|({'|'.join(_ROUTED)})/[A-Za-z0-9_.:@*-]{{1,128}}"
)


def event_pattern_problem(pattern: str) -> str | None:
    """Why `pattern` is no event filter (None: it is one)."""
    if len(pattern) > 64 or _EVENT_PATTERN.fullmatch(pattern) is None:
        return f"{pattern!r} is not an event type or a glob of them (e.g. 'task.*')"
    if not any(fnmatchcase(name, pattern) for name in EVENT_TYPES):
        known = ", ".join(EVENT_TYPES)
        return f"{pattern!r} matches no event a webhook carries ({known})"
    return None


def channel_pattern_problem(pattern: str) -> str | None:
    """Why `pattern` is no channel filter (None: it is one)."""
    if len(pattern) > 160 or _CHANNEL_PATTERN.fullmatch(pattern) is None:
        return (
            f"{pattern!r} is not a channel events go to: 'global', "
            f"'{agent_channel('{id}')}', 'sessions/{{id}}', or a glob of them ('sessions/*')"
        )
    return None


def event_matches(patterns: list[str], event: str) -> bool:
    """Whether an event of type `event` passes the endpoint's event filter."""
    return any(fnmatchcase(event, pattern) for pattern in patterns)


def channels_match(patterns: list[str] | None, channels: list[str]) -> bool:
    """Whether an event on `channels` passes the channel filter (None: every channel)."""
    if patterns is None:
        return True
    return any(fnmatchcase(channel, pattern) for pattern in patterns for channel in channels)
