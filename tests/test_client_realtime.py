"""The Python WebSocket client (app.client.realtime) against a real server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest
from websockets.asyncio.server import ServerConnection, serve

from app.client import (
    Backoff,
    ConnectionState,
    Event,
    RealtimeClient,
    RealtimeError,
    Recovery,
    StateChange,
)
from app.client.backoff import event_matcher, should_reconnect
from app.server import Service
from tests.conftest import ClientFactory, ServiceFactory, free_port

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


# --- pure policy ---------------------------------------------------------------------------


def test_backoff_grows_caps_and_jitters() -> None:
    backoff = Backoff(initial=0.5, maximum=4, factor=2, jitter=0.5)
    assert [backoff.delay(n, lambda: 0.0) for n in range(5)] == [0.5, 1, 2, 4, 4]
    # Equal jitter: never below half of the base delay.
    assert backoff.delay(3, lambda: 1.0) == 2
    assert backoff.delay(10_000, lambda: 0.0) == 4


def test_reconnect_policy_follows_the_close_code_ranges() -> None:
    for code in (None, 1001, 1006, 1011, 1012, 3001, 3008, 4000):
        assert should_reconnect(code), code
    for code in (1000, 1008, 1009, 3500, 3503, 3504, 3999):
        assert not should_reconnect(code), code


def test_event_glob() -> None:
    matches = event_matcher("task.*, *.failed")
    assert matches("task.created") and matches("subtask.failed")
    assert not matches("subtask.created") and not matches("message.new")
    assert event_matcher(None)("anything.at_all")


def test_sdk_imports_nothing_from_the_server() -> None:
    code = (
        "import sys, app.client, app.client.rest\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'fastapi','starlette','sqlalchemy','pydantic','pydantic_settings','uvicorn','orjson',"
        "'alembic','asyncpg','aiosqlite'} or (m.startswith('app.') and not "
        "m.startswith('app.client')))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"server modules imported by the SDK: {out.stdout}"


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


async def test_silent_server_counts_as_dead_and_the_client_reconnects() -> None:
    """A server that stops answering (no pong, no frame) is left after `pong_timeout`."""
    accepted: list[ServerConnection] = []
    done = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        accepted.append(ws)
        await ws.send(json.dumps({"type": "connected", "client_id": f"ws_silent_{len(accepted)}"}))
        await done.wait()  # reads nothing, answers nothing

    port = free_port()
    async with serve(handler, "127.0.0.1", port, ping_interval=None):
        client = RealtimeClient(
            f"ws://127.0.0.1:{port}/ws", ping_interval=0.1, pong_timeout=0.2, backoff=FAST
        )
        try:
            await client.connect(timeout=5)
            for _ in range(100):
                if client.connections >= 2:
                    break
                await asyncio.sleep(0.05)
            assert client.connections >= 2
            assert client.last_close_code == 4000
        finally:
            done.set()
            await client.close()


async def test_events_seen_twice_are_delivered_once() -> None:
    """A replay that overlaps what already arrived (same epoch, offset not newer) is dropped."""

    async def handler(ws: ServerConnection) -> None:
        await ws.send(json.dumps({"type": "connected", "client_id": "ws_scripted"}))
        request = json.loads(await ws.recv())
        assert request["type"] == "subscribe"
        ack = {"type": "ack", "id": request["id"], "success": True, "offset": 0, "epoch": "e1"}
        await ws.send(json.dumps(ack))
        for offset, epoch in ((1, "e1"), (2, "e1"), (2, "e1"), (1, "e1"), (3, "e1"), (1, "e2")):
            frame = {
                "channel": "topics/d",
                "event": "note.added",
                "data": {"o": offset},
                "timestamp": 0,
                "offset": offset,
                "epoch": epoch,
            }
            await ws.send(json.dumps(frame))
        await ws.wait_closed()

    port = free_port()
    async with serve(handler, "127.0.0.1", port, ping_interval=None):
        async with client_for(f"ws://127.0.0.1:{port}/ws") as client:
            got = await collect(client.events("topics/d"), 4)
    # 1, 2, 3 once each; then a new epoch starts a new stream.
    assert [(e.offset, e.epoch) for e in got] == [(1, "e1"), (2, "e1"), (3, "e1"), (1, "e2")]


def _event(channel: str, offset: int, epoch: str) -> str:
    return json.dumps(
        {
            "channel": channel,
            "event": "note.added",
            "data": {"o": offset},
            "timestamp": 0,
            "offset": offset,
            "epoch": epoch,
        }
    )


async def test_an_unrecovered_notice_reports_the_loss_and_moves_the_position() -> None:
    """The server lost publications (Redis restarted): the app is told before the new epoch's
    events, and a later reconnect recovers from the new epoch instead of failing again."""
    subscribes: list[dict[str, object]] = []
    second = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        await ws.send(json.dumps({"type": "connected", "client_id": "ws_scripted"}))
        request = json.loads(await ws.recv())
        subscribes.append(request)
        if len(subscribes) == 1:
            ack = {"type": "ack", "id": request["id"], "success": True, "offset": 5, "epoch": "e1"}
            await ws.send(json.dumps(ack))
            for frame in (
                _event("topics/u", 6, "e1"),
                # Rolled back behind what the client has: offset 5 that follows is a new one.
                json.dumps({"type": "unrecovered", "channel": "topics/u", "offset": 4,
                            "epoch": "e1", "recovered": False, "reason": "gap"}),
                _event("topics/u", 5, "e1"),
                json.dumps({"type": "unrecovered", "channel": "topics/u", "offset": 0,
                            "epoch": "e2", "recovered": False, "reason": "new_epoch"}),
                _event("topics/u", 1, "e2"),
                _event("topics/u", 2, "e2"),
            ):  # fmt: skip
                await ws.send(frame)
            await asyncio.sleep(0.2)
            await ws.close(1012, "restart")
            return
        ack = {"type": "ack", "id": request["id"], "success": True, "offset": 3, "epoch": "e2",
               "recovered": True, "replayed": 1}  # fmt: skip
        await ws.send(json.dumps(ack))
        await ws.send(_event("topics/u", 3, "e2"))
        second.set()
        await ws.wait_closed()

    port = free_port()
    log: list[object] = []
    async with serve(handler, "127.0.0.1", port, ping_interval=None):
        async with client_for(f"ws://127.0.0.1:{port}/ws") as client:
            client.on_event(lambda e: log.append((e.offset, e.epoch)))
            client.on_recovery(log.append)
            await client.subscribe("topics/u")
            await asyncio.wait_for(second.wait(), 5)
            for _ in range(50):
                if len(log) >= 8:
                    break
                await asyncio.sleep(0.02)
            assert client.position("topics/u") == {"offset": 3, "epoch": "e2"}
    rollback, notice, resubscribed = (item for item in log if isinstance(item, Recovery))
    assert (rollback.recovered, rollback.offset, rollback.epoch, rollback.reason) == (
        False,
        4,
        "e1",
        "gap",
    )
    assert (notice.recovered, notice.offset, notice.epoch, notice.reason) == (
        False,
        0,
        "e2",
        "new_epoch",
    )
    assert (resubscribed.recovered, resubscribed.reason, resubscribed.replayed) == (
        True,
        "resubscribe",
        1,
    )
    assert log == [
        (6, "e1"),
        rollback,
        (5, "e1"),
        notice,
        (1, "e2"),
        (2, "e2"),
        resubscribed,
        (3, "e2"),
    ]
    # The reconnect asked for what followed the new epoch's position, not the lost one's.
    assert subscribes[1]["since"] == {"offset": 2, "epoch": "e2"}


async def test_subscribe_asks_again_after_a_timeout() -> None:
    """An unanswered subscribe is sent again by the next subscribe(), not only on reconnect."""
    requests: list[dict[str, object]] = []

    async def handler(ws: ServerConnection) -> None:
        await ws.send(json.dumps({"type": "connected", "client_id": "ws_scripted"}))
        async for raw in ws:
            request = json.loads(raw)
            requests.append(request)
            if request["type"] == "subscribe" and len(requests) > 1:  # the first goes unanswered
                await ws.send(json.dumps({"type": "ack", "id": request["id"], "success": True}))

    port = free_port()
    async with serve(handler, "127.0.0.1", port, ping_interval=None):
        async with client_for(f"ws://127.0.0.1:{port}/ws", request_timeout=0.3) as client:
            with pytest.raises(RealtimeError) as timeout:
                await client.subscribe("topics/slow")
            assert timeout.value.code == "TIMEOUT"
            await asyncio.sleep(0.5)  # the unanswered request itself has timed out too
            ack = await client.subscribe("topics/slow", timeout=5)
            assert ack["success"] is True and client.connections == 1
    assert [r["channel"] for r in requests] == ["topics/slow", "topics/slow"]


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
