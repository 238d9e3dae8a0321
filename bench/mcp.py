"""`python -m bench.mcp`: MCP tool calls over Streamable HTTP against a real service.

    python -m bench.mcp              # 10 s windows, 8 agents
    python -m bench.mcp --quick      # 3 s windows
    python -m bench.mcp --seconds 20 --agents 16

Measured with the SDK's own client (`mcp.Client`, protocol 2026-07-28: one POST per call):

    fetch_inbox   calls/s and latency percentiles, N agents in a closed loop (each reading its
                  own inbox of 10 messages); beside it the same read over REST, for reference
    claim_task    calls/s and percentiles, N agents claiming from a queue filled beforehand
                  (every call takes a task: the queue never runs dry in the window); beside
                  it POST /api/tasks/claim, for reference
    wake          wait_for_messages' wake latency on an idle service: an agent waits, another
                  sends it a message; from the send's start to the waiter holding the message
                  (an upper bound: it includes the send itself). Target: p99 < 100 ms.

The service runs as a user runs it (`context-manager serve`, SQLite, fresh per run) pinned to
CPU 0, the load on CPU 1 (bench/servers.py). Rows are printed as JSON lines and appended to
bench/results/mcp-<UTC date>.jsonl.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import httpx2
import orjson
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from bench import procfs
from bench.machine import describe
from bench.servers import OURS, ROOT, Pinning, run_server

MODERN = "2026-07-28"
WAKE_TARGET_MS = 100.0


@contextlib.asynccontextmanager
async def agent(api: str, agent_id: str) -> AsyncIterator[Client]:
    url = f"{api}/mcp?agent_id={agent_id}"
    async with httpx2.AsyncClient(timeout=httpx2.Timeout(30, read=120)) as http:
        async with Client(streamable_http_client(url, http_client=http), mode=MODERN) as client:
            yield client


async def tool(client: Client, name: str, **arguments: Any) -> dict[str, Any]:
    result = await client.call_tool(name, arguments)
    if result.is_error or result.structured_content is None:
        raise RuntimeError(f"{name} failed: {result.content}")
    return result.structured_content


def percentiles(samples: list[float]) -> dict[str, float]:
    """p50/p99/max in milliseconds."""
    ordered = sorted(samples)
    if not ordered:
        return {}

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return {
        "p50_ms": round(at(0.50), 2),
        "p99_ms": round(at(0.99), 2),
        "max_ms": round(ordered[-1] * 1000, 2),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 2),
    }


@contextlib.contextmanager
def cpu_use(pid: int, core: int | None) -> Any:
    """Yields a dict filled, after the block, with the server's and this load's CPU use."""
    found: dict[str, Any] = {}
    server, load = procfs.sample(pid, core), procfs.sample(os.getpid())
    yield found
    server_end, load_end = procfs.sample(pid, core), procfs.sample(os.getpid())
    found["server_cpu_percent"] = procfs.cpu_percent(server, server_end)
    found["load_cpu_percent"] = procfs.cpu_percent(load, load_end)
    found["other_on_server_core_percent"] = procfs.other_on_core_percent(server, server_end)


async def closed_loop(
    clients: list[Client], call: Callable[[Client, int], Awaitable[None]], seconds: float
) -> tuple[int, list[float], float]:
    """Every client calls back to back for `seconds`; (calls, latencies, elapsed)."""
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def run(index: int, client: Client) -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            await call(client, index)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(run(i, c) for i, c in enumerate(clients)))
    return len(latencies), latencies, time.perf_counter() - started


async def bench_fetch_inbox(
    api: str, agents: int, seconds: float, pid: int, core: int | None
) -> dict[str, Any]:
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(agent(api, f"reader-{i}")) for i in range(agents)
        ]
        sender = await stack.enter_async_context(agent(api, "sender"))
        for i in range(agents):
            for n in range(10):
                await tool(sender, "send_message", to_agent=f"reader-{i}", content=f"m{n}")

        async def fetch(client: Client, _: int) -> None:
            await tool(client, "fetch_inbox", limit=10)

        await closed_loop(clients, fetch, min(1.0, seconds))  # warm-up
        with cpu_use(pid, core) as cpu:
            calls, latencies, elapsed = await closed_loop(clients, fetch, seconds)
    return {
        "measure": "fetch_inbox",
        "calls_per_s": round(calls / elapsed, 1),
        **percentiles(latencies),
        **cpu,
    }


async def bench_rest_inbox(
    api: str, agents: int, seconds: float, pid: int, core: int | None
) -> dict[str, Any]:
    """The same inbox read over REST (GET /api/agents/{id}/inbox): what MCP adds to it."""
    async with contextlib.AsyncExitStack() as stack:
        sender = await stack.enter_async_context(agent(api, "sender"))
        for i in range(agents):
            for n in range(10):
                await tool(sender, "send_message", to_agent=f"reader-{i}", content=f"m{n}")
        http = [
            await stack.enter_async_context(httpx.AsyncClient(base_url=api, timeout=30))
            for _ in range(agents)
        ]

        async def fetch(client: Any, index: int) -> None:
            response = await client.get(f"/api/agents/reader-{index}/inbox", params={"limit": 10})
            response.raise_for_status()

        await closed_loop(http, fetch, min(1.0, seconds))  # type: ignore[arg-type]
        with cpu_use(pid, core) as cpu:
            calls, latencies, elapsed = await closed_loop(http, fetch, seconds)  # type: ignore[arg-type]
    return {
        "measure": "REST inbox (reference)",
        "calls_per_s": round(calls / elapsed, 1),
        **percentiles(latencies),
        **cpu,
    }


async def bench_claim_task(
    api: str, agents: int, seconds: float, pid: int, core: int | None, over: str = "mcp"
) -> dict[str, Any]:
    """Claims from a queue filled beforehand, over MCP or (`over="rest"`) POST /api/tasks/claim."""
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(agent(api, f"worker-{i}")) for i in range(agents)
        ]
        http = await stack.enter_async_context(httpx.AsyncClient(base_url=api, timeout=30))
        # Fill the queue over REST (fast), with more tasks than the window can claim.
        probe_calls, _, probe_elapsed = await closed_loop(clients[:1], lambda c, i: _claim(c), 0.5)
        wanted = int(probe_calls / probe_elapsed * agents * seconds * 2) + 200
        semaphore = asyncio.Semaphore(16)

        async def create(n: int) -> None:
            async with semaphore:
                response = await http.post("/api/tasks", json={"title": f"bench {n}"})
                response.raise_for_status()

        await asyncio.gather(*(create(n) for n in range(wanted)))

        async def claim(client: Client, index: int) -> None:
            if over == "rest":
                response = await http.post("/api/tasks/claim", json={"agent_id": f"worker-{index}"})
                if response.status_code != 200:
                    raise RuntimeError(f"claim answered {response.status_code}")
                return
            claimed = await _claim(client)
            if claimed["task"] is None:
                raise RuntimeError("the queue ran dry: raise the fill")

        with cpu_use(pid, core) as cpu:
            calls, latencies, elapsed = await closed_loop(clients, claim, seconds)
    return {
        "measure": "claim_task" if over == "mcp" else "REST claim (reference)",
        "calls_per_s": round(calls / elapsed, 1),
        "queue": wanted,
        **percentiles(latencies),
        **cpu,
    }


async def _claim(client: Client) -> dict[str, Any]:
    return await tool(client, "claim_task", capabilities=[])


async def bench_wake(api: str, samples: int) -> dict[str, Any]:
    async with agent(api, "waiter") as waiter, agent(api, "waker") as waker:
        await tool(waiter, "register_agent")
        cursor = 0
        latencies: list[float] = []
        for n in range(samples + 5):
            waiting = asyncio.create_task(
                waiter.call_tool("wait_for_messages", {"after": cursor, "timeout_seconds": 25})
            )
            await asyncio.sleep(0.05)  # the wait is in place on the service
            started = time.perf_counter()
            await tool(waker, "send_message", to_agent="waiter", content=f"wake {n}")
            result = await waiting
            elapsed = time.perf_counter() - started
            assert result.structured_content is not None
            messages = result.structured_content["messages"]
            if not messages:
                raise RuntimeError("the wait ended without the message")
            cursor = result.structured_content["cursor"]
            if n >= 5:  # the first wakes warm the connection pools
                latencies.append(elapsed)
    stats = percentiles(latencies)
    return {
        "measure": "wait_for_messages wake",
        "samples": len(latencies),
        **stats,
        "target_p99_ms": WAKE_TARGET_MS,
        "meets_target": stats["p99_ms"] < WAKE_TARGET_MS,
    }


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    pinning = Pinning.detect(not args.no_pin)
    if pinning.load:
        os.sched_setaffinity(0, {int(pinning.load)})
    seconds = 3.0 if args.quick else args.seconds
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-mcp-") as tmp:
        for measure in ("fetch_inbox", "rest_inbox", "claim_task", "rest_claim", "wake"):
            # A fresh service per measure: nothing of one run weighs on the next.
            env = {"LOG_LEVEL": "warning"}
            async with run_server(OURS, Path(tmp), pinning, command="serve", extra_env=env) as s:
                assert s.api_url is not None
                core = int(pinning.server) if pinning.server else None
                if measure == "fetch_inbox":
                    row = await bench_fetch_inbox(s.api_url, args.agents, seconds, s.pid, core)
                elif measure == "rest_inbox":
                    row = await bench_rest_inbox(s.api_url, args.agents, seconds, s.pid, core)
                elif measure in ("claim_task", "rest_claim"):
                    over = "mcp" if measure == "claim_task" else "rest"
                    row = await bench_claim_task(s.api_url, args.agents, seconds, s.pid, core, over)
                else:
                    row = await bench_wake(s.api_url, 50 if args.quick else args.wakes)
            row.update(agents=args.agents if measure != "wake" else 1, pinning=pinning.describe())
            print(orjson.dumps(row).decode(), flush=True)
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.mcp", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 s windows, 50 wakes")
    parser.add_argument("--seconds", type=float, default=10.0, help="window per measure (10)")
    parser.add_argument("--agents", type=int, default=8, help="concurrent agents (8)")
    parser.add_argument("--wakes", type=int, default=200, help="wake samples (200)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin server and load")
    args = parser.parse_args(argv)
    machine = describe(ROOT)
    print(orjson.dumps({"machine": machine}).decode(), flush=True)
    rows = asyncio.run(run(args))
    stamp = datetime.now(UTC)
    results = ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    with open(results / f"mcp-{stamp:%Y-%m-%d}.jsonl", "ab") as out:
        for row in rows:
            out.write(orjson.dumps({"at": stamp.isoformat(), "machine": machine, **row}) + b"\n")
    return 0 if all(row.get("meets_target", True) for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
