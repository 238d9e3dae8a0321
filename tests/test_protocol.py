"""The seed's wire protocol over a real socket: every message type, every error code it can produce.

Every bad input gets its error frame (with the request `id` when one was given), the connection
goes on, and a second client on the same server sees nothing of it.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from app.server import Service
from tests.conftest import Client, ClientFactory, ServiceFactory, ws_url

CLIENT_ID = re.compile(r"ws_[0-9a-z]+_[0-9a-f]{12}")
ERROR_KEYS = {"error", "code", "timestamp"}


def assert_recent_ms(value: Any) -> None:
    assert isinstance(value, int) and not isinstance(value, bool)
    assert abs(value - time.time() * 1000) < 60_000, value


async def assert_alive(client: Client) -> None:
    """The connection still answers: a ping gets its pong."""
    await client.send({"type": "ping", "timestamp": int(time.time() * 1000)})
    while True:
        frame = await client.recv()
        if frame.get("type") == "pong":
            return


async def observer_of(service: Service, ws_client: ClientFactory) -> Client:
    """A second client subscribed to the channels the bad inputs aim at."""
    observer = await ws_client(service)
    for channel in ("global", "topics/x", "agents/a"):
        await observer.subscribe(channel)
    return observer


async def expect_error(
    client: Client,
    observer: Client,
    message: dict[str, Any] | str | bytes,
    code: str,
    rid: str | int | None = None,
) -> dict[str, Any]:
    """Send a bad message; check the error frame, that the sender lives, that others saw nothing."""
    await client.send(message)
    reply = await client.recv()
    expected_keys = ERROR_KEYS | ({"id"} if rid is not None else set())
    assert set(reply) == expected_keys, reply
    assert reply["code"] == code, reply
    assert isinstance(reply["error"], str) and reply["error"]
    assert_recent_ms(reply["timestamp"])
    if rid is not None:
        assert reply["id"] == rid
    await assert_alive(client)
    await observer.no_frame(0.1)
    return reply


# --- connection ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/ws"])
async def test_connected_frame(service: Service, path: str) -> None:
    async with connect(ws_url(service, path, agent_id="my-agent", session_id="abc123")) as ws:
        hello = orjson.loads(await ws.recv())
    assert set(hello) == {"type", "client_id", "timestamp"}
    assert hello["type"] == "connected"
    assert CLIENT_ID.fullmatch(hello["client_id"]), hello
    assert_recent_ms(hello["timestamp"])


async def test_client_ids_are_unique(service: Service, ws_client: ClientFactory) -> None:
    clients = [await ws_client(service) for _ in range(20)]
    assert len({c.client_id for c in clients}) == 20


async def test_other_paths_are_refused(service: Service) -> None:
    with pytest.raises(InvalidStatus) as info:
        async with connect(ws_url(service, "/nope"), open_timeout=5):
            pass
    assert info.value.response.status_code == 403


async def test_query_identity_is_kept(service: Service, ws_client: ClientFactory) -> None:
    client = await ws_client(service, agent_id="my-agent", session_id="abc123")
    reply = await client.request({"type": "auth", "id": "who"})
    assert reply["agent_id"] == "my-agent"
    assert reply["session_id"] == "abc123"


async def test_invalid_query_identity_is_reported_and_ignored(
    service: Service, ws_client: ClientFactory
) -> None:
    client = await ws_client(service, agent_id="bad id!", session_id="ok-session")
    error = await client.recv()
    assert error["code"] == "INVALID_MESSAGE"
    assert "agent_id" in error["error"]
    reply = await client.request({"type": "auth", "id": "who"})
    assert reply["agent_id"] is None
    assert reply["session_id"] == "ok-session"


# --- every message type ----------------------------------------------------------------------


async def test_seed_client_session(service: Service, ws_client: ClientFactory) -> None:
    """The seed's "Client Usage" example, message for message."""
    other = await ws_client(service, agent_id="other-agent")
    await other.subscribe("agents/other-agent")
    client = await ws_client(service, agent_id="my-agent", session_id="abc123")
    ts = int(time.time() * 1000)

    await client.send({"type": "subscribe", "channel": "global", "id": "sub-1", "timestamp": ts})
    ack = await client.recv()
    assert ack["type"] == "ack" and ack["id"] == "sub-1" and ack["success"] is True
    assert_recent_ms(ack["timestamp"])

    await client.send(
        {"type": "auth", "agent_id": "my-agent", "session_id": "abc123", "timestamp": ts}
    )
    await client.send(
        {
            "type": "publish",
            "channel": "agents/other-agent",
            "event": "message.new",
            "data": {"content": "Hello!"},
            "id": "pub-1",
            "timestamp": ts,
        }
    )
    ack = await client.recv()
    assert ack["type"] == "ack" and ack["id"] == "pub-1" and ack["success"] is True

    event = await other.next_event("message.new")
    assert event["channel"] == "agents/other-agent"
    # A message.new is also stored and may carry more (its id, sender…): the seed's reader
    # still finds its content where it put it.
    assert event["data"]["content"] == "Hello!"
    assert_recent_ms(event["timestamp"])

    await client.send({"type": "ping", "timestamp": ts})
    # This client listens on `global`: events published there (the new message's feed, the
    # agent's heartbeat) may come between; the pong is the one frame with a `type`.
    frames = []
    while not frames or "type" not in frames[-1]:
        frames.append(await client.recv())
    pong = frames[-1]
    assert set(pong) == {"type", "timestamp"} and pong["type"] == "pong", pong
    assert_recent_ms(pong["timestamp"])
    # The ping of an agent is also its heartbeat; and `auth` without an id was applied
    # silently: no ack and no error ever came.
    await asyncio.sleep(0.2)
    while True:
        try:
            frames.append(await client.recv(0.01))
        except TimeoutError:
            break
    assert all(f["channel"] == "global" for f in frames if "event" in f), frames
    assert not [f for f in frames if "error" in f or f.get("type") == "ack"], frames
    beats = [f for f in frames if f.get("event") == "agent.heartbeat"]
    assert len(beats) == 1 and beats[0]["data"]["agent_id"] == "my-agent"


async def test_subscribe_ack_and_delivery(service: Service, ws_client: ClientFactory) -> None:
    client = await ws_client(service)
    ack = await client.request({"type": "subscribe", "channel": "topics/x", "id": "s1"})
    assert ack["type"] == "ack" and ack["success"] is True and ack["id"] == "s1"
    await service.manager.publish("topics/x", "note.added", {"n": 1})
    event = await client.recv()
    assert {"channel", "event", "data", "timestamp"} <= set(event)
    assert (event["channel"], event["event"], event["data"]) == ("topics/x", "note.added", {"n": 1})


async def test_no_ack_without_id(service: Service, ws_client: ClientFactory) -> None:
    client = await ws_client(service)
    other = await ws_client(service)
    await other.subscribe("global")
    await other.subscribe("topics/y")
    await client.send({"type": "subscribe", "channel": "topics/x"})
    await client.send({"type": "auth", "agent_id": "quiet"})
    await client.no_frame(0.2)
    # ...yet both took effect: the subscription delivers, and the auth produced presence.
    assert (await other.next_event("agent.connected"))["data"]["agent_id"] == "quiet"
    await service.manager.publish("topics/x", "note.added", None)
    assert (await client.recv())["event"] == "note.added"
    await client.send({"type": "unsubscribe", "channel": "topics/x"})
    await client.send(
        {"type": "publish", "channel": "topics/y", "event": "note.added", "data": {"q": 1}}
    )
    await client.no_frame(0.2)
    assert (await other.next_event("note.added"))["data"] == {"q": 1}


async def test_integer_request_ids_are_echoed(service: Service, ws_client: ClientFactory) -> None:
    client = await ws_client(service)
    ack = await client.request({"type": "subscribe", "channel": "global", "id": 7})
    assert ack["id"] == 7
    error = await client.request({"type": "unsubscribe", "channel": "metrics", "id": 0})
    assert error["id"] == 0 and error["code"] == "NOT_SUBSCRIBED"


async def test_subscribe_twice_is_idempotent(service: Service, ws_client: ClientFactory) -> None:
    client = await ws_client(service)
    await client.subscribe("global")
    await client.subscribe("global")
    await service.manager.publish("global", "note.added", 1)
    assert (await client.recv())["data"] == 1
    await client.no_frame(0.2)  # delivered once, not once per subscribe


async def test_unsubscribe(service: Service, ws_client: ClientFactory) -> None:
    client = await ws_client(service)
    await client.subscribe("topics/x")
    ack = await client.request({"type": "unsubscribe", "channel": "topics/x", "id": "u1"})
    assert ack["type"] == "ack" and ack["success"] is True and ack["id"] == "u1"
    await service.manager.publish("topics/x", "note.added", None)
    await client.no_frame(0.2)


async def publish_to_self(client: Client, message: dict[str, Any]) -> dict[str, Any]:
    """Publish on a channel the client is subscribed to: return the event; the ack came too."""
    await client.send(message)
    frames = [await client.recv(), await client.recv()]
    acks = [f for f in frames if f.get("type") == "ack"]
    events = [f for f in frames if "event" in f]
    assert len(acks) == 1 and acks[0]["id"] == message["id"] and acks[0]["success"] is True
    assert len(events) == 1, frames
    return events[0]


async def test_publish_without_data_delivers_null(
    service: Service, ws_client: ClientFactory
) -> None:
    client = await ws_client(service)
    await client.subscribe("topics/x")
    message = {"type": "publish", "channel": "topics/x", "event": "x.y", "id": "p"}
    event = await publish_to_self(client, message)
    assert event["data"] is None


async def test_publish_data_round_trips(service: Service, ws_client: ClientFactory) -> None:
    client = await ws_client(service)
    await client.subscribe("topics/x")
    samples: list[Any] = [
        {"nested": {"list": [1, 2.5, None, True, 'é✓ \u2028 \\ "']}},
        [1, "two"],
        "text",
        12345678901234,
        0.5,
        False,
        {},
        "",
    ]
    for n, data in enumerate(samples):
        message = {"type": "publish", "channel": "topics/x", "event": "x.y", "data": data}
        event = await publish_to_self(client, {**message, "id": n})
        assert event["data"] == data
        assert (event["channel"], event["event"]) == ("topics/x", "x.y")


async def test_auth_sets_identity(service: Service, ws_client: ClientFactory) -> None:
    client = await ws_client(service)
    ack = await client.request(
        {"type": "auth", "agent_id": "my-agent", "session_id": "abc123", "id": "a1"}
    )
    assert ack["type"] == "ack" and ack["success"] is True and ack["id"] == "a1"
    assert ack["agent_id"] == "my-agent" and ack["session_id"] == "abc123"
    # A later auth may change the session alone; the agent is kept.
    ack = await client.request({"type": "auth", "session_id": "def456", "id": "a2"})
    assert ack["agent_id"] == "my-agent" and ack["session_id"] == "def456"


async def test_ping_with_id_gets_a_pong(service: Service, ws_client: ClientFactory) -> None:
    client = await ws_client(service)
    await client.send({"type": "ping", "id": "p1"})
    assert (await client.recv())["type"] == "pong"


async def test_binary_frames_carry_json(service: Service, ws_client: ClientFactory) -> None:
    client = await ws_client(service)
    await client.send(orjson.dumps({"type": "subscribe", "channel": "global", "id": "b1"}))
    ack = await client.recv()
    assert ack["type"] == "ack" and ack["id"] == "b1"
    await client.send(b'{"type":"ping"}')
    assert (await client.recv())["type"] == "pong"


# --- every error code ------------------------------------------------------------------------


async def expect_errors(
    service: Service,
    ws_client: ClientFactory,
    cases: list[tuple[dict[str, Any] | str | bytes, str | int | None]],
    code: str,
) -> None:
    """Every case on one connection: each gets its error, the connection survives them all."""
    client = await ws_client(service)
    observer = await observer_of(service, ws_client)
    for message, rid in cases:
        await client.send(message)
        reply = await client.recv()
        expected_keys = ERROR_KEYS | ({"id"} if rid is not None else set())
        assert set(reply) == expected_keys, (message, reply)
        assert reply["code"] == code, (message, reply)
        assert isinstance(reply["error"], str) and reply["error"], reply
        assert_recent_ms(reply["timestamp"])
        if rid is not None:
            assert reply["id"] == rid, (message, reply)
        await assert_alive(client)
    await observer.no_frame(0.2)
    await assert_alive(observer)
    # Nothing the bad messages tried took effect: this client is on no channel.
    await service.manager.publish("global", "probe.sent", None)
    assert (await observer.next_event("probe.sent"))["data"] is None
    await client.no_frame(0.1)


async def test_invalid_json(service: Service, ws_client: ClientFactory) -> None:
    texts = ["{not json", "", "   ", "{'type': 'ping'}", '{"type": "ping"', "ping", "[1,", "nul"]
    binary = [b"\xff\xfe\x00garbage", b"not json at all", b'{"type": "ping"\xff}']
    cases: list[tuple[dict[str, Any] | str | bytes, str | int | None]] = [
        (m, None) for m in [*texts, *binary]
    ]
    await expect_errors(service, ws_client, cases, "INVALID_JSON")


async def test_invalid_message(service: Service, ws_client: ClientFactory) -> None:
    cases: list[tuple[dict[str, Any] | str | bytes, str | int | None]] = [
        # not an object
        ("[1, 2]", None),
        ('"text"', None),
        ("42", None),
        ("null", None),
        ("true", None),
        ("[]", None),
        # no type, or a type that is not a string
        ({}, None),
        ({"channel": "global"}, None),
        ({"type": 5}, None),
        ({"type": None}, None),
        ({"type": ["subscribe"]}, None),
        ({"id": "m1"}, "m1"),
        ({"type": 5, "id": "m2"}, "m2"),
        ({"type": {"x": 1}, "id": 3}, 3),
        # missing or wrong-typed fields
        ({"type": "subscribe", "id": "m4"}, "m4"),
        ({"type": "subscribe", "channel": 5, "id": "m5"}, "m5"),
        ({"type": "subscribe", "channel": None, "id": "m6"}, "m6"),
        ({"type": "subscribe", "channel": ["global"], "id": "m7"}, "m7"),
        ({"type": "subscribe", "channel": ["global"]}, None),
        ({"type": "unsubscribe", "id": "m8"}, "m8"),
        ({"type": "unsubscribe", "channel": {"name": "global"}, "id": "m9"}, "m9"),
        ({"type": "publish", "event": "a.b", "data": 1, "id": "m10"}, "m10"),
        ({"type": "publish", "channel": "global", "data": 1, "id": "m11"}, "m11"),
        ({"type": "publish", "channel": "global", "event": 5, "id": "m12"}, "m12"),
        ({"type": "publish", "channel": 1, "event": "a.b", "id": "m13"}, "m13"),
        ({"type": "auth", "agent_id": 5, "id": "m15"}, "m15"),
        ({"type": "auth", "session_id": [], "id": "m16"}, "m16"),
        ({"type": "auth", "agent_id": "bad id", "id": "m17"}, "m17"),
        ({"type": "auth", "session_id": "-leading-dash", "id": "m18"}, "m18"),
        ({"type": "auth", "agent_id": "a" * 129, "id": "m19"}, "m19"),
        # a request id of a type that cannot be echoed: the whole message is refused
        ({"type": "subscribe", "channel": "global", "id": 1.5}, None),
        ({"type": "subscribe", "channel": "global", "id": True}, None),
        ({"type": "subscribe", "channel": "global", "id": {"a": 1}}, None),
        ({"type": "subscribe", "channel": "global", "id": [1]}, None),
        ('{"type": "subscribe", "channel": "global", "id": 123456789012345678901234567890}', None),
        ({"type": "publish", "channel": "global", "event": "a.b", "id": False}, None),
        ({"type": "ping", "id": 2.5}, None),
    ]
    await expect_errors(service, ws_client, cases, "INVALID_MESSAGE")


async def test_unknown_type(service: Service, ws_client: ClientFactory) -> None:
    kinds = ["subscribe ", "SUBSCRIBE", "hello", "", "event", "ack", "pong", "x" * 500]
    cases: list[tuple[dict[str, Any] | str | bytes, str | int | None]] = []
    for n, kind in enumerate(kinds):
        cases += [({"type": kind, "id": f"u{n}"}, f"u{n}"), ({"type": kind}, None)]
    await expect_errors(service, ws_client, cases, "UNKNOWN_TYPE")


async def test_unknown_type_does_not_echo_unbounded_text(
    service: Service, ws_client: ClientFactory
) -> None:
    client = await ws_client(service)
    reply = await client.request({"type": "x" * 10_000, "id": "u"})
    assert reply["code"] == "UNKNOWN_TYPE" and len(reply["error"]) < 200


BAD_CHANNELS = [
    "users/x",  # unknown namespace
    "Global",
    "agent/x",
    "agents/",  # empty id
    "topics/",
    "agents/" + "a" * 129,  # too long
    "topics/" + "a" * 5000,
    "agents/has space",  # bad characters
    "topics/x!",
    "sessions/é",
    "agents/.dot",
    "topics/x/",  # trailing slash
    "global/",
    "agents/x/y",  # nested path
    "topics/a/b/c",
    "",
]


@pytest.mark.parametrize("kind", ["subscribe", "unsubscribe", "publish"])
async def test_invalid_channel(service: Service, ws_client: ClientFactory, kind: str) -> None:
    cases: list[tuple[dict[str, Any] | str | bytes, str | int | None]] = []
    for n, channel in enumerate(BAD_CHANNELS):
        message = {"type": kind, "channel": channel, "event": "a.b", "data": 1}
        cases += [({**message, "id": f"c{n}"}, f"c{n}"), (message, None)]
    await expect_errors(service, ws_client, cases, "INVALID_CHANNEL")


async def test_invalid_event(service: Service, ws_client: ClientFactory) -> None:
    events = ["task", "Task.created", "task.", "task..created", "task created", "a." + "b" * 80]
    cases: list[tuple[dict[str, Any] | str | bytes, str | int | None]] = []
    for n, event in enumerate(events):
        message = {"type": "publish", "channel": "topics/x", "event": event, "data": 1}
        cases += [({**message, "id": f"e{n}"}, f"e{n}"), (message, None)]
    await expect_errors(service, ws_client, cases, "INVALID_EVENT")


async def test_not_subscribed(service: Service, ws_client: ClientFactory) -> None:
    client = await ws_client(service)
    observer = await observer_of(service, ws_client)
    message = {"type": "unsubscribe", "channel": "topics/x", "id": "n1"}
    await expect_error(client, observer, message, "NOT_SUBSCRIBED", "n1")
    await client.subscribe("topics/x")
    await client.request({"type": "unsubscribe", "channel": "topics/x", "id": "n2"})
    # A second unsubscribe from the same channel is an error again.
    await expect_error(client, observer, {**message, "id": "n3"}, "NOT_SUBSCRIBED", "n3")
    # The observer's own subscription on the same channel was not touched.
    await service.manager.publish("topics/x", "note.added", 1)
    assert (await observer.next_event("note.added"))["data"] == 1


async def test_too_many_subscriptions(
    start_service: ServiceFactory, ws_client: ClientFactory
) -> None:
    service = await start_service(max_subscriptions=3)
    client = await ws_client(service)
    observer = await ws_client(service)
    await observer.subscribe("global")
    for channel in ("topics/a", "topics/b", "topics/c"):
        await client.subscribe(channel)
    message = {"type": "subscribe", "channel": "topics/d", "id": "t4"}
    await expect_error(client, observer, message, "TOO_MANY_SUBSCRIPTIONS", "t4")
    # Re-subscribing to a channel it already has is not a new subscription.
    await client.subscribe("topics/a")
    # Freeing a slot makes room.
    await client.request({"type": "unsubscribe", "channel": "topics/b", "id": "u"})
    await client.subscribe("topics/d")
    await service.manager.publish("topics/d", "note.added", 4)
    assert (await client.next_event("note.added"))["data"] == 4


async def test_message_too_large(start_service: ServiceFactory, ws_client: ClientFactory) -> None:
    service = await start_service()  # defaults: 64 KiB answered with an error, 1 MiB closes
    limit = service.settings.max_message_bytes
    client = await ws_client(service)
    observer = await observer_of(service, ws_client)
    big = {"type": "publish", "channel": "topics/x", "event": "a.b", "data": "x" * limit, "id": "L"}
    await expect_error(client, observer, big, "MESSAGE_TOO_LARGE")
    # Counted in bytes, not characters: 3-byte characters under the limit in length.
    wide = {**big, "data": "€" * (limit // 2)}
    await expect_error(client, observer, wide, "MESSAGE_TOO_LARGE")
    await expect_error(client, observer, orjson.dumps(big), "MESSAGE_TOO_LARGE")  # binary too
    # Just under the limit goes through.
    fits = {**big, "data": "x" * (limit - 200)}
    assert (await client.request(fits))["success"] is True
    assert (await observer.next_event("a.b"))["data"] == fits["data"]


async def test_frame_above_max_frame_closes_with_1009(
    start_service: ServiceFactory, ws_client: ClientFactory
) -> None:
    service = await start_service(max_message_bytes=1024, max_frame_bytes=16 * 1024)
    client = await ws_client(service)
    observer = await observer_of(service, ws_client)
    # Between the two limits: an error, not a close.
    await expect_error(client, observer, "x" * 8 * 1024, "MESSAGE_TOO_LARGE")
    await client.send("x" * (16 * 1024 + 1))
    with pytest.raises(ConnectionClosed) as info:
        await client.recv()
    assert info.value.rcvd is not None and info.value.rcvd.code == 1009
    # Everyone else goes on.
    await observer.no_frame(0.1)
    await assert_alive(observer)
    await service.manager.publish("global", "note.added", 1)
    assert (await observer.next_event("note.added"))["data"] == 1


async def test_errors_between_good_messages_keep_order(
    service: Service, ws_client: ClientFactory
) -> None:
    """A burst mixing good and bad messages is answered one for one, in order."""
    client = await ws_client(service)
    burst: list[dict[str, Any] | str] = [
        {"type": "subscribe", "channel": "topics/x", "id": 1},
        "{bad",
        {"type": "subscribe", "channel": "nope", "id": 2},
        {"type": "publish", "channel": "topics/x", "event": "a.b", "data": 1, "id": 3},
        {"type": "what", "id": 4},
        {"type": "unsubscribe", "channel": "topics/x", "id": 5},
        {"type": "unsubscribe", "channel": "topics/x", "id": 6},
    ]
    for message in burst:
        await client.send(message)
    frames = [await client.recv() for _ in range(8)]
    summary = [(f.get("id"), f.get("code") or f.get("type") or f.get("event")) for f in frames]
    assert summary == [
        (1, "ack"),
        (None, "INVALID_JSON"),
        (2, "INVALID_CHANNEL"),
        (None, "a.b"),  # the event reaches the publisher (subscribed) before its ack
        (3, "ack"),
        (4, "UNKNOWN_TYPE"),
        (5, "ack"),
        (6, "NOT_SUBSCRIBED"),
    ]


async def test_data_nested_too_deeply_is_refused_whoever_listens(
    service: Service, ws_client: ClientFactory
) -> None:
    """orjson encodes at most 254 levels: deeper data must be refused, not fail in fan-out."""
    client = await ws_client(service)
    observer = await observer_of(service, ws_client)

    def publish(channel: str, depth: int, rid: str) -> str:
        data = "[" * depth + "]" * depth
        return (
            f'{{"type":"publish","channel":"{channel}","event":"a.b","id":"{rid}","data":{data}}}'
        )

    # With a subscriber and without one, the same answer: INVALID_MESSAGE, nothing delivered.
    await expect_error(client, observer, publish("topics/x", 300, "d1"), "INVALID_MESSAGE", "d1")
    await expect_error(client, observer, publish("topics/z", 300, "d2"), "INVALID_MESSAGE", "d2")
    assert "INTERNAL" not in service.manager.stats.errors
    # Reasonable nesting goes through.
    await client.send(publish("topics/x", 50, "d3"))
    assert (await client.recv())["id"] == "d3"
    event = await observer.next_event("a.b")
    assert orjson.dumps(event["data"]) == ("[" * 50 + "]" * 50).encode()


def test_nesting_limit_boundary() -> None:
    from app.realtime.protocol import MAX_NESTING, ErrorCode, ProtocolError, parse_message

    def message(depth: int) -> str:  # the message object itself is one level
        lists = depth - 1
        return '{"type":"publish","id":"n","data":' + "[" * lists + "]" * lists + "}"

    assert parse_message(message(MAX_NESTING))["type"] == "publish"
    with pytest.raises(ProtocolError) as info:
        parse_message(message(MAX_NESTING + 1))
    assert info.value.code is ErrorCode.INVALID_MESSAGE and info.value.request_id == "n"
    # Brackets inside strings do not count as nesting.
    assert parse_message('{"type":"ping","data":"' + "[" * 500 + '"}')["type"] == "ping"
