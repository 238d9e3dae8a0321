"""Graceful shutdown: queued events are flushed, then clients get 1012; signals end the process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import Client, ClientFactory, ServiceFactory, free_port

VENV_BIN = Path(sys.executable).parent


async def read_until_closed(client: Client) -> tuple[list[dict[str, Any]], int | None]:
    """Every frame until the server closes the connection, and the close code."""
    frames = []
    try:
        while True:
            frames.append(await client.recv(10))
    except ConnectionClosed as exc:
        return frames, exc.rcvd.code if exc.rcvd is not None else None


async def slow_reader(port: int) -> Client:
    """A client with a tiny socket receive buffer, so that unread frames wait in the server."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    ws = await connect(f"ws://127.0.0.1:{port}/", sock=sock, max_size=None, open_timeout=5)
    return Client(ws, orjson.loads(await ws.recv()))


async def test_stop_closes_clients_with_1012(
    start_service: ServiceFactory, ws_client: ClientFactory
) -> None:
    service = await start_service()
    clients = [await ws_client(service) for _ in range(5)]
    for client in clients[:3]:
        await client.subscribe("global")
    readers = [asyncio.create_task(read_until_closed(c)) for c in clients]
    started = time.monotonic()
    await service.stop()
    assert time.monotonic() - started < service.settings.shutdown_timeout + 2
    for frames, code in await asyncio.gather(*readers):
        assert code == 1012
        assert frames == []


async def test_stop_flushes_queued_events_first(
    start_service: ServiceFactory, ws_client: ClientFactory
) -> None:
    service = await start_service()
    clients = [await slow_reader(service.settings.ws_port) for _ in range(2)]
    for client in clients:
        await client.subscribe("topics/last-words")
    readers = [asyncio.create_task(read_until_closed(c)) for c in clients]
    count = 5000
    payload = "p" * 1000
    # Published back to back, without letting the clients read: all of it is queued when
    # the shutdown begins.
    for n in range(count):
        await service.manager.publish("topics/last-words", "x.y", {"n": n, "p": payload})
    queued = [c.sink.queued_bytes for c in service.manager.connections.values() if c.sink]
    assert min(queued) > 0, queued  # the test means something only if frames wait
    await service.stop()
    for frames, code in await asyncio.gather(*readers):
        assert [f["data"]["n"] for f in frames] == list(range(count))
        assert code == 1012


async def test_no_new_connections_while_draining(
    start_service: ServiceFactory, ws_client: ClientFactory
) -> None:
    service = await start_service()
    await ws_client(service)
    service.manager.draining = True  # what drain() sets first
    with pytest.raises(Exception):  # noqa: B017 - refused at the handshake, before accept
        async with connect(f"ws://127.0.0.1:{service.settings.ws_port}/", open_timeout=5) as ws:
            await ws.recv()
    assert len(service.manager.connections) == 1


async def test_a_wake_that_comes_with_the_stop_does_not_keep_a_loop_running(
    start_service: ServiceFactory,
) -> None:
    """Each background loop waits for "something to do" or a timeout; a stop that arrives in
    the same iteration as a wake must still stop it. (On Python 3.11 `asyncio.wait_for` drops
    such a cancellation and the loop ran forever: a CI teardown hung for 120 s.)"""
    service = await start_service()
    runtime = service.app.state.runtime
    await asyncio.sleep(0.5)  # every loop parked in its wait

    async def agent_connected() -> None:
        await runtime.agents.on_presence("agent.connected", "a1", {})

    wakes: list[tuple[str, Callable[[], Any], Any]] = [
        ("bridge", runtime.bridge.wake, runtime.bridge),
        ("webhook fan-out", runtime.webhooks.dispatcher.wake, runtime.webhooks.dispatcher),
        ("webhook delivery", runtime.webhooks.deliverer.wake, runtime.webhooks.deliverer),
        ("agents writer", agent_connected, runtime.agents),
    ]
    for name, wake, part in wakes:
        woken = wake()
        if asyncio.iscoroutine(woken):
            await woken  # returns without suspending: the wake and the stop share an iteration
        started = time.monotonic()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(part.stop(), 10)
        # Timed rather than trusted to raise: a stop that swallows its caller's own
        # cancellation would make the `wait_for` above return as though all went well.
        elapsed = time.monotonic() - started
        assert elapsed < 5, f"the {name} loop took {elapsed:.1f} s to stop, woken as it stopped"


def test_the_service_times_out_with_asyncio_timeout_only() -> None:
    """`asyncio.wait_for` loses cancellations on 3.11 (see app/core/tasks.py): none in the
    service or its Python client."""
    root = Path(__file__).parent.parent
    sources = [
        *(root / "app").rglob("*.py"),
        *(root / "clients/python/context_manager_client").rglob("*.py"),
    ]
    users = [str(p) for p in sources if "asyncio.wait_for(" in p.read_text()]
    assert users == []


# --- the real process, real signals ----------------------------------------------------------


def service_env(tmp_path: Path) -> tuple[dict[str, str], int, int]:
    ws_port, api_port = free_port(), free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if k.upper() not in {"REDIS_URL", "BROKER", "AUTH_MODE", "DATABASE_URL"}
    }
    env.update(
        HOST="127.0.0.1",
        WS_PORT=str(ws_port),
        API_PORT=str(api_port),
        DASHBOARD_PORT=str(free_port()),
        DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'service.db'}",
        LOG_FORMAT="text",
        LOG_LEVEL="info",
    )
    return env, ws_port, api_port


async def wait_ready(process: asyncio.subprocess.Process, port: int, timeout: float = 30) -> None:
    async with httpx.AsyncClient(timeout=1) as http, asyncio.timeout(timeout):
        while True:
            if process.returncode is not None:
                stderr = await process.stderr.read() if process.stderr else b""
                raise AssertionError(f"exited with {process.returncode}: {stderr.decode()}")
            try:
                if (await http.get(f"http://127.0.0.1:{port}/health")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.05)


Launcher = Callable[..., Any]


@pytest.fixture
async def launch(tmp_path: Path) -> AsyncIterator[Launcher]:
    """Start `context-manager` processes; any left running are killed at the end."""
    processes: list[asyncio.subprocess.Process] = []

    async def factory(*argv: str) -> tuple[asyncio.subprocess.Process, int, int]:
        env, ws_port, api_port = service_env(tmp_path)
        process = await asyncio.create_subprocess_exec(
            *argv,
            env=env,
            cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        processes.append(process)
        await wait_ready(process, ws_port)
        return process, ws_port, api_port

    yield factory
    for process in processes:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_the_serving_process_keeps_full_collections_off_its_long_lived_heap(
    launch: Launcher,
) -> None:
    """`serve` installs app/core/gc_policy.py: the start-up heap is frozen and the collector's
    pauses are on /metrics."""
    from tests.test_observability import scrape

    process, ws_port, _ = await launch(str(VENV_BIN / "context-manager"), "serve")
    samples = await scrape(ws_port)
    assert samples[("cm_gc_frozen_objects", ())] > 10_000  # framework, ORM, app
    for generation in "012":
        assert samples[("cm_gc_collections_total", (("generation", generation),))] >= 0
        assert samples[("cm_gc_pause_seconds_total", (("generation", generation),))] >= 0
    process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(process.wait(), 10) == 0


@pytest.mark.parametrize(
    ("argv", "sig"),
    [
        ((str(VENV_BIN / "context-manager"), "serve"), signal.SIGTERM),
        ((sys.executable, "-m", "app.cli", "serve"), signal.SIGINT),
        ((str(VENV_BIN / "context-manager"), "ws"), signal.SIGTERM),
    ],
    ids=["console-script-SIGTERM", "python-m-SIGINT", "ws-only-SIGTERM"],
)
async def test_signal_closes_clients_and_exits_0(
    launch: Launcher, argv: tuple[str, ...], sig: signal.Signals
) -> None:
    process, ws_port, _ = await launch(*argv)
    async with connect(f"ws://127.0.0.1:{ws_port}/?agent_id=my-agent", open_timeout=5) as ws:
        hello = orjson.loads(await ws.recv())
        assert hello["type"] == "connected"
        await ws.send(orjson.dumps({"type": "subscribe", "channel": "global", "id": "s"}).decode())
        assert orjson.loads(await ws.recv())["type"] == "ack"
        started = time.monotonic()
        process.send_signal(sig)
        with pytest.raises(ConnectionClosed) as info:
            async with asyncio.timeout(10):
                while True:
                    await ws.recv()
        assert info.value.rcvd is not None
        assert info.value.rcvd.code in (1001, 1012)
    stdout, stderr = await asyncio.wait_for(process.communicate(), 10)
    assert process.returncode == 0, stderr.decode()
    assert time.monotonic() - started < 8
    assert b"Traceback" not in stderr, stderr.decode()
