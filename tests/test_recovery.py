"""History, offsets, epochs and recovery on subscribe (docs/delivery.md)."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.server import Service
from tests.conftest import Client, ClientFactory, ServiceFactory


async def publish_many(service: Service, channel: str, count: int, start: int = 0) -> None:
    for seq in range(start, start + count):
        await service.manager.publish(channel, "note.added", {"seq": seq})


async def collect(client: Client, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    events = []
    while len(events) < count:
        events.append(await client.next_event(timeout=timeout))
    return events


async def test_events_carry_offset_and_epoch(service: Service, ws_client: ClientFactory) -> None:
    client = await ws_client(service)
    ack = await client.subscribe("topics/a")
    assert ack["offset"] == 0 and isinstance(ack["epoch"], str) and ack["epoch"]
    await publish_many(service, "topics/a", 3)
    events = await collect(client, 3)
    assert [e["offset"] for e in events] == [1, 2, 3]
    assert {e["epoch"] for e in events} == {ack["epoch"]}
    # The seed's keys are all there, unchanged.
    assert set(events[0]) >= {"channel", "event", "data", "timestamp"}


async def test_reconnect_with_since_recovers_every_missed_event(
    service: Service, ws_client: ClientFactory
) -> None:
    first = await ws_client(service)
    ack = await first.subscribe("agents/a1")
    await publish_many(service, "agents/a1", 5)
    seen = await collect(first, 5)
    position = {"offset": seen[-1]["offset"], "epoch": seen[-1]["epoch"]}
    await first.close()

    await publish_many(service, "agents/a1", 500, start=5)

    second = await ws_client(service)
    reply = await second.request(
        {"type": "subscribe", "channel": "agents/a1", "since": position, "id": "re"}
    )
    assert reply["success"] is True
    assert reply["recovered"] is True and reply["replayed"] == 500
    assert reply["epoch"] == ack["epoch"] and reply["offset"] == 505
    replay = await collect(second, 500)
    assert [e["data"]["seq"] for e in replay] == list(range(5, 505))
    assert [e["offset"] for e in replay] == list(range(6, 506))

    # Then live, with no duplicate.
    await publish_many(service, "agents/a1", 1, start=505)
    live = await second.next_event()
    assert live["offset"] == 506 and live["data"]["seq"] == 505
    await second.no_frame(0.2)


async def test_unknown_epoch_is_not_recovered(service: Service, ws_client: ClientFactory) -> None:
    await publish_many(service, "topics/x", 3)
    client = await ws_client(service)
    reply = await client.request(
        {
            "type": "subscribe",
            "channel": "topics/x",
            "since": {"offset": 1, "epoch": "not-this-one"},
            "id": "s",
        }
    )
    assert reply["recovered"] is False and reply["replayed"] == 0
    await client.no_frame(0.2)


async def test_restart_changes_epoch(
    start_service: ServiceFactory, ws_client: ClientFactory
) -> None:
    service = await start_service()
    client = await ws_client(service)
    ack = await client.subscribe("topics/r")
    await publish_many(service, "topics/r", 2)
    await collect(client, 2)
    settings = service.settings
    await service.stop()

    restarted = await start_service(settings)
    client2 = await ws_client(restarted)
    reply = await client2.request(
        {
            "type": "subscribe",
            "channel": "topics/r",
            "since": {"offset": 2, "epoch": ack["epoch"]},
            "id": "s",
        }
    )
    assert reply["recovered"] is False
    assert reply["epoch"] != ack["epoch"]


async def test_trimmed_history_is_not_recovered(
    start_service: ServiceFactory, ws_client: ClientFactory
) -> None:
    service = await start_service(history_topics_size=10)
    client = await ws_client(service)
    ack = await client.subscribe("topics/t")
    await client.close()
    await publish_many(service, "topics/t", 25)

    again = await ws_client(service)
    reply = await again.request(
        {
            "type": "subscribe",
            "channel": "topics/t",
            "since": {"offset": 0, "epoch": ack["epoch"]},
            "id": "s",
        }
    )
    assert reply["recovered"] is False

    history = await again.request({"type": "history", "channel": "topics/t", "id": "h"})
    assert [p["offset"] for p in history["publications"]] == list(range(16, 26))
    assert history["offset"] == 25


async def test_history_request_pages_forward(service: Service, ws_client: ClientFactory) -> None:
    await publish_many(service, "sessions/s1", 30)
    client = await ws_client(service)
    first = await client.request(
        {"type": "history", "channel": "sessions/s1", "limit": 10, "id": 1}
    )
    assert [p["data"]["seq"] for p in first["publications"]] == list(range(10))
    since = {"offset": first["publications"][-1]["offset"], "epoch": first["epoch"]}
    second = await client.request(
        {"type": "history", "channel": "sessions/s1", "since": since, "limit": 10, "id": 2}
    )
    assert [p["data"]["seq"] for p in second["publications"]] == list(range(10, 20))
    bad = await client.request({"type": "history", "channel": "sessions/s1", "limit": 0, "id": 3})
    assert bad["code"] == "INVALID_MESSAGE"
    bad_since = await client.request(
        {"type": "history", "channel": "sessions/s1", "since": {"offset": -1}, "id": 4}
    )
    assert bad_since["code"] == "INVALID_MESSAGE"


async def test_metrics_keeps_only_the_latest(service: Service, ws_client: ClientFactory) -> None:
    for n in range(3):
        await service.manager.publish("metrics", "metric.update", {"n": n})
    client = await ws_client(service)
    history = await client.request({"type": "history", "channel": "metrics", "id": "m"})
    assert [p["data"]["n"] for p in history["publications"]] == [2]


async def test_presence_and_stats(service: Service, ws_client: ClientFactory) -> None:
    a = await ws_client(service, agent_id="agent-a", session_id="s1")
    b = await ws_client(service, agent_id="agent-b")
    c = await ws_client(service, agent_id="agent-b")
    for client in (a, b, c):
        await client.subscribe("topics/room")
    presence = await a.request({"type": "presence", "channel": "topics/room", "id": "p"})
    members = presence["presence"]
    assert set(members) == {a.client_id, b.client_id, c.client_id}
    assert members[a.client_id]["agent_id"] == "agent-a"
    assert members[a.client_id]["session_id"] == "s1"
    stats = await a.request({"type": "presence_stats", "channel": "topics/room", "id": "ps"})
    assert (stats["num_clients"], stats["num_agents"]) == (3, 2)

    await c.close()
    for _ in range(50):
        stats = await a.request({"type": "presence_stats", "channel": "topics/room", "id": "ps"})
        if stats["num_clients"] == 2:
            break
        await asyncio.sleep(0.02)
    assert (stats["num_clients"], stats["num_agents"]) == (2, 2)


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    before=st.integers(0, 30),
    during=st.integers(0, 60),
    pauses=st.lists(st.integers(0, 3), min_size=1, max_size=8),
)
async def test_publications_racing_a_recovering_subscribe_are_never_lost_or_doubled(
    service: Service, ws_client: ClientFactory, before: int, during: int, pauses: list[int]
) -> None:
    """A publisher races the subscribe; the subscriber sees every offset once, in order."""
    manager = service.manager
    channel = f"topics/race{before}-{during}-{len(pauses)}-{id(pauses)}"
    client = await ws_client(service)
    ack = await client.subscribe(channel)
    await client.request({"type": "unsubscribe", "channel": channel, "id": "u"})
    await publish_many(service, channel, before)

    async def racer() -> None:
        for n in range(during):
            await manager.publish(channel, "note.added", {"seq": before + n})
            for _ in range(pauses[n % len(pauses)]):
                await asyncio.sleep(0)

    task = asyncio.create_task(racer())
    reply = await client.request(
        {
            "type": "subscribe",
            "channel": channel,
            "since": {"offset": 0, "epoch": ack["epoch"]},
            "id": "r",
        }
    )
    await task
    assert reply["recovered"] is True
    events = await collect(client, before + during)
    assert [e["offset"] for e in events] == list(range(1, before + during + 1))
    await client.no_frame(0.05)
    await client.close()


async def test_history_and_presence_over_rest(service: Service, ws_client: ClientFactory) -> None:
    import httpx

    await publish_many(service, "agents/rest-a", 5)
    watcher = await ws_client(service)  # an observer: no agent.connected on the channel
    await watcher.subscribe("agents/rest-a")
    base = f"http://127.0.0.1:{service.settings.api_port}/api/channels"
    async with httpx.AsyncClient(base_url=base) as http:
        full = (await http.get("/agents/rest-a/history")).json()
        assert [p["offset"] for p in full["publications"]] == [1, 2, 3, 4, 5]
        assert full["offset"] == 5 and full["recovered"] is True
        page = await http.get(
            "/agents/rest-a/history",
            params={"since_offset": 3, "since_epoch": full["epoch"], "limit": 1},
        )
        assert [p["data"]["seq"] for p in page.json()["publications"]] == [3]
        stale = await http.get(
            "/agents/rest-a/history", params={"since_offset": 3, "since_epoch": "gone"}
        )
        assert stale.json()["recovered"] is False and stale.json()["publications"] == []
        assert (
            await http.get("/agents/rest-a/history", params={"since_offset": 3})
        ).status_code == 422
        bad = await http.get("/nope/history")
        assert bad.status_code == 422 and bad.json()["code"] == "INVALID_CHANNEL"
        presence = (await http.get("/agents/rest-a/presence")).json()
        assert presence["num_clients"] == 1 and watcher.client_id in presence["presence"]
