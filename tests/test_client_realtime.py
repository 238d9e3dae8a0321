"""The Python WebSocket client (context_manager_client.realtime) against a real server.

Its behaviour against scripted servers (keepalive, duplicates, `unrecovered`) is tested by the
client's own tests, clients/python/tests/.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from context_manager_client import (
    Backoff,
    ConnectionState,
    Event,
    RealtimeClient,
    RealtimeError,
    StateChange,
)

from app.server import Service
from tests.conftest import ClientFactory, ServiceFactory

FAST = Backoff(initial=0.05, maximum=0.3, jitter=0.5)


def url_of(service: Service) -> str:
    return f"ws://127.0.0.1:{service.settings.ws_port}/ws"


@contextlib.asynccontextmanager
async def client_for(url: str, **options: object) -> AsyncIterator[RealtimeClient]:
    settings: dict[str, object] = {"backoff": FAST, "request_timeout": 5, **options}
    client = RealtimeClient(url, **settings)  # type: ignore[arg-type]
    await client.connect(timeout=5)
    try:
        yield client
    finally:
        await client.close()


async def collect(events: AsyncIterator[Event], count: int, timeout: float = 5) -> list[Event]:
    received: list[Event] = []

    async def take() -> None:
        async for event in events:
            received.append(event)
            if len(received) == count:
                return

    await asyncio.wait_for(take(), timeout)
    return received


# --- against a real server -------------------------------------------------------------------


async def test_subscribe_publish_and_iterate(start_service: ServiceFactory) -> None:
    service = await start_service(surfaces=("ws",))
    async with client_for(url_of(service), agent_id="py-a") as a, client_for(url_of(service)) as b:
        assert a.connected and a.client_id and a.client_id.startswith("ws_")
        events = b.events("topics/demo", event="note.*")
        first = asyncio.ensure_future(collect(events, 2))
        await asyncio.sleep(0)  # let the iterator subscribe
        while not b.channels:
            await asyncio.sleep(0.01)
        await b.subscribe("topics/demo")
        ack = await a.publish("topics/demo", "other.thing", {"skip": True})
        assert ack["success"] is True and ack["channel"] == "topics/demo"
        await a.publish("topics/demo", "note.added", {"n": 1})
        await a.publish("topics/demo", "note.added", {"n": 2})
        received = await first
        assert [e.data for e in received] == [{"n": 1}, {"n": 2}]
        assert all(e.channel == "topics/demo" and e.event == "note.added" for e in received)
        assert received[1].offset == received[0].offset + 1  # type: ignore[operator]
        assert b.position("topics/demo") == {
            "offset": received[1].offset,
            "epoch": received[1].epoch,
        }


async def test_error_frames_reject_the_request(start_service: ServiceFactory) -> None:
    service = await start_service(surfaces=("ws",))
    async with client_for(url_of(service)) as client:
        with pytest.raises(RealtimeError) as bad_channel:
            await client.subscribe("nope/x y")
        assert bad_channel.value.code == "INVALID_CHANNEL"
        assert "nope/x y" not in client.channels  # refused: not resubscribed later
        with pytest.raises(RealtimeError) as bad_event:
            await client.publish("topics/a", "Not An Event")
        assert bad_event.value.code == "INVALID_EVENT"
        # The connection survives errors.
        assert (await client.subscribe("topics/a"))["success"] is True


async def test_requests_made_before_the_connection_wait_for_it(
    start_service: ServiceFactory,
) -> None:
    service = await start_service(surfaces=("ws",))
    client = RealtimeClient(url_of(service), backoff=FAST)
    try:
        await client.connect(wait=False)
        assert client.state in (ConnectionState.CONNECTING, ConnectionState.IDLE)
        ack = await client.publish("topics/early", "note.added", {"early": True})
        assert ack["success"] is True
        assert (await client.subscribe("global"))["success"] is True
    finally:
        await client.close()
    assert client.state is ConnectionState.CLOSED
    with pytest.raises(RealtimeError) as closed:
        await client.publish("topics/early", "note.added")
    assert closed.value.code == "CLOSED"


async def test_reconnects_and_resubscribes_after_a_server_restart(
    start_service: ServiceFactory,
) -> None:
    first = await start_service(surfaces=("ws",))
    settings = first.settings
    changes: list[StateChange] = []
    async with client_for(url_of(first), agent_id="survivor") as client:
        client.on_state(changes.append)
        await client.subscribe("global")
        await client.subscribe("topics/restart")
        events = client.events("topics/restart")
        pending = asyncio.ensure_future(collect(events, 1, timeout=20))

        await first.stop()
        await client.wait_for_state(ConnectionState.RECONNECTING, 5)
        # The server said "restarting" (1012); the attempts after it find nobody listening.
        assert changes[-1].code == 1012 or any(c.code == 1012 for c in changes)

        second = await start_service(settings=settings, surfaces=("ws",))
        await client.wait_for_state(ConnectionState.CONNECTED, 10)
        assert client.connections == 2
        # Resubscribed: the new server knows this connection's channels.
        for _ in range(100):
            subs = second.manager.hub.channel_stats()
            if subs.get("topics/restart") and subs.get("global"):
                break
            await asyncio.sleep(0.05)
        assert second.manager.hub.channel_stats().get("topics/restart") == 1

        await second.manager.publish("topics/restart", "note.added", {"after": "restart"})
        [event] = await pending
        assert event.data == {"after": "restart"}
    states = [c.state for c in changes]
    assert ConnectionState.RECONNECTING in states and states[-1] is ConnectionState.CLOSED


async def test_recovers_events_missed_while_disconnected(
    start_service: ServiceFactory,
) -> None:
    service = await start_service(surfaces=("ws",))
    async with client_for(url_of(service), backoff=Backoff(initial=0.5, maximum=0.5)) as client:
        await client.subscribe("topics/gap")
        events = client.events("topics/gap")
        received = asyncio.ensure_future(collect(events, 25, timeout=15))
        for n in range(5):
            await service.manager.publish("topics/gap", "note.added", {"n": n})
        while client.position("topics/gap") is None or client.position("topics/gap")["offset"] < 5:  # type: ignore[index]
            await asyncio.sleep(0.01)

        # The server drops this connection (as after a network blip); the client backs off.
        connection = service.manager.connections[client.client_id]  # type: ignore[index]
        await connection.close(3001, "idle timeout")
        await client.wait_for_state(ConnectionState.RECONNECTING, 5)
        for n in range(5, 25):
            await service.manager.publish("topics/gap", "note.added", {"n": n})
        await client.wait_for_state(ConnectionState.CONNECTED, 10)

        got = [e.data["n"] for e in await received]
        assert got == list(range(25))  # in order, none lost, none twice


async def test_do_not_reconnect_codes_go_offline(start_service: ServiceFactory) -> None:
    service = await start_service(surfaces=("ws",))
    async with client_for(url_of(service)) as client:
        events = client.events("global")
        iterator = asyncio.ensure_future(collect(events, 1))
        while not client.channels:
            await asyncio.sleep(0.01)
        connection = service.manager.connections[client.client_id]  # type: ignore[index]
        await connection.close(3503, "forbidden")
        await client.wait_for_state(ConnectionState.OFFLINE, 5)
        assert client.last_close_code == 3503
        with pytest.raises(RealtimeError) as offline:
            await iterator
        assert offline.value.code == "OFFLINE"
        await asyncio.sleep(0.3)
        assert client.state is ConnectionState.OFFLINE
        assert client.connections == 1


async def test_keepalive_pings_reach_the_server(
    start_service: ServiceFactory, ws_client: ClientFactory
) -> None:
    service = await start_service(surfaces=("ws",))
    async with client_for(url_of(service), ping_interval=0.1) as client:
        await asyncio.sleep(0.5)
        assert service.manager.stats.messages_in["ping"] >= 2
        assert client.connections == 1  # pongs answered: no reconnect


async def test_a_draining_server_names_the_reconnect_delay(start_service: ServiceFactory) -> None:
    """1012 with "reconnect:<ms>": the client waits that long, not its own backoff."""
    service = await start_service(surfaces=("ws",))
    slow = Backoff(initial=5, maximum=10, jitter=0)
    async with client_for(url_of(service), backoff=slow) as client:
        changes: list[StateChange] = []
        client.on_state(changes.append)
        connection = service.manager.connections[client.client_id]  # type: ignore[index]
        await connection.close(1012, "reconnect:250")
        await client.wait_for_state(ConnectionState.RECONNECTING, 5)
        assert changes[0].code == 1012 and changes[0].delay == 0.25
        await client.wait_for_state(ConnectionState.CONNECTED, 3)  # well before 5 s of backoff
        assert client.connections == 2
