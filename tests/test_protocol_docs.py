"""docs/protocol.md says what the server answers: each ack shape of its "Client → server" table,
read from the document itself, is compared with what a real server sends.

A change on either side that the other does not follow fails here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from app.server import Service
from tests.conftest import ClientFactory, ServiceFactory, ws_url

PROTOCOL = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
# Every ack has these; the table documents what comes on top.
ENVELOPE = {"type", "id", "success", "timestamp"}

Shape = dict[str, Any]  # key → None, or the shape of the object under that key


def parse_shape(text: str) -> Shape:
    """`{channel, presence: {client_id: {agent_id, …}}}` → {"channel": None, "presence": {…}}."""
    tokens = re.findall(r"\[[^\]]*\]|[{}:,]|[^{}:,\s\[]+", text)  # a `[list]` is one token
    position = 0

    def parse_object() -> Shape:
        nonlocal position
        assert tokens[position] == "{", text
        position += 1
        shape: Shape = {}
        while tokens[position] != "}":
            key = tokens[position]
            position += 1
            value = None
            if tokens[position] == ":":
                position += 1
                if tokens[position].startswith("["):  # a list: its items are not checked here
                    position += 1
                else:
                    value = parse_object()
            shape[key] = value
            if tokens[position] == ",":
                position += 1
        position += 1
        return shape

    return parse_object()


def documented_acks(message_type: str) -> list[Shape]:
    """The ack shapes in the answer column of `message_type`'s row, in order."""
    rows = [
        line
        for line in PROTOCOL.read_text().splitlines()
        if line.startswith(f"| `{message_type}` |")
    ]
    assert len(rows) == 1, f"one row for {message_type} in docs/protocol.md"
    answer = rows[0].rstrip(" |").rsplit(" | ", 1)[1]
    shapes = []
    for match in re.finditer(r"ack `(\{.*?\})`", answer):
        text = match.group(1)
        while text.count("{") > text.count("}"):  # a lazy match stops at the first "}"
            text = answer[match.start(1) : answer.index("}", match.start(1) + len(text)) + 1]
        shapes.append(parse_shape(text))
    assert shapes, f"no ack shape documented for {message_type}"
    return shapes


def extra_keys(ack: dict[str, Any]) -> set[str]:
    assert ack.get("type") == "ack" and ack.get("success") is True, ack
    assert ENVELOPE <= set(ack), ack
    return set(ack) - ENVELOPE


def test_the_parser_reads_nested_shapes() -> None:
    assert parse_shape("{a, b: {c: {d, e}}, f: [x, …]}") == {
        "a": None,
        "b": {"c": {"d": None, "e": None}},
        "f": None,
    }


async def test_subscribe_and_unsubscribe_acks(service: Service, ws_client: ClientFactory) -> None:
    client = await ws_client(service)
    [subscribe] = documented_acks("subscribe")
    [unsubscribe] = documented_acks("unsubscribe")
    ack = await client.request({"type": "subscribe", "channel": "topics/d", "id": "s1"})
    assert extra_keys(ack) == set(subscribe)
    # With `since`: "(+ `recovered`, `replayed` with `since`)".
    since = {"offset": ack["offset"], "epoch": ack["epoch"]}
    again = await client.request(
        {"type": "subscribe", "channel": "topics/e", "id": "s2", "since": since}
    )
    assert extra_keys(again) == set(subscribe) | {"recovered", "replayed"}
    left = await client.request({"type": "unsubscribe", "channel": "topics/d", "id": "u1"})
    assert extra_keys(left) == set(unsubscribe)


async def test_publish_acks_both_documented_shapes(
    service: Service, ws_client: ClientFactory
) -> None:
    client = await ws_client(service, agent_id="sender")
    publication, direct_message = documented_acks("publish")
    ack = await client.request(
        {"type": "publish", "channel": "topics/d", "event": "note.added", "data": {}, "id": "p1"}
    )
    assert extra_keys(ack) == set(publication)
    assert isinstance(ack["offset"], int)
    ack = await client.request(
        {
            "type": "publish",
            "channel": "agents/receiver",
            "event": "message.new",
            "data": {"content": "hello"},
            "id": "p2",
        }
    )
    assert extra_keys(ack) == set(direct_message)
    # The message_id is the stored message's: readable over REST.
    api = f"http://127.0.0.1:{service.settings.api_port}"
    async with httpx.AsyncClient(base_url=api, timeout=5) as http:
        stored = (await http.get(f"/api/messages/{ack['message_id']}")).json()
    assert (stored["from_agent"], stored["to_agent"]) == ("sender", "receiver")


async def test_auth_history_and_presence_acks(service: Service, ws_client: ClientFactory) -> None:
    client = await ws_client(service, agent_id="a1", session_id="s1")
    [auth] = documented_acks("auth")
    [history] = documented_acks("history")
    [presence] = documented_acks("presence")
    [stats] = documented_acks("presence_stats")
    ack = await client.request({"type": "auth", "agent_id": "a1", "session_id": "s1", "id": 1})
    assert extra_keys(ack) == set(auth)
    await client.subscribe("topics/p")
    await client.request(
        {"type": "publish", "channel": "topics/p", "event": "note.added", "id": "p"}
    )
    ack = await client.request({"type": "history", "channel": "topics/p", "id": "h"})
    assert extra_keys(ack) == set(history)
    assert [p["event"] for p in ack["publications"]] == ["note.added"]
    ack = await client.request({"type": "presence", "channel": "topics/p", "id": "pr"})
    assert extra_keys(ack) == set(presence)
    [member_shape] = presence["presence"].values()  # keyed by client id
    [member] = ack["presence"].values()
    assert set(member) == set(member_shape)
    ack = await client.request({"type": "presence_stats", "channel": "topics/p", "id": "ps"})
    assert extra_keys(ack) == set(stats)


async def test_pong_and_error_frames(service: Service, ws_client: ClientFactory) -> None:
    client = await ws_client(service)
    await client.send({"type": "ping"})
    assert set(await client.recv()) == {"type", "timestamp"}
    error = await client.request({"type": "subscribe", "channel": "Global", "id": "bad"})
    assert set(error) == {"error", "code", "timestamp", "id"}
    assert error["code"] == "INVALID_CHANNEL"


@pytest.mark.parametrize("surface", ["ws", "dashboard"])
async def test_another_path_is_refused_with_403_as_documented(
    start_service: ServiceFactory, surface: str
) -> None:
    text = PROTOCOL.read_text()
    assert (
        "An upgrade on a path other than `/` or `/ws` is refused at the handshake with HTTP `403`"
        in text
    )
    # 1008 is for frame bounds; a wrong path never gets that far (no WebSocket to close).
    [row] = [line for line in text.splitlines() if line.startswith("| 1008 |")]
    assert "frame rate" in row and "refused with HTTP 403" in row
    service = await start_service(surfaces=("api", "ws", "dashboard"))
    port = service.settings.ws_port if surface == "ws" else service.settings.dashboard_port
    url = ws_url(service, "/nope").replace(f":{service.settings.ws_port}/", f":{port}/")
    with pytest.raises(InvalidStatus) as refused:
        async with connect(url, open_timeout=5):
            pass
    assert refused.value.response.status_code == 403
