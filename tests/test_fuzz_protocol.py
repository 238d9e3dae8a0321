"""Property-based fuzzing of the WebSocket protocol.

Whatever a client sends — random bytes, random JSON, valid shapes with wrong types, huge
numbers, deep nesting, unicode edge cases — the server answers with documented frames only,
keeps the connection open, logs no traceback, and other clients see nothing of it.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.realtime.protocol import ErrorCode
from app.server import Service
from tests.conftest import Client, ClientFactory, ServiceFactory

CODES = {code.value for code in ErrorCode}
TYPES = [
    "subscribe",
    "unsubscribe",
    "publish",
    "auth",
    "ping",
    "history",
    "presence",
    "presence_stats",
]
FIELDS = [
    "type",
    "channel",
    "event",
    "data",
    "id",
    "since",
    "limit",
    "agent_id",
    "session_id",
    "token",
]
_counter = itertools.count()

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
    st.sampled_from(
        ["", "global", "agents/", "topics/x", "a" * 300, "\u0000", "\U0001f600", "\ufeff"]
    ),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
shaped = st.fixed_dictionaries(
    {"type": st.sampled_from(TYPES)},
    optional={field: json_values for field in FIELDS if field != "type"},
)
frames = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200),  # hypothesis leaves out lone surrogates, which are not UTF-8
    json_values.map(lambda v: orjson.dumps(v).decode()),
    shaped.map(lambda v: orjson.dumps(v).decode()),
    st.integers(1, 400).map(
        lambda depth: '{"type":"publish","data":' + "[" * depth + "]" * depth + "}"
    ),
    st.sampled_from(
        [
            '{"type":',
            "{}",
            "[]",
            "null",
            '{"type":null}',
            '{"type":"ping"',
            "\ud7ff",
            '{"type":"\\ud800"}',
        ]
    ),
)


def _valid_reply(frame: dict[str, Any]) -> bool:
    if "error" in frame:
        return frame.get("code") in CODES and isinstance(frame["error"], str)
    if "event" in frame:
        return {"channel", "event", "data", "timestamp", "offset", "epoch"} <= set(frame)
    return frame.get("type") in {"ack", "pong"}


async def _exchange(client: Client, frame: str | bytes) -> list[dict[str, Any]]:
    """Send a fuzz frame then a sentinel; return every reply that came before the sentinel's."""
    await client.send(frame)
    sentinel = f"sentinel-{next(_counter)}"
    await client.send({"type": "presence_stats", "channel": "topics/sentinel", "id": sentinel})
    replies = []
    while True:
        reply = await client.recv(timeout=10)
        if reply.get("id") == sentinel:
            assert reply.get("type") == "ack", reply
            return replies
        replies.append(reply)


@pytest.fixture
async def fuzz_service(start_service: ServiceFactory) -> Service:
    # Limits high enough that the fuzzer measures the protocol, not the rate limiter.
    return await start_service(
        message_rate=1e6, message_burst=10**6, publish_rate=1e6, publish_burst=10**6
    )


@settings(
    max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(frame=frames)
async def test_any_frame_gets_only_documented_answers(
    fuzz_service: Service,
    ws_client: ClientFactory,
    caplog: pytest.LogCaptureFixture,
    frame: str | bytes,
) -> None:
    caplog.set_level(logging.WARNING)
    clients = getattr(fuzz_service, "_fuzz_clients", None)
    if clients is None:
        fuzzer = await ws_client(fuzz_service, agent_id="fuzzer")
        observer = await ws_client(fuzz_service)
        await observer.subscribe("topics/observed")
        clients = fuzz_service._fuzz_clients = (fuzzer, observer)  # type: ignore[attr-defined]
    fuzzer, observer = clients
    replies = await _exchange(fuzzer, frame)
    for reply in replies:
        assert _valid_reply(reply), (frame, reply)
    # The server never answers client input with a traceback.
    tracebacks = [r for r in caplog.records if r.exc_info and r.name.startswith("context_manager")]
    assert not tracebacks, [r.getMessage() for r in tracebacks]
    assert not any(r.get("code") == "INTERNAL" for r in replies), (frame, replies)


async def test_observer_is_untouched_by_fuzz(
    fuzz_service: Service, ws_client: ClientFactory
) -> None:
    """After a burst of garbage from one client, another client still works and saw nothing."""
    fuzzer = await ws_client(fuzz_service)
    observer = await ws_client(fuzz_service)
    await observer.subscribe("topics/observed")
    garbage = [b"\xff\xfe", "{", "[]", '{"type":"publish","channel":"topics/observed"}', "\u2028"]
    garbage += ['{"type":"publish","channel":"topics/observed","event":"BAD","data":1}']
    garbage += [
        '{"type":"publish","channel":"topics/observed","event":"note.x","data":'
        + "[" * 200
        + "]" * 200
        + "}"
    ]
    for frame in garbage:
        await fuzzer.send(frame)
    await observer.no_frame(0.3)
    ok = await fuzzer.request(
        {"type": "publish", "channel": "topics/observed", "event": "note.ok", "data": 1, "id": "ok"}
    )
    assert ok["success"]
    assert (await observer.next_event("note.ok"))["data"] == 1
