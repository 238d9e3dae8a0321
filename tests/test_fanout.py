"""Fan-out over real sockets: many subscribers, exactly once, in order, only where subscribed."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from app.server import Service
from tests.conftest import Client, ClientFactory, ServiceFactory

FANOUT_CLIENTS = 200
FANOUT_EVENTS = 25


async def drain_events(client: Client, count: int, timeout: float = 20.0) -> list[dict[str, Any]]:
    """The next `count` event frames of `client` (acks and pongs skipped)."""
    events = []
    async with asyncio.timeout(timeout):
        while len(events) < count:
            frame = await client.recv(timeout)
            if "event" in frame:
                events.append(frame)
    return events


async def test_fanout_to_many_clients_exactly_once_in_order(
    service: Service, ws_client: ClientFactory
) -> None:
    clients = list(await asyncio.gather(*(ws_client(service) for _ in range(FANOUT_CLIENTS))))
    await asyncio.gather(*(c.subscribe("topics/fan") for c in clients))
    publisher = await ws_client(service, agent_id="publisher")
    for n in range(FANOUT_EVENTS):
        await publisher.send(
            {"type": "publish", "channel": "topics/fan", "event": "fan.out", "data": {"n": n}}
        )
    received = await asyncio.gather(*(drain_events(c, FANOUT_EVENTS) for c in clients))
    for events in received:
        assert [e["data"]["n"] for e in events] == list(range(FANOUT_EVENTS))
        assert all(e["channel"] == "topics/fan" and e["event"] == "fan.out" for e in events)
    # Exactly once: nothing more arrives for anyone.
    await asyncio.gather(*(c.no_frame(0.3) for c in clients[:20]))
    # The publisher was not subscribed, so it got nothing either.
    await publisher.no_frame(0.1)
    health = service.manager.health(service.settings.ws_port)
    assert health["channelStats"]["topics/fan"] == FANOUT_CLIENTS


async def test_server_side_publish_fans_out_in_order(
    service: Service, ws_client: ClientFactory
) -> None:
    """`manager.publish`, the path the REST API and the bridge use, reaches every subscriber."""
    clients = [await ws_client(service) for _ in range(20)]
    for client in clients:
        await client.subscribe("global")
    for n in range(100):
        await service.manager.publish("global", "task.created", {"n": n})
    for events in await asyncio.gather(*(drain_events(c, 100) for c in clients)):
        assert [e["data"]["n"] for e in events] == list(range(100))


async def test_every_subscriber_gets_the_same_bytes(
    service: Service, ws_client: ClientFactory
) -> None:
    clients = [await ws_client(service) for _ in range(10)]
    for client in clients:
        await client.subscribe("topics/same")
    await service.manager.publish("topics/same", "x.y", {"k": [1, 2, 3], "s": "é"})
    raws = await asyncio.gather(*(asyncio.wait_for(c.ws.recv(), 5) for c in clients))
    assert len(set(raws)) == 1


async def test_a_publication_is_encoded_once(
    service: Service, ws_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One publication to 50 subscribers is JSON-encoded once, not once per subscriber."""
    import app.realtime.publication as publication_module

    calls = 0
    real = publication_module.event_frame

    def counting(*args: Any, **kwargs: Any) -> str:
        nonlocal calls
        calls += 1
        return real(*args, **kwargs)

    clients = [await ws_client(service) for _ in range(50)]
    for client in clients:
        await client.subscribe("topics/once")
    monkeypatch.setattr(publication_module, "event_frame", counting)
    await service.manager.publish("topics/once", "x.y", {"big": "z" * 10_000})
    await asyncio.gather(*(drain_events(c, 1) for c in clients))
    assert calls == 1


async def test_unsubscribe_stops_delivery(service: Service, ws_client: ClientFactory) -> None:
    staying = await ws_client(service)
    leaving = await ws_client(service)
    for client in (staying, leaving):
        await client.subscribe("topics/a")
    await service.manager.publish("topics/a", "x.y", 1)
    assert (await leaving.next_event())["data"] == 1
    await leaving.request({"type": "unsubscribe", "channel": "topics/a", "id": "u"})
    await service.manager.publish("topics/a", "x.y", 2)
    assert [e["data"] for e in await drain_events(staying, 2)] == [1, 2]
    await leaving.no_frame(0.3)
    # Subscribing again resumes delivery (only of what comes next).
    await leaving.subscribe("topics/a")
    await service.manager.publish("topics/a", "x.y", 3)
    assert (await leaving.next_event())["data"] == 3


async def test_closed_subscriber_is_forgotten(service: Service, ws_client: ClientFactory) -> None:
    staying = await ws_client(service)
    gone = await ws_client(service)
    for client in (staying, gone):
        await client.subscribe("topics/a")
    await gone.close()
    async with asyncio.timeout(5):
        while service.manager.hub.channel_stats().get("topics/a") != 1:
            await asyncio.sleep(0.01)
    await service.manager.publish("topics/a", "x.y", 1)
    assert (await staying.next_event())["data"] == 1
    await staying.close()
    async with asyncio.timeout(5):
        while "topics/a" in service.manager.hub.channel_stats():
            await asyncio.sleep(0.01)


async def test_publisher_gets_its_own_event_only_when_subscribed(
    service: Service, ws_client: ClientFactory
) -> None:
    publisher = await ws_client(service)
    other = await ws_client(service)
    await other.subscribe("topics/t")
    message = {"type": "publish", "channel": "topics/t", "event": "x.y", "data": 1, "id": "p1"}
    assert (await publisher.request(message))["success"] is True
    await publisher.no_frame(0.2)
    await publisher.subscribe("topics/t")
    await publisher.send({**message, "data": 2, "id": "p2"})
    frames = [await publisher.recv(), await publisher.recv()]
    assert {f.get("type", f.get("event")) for f in frames} == {"ack", "x.y"}
    assert [e["data"] for e in await drain_events(other, 2)] == [1, 2]


async def test_channels_are_isolated(
    start_service: ServiceFactory, ws_client: ClientFactory
) -> None:
    service = await start_service(metrics_interval=3600)
    channels = ["global", "metrics", "topics/a", "topics/b", "sessions/s1", "agents/a1"]
    listeners = {}
    for channel in channels:
        listeners[channel] = await ws_client(service)  # no agent_id: may read agents/*
        await listeners[channel].subscribe(channel)
    for n, channel in enumerate(channels):
        await service.manager.publish(channel, "x.y", {"to": channel, "n": n})
    for channel, client in listeners.items():
        event = await client.next_event("x.y")
        assert event["channel"] == channel and event["data"]["to"] == channel, event
        try:
            extra = await client.recv(0.05)
        except TimeoutError:
            continue
        # The metrics task's first tick may land on `metrics`; nothing else may arrive.
        assert (extra.get("channel"), extra.get("event")) == ("metrics", "metric.update"), extra
    # Names that share a prefix are different channels.
    prefix = await ws_client(service)
    await prefix.subscribe("topics/ab")
    await service.manager.publish("topics/a", "x.y", "not for ab")
    await prefix.no_frame(0.2)


async def test_one_clients_bad_frames_never_reach_others(
    start_service: ServiceFactory, ws_client: ClientFactory
) -> None:
    service = await start_service(max_message_bytes=4096)
    bystanders = [await ws_client(service) for _ in range(5)]
    for client in bystanders:
        for channel in ("global", "topics/x"):
            await client.subscribe(channel)
    vandal = await ws_client(service)
    await vandal.subscribe("topics/x")
    garbage: list[Any] = [
        "{nope",
        b"\xff\xfe",
        "[]",
        {"type": "publish", "channel": "topics/x/", "event": "x.y", "data": 1},
        {"type": "publish", "channel": "topics/x", "event": "X", "data": 1},
        {"type": "publish", "channel": "topics/x", "event": 5, "data": 1},
        {"type": "publish", "channel": "topics/x", "event": "x.y", "data": "z" * 5000},
        {"type": "shout", "channel": "topics/x"},
        {"type": "unsubscribe", "channel": "topics/nope"},
    ]
    for _ in range(10):
        for message in garbage:
            await vandal.send(message)
    errors = [await vandal.recv() for _ in range(10 * len(garbage))]
    assert all("code" in e for e in errors), [e for e in errors if "code" not in e]
    await asyncio.gather(*(c.no_frame(0.3) for c in bystanders))
    # The vandal's own good messages still work, and reach everyone.
    await vandal.request(
        {"type": "publish", "channel": "topics/x", "event": "x.y", "data": "ok", "id": "g"}
    )
    for client in bystanders:
        assert (await client.next_event("x.y"))["data"] == "ok"
