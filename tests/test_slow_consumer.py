"""A client that stops reading is cut off with 3008 once its outbound bound overflows.

Nobody else waits for it: a fast subscriber on the same channel receives every event, and the
server's memory stays bounded however much is published.
"""

from __future__ import annotations

import asyncio
import socket
import time

import orjson
import psutil
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import Client, ClientFactory, ServiceFactory

OUTBOUND = 64 * 1024
PAYLOAD = 16 * 1024
EVENTS = 1500  # 24 MB in all: far beyond the bound plus any kernel socket buffers


async def stalled_client(port: int) -> Client:
    """A client with a tiny receive buffer that reads nothing unless told to."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    ws = await connect(
        f"ws://127.0.0.1:{port}/", sock=sock, max_size=None, max_queue=1, open_timeout=5
    )
    return Client(ws, orjson.loads(await ws.recv()))


async def close_code_of(client: Client) -> int | None:
    """Read everything until the close; the code the server sent."""
    try:
        while True:
            await client.ws.recv()
    except ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd is not None else None


async def test_slow_consumer_is_disconnected_and_others_get_everything(
    start_service: ServiceFactory, ws_client: ClientFactory
) -> None:
    service = await start_service(outbound_queue_bytes=OUTBOUND, history_topics_size=0)
    manager = service.manager
    slow = await stalled_client(service.settings.ws_port)
    await slow.subscribe("topics/firehose")
    fast = await ws_client(service)
    await fast.subscribe("topics/firehose")
    slow_connection = manager.connections[slow.client_id]

    process = psutil.Process()
    baseline = peak = process.memory_info().rss
    slow_closed: asyncio.Task[int | None] | None = None
    cut_at: int | None = None
    payload = "x" * PAYLOAD
    started = time.monotonic()
    for n in range(EVENTS):
        await manager.publish("topics/firehose", "fire.hose", {"n": n, "p": payload})
        # The fast client keeps up: it has each event before the next is published.
        event = await fast.next_event("fire.hose", timeout=10)
        assert event["data"]["n"] == n
        if slow_closed is None and slow_connection.slow:
            cut_at = n
            # From now on read the slow client, so that its close frame reaches us.
            slow_closed = asyncio.create_task(close_code_of(slow))
        if n % 50 == 0:
            peak = max(peak, process.memory_info().rss)
    elapsed = time.monotonic() - started

    assert slow_closed is not None, "the stalled client was never cut off"
    assert cut_at is not None and cut_at < EVENTS // 2
    assert await asyncio.wait_for(slow_closed, 10) == 3008
    async with asyncio.timeout(5):
        while slow.client_id in manager.connections:
            await asyncio.sleep(0.01)
    assert manager.stats.slow_consumers == 1
    assert manager.stats.close_codes[3008] == 1
    # Its queue never held more than the bound (plus the frame that overflowed it).
    assert slow_connection.sink is not None
    assert slow_connection.sink.queued_bytes <= OUTBOUND + PAYLOAD + 1024
    # 24 MB went out; had the server kept them for the stalled client, RSS would show it.
    growth = peak - baseline
    assert growth < 8 * 1024 * 1024, f"RSS grew by {growth / 2**20:.1f} MiB"
    # The fast client is still connected and served; nothing more is pending.
    assert fast.client_id in manager.connections
    await fast.no_frame(0.1)
    assert elapsed < 60


async def test_a_stalled_client_does_not_slow_the_publisher(
    start_service: ServiceFactory, ws_client: ClientFactory
) -> None:
    """Publishing never waits on a subscriber: 200 publications with 5 stalled readers."""
    service = await start_service(outbound_queue_bytes=OUTBOUND, history_topics_size=0)
    stalled = [await stalled_client(service.settings.ws_port) for _ in range(5)]
    for client in stalled:
        await client.subscribe("topics/t")
    started = time.monotonic()
    for n in range(200):
        await service.manager.publish("topics/t", "x.y", {"n": n, "p": "x" * PAYLOAD})
    assert time.monotonic() - started < 5
    # Every one of them overflowed and was cut off; reading now shows the close code.
    codes = await asyncio.gather(*(asyncio.wait_for(close_code_of(c), 10) for c in stalled))
    assert codes == [3008] * 5


async def test_one_hundred_thousand_events_past_a_stalled_subscriber(
    start_service: ServiceFactory, ws_client: ClientFactory
) -> None:
    """The issue's figure: 100,000 events, one subscriber stops reading, one keeps up."""
    service = await start_service(outbound_queue_bytes=OUTBOUND, history_topics_size=0)
    manager = service.manager
    slow = await stalled_client(service.settings.ws_port)
    await slow.subscribe("topics/flood")
    fast = await ws_client(service)
    await fast.subscribe("topics/flood")
    total = 100_000
    received: list[int] = []

    async def read_fast() -> None:
        while len(received) < total:
            frame = orjson.loads(await fast.ws.recv())
            if frame.get("event") == "flood.tick":
                received.append(frame["data"]["n"])

    reader = asyncio.create_task(read_fast())
    # The stalled client reads again once it has been cut off, as a real one would: the
    # server aborts a cut-off socket CLOSE_GRACE_SECONDS after queueing its close frame, so a
    # client that waited for the whole flood (longer than that on a slow machine) would find
    # a reset instead of the 3008.
    slow_closed: asyncio.Task[int | None] | None = None
    slow_connection = manager.connections[slow.client_id]
    process = psutil.Process()
    baseline = peak = process.memory_info().rss
    started = time.monotonic()
    for n in range(total):
        await manager.publish("topics/flood", "flood.tick", {"n": n, "pad": "y" * 64})
        if slow_closed is None and slow_connection.slow:
            slow_closed = asyncio.create_task(close_code_of(slow))
        # A fast reader keeps up: at most a few hundred events in flight to it.
        while n - len(received) > 300:
            await asyncio.sleep(0)
        if n % 5000 == 0:
            peak = max(peak, process.memory_info().rss)
    await asyncio.wait_for(reader, 60)
    elapsed = time.monotonic() - started

    assert received == list(range(total))  # all of them, in order, none twice
    assert slow_closed is not None
    assert await asyncio.wait_for(slow_closed, 10) == 3008
    assert fast.client_id in manager.connections
    assert manager.stats.slow_consumers == 1
    growth = peak - baseline
    assert growth < 16 * 1024 * 1024, f"RSS grew by {growth / 2**20:.1f} MiB"
    assert elapsed < 90
