"""Where an idle connection's memory goes: the service in this process, under tracemalloc.

    python -m bench.memory_profile [--server reference] [--connections 2000] [--top 25]

The idle scenario measures memory per connection from the outside (VmRSS); this names the
lines that allocate it. It runs `app.server.Service` (WebSocket surface only, the settings of the
benchmark) in this process with tracemalloc on, opens the connections with the Node load
generator on the other core, and compares snapshots taken before and after, per connection.
tracemalloc sees Python allocations only: the kernel's socket buffers and uvloop's C structures
are in the RSS figure, not here. tracemalloc slows the server; no timing is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import tempfile
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

from bench.loadgen import node_argv, run_load
from bench.procfs import sample
from bench.servers import (
    BENCH_LIMITS,
    OURS,
    REFERENCE,
    Pinning,
    free_ports,
    raise_file_limit,
)


@contextlib.asynccontextmanager
async def _serve(server: str, port: int, database: Path) -> AsyncIterator[None]:
    """The service (WebSocket surface, the benchmark's settings) or the reference, in-process."""
    if server == REFERENCE:
        from websockets.asyncio.server import serve

        from bench import reference_server

        async with serve(reference_server.handler, "127.0.0.1", port, compression=None):
            yield
        return
    from app.core.config import Settings
    from app.server import Service

    os.environ.update(
        HOST="127.0.0.1",
        WS_PORT=str(port),
        API_PORT=str(free_ports(1)[0]),
        DATABASE_URL=f"sqlite+aiosqlite:///{database}",
        LOG_LEVEL="warning",
        **BENCH_LIMITS,
    )
    async with Service(Settings(), ("ws",)):
        yield


async def profile(server: str, connections: int, top: int, depth: int) -> str:
    raise_file_limit()
    pinning = Pinning.detect()
    (ws_port,) = free_ports(1)
    with tempfile.TemporaryDirectory(prefix="cm-memprof-") as tmp:
        snapshots: dict[str, tracemalloc.Snapshot] = {}
        rss: dict[str, int] = {}
        async with _serve(server, ws_port, Path(tmp) / "bench.db"):
            tracemalloc.start(depth)

            async def on_phase(name: str) -> None:
                snapshots[name] = tracemalloc.take_snapshot()
                rss[name] = sample(os.getpid()).rss_kb

            config = {
                "mode": "idle",
                "connections": connections,
                "connectBatch": 250,
                "settle": 2,
                "url": f"ws://127.0.0.1:{ws_port}/",
            }
            result, phases = await run_load(
                node_argv(config), os.getpid(), pinning, 300, "memory", on_phase=on_phase
            )
            tracemalloc.stop()
    opened = int(phases["open"].info.get("open") or 0) if "open" in phases else 0
    if not opened or "before" not in snapshots or "open" not in snapshots:
        return f"no connections were measured: {result}"
    filters = [tracemalloc.Filter(False, tracemalloc.__file__)]
    before = snapshots["before"].filter_traces(filters)
    after = snapshots["open"].filter_traces(filters)
    by_line = after.compare_to(before, "lineno")
    by_trace = after.compare_to(before, "traceback")
    total = sum(stat.size_diff for stat in by_line)
    rss_each = (rss["open"] - rss["before"]) / opened
    lines = [
        f"{server}: {opened} idle connections; per connection: VmRSS +{rss_each:.1f} KB "
        f"(tracemalloc's own bookkeeping included), "
        f"Python allocations +{total / opened / 1024:.1f} KB",
        "",
        "bytes per connection by file:",
    ]
    by_file = after.compare_to(before, "filename")
    for stat in by_file[:top]:
        if stat.size_diff / opened >= 16:
            name = _short(stat.traceback[0].filename)
            lines.append(f"  {stat.size_diff / opened:8.0f} B  {name}")
    lines += ["", "bytes per connection by line:"]
    for stat in by_line[:top]:
        frame = stat.traceback[0]
        lines.append(
            f"  {stat.size_diff / opened:8.0f} B  {stat.count_diff / opened:6.2f} blocks  "
            f"{_short(frame.filename)}:{frame.lineno}"
        )
    lines += ["", "the largest by allocating call stack (innermost last):"]
    for stat in by_trace[: max(5, top // 3)]:
        lines.append(f"  {stat.size_diff / opened:8.0f} B per connection")
        for frame in list(stat.traceback)[-depth:]:
            lines.append(f"      {_short(frame.filename)}:{frame.lineno}")
    return "\n".join(lines)


def _short(path: str) -> str:
    for marker in ("site-packages/", "/main/", "/lib/python3.11/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.memory_profile", description=__doc__)
    parser.add_argument("--server", choices=(OURS, REFERENCE), default=OURS)
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--depth", type=int, default=6, help="frames kept per allocation")
    args = parser.parse_args()
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        print(runner.run(profile(args.server, args.connections, args.top, args.depth)))


if __name__ == "__main__":
    main()
