"""The realtime client against scripted servers: what a real one rarely does on cue.

A silent server (keepalive), replays that overlap live events (duplicates), the `unrecovered`
notice, an unanswered subscribe. The tests against the real server are the server's
(tests/test_client_realtime.py in the repository).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import pytest
from conftest import free_port
from context_manager_client import Backoff, Event, RealtimeClient, RealtimeError, Recovery
from websockets.asyncio.server import ServerConnection, serve

FAST = Backoff(initial=0.05, maximum=0.3, jitter=0.5)


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
