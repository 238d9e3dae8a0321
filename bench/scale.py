"""The scale scenarios: 100,000 connections on one node, and a cluster of nodes on Redis shards.

Both are heavy, so `python -m bench` runs them only when named (`--scenario connections-100k`,
`--scenario cluster`); docs/performance.md and docs/scaling.md hold what they measured.

connections-100k — one `context-manager ws`; GENERATORS processes of bench/node/many.mjs open
    100,000 idle WebSocket connections between them, each connection from its own source
    address in 127.0.0.0/8 (50 per address, so no address runs out of source ports), with
    RLIMIT_NOFILE raised for the server and the generators. Measured: server RSS per
    connection (VmRSS before/after), time to open them all, three broadcasts (one publish on a
    channel all 100,000 subscribe: time until the last receives it, over every generator's
    wall clock), /health latency polled all along; then the same connections over 10,000
    channels (10 subscribers each): RSS, and one publication on every channel (100,000
    deliveries) — time and deliveries/s.

cluster — for 2 and 4 `ws` nodes on 1 and 2 Redis shards (private redis-servers, as
    scripts/cluster.sh runs them): subscribers spread over every node and CHANNELS channels,
    one publisher per node at a fixed total rate; deliveries/s, latency p50/p99 (publish to
    arrival, any node to any node), and Redis CPU per publication (/proc of each redis-server).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import resource
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import websockets

from bench.loadgen import NODE_DIR, ensure_node
from bench.procfs import sample
from bench.servers import OURS, ROOT, Pinning, free_ports, raise_file_limit, run_server

Row = dict[str, Any]

GENERATORS = 4
FILES = 300_000  # descriptors for the server and each generator: 100,000 sockets and room
PER_ADDRESS = 50
# Descriptors a server keeps besides client sockets (FD_RESERVE, logs, Redis, /health).
FD_HEADROOM = 400


class Generator:
    """One many.mjs process: commands in, one answer each (see bench/node/many.mjs)."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls, config: dict[str, Any], cpus: str, pinning: Pinning) -> Generator:
        node = ensure_node()
        argv = pinning.wrap(
            [node, "--max-old-space-size=4096", str(NODE_DIR / "many.mjs"), orjson.dumps(config)],
            cpus,
        )
        process = await asyncio.create_subprocess_exec(
            *argv,
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            preexec_fn=lambda: raise_file_limit(FILES),
            limit=16 * 1024 * 1024,
        )
        generator = cls(process)
        await generator._read()  # {"ready": true}
        return generator

    async def _read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = await self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"generator exited ({self.process.returncode})")
        answer: dict[str, Any] = orjson.loads(line)
        return answer

    async def command(self, **command: Any) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(orjson.dumps(command) + b"\n")
        await self.process.stdin.drain()
        return await self._read()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.command(cmd="close"), 20)
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()


async def _each(generators: list[Generator], **command: Any) -> list[dict[str, Any]]:
    return list(await asyncio.gather(*(g.command(**command) for g in generators)))


@contextlib.asynccontextmanager
async def _generators(
    urls: list[str], total: int, processes: int, pinning: Pinning, batch: int = 200
) -> AsyncIterator[list[Generator]]:
    share = total // processes
    started: list[Generator] = []
    try:
        for index in range(processes):
            config = {
                "urls": urls,
                "count": share if index < processes - 1 else total - share * index,
                "first": share * index,
                "addressBase": 10,
                "perAddress": PER_ADDRESS,
                "batch": batch,
            }
            started.append(await Generator.start(config, pinning.load, pinning))
        yield started
    finally:
        await asyncio.gather(*(g.close() for g in started))


class HealthProbe:
    """GET /health every `interval` seconds; the latencies (ms), for the whole run."""

    def __init__(self, ws_url: str, interval: float = 0.25) -> None:
        self.url = ws_url.replace("ws://", "http://").rstrip("/") + "/health"
        self.interval = interval
        self.latencies: list[float] = []
        self.failures = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        async with httpx.AsyncClient(timeout=10) as client:
            while True:
                started = time.perf_counter()
                try:
                    (await client.get(self.url)).raise_for_status()
                    self.latencies.append((time.perf_counter() - started) * 1000)
                except httpx.HTTPError:
                    self.failures += 1
                await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def summary(self, since: int = 0) -> dict[str, Any]:
        values = sorted(self.latencies[since:])
        if not values:
            return {"n": 0, "failures": self.failures}
        pick = lambda q: round(values[min(len(values) - 1, int(q * len(values)))], 2)  # noqa: E731
        return {"n": len(values), "p50": pick(0.5), "p99": pick(0.99), "max": round(values[-1], 2),
                "failures": self.failures}  # fmt: skip


class Publisher:
    """A WebSocket client that publishes and waits for the acks (windowed)."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.sent = 0

    @classmethod
    async def open(cls, url: str) -> Publisher:
        ws = await websockets.connect(url, max_size=None)
        await ws.recv()  # connected
        return cls(ws)

    async def publish_many(self, items: list[tuple[str, dict[str, Any]]], window: int = 200) -> int:
        """Publish each (channel, data), at most `window` unacknowledged; acks counted."""
        acked = 0
        pending = 0
        for channel, data in items:
            self.sent += 1
            frame = {"type": "publish", "channel": channel, "event": "bench.tick", "data": data,
                     "id": f"p{self.sent}"}  # fmt: skip
            await self.ws.send(orjson.dumps(frame).decode())
            pending += 1
            while pending >= window:
                acked += await self._ack()
                pending -= 1
        while pending:
            acked += await self._ack()
            pending -= 1
        return acked

    async def _ack(self) -> int:
        while True:
            message = orjson.loads(await self.ws.recv())
            if message.get("type") == "ack":
                return 1 if message.get("success") else 0
            if "error" in message:
                return 0

    async def close(self) -> None:
        await self.ws.close()


async def _wait_arrivals(generators: list[Generator], expected: int, timeout: float) -> list[Any]:
    deadline = time.monotonic() + timeout
    while True:
        answers = await _each(generators, cmd="arrivals")
        if sum(a["arrivals"] for a in answers) >= expected or time.monotonic() > deadline:
            return answers
        await asyncio.sleep(0.05)


def _rss_kb(pid: int) -> int:
    return sample(pid).rss_kb


# --- 100,000 connections on one node -----------------------------------------------------


async def connections_100k(ctx: Any, server_name: str) -> Row:
    """The 100,000-connection scenario (module docstring)."""
    wanted = ctx.pick(100_000, 10_000)
    spread = ctx.pick(10_000, 1_000)
    # One process holds at most RLIMIT_NOFILE's hard limit of sockets; raising it needs root
    # with CAP_SYS_RESOURCE (or LimitNOFILE= in a unit). Where it cannot be raised, measure
    # as many as fit and say so in the row.
    raise_file_limit(FILES)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    fits = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard - FD_HEADROOM)
    total = fits
    env = {
        **ctx.server_env,
        "MAX_CONNECTIONS": str(total + 1000),
        "MAX_CONNECTIONS_PER_IP": str(total),
        "WS_IDLE_TIMEOUT": "3600",
        "LOG_LEVEL": "warning",
    }
    row: Row = {
        "params": {"connections": total, "generators": GENERATORS, "spread": spread},
        "fd_hard_limit": None if hard == resource.RLIM_INFINITY else hard,
    }
    if total < wanted:
        row["limited_by"] = (
            f"RLIMIT_NOFILE hard limit {hard}: {total} of {wanted} connections fit in one process"
        )
    async with run_server(
        server_name, ctx.workdir, ctx.pinning, extra_env=env, files=FILES, ready_timeout=60
    ) as server:
        probe = HealthProbe(server.ws_url)
        publisher = await Publisher.open(server.ws_url)
        await asyncio.sleep(1)
        rss_before = _rss_kb(server.pid)
        probe.start()
        try:
            async with _generators([server.ws_url], total, GENERATORS, ctx.pinning) as gens:
                started = time.monotonic()
                opened = await _each(gens, cmd="open")
                open_seconds = time.monotonic() - started
                count = sum(o["open"] for o in opened)
                await asyncio.sleep(2)
                rss_open = _rss_kb(server.pid)
                row.update(
                    open=count,
                    open_seconds=round(open_seconds, 2),
                    open_per_s=round(count / open_seconds),
                    rss_before_mb=round(rss_before / 1024, 1),
                    rss_open_mb=round(rss_open / 1024, 1),
                    rss_per_conn_kb=round((rss_open - rss_before) / max(1, count), 2),
                    health_while_opening_ms=probe.summary(),
                    errors=sum(o["errors"] for o in opened),
                    error_samples=[s for o in opened for s in o["error_samples"]][:5],
                )
                mark = len(probe.latencies)
                started = time.monotonic()
                await _each(gens, cmd="subscribe", channel="topics/all")
                row["subscribe_seconds"] = round(time.monotonic() - started, 2)
                rss_subscribed = _rss_kb(server.pid)
                row["rss_per_subscription_kb"] = round(
                    (rss_subscribed - rss_open) / max(1, count), 2
                )
                broadcasts = []
                for _ in range(3):
                    await _each(gens, cmd="arm")
                    sent = time.time() * 1000
                    await publisher.publish_many([("topics/all", {"t": sent})])
                    answers = await _wait_arrivals(gens, count, 60)
                    got = sum(a["arrivals"] for a in answers)
                    last = max(a["last"] or 0 for a in answers)
                    first = min(a["first"] or last for a in answers)
                    broadcasts.append(
                        {
                            "delivered": got,
                            "first_ms": round(first - sent, 1),
                            "last_ms": round(last - sent, 1),
                        }
                    )
                    await asyncio.sleep(1)
                row["broadcasts"] = broadcasts
                row["broadcast_last_ms"] = min(b["last_ms"] for b in broadcasts)
                row["health_during_broadcasts_ms"] = probe.summary(mark)

                await _each(gens, cmd="unsubscribe", channel="topics/all")
                await _each(gens, cmd="subscribe", spread=spread)
                await asyncio.sleep(1)
                rss_spread = _rss_kb(server.pid)
                row["rss_spread_mb"] = round(rss_spread / 1024, 1)
                await _each(gens, cmd="arm")
                sent = time.time() * 1000
                items = [(f"topics/c{c}", {"t": time.time() * 1000}) for c in range(spread)]
                acked = await publisher.publish_many(items)
                answers = await _wait_arrivals(gens, count, 120)
                got = sum(a["arrivals"] for a in answers)
                last = max(a["last"] or 0 for a in answers)
                latency = await _each(gens, cmd="latency")
                row["spread"] = {
                    "channels": spread,
                    "published": acked,
                    "delivered": got,
                    "seconds": round((last - sent) / 1000, 2),
                    "delivered_per_s": round(got / max(0.001, (last - sent) / 1000)),
                    "p99_ms_worst_generator": max(x["p99"] or 0 for x in latency),
                }
                row["delivered_per_s"] = row["spread"]["delivered_per_s"]
                row["lost"] = count - got
        finally:
            await probe.stop()
            await publisher.close()
        end = sample(server.pid)
        row["server_rss_peak_kb"] = end.hwm_kb
        row["duplicated"] = 0
        row["out_of_order"] = 0
    return row


# --- the cluster in numbers --------------------------------------------------------------

CLUSTER_SHAPES = ((2, 1), (4, 1), (2, 2), (4, 2))
SUBSCRIBERS = 2000
CHANNELS = 100
RATE = 400  # publications per second, all nodes together


@contextlib.asynccontextmanager
async def _redis_servers(count: int, workdir: Path) -> AsyncIterator[list[tuple[str, int]]]:
    """Private redis-servers without persistence: (url, pid) each."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed")
    processes = []
    try:
        for port in free_ports(count):
            process = subprocess.Popen(
                [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(workdir), "--maxclients", "20000"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                # A subscribe storm opens many pooled connections at once: room for them.
                preexec_fn=lambda: raise_file_limit(65536),
            )  # fmt: skip
            processes.append((f"redis://127.0.0.1:{port}/0", process))
        await asyncio.sleep(0.5)
        yield [(url, process.pid) for url, process in processes]
    finally:
        for _, process in processes:
            process.kill()
            process.wait()


async def _paced(publisher: Publisher, rate: float, seconds: float, node: int) -> int:
    """Publish to random channels at `rate`/s for `seconds`; acks."""
    acked = 0
    interval = 1 / rate
    deadline = time.monotonic() + seconds
    next_at = time.monotonic()
    while time.monotonic() < deadline:
        burst = []
        while next_at <= time.monotonic():
            burst.append(
                (f"topics/c{random.randrange(CHANNELS)}", {"t": time.time() * 1000, "n": node})
            )
            next_at += interval
        if burst:
            acked += await publisher.publish_many(burst, window=len(burst))
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    return acked


async def _cluster_shape(ctx: Any, nodes: int, shards: int, seconds: float) -> Row:
    workdir = ctx.workdir / f"cluster-{nodes}-{shards}"
    workdir.mkdir(parents=True, exist_ok=True)
    unpinned = Pinning()
    async with contextlib.AsyncExitStack() as stack:
        redis = await stack.enter_async_context(_redis_servers(shards, workdir))
        env = {
            **ctx.server_env,
            "BROKER": "redis",
            "REDIS_SHARDS": ",".join(url for url, _ in redis),
            "BROKER_PREFIX": "bench",
            "LOG_LEVEL": "warning",
        }
        servers = [
            await stack.enter_async_context(
                run_server(OURS, workdir, unpinned, extra_env={**env, "NODE_ID": f"n{i}"})
            )
            for i in range(nodes)
        ]
        urls = [server.ws_url for server in servers]
        gens = await stack.enter_async_context(_generators(urls, SUBSCRIBERS, 1, unpinned))
        await _each(gens, cmd="open")
        await _each(gens, cmd="subscribe", spread=CHANNELS)
        publishers = [await Publisher.open(url) for url in urls]
        await asyncio.sleep(1)
        await _each(gens, cmd="arm")
        before = [sample(pid).cpu_seconds for _, pid in redis]
        started = time.monotonic()
        acks = await asyncio.gather(
            *(_paced(p, RATE / nodes, seconds, i) for i, p in enumerate(publishers))
        )
        published = sum(acks)
        expected = published * SUBSCRIBERS // CHANNELS
        answers = await _wait_arrivals(gens, expected, 30)
        window = time.monotonic() - started
        after = [sample(pid).cpu_seconds for _, pid in redis]
        latency = (await _each(gens, cmd="latency"))[0]
        delivered = sum(a["arrivals"] for a in answers)
        redis_cpu = sum(after) - sum(before)
        for publisher in publishers:
            await publisher.close()
    return {
        "nodes": nodes,
        "shards": shards,
        "published": published,
        "delivered": delivered,
        "expected": expected,
        "delivered_per_s": round(delivered / window),
        "latency_ms": {"p50": round(latency["p50"], 2), "p99": round(latency["p99"], 2)},
        "redis_cpu_s": round(redis_cpu, 3),
        "redis_cpu_us_per_publication": round(redis_cpu * 1e6 / max(1, published), 1),
        "window_s": round(window, 2),
    }


async def cluster(ctx: Any, server_name: str) -> Row:
    """Every cluster shape in turn (module docstring); one row with a line per shape."""
    seconds = ctx.pick(10, 4)
    shapes = [await _cluster_shape(ctx, n, s, seconds) for n, s in CLUSTER_SHAPES]
    return {
        "params": {"subscribers": SUBSCRIBERS, "channels": CHANNELS, "rate": RATE,
                   "seconds": seconds},
        "shapes": shapes,
        "lost": sum(max(0, s["expected"] - s["delivered"]) for s in shapes),
        "duplicated": sum(max(0, s["delivered"] - s["expected"]) for s in shapes),
        "out_of_order": 0,
        "machine_load_1m": os.getloadavg()[0],
    }  # fmt: skip
