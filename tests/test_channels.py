"""The channel and event grammar of app/realtime/channels.py: pure functions, no server."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.core.security import Identity, Role
from app.realtime.channels import (
    _PRIVILEGED,
    ADMIN,
    MAX_EVENT_LENGTH,
    Channel,
    ChannelKind,
    agent_channel,
    channel_pattern,
    check_event,
    is_valid_id,
    parse_channel,
    session_channel,
)
from app.realtime.protocol import ErrorCode, ProtocolError

ID_FIRST = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_"
ID_REST = ID_FIRST + ".:@-"


@pytest.mark.parametrize(
    ("name", "kind", "ident"),
    [
        ("global", ChannelKind.GLOBAL, None),
        ("metrics", ChannelKind.METRICS, None),
        ("agents/backend-laravel", ChannelKind.AGENT, "backend-laravel"),
        ("sessions/abc123", ChannelKind.SESSION, "abc123"),
        ("topics/deployments", ChannelKind.TOPIC, "deployments"),
        ("topics/a", ChannelKind.TOPIC, "a"),
        ("agents/_x", ChannelKind.AGENT, "_x"),
        ("agents/9lives", ChannelKind.AGENT, "9lives"),
        ("agents/me@host:1.2-x_y", ChannelKind.AGENT, "me@host:1.2-x_y"),
        ("topics/" + "t" * 128, ChannelKind.TOPIC, "t" * 128),
    ],
)
def test_valid_channels_parse(name: str, kind: ChannelKind, ident: str | None) -> None:
    assert parse_channel(name) == Channel(name, kind, ident)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "Global",
        "GLOBAL",
        " global",
        "global ",
        "global/",
        "global/x",
        "metrics/cpu",
        "agent/x",  # singular namespace
        "users/x",  # unknown namespace
        "private/x",
        "agents",
        "agents/",  # empty id
        "topics/",
        "/agents/x",
        "agents//x",
        "agents/x/",  # trailing slash
        "agents/x/y",  # nested path
        "topics/a/b/c",
        "agents/" + "a" * 129,  # id too long
        "topics/" + "a" * 1000,
        "agents/.hidden",  # must start with a letter, digit or underscore
        "agents/-dash",
        "agents/@me",
        "agents/has space",
        "agents/tab\t",
        "agents/new\nline",
        "agents/x\n",
        "agents/é",  # ASCII only
        "agents/x*",
        "agents/x#y",
        "agents/x?y",
        "agents/x%2Fy",
        "agents/../global",
        "sessions/a+b",
        "topics/\x00",
    ],
)
def test_invalid_channels_raise_invalid_channel(name: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_channel(name)
    assert info.value.code is ErrorCode.INVALID_CHANNEL


def test_id_length_cap_is_128() -> None:
    assert is_valid_id("a" * 128)
    assert not is_valid_id("a" * 129)
    assert not is_valid_id("")


@pytest.mark.parametrize("value", ["my-agent", "abc123", "A", "_", "0", "x.y:z@w-v_u"])
def test_valid_ids(value: str) -> None:
    assert is_valid_id(value)


@pytest.mark.parametrize("value", ["-a", ".a", ":a", "@a", "a b", "a/b", "a\n", "ü", "a!", " "])
def test_invalid_ids(value: str) -> None:
    assert not is_valid_id(value)


@given(
    namespace=st.sampled_from(["agents", "sessions", "topics"]),
    ident=st.builds(
        lambda first, rest: first + rest,
        st.sampled_from(ID_FIRST),
        st.text(alphabet=ID_REST, max_size=127),
    ),
)
def test_every_grammar_id_makes_a_channel(namespace: str, ident: str) -> None:
    channel = parse_channel(f"{namespace}/{ident}")
    assert channel.id == ident
    assert channel.kind.value == namespace


@given(st.text(max_size=200))
def test_parse_channel_accepts_only_the_grammar(name: str) -> None:
    """For arbitrary text, parse_channel either raises INVALID_CHANNEL or returns the grammar."""
    try:
        channel = parse_channel(name)
    except ProtocolError as exc:
        assert exc.code is ErrorCode.INVALID_CHANNEL
        return
    assert channel.name == name
    if channel.id is None:
        assert name in {"global", "metrics"}
    else:
        assert name == f"{channel.kind.value}/{channel.id}"
        assert is_valid_id(channel.id)


def test_helpers_build_valid_channels() -> None:
    assert parse_channel(agent_channel("my-agent")).kind is ChannelKind.AGENT
    assert parse_channel(session_channel("abc123")).kind is ChannelKind.SESSION


@pytest.mark.parametrize(
    "name",
    [
        "task.created",
        "task.updated",
        "subtask.completed",
        "message.new",
        "agent.heartbeat",
        "metric.update",
        "a.b",
        "a.b.c.d",
        "my_event.sub-part2",
        "x" * 30 + "." + "y" * (MAX_EVENT_LENGTH - 31),  # exactly the cap
    ],
)
def test_valid_events(name: str) -> None:
    assert check_event(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "task",  # one segment
        "Task.created",
        "task.Created",
        "task.",
        ".task",
        "task..created",
        "task.1created",
        "1task.created",
        "task created.x",
        "task.created\n",
        "task/created",
        "task.créé",
        "_task.created",
        "task.-x",
        "x" * 30 + "." + "y" * (MAX_EVENT_LENGTH - 30),  # one over the cap
    ],
)
def test_invalid_events_raise_invalid_event(name: str) -> None:
    with pytest.raises(ProtocolError) as info:
        check_event(name)
    assert info.value.code is ErrorCode.INVALID_EVENT


# --- the registry of kinds --------------------------------------------------------------------


def test_every_kind_parses_back_to_itself() -> None:
    for kind in ChannelKind:
        name = kind.value if kind.singleton else f"{kind.value}/x1"
        channel = parse_channel(name)
        assert channel.kind is kind and channel.id == (None if kind.singleton else "x1")
        assert ChannelKind(kind.value) is kind


@given(st.text(max_size=200) | st.sampled_from(["global", "metrics", "agents/a", "teams/t"]))
def test_the_rest_pattern_is_the_grammar(name: str) -> None:
    """channel_pattern() (the OpenAPI pattern) accepts exactly what parse_channel accepts."""
    try:
        parse_channel(name)
        parsed = True
    except ProtocolError:
        parsed = False
    assert (re.fullmatch(channel_pattern(), name) is not None) == parsed


def test_rules_name_real_roles() -> None:
    """The rules compare roles by value (security.py imports channels.py, not the reverse)."""
    values = {role.value for role in Role}
    assert _PRIVILEGED <= values and "admin" in values
    assert ADMIN.allows(Identity("root", None, Role.ADMIN), parse_channel("global"))
    assert not ADMIN.allows(Identity("d", None, Role.DASHBOARD), parse_channel("global"))
