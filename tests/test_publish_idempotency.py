"""WebSocket `publish` with `idempotency_key`: a retry is acked with the first offset, once.

The broker decides (tests/test_broker.py runs the rule on every backend, across nodes); here
the wire: the field's bounds, the `duplicate` ack, one event for the subscriber, and the
direct message that takes no key.
"""

from __future__ import annotations

from typing import Any

from app.realtime.broker.base import MAX_IDEMPOTENCY_KEY
from tests.conftest import ClientFactory, ServiceFactory


def _publish(channel: str, rid: str, **fields: Any) -> dict[str, Any]:
    return {"type": "publish", "channel": channel, "event": "note.added", "id": rid, **fields}


async def test_a_retried_publish_is_acked_with_the_first_offset_and_delivered_once(
    start_service: ServiceFactory, ws_client: ClientFactory
) -> None:
    service = await start_service()
    subscriber, publisher = await ws_client(service), await ws_client(service)
    await subscriber.subscribe("topics/retry")

    first = await publisher.request(
        _publish("topics/retry", "p1", data={"n": 1}, idempotency_key="op-42")
    )
    assert first["success"] is True and first["offset"] == 1 and "duplicate" not in first
    again = await publisher.request(
        _publish("topics/retry", "p2", data={"n": 1}, idempotency_key="op-42")
    )
    assert again["success"] is True
    assert (again["offset"], again["duplicate"]) == (1, True)
    other = await publisher.request(
        _publish("topics/retry", "p3", data={"n": 2}, idempotency_key="op-43")
    )
    assert other["offset"] == 2 and "duplicate" not in other

    events = [await subscriber.next_event(), await subscriber.next_event()]
    assert [(e["offset"], e["data"]) for e in events] == [(1, {"n": 1}), (2, {"n": 2})]
    await subscriber.no_frame()


async def test_a_bad_idempotency_key_is_refused_and_publishes_nothing(
    start_service: ServiceFactory, ws_client: ClientFactory
) -> None:
    service = await start_service()
    subscriber, publisher = await ws_client(service), await ws_client(service)
    await subscriber.subscribe("topics/bad-key")
    for rid, key in (
        ("long", "k" * (MAX_IDEMPOTENCY_KEY + 1)),
        ("empty", ""),
        ("number", 42),
        ("object", {"k": 1}),
    ):
        reply = await publisher.request(_publish("topics/bad-key", rid, idempotency_key=key))
        assert reply["code"] == "INVALID_MESSAGE", reply
        assert "idempotency_key" in reply["error"]
    longest = await publisher.request(
        _publish("topics/bad-key", "ok", idempotency_key="k" * MAX_IDEMPOTENCY_KEY)
    )
    assert longest["success"] is True and longest["offset"] == 1
    assert (await subscriber.next_event())["offset"] == 1
    await subscriber.no_frame()


async def test_a_direct_message_takes_no_idempotency_key(
    start_service: ServiceFactory, ws_client: ClientFactory
) -> None:
    service = await start_service()
    sender = await ws_client(service, agent_id="sender")
    reply = await sender.request(
        {
            "type": "publish",
            "channel": "agents/recipient",
            "event": "message.new",
            "data": {"content": "hi"},
            "idempotency_key": "m-1",
            "id": "dm",
        }
    )
    assert reply["code"] == "INVALID_MESSAGE" and "Idempotency-Key" in reply["error"]
