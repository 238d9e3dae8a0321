"""Start and stop the servers under test: the service as a user runs it, and the two baselines.

The baselines speak the same JSON protocol in a few dozen lines: `reference` on Python's bare
`websockets` (bench/reference_server.py) and `node-ws` on Node.js and the `ws` package
(bench/node/reference_server.mjs, `ws` pinned in bench/node/package-lock.json).

Each scenario gets a fresh server process on free loopback ports with its own temporary SQLite
file, so peak RSS (VmHWM) belongs to that scenario alone. The server is pinned to CPU 0 with
`taskset`; load generators go to CPU 1 (see `Pinning`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import resource
import shutil
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import websockets

ROOT = Path(__file__).resolve().parent.parent
OURS = "context-manager"
REFERENCE = "reference"  # bare `websockets`: the reference of issue 5, `ratio` in a row
NODE_WS = "node-ws"  # Node.js `ws`: the second reference (issue 20), `ratio_node_ws` in a row
REFERENCES = (REFERENCE, NODE_WS)
SERVERS = (REFERENCE, NODE_WS, OURS)  # the order of each round
# py-spy reads Python stacks only: --profile records these and leaves node-ws alone.
PYTHON_SERVERS = (REFERENCE, OURS)

# The limits stay on (every message still goes through their checks), with thresholds above what
# the scenarios ask of one node from one address: 10,000 idle connections from 127.0.0.1, a
# closed-loop publisher far above 100 publishes/s. Any of them can be overridden with --env.
BENCH_LIMITS = {
    "MAX_CONNECTIONS": "20000",
    "MAX_CONNECTIONS_PER_IP": "20000",
    "PUBLISH_RATE": "1000000",
    "PUBLISH_BURST": "1000000",
    "MESSAGE_RATE": "1000000",
    "MESSAGE_BURST": "1000000",
    # Every inbound WebSocket frame counts too (uvicorn_protocol.py); above what a publisher asks.
    "FRAME_RATE": "1000000",
    "FRAME_BURST": "1000000",
}

# Ten thousand idle connections need more descriptors than a default shell allows.
WANTED_FILES = 65536


def raise_file_limit(wanted: int = WANTED_FILES) -> None:
    """Lift RLIMIT_NOFILE's soft limit towards `wanted` (run in every child we start).

    As root the hard limit is raised too when it is below (the 100,000-connection scenario
    needs more descriptors than most shells' hard limit).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted and os.geteuid() == 0:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


@dataclass(frozen=True, slots=True)
class Pinning:
    """Which CPU runs the server and which the load; empty when we cannot pin."""

    server: str = ""
    load: str = ""

    @classmethod
    def detect(cls, enabled: bool = True) -> Pinning:
        if not enabled or (os.cpu_count() or 1) < 2 or shutil.which("taskset") is None:
            return cls()
        return cls("0", "1")

    def wrap(self, command: Sequence[str], cpus: str) -> list[str]:
        return ["taskset", "-c", cpus, *command] if cpus else list(command)

    def describe(self) -> str:
        if not self.server:
            return "not pinned"
        return f"server on CPU {self.server}, load on CPU {self.load} (taskset)"


def free_ports(count: int) -> list[int]:
    """Ports the kernel just handed out on 127.0.0.1 (closed again, so racy but fine here)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass
class RunningServer:
    """A server process under test."""

    name: str
    process: asyncio.subprocess.Process
    ws_url: str
    api_url: str | None
    database_url: str | None
    log_path: Path
    started_at: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


async def _wait_ready(server: RunningServer, timeout: float) -> None:
    """Poll until a WebSocket client gets the `connected` frame (and the API answers)."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        if server.process.returncode is not None:
            raise RuntimeError(
                f"{server.name} exited with {server.process.returncode}:\n{server.log_tail()}"
            )
        try:
            async with websockets.connect(server.ws_url, open_timeout=2, compression=None) as probe:
                first = orjson.loads(await asyncio.wait_for(probe.recv(), 2))
                if first.get("type") != "connected":
                    raise RuntimeError(f"unexpected first frame {first!r}")
            if server.api_url is not None:
                await _wait_http(server.api_url + "/health", 2)
            return
        except (OSError, TimeoutError, websockets.WebSocketException) as exc:
            last_error = exc
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{server.name} not ready after {timeout} s: {last_error}")


async def _wait_http(url: str, timeout: float) -> None:
    import httpx

    async with httpx.AsyncClient(timeout=timeout) as client:
        response = await client.get(url)
        if response.status_code >= 500 and response.status_code != 503:
            raise OSError(f"{url} answered {response.status_code}")


@contextlib.asynccontextmanager
async def run_server(
    name: str,
    workdir: Path,
    pinning: Pinning,
    *,
    command: str = "ws",
    database_url: str | None = None,
    extra_env: dict[str, str] | None = None,
    ready_timeout: float = 30.0,
    files: int = WANTED_FILES,
) -> AsyncIterator[RunningServer]:
    """Start `name` (one of SERVERS), wait until it serves, stop it on exit."""
    ws_port, api_port, dashboard_port = free_ports(3)
    env = dict(os.environ)
    env.pop("PYTHONSTARTUP", None)
    log_path = workdir / f"{name}-{command}-{ws_port}.log"
    api_url: str | None = None
    if name == OURS:
        database_url = database_url or f"sqlite+aiosqlite:///{workdir / f'bench-{ws_port}.db'}"
        env.update(
            HOST="127.0.0.1",
            WS_PORT=str(ws_port),
            API_PORT=str(api_port),
            DASHBOARD_PORT=str(dashboard_port),
            DATABASE_URL=database_url,
            # A scratch PostgreSQL database starts empty: let the service create its tables.
            MIGRATE_ON_START="true",
        )
        env.update(BENCH_LIMITS)
        env.update(extra_env or {})
        argv = [str(Path(sys.executable).parent / "context-manager"), command]
        if command != "ws":
            api_url = f"http://127.0.0.1:{api_port}"
    elif name == REFERENCE:
        database_url = None
        argv = [
            sys.executable,
            str(ROOT / "bench" / "reference_server.py"),
            "--host",
            "127.0.0.1",
            "--port",
            str(ws_port),
        ]
    elif name == NODE_WS:
        from bench.loadgen import NODE_DIR, ensure_node  # loadgen imports this module

        database_url = None
        argv = [
            ensure_node(),
            str(NODE_DIR / "reference_server.mjs"),
            "--host",
            "127.0.0.1",
            "--port",
            str(ws_port),
        ]
    else:
        raise ValueError(f"unknown server {name!r}")
    with open(log_path, "wb") as log:
        process = await asyncio.create_subprocess_exec(
            *pinning.wrap(argv, pinning.server),
            cwd=workdir,  # a developer's .env in the checkout must not change what we measure
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            preexec_fn=functools.partial(raise_file_limit, files),
        )
    server = RunningServer(
        name, process, f"ws://127.0.0.1:{ws_port}/", api_url, database_url, log_path
    )
    try:
        await _wait_ready(server, ready_timeout)
        yield server
    finally:
        await stop(server)


async def stop(server: RunningServer, timeout: float = 15.0) -> None:
    """SIGTERM, then SIGKILL if it does not exit within `timeout`."""
    process = server.process
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
