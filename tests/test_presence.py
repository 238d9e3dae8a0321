"""Agent presence over real sockets: agent.connected / agent.disconnected / agent.heartbeat."""

from __future__ import annotations

import asyncio
import time

from app.server import Service
from tests.conftest import Client, ClientFactory, ServiceFactory


async def watcher(service: Service, ws_client: ClientFactory, agent_id: str) -> Client:
    """A dashboard-like client (no agent_id) on `global` and on the agent's channel."""
    client = await ws_client(service)
    await client.subscribe("global")
    await client.subscribe(f"agents/{agent_id}")
    return client


async def presence_events(client: Client, count: int) -> list[dict[str, object]]:
    return [await client.next_event() for _ in range(count)]


async def test_first_connection_announces_the_agent(
    service: Service, ws_client: ClientFactory
) -> None:
    observer = await watcher(service, ws_client, "alpha")
    alpha = await ws_client(service, agent_id="alpha", session_id="s1")
    events = await presence_events(observer, 2)
    assert {e["channel"] for e in events} == {"global", "agents/alpha"}
    for event in events:
        assert event["event"] == "agent.connected"
        data = event["data"]
        assert isinstance(data, dict)
        assert data["agent_id"] == "alpha"
        assert data["session_id"] == "s1"
        assert data["client_id"] == alpha.client_id
    await observer.no_frame(0.2)


async def test_connection_without_agent_is_not_an_agent(
    service: Service, ws_client: ClientFactory
) -> None:
    observer = await watcher(service, ws_client, "alpha")
    await ws_client(service)
    await ws_client(service, session_id="only-a-session")
    await observer.no_frame(0.3)


async def test_second_connection_is_silent_and_last_close_announces(
    service: Service, ws_client: ClientFactory
) -> None:
    observer = await watcher(service, ws_client, "alpha")
    first = await ws_client(service, agent_id="alpha")
    assert {e["event"] for e in await presence_events(observer, 2)} == {"agent.connected"}
    second = await ws_client(service, agent_id="alpha")
    await observer.no_frame(0.3)
    await first.close()
    await observer.no_frame(0.3)  # alpha is still online through `second`
    await second.close()
    events = await presence_events(observer, 2)
    assert {e["channel"] for e in events} == {"global", "agents/alpha"}
    for event in events:
        assert event["event"] == "agent.disconnected"
        data = event["data"]
        assert isinstance(data, dict) and data["agent_id"] == "alpha"
        assert data["close_code"] == 1000
    await observer.no_frame(0.2)
    # Back again: a new first connection, a new agent.connected.
    await ws_client(service, agent_id="alpha")
    assert {e["event"] for e in await presence_events(observer, 2)} == {"agent.connected"}


async def test_agents_are_counted_separately(service: Service, ws_client: ClientFactory) -> None:
    observer = await ws_client(service)
    await observer.subscribe("global")
    a = await ws_client(service, agent_id="a")
    b = await ws_client(service, agent_id="b")
    connected = [(await observer.next_event())["data"] for _ in range(2)]
    assert sorted(d["agent_id"] for d in connected) == ["a", "b"]
    await a.close()
    gone = await observer.next_event("agent.disconnected")
    assert gone["data"]["agent_id"] == "a"
    await observer.no_frame(0.2)
    assert service.manager.presence.online() == {"b": 1}
    await b.close()
    assert (await observer.next_event("agent.disconnected"))["data"]["agent_id"] == "b"


async def test_auth_sets_and_changes_identity(service: Service, ws_client: ClientFactory) -> None:
    observer = await ws_client(service)
    await observer.subscribe("global")
    client = await ws_client(service)
    await observer.no_frame(0.2)

    ack = await client.request({"type": "auth", "agent_id": "beta", "session_id": "s9", "id": 1})
    assert ack["agent_id"] == "beta" and ack["session_id"] == "s9"
    joined = await observer.next_event("agent.connected")
    assert joined["data"]["agent_id"] == "beta" and joined["data"]["session_id"] == "s9"
    assert joined["data"]["client_id"] == client.client_id

    # The same identity again changes nothing.
    await client.request({"type": "auth", "agent_id": "beta", "id": 2})
    await observer.no_frame(0.2)

    # Another agent: beta leaves, gamma joins.
    await client.request({"type": "auth", "agent_id": "gamma", "id": 3})
    left = await observer.next_event()
    joined = await observer.next_event()
    assert (left["event"], left["data"]["agent_id"]) == ("agent.disconnected", "beta")
    assert (joined["event"], joined["data"]["agent_id"]) == ("agent.connected", "gamma")

    await client.close()
    left = await observer.next_event("agent.disconnected")
    assert left["data"]["agent_id"] == "gamma"
    await observer.no_frame(0.2)
    assert service.manager.presence.online() == {}


async def test_auth_to_an_agent_already_online_is_silent(
    service: Service, ws_client: ClientFactory
) -> None:
    observer = await watcher(service, ws_client, "alpha")
    await ws_client(service, agent_id="alpha")
    await presence_events(observer, 2)
    other = await ws_client(service)
    await other.request({"type": "auth", "agent_id": "alpha", "id": "x"})
    await observer.no_frame(0.3)
    assert service.manager.presence.online() == {"alpha": 2}


async def test_heartbeat_is_throttled_per_agent(
    start_service: ServiceFactory, ws_client: ClientFactory
) -> None:
    interval = 0.5
    service = await start_service(heartbeat_interval=interval)
    observer = await watcher(service, ws_client, "alpha")
    alpha = await ws_client(service, agent_id="alpha")
    await presence_events(observer, 2)  # agent.connected ×2

    started = time.monotonic()
    for _ in range(5):
        await alpha.send({"type": "ping"})
        assert (await alpha.recv())["type"] == "pong"
    beats = await presence_events(observer, 2)
    assert {e["channel"] for e in beats} == {"global", "agents/alpha"}
    for beat in beats:
        assert beat["event"] == "agent.heartbeat"
        data = beat["data"]
        assert isinstance(data, dict) and data["agent_id"] == "alpha"
    if time.monotonic() - started < interval * 0.8:
        # Five pings inside one interval made one heartbeat (per channel), not five.
        await observer.no_frame(0.1)

    # A second connection of the same agent shares the throttle.
    alpha2 = await ws_client(service, agent_id="alpha")
    await alpha2.send({"type": "ping"})
    assert (await alpha2.recv())["type"] == "pong"

    await asyncio.sleep(interval + 0.1)
    await observer.no_frame(0.01)
    await alpha.send({"type": "ping"})
    beats = await presence_events(observer, 2)
    assert {e["event"] for e in beats} == {"agent.heartbeat"}
    await observer.no_frame(0.1)


async def test_ping_without_agent_makes_no_heartbeat(
    start_service: ServiceFactory, ws_client: ClientFactory
) -> None:
    service = await start_service(heartbeat_interval=0)
    observer = await ws_client(service)
    await observer.subscribe("global")
    anonymous = await ws_client(service)
    for _ in range(3):
        await anonymous.send({"type": "ping"})
        assert (await anonymous.recv())["type"] == "pong"
    await observer.no_frame(0.3)


async def test_heartbeats_of_different_agents_are_independent(
    start_service: ServiceFactory, ws_client: ClientFactory
) -> None:
    service = await start_service(heartbeat_interval=60)
    observer = await ws_client(service)
    await observer.subscribe("global")
    a = await ws_client(service, agent_id="a")
    b = await ws_client(service, agent_id="b")
    await presence_events(observer, 2)
    for client in (a, b, a, b):
        await client.send({"type": "ping"})
    beats = [await observer.next_event("agent.heartbeat") for _ in range(2)]
    assert sorted(e["data"]["agent_id"] for e in beats) == ["a", "b"]
    await observer.no_frame(0.3)


async def test_invalid_query_agent_id_makes_no_presence(
    service: Service, ws_client: ClientFactory
) -> None:
    observer = await ws_client(service)
    await observer.subscribe("global")
    await ws_client(service, agent_id="not valid!")
    await observer.no_frame(0.3)
    assert service.manager.presence.online() == {}
