"""Resource attacks against a `context-manager ws` node: its RSS and `/health` latency under each.

    python -m bench.attacks [--seconds 10] [--attack NAME ...] [--pythonpath DIR]

Each attack runs for a bounded time against a fresh node (a subprocess on free ports, default
settings, SQLite in a scratch directory), from 127.0.0.1, while `/health` is asked every 100 ms
from 127.0.0.2 (timeout 5 s). Printed per attack: the node's RSS before, its peak (VmHWM),
its RSS 3 s after the attacker left, `/health` p50 / p99 / max and how many probes failed, and
what the attacker saw (closed by the server, bytes or frames sent).

* ``head-lines``  — an upgrade request line, then 150 MB of ``X-A: b`` header lines;
* ``head-value``  — one header value of 50 MB;
* ``slowloris``   — 2,500 half-sent upgrade requests, a header line every 2 s each, against
  a node with RLIMIT_NOFILE 2,048 and MAX_CONNECTIONS_PER_IP 100,000 (so the descriptor
  budget, not the per-address limit, is what is measured);
* ``ping-flood``  — 125-byte pings as fast as possible, never reading a pong;
* ``cont-flood``  — a text frame with fin=0, then empty continuation frames at full speed.

``--pythonpath DIR`` runs the node from another checkout (e.g. an export of main) to measure
before and after. The machine is shared: run it briefly, and compare runs made close together.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.procfs import sample
from bench.servers import free_ports, raise_file_limit

OTHER = "127.0.0.2"
UPGRADE = (
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
)
MASK = b"\x00\x00\x00\x00"  # a zero mask: the payload goes out as it is


def _frame(opcode: int, payload: bytes = b"", fin: bool = True) -> bytes:
    return bytes([(0x80 if fin else 0) | opcode, 0x80 | len(payload)]) + MASK + payload


@dataclass
class Outcome:
    sent_bytes: int = 0
    closed_by_server: bool = False
    note: str = ""
    latencies: list[float] = field(default_factory=list)
    failures: int = 0


def _blocking(port: int, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", port))
    sock.settimeout(5)
    return sock


def _stream(
    sock: socket.socket,
    chunk: bytes,
    stop: threading.Event,
    outcome: Outcome,
    cap: int = 1 << 62,
) -> None:
    """Send `chunk` again and again until `stop`, `cap` bytes, or until the server closes."""
    try:
        while not stop.is_set() and outcome.sent_bytes < cap:
            sock.sendall(chunk)
            outcome.sent_bytes += len(chunk)
    except TimeoutError:
        outcome.note = "send blocked (the server stopped reading)"
    except OSError:
        outcome.closed_by_server = True


def head_lines(port: int, stop: threading.Event, outcome: Outcome) -> None:
    with _blocking(port) as sock:
        sock.sendall(UPGRADE)
        _stream(sock, b"X-A: b\r\n" * 8192, stop, outcome, cap=150_000_000)  # the 150 MB
        stop.wait()  # then stay connected, idle, until the end of the attack


def head_value(port: int, stop: threading.Event, outcome: Outcome) -> None:
    with _blocking(port) as sock:
        sock.sendall(UPGRADE + b"X-Big: ")
        chunk = b"v" * 65536
        try:
            while not stop.is_set() and outcome.sent_bytes < 50_000_000:
                sock.sendall(chunk)
                outcome.sent_bytes += len(chunk)
            sock.sendall(b"\r\n\r\n")
            outcome.note = "sent whole; answer: " + sock.recv(64).split(b"\r\n")[0].decode()
        except OSError:
            outcome.closed_by_server = True


def slowloris(port: int, stop: threading.Event, outcome: Outcome) -> None:
    sockets: list[socket.socket] = []
    refused = 0
    try:
        for _ in range(2500):
            if stop.is_set():
                break
            try:
                sock = _blocking(port)
                sock.sendall(UPGRADE)
                sockets.append(sock)
            except OSError:
                refused += 1
        line = 0
        while not stop.wait(2.0):
            alive = []
            for sock in sockets:
                try:
                    sock.sendall(b"X-%d: b\r\n" % line)
                    alive.append(sock)
                except OSError:
                    sock.close()
            sockets = alive
            line += 1
        outcome.note = f"{len(sockets)} of 2500 half-sent heads still open, {refused} refused"
    finally:
        for sock in sockets:
            sock.close()


def _upgraded(port: int, rcvbuf: int | None = None) -> socket.socket:
    sock = _blocking(port, rcvbuf)
    sock.sendall(UPGRADE + b"\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    return sock


def ping_flood(port: int, stop: threading.Event, outcome: Outcome) -> None:
    with _upgraded(port, rcvbuf=4096) as sock:
        _stream(sock, _frame(0x9, b"p" * 125) * 500, stop, outcome)


def cont_flood(port: int, stop: threading.Event, outcome: Outcome) -> None:
    with _upgraded(port) as sock:
        sock.sendall(_frame(0x1, b"x", fin=False))
        _stream(sock, _frame(0x0, b"", fin=False) * 20_000, stop, outcome)


ATTACKS: dict[str, Callable[[int, threading.Event, Outcome], None]] = {
    "head-lines": head_lines,
    "head-value": head_value,
    "slowloris": slowloris,
    "ping-flood": ping_flood,
    "cont-flood": cont_flood,
}


async def _probe(port: int, stop: asyncio.Event, outcome: Outcome) -> None:
    """`/health` every 100 ms, each on a new connection (a kept-alive one would hide a node
    that accepts no new connections)."""
    while not stop.is_set():
        started = time.monotonic()
        transport = httpx.AsyncHTTPTransport(local_address=OTHER)
        try:
            async with httpx.AsyncClient(transport=transport, timeout=5) as http:
                response = await http.get(f"http://127.0.0.1:{port}/health")
            if response.status_code != 200:
                raise httpx.HTTPError(str(response.status_code))
            outcome.latencies.append(time.monotonic() - started)
        except httpx.HTTPError:
            outcome.failures += 1
        await asyncio.sleep(0.1)


async def _wait_ready(port: int, process: asyncio.subprocess.Process) -> None:
    deadline = time.monotonic() + 30
    async with httpx.AsyncClient(timeout=1) as http:
        while True:
            if process.returncode is not None:
                raise RuntimeError(f"the node exited with {process.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(f"http://127.0.0.1:{port}/health")).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError("the node did not come up")
            await asyncio.sleep(0.1)


async def run(name: str, seconds: float, pythonpath: str | None, workdir: Path) -> str:
    ws_port, api_port, dashboard_port = free_ports(3)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONSTARTUP",)}
    env.update(
        HOST="127.0.0.1",
        WS_PORT=str(ws_port),
        API_PORT=str(api_port),
        DASHBOARD_PORT=str(dashboard_port),
        DATABASE_URL=f"sqlite+aiosqlite:///{workdir / f'{name}.db'}",
        LOG_LEVEL="warning",
    )
    files = 20_000
    if name == "slowloris":
        env["MAX_CONNECTIONS_PER_IP"] = "100000"
        files = 2048
    if pythonpath:
        env["PYTHONPATH"] = pythonpath

    def limit_files() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (files, files))

    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app.cli",
        "ws",
        cwd=workdir,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        preexec_fn=limit_files,
    )
    try:
        await _wait_ready(ws_port, process)
        before = sample(process.pid)
        outcome = Outcome()
        stop_attack = threading.Event()
        stop_probe = asyncio.Event()
        attacker = threading.Thread(
            target=ATTACKS[name], args=(ws_port, stop_attack, outcome), daemon=True
        )
        probing = asyncio.create_task(_probe(ws_port, stop_probe, outcome))
        attacker.start()
        await asyncio.sleep(seconds)
        stop_attack.set()
        await asyncio.to_thread(attacker.join, 10)
        stop_probe.set()
        await probing
        await asyncio.sleep(3)
        after = sample(process.pid)
        lat = sorted(outcome.latencies) or [float("nan")]
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        what = "closed by the node" if outcome.closed_by_server else "not closed"
        return (
            f"| {name} | {before.rss_kb // 1024} | {after.hwm_kb // 1024} | "
            f"{after.rss_kb // 1024} | {statistics.median(lat) * 1000:.0f} | {p99 * 1000:.0f} | "
            f"{lat[-1] * 1000:.0f} | {outcome.failures}/{len(outcome.latencies) + outcome.failures}"
            f" | {what}; {outcome.sent_bytes / 1e6:.0f} MB sent{'; ' if outcome.note else ''}"
            f"{outcome.note} |"
        )
    finally:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.attacks", description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each attack")
    parser.add_argument("--attack", action="append", choices=sorted(ATTACKS), help="repeatable")
    parser.add_argument("--pythonpath", help="run the node from this checkout instead")
    args = parser.parse_args(argv)
    raise_file_limit()  # the slowloris holds thousands of sockets on this side too
    print(
        "| attack | RSS before (MB) | peak RSS (MB) | RSS after (MB) | /health p50 (ms) "
        "| p99 (ms) | max (ms) | /health failed | attacker |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="cm-attacks-") as tmp:
        for name in args.attack or list(ATTACKS):
            print(await run(name, args.seconds, args.pythonpath, Path(tmp)), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
