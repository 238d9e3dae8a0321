"""The scenarios: what each one runs, against which servers, and the figures it returns.

Every scenario starts a fresh server (bench/servers.py), drives it with a load generator on the
other core (bench/loadgen.py) and returns one row: the generator's figures plus the server's CPU
over the measurement window and its peak RSS (VmHWM). Durations are bounded; `--quick` shortens
them. The WebSocket scenarios run against the service and both references (bench/servers.py:
SERVERS); those of the REST API, the bridge and metric.update against the service alone.
Scenarios that need the REST API or the bridge run `context-manager serve` and report `skipped`
until those exist.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.loadgen import Phase, node_argv, run_load
from bench.procfs import cpu_percent, other_on_core_percent, sample
from bench.profile import Profiler, summarize
from bench.rest_write import scenario as rest_write
from bench.scale import cluster, connections_100k
from bench.servers import OURS, PYTHON_SERVERS, ROOT, SERVERS, Pinning, RunningServer, run_server

Row = dict[str, Any]


@dataclass(frozen=True)
class Context:
    """What every scenario needs to know about this run."""

    workdir: Path
    pinning: Pinning
    quick: bool
    server_env: dict[str, str] = field(default_factory=dict)
    postgres_url: str | None = None
    profile_dir: Path | None = None
    profile_native: bool = False
    label: str = ""  # "<scenario>-<server>[-<round>]": names profile files

    def pick(self, full: Any, quick: Any) -> Any:
        return quick if self.quick else full


Runner = Callable[[Context, str], Awaitable[Row]]


def most_delivered(row: Row) -> float:
    return float(row.get("delivered_per_s") or 0.0)


def lowest_p99(row: Row) -> float:
    p99 = (row.get("latency_ms") or {}).get("p99")
    return -float(p99) if isinstance(p99, int | float) else float("-inf")


@dataclass(frozen=True)
class Scenario:
    """A named load; `rounds` alternate between the servers and the best by `score` is kept."""

    name: str
    summary: str
    run: Runner
    servers: tuple[str, ...] = SERVERS
    rounds: int = 1
    score: Callable[[Row], float] = most_delivered
    # Minutes of load and gigabytes of memory: run only when named with --scenario.
    heavy: bool = False


def _window(phases: dict[str, Phase]) -> dict[str, Any]:
    """Server CPU over the measurement window, when the generator marked one."""
    start, end = phases.get("measure_start"), phases.get("measure_end")
    if start is None or end is None:
        return {}
    return {
        "server_cpu_pct": cpu_percent(start.sample, end.sample),
        "server_cpu_s": round(end.sample.cpu_seconds - start.sample.cpu_seconds, 3),
        "window_s": round(end.sample.wall - start.sample.wall, 3),
        "other_on_server_core_pct": other_on_core_percent(start.sample, end.sample),
    }


def _cost(row: Row, units: float | None) -> None:
    """Server CPU per unit of work (µs): robust where throughput is not, on a shared machine.

    Interference steals wall time from a window but hardly changes what one delivery or one
    connection costs the server.
    """
    cpu = row.get("server_cpu_s")
    if isinstance(cpu, int | float) and units:
        row["server_cpu_us_per_unit"] = round(cpu * 1e6 / units, 2)


async def _drive(
    ctx: Context, server: RunningServer, argv: list[str], timeout: float
) -> tuple[Row, dict[str, Phase]]:
    """Run a load generator against `server`, with py-spy over its window if asked to."""
    profiler: Profiler | None = None
    raw: Path | None = None
    if ctx.profile_dir is not None and server.name in PYTHON_SERVERS:
        ctx.profile_dir.mkdir(parents=True, exist_ok=True)
        raw = ctx.profile_dir / f"{ctx.label or server.name}.txt"
        profiler = Profiler(server.pid, raw, ctx.pinning, native=ctx.profile_native)

    async def on_phase(name: str) -> None:
        if profiler is not None and name == "measure_start":
            await profiler.start()
        elif profiler is not None and name == "measure_end":
            await profiler.stop()

    result, phases = await run_load(
        argv, server.pid, ctx.pinning, timeout, server.name, on_phase=on_phase
    )
    row: Row = dict(result)
    if profiler is not None and raw is not None:
        await profiler.stop()
        row["profiled"] = True
        if profiler.error is not None:
            row["profile_error"] = profiler.error
        elif raw.exists():
            text, top = summarize(raw)
            summary = raw.with_suffix(".summary.txt")
            summary.write_text(text + "\n")
            row["profile"] = {"raw": str(raw), "summary": str(summary), "own": top["own"][:10]}
    return row, phases


async def _node(
    ctx: Context,
    server_name: str,
    config: dict[str, Any],
    timeout: float,
    *,
    command: str = "ws",
    database_url: str | None = None,
) -> tuple[Row, dict[str, Phase]]:
    """Run the Node generator in `config["mode"]` against a fresh server; one row."""
    async with run_server(
        server_name,
        ctx.workdir,
        ctx.pinning,
        command=command,
        database_url=database_url,
        extra_env=ctx.server_env,
    ) as server:
        config = {**config, "url": server.ws_url}
        if server.api_url is not None:
            config["apiUrl"] = server.api_url
        result, phases = await _drive(ctx, server, node_argv(config), timeout)
        end = sample(server.pid)
    row: Row = {"params": {k: v for k, v in config.items() if k not in ("url", "apiUrl")}}
    row.update(result)
    row.update(_window(phases))
    row["server_rss_peak_kb"] = end.hwm_kb
    row["server_rss_kb"] = end.rss_kb
    if config["mode"] == "storm":
        _cost(row, config["clients"] * config.get("rounds", 1))  # per connection
    elif isinstance(row.get("delivered_per_s"), int | float) and row.get("window_s"):
        _cost(row, row["delivered_per_s"] * row["window_s"])  # per delivered event
    return row, phases


# --- fan-out and many channels -------------------------------------------------------------------


def fanout(subscribers: int, rate: int) -> Runner:
    """Fan-out to `subscribers` on one channel: `rate` events/s, or closed-loop when 0."""

    async def run(ctx: Context, server_name: str) -> Row:
        config = {
            "mode": "fanout",
            "subscribers": subscribers,
            "rate": rate,
            "window": 16,
            "maxLag": 500,
            "warmup": ctx.pick(1, 0.5),
            "duration": ctx.pick(8 if rate else 5, 3) if subscribers >= 1000 else ctx.pick(5, 2),
        }
        row, _ = await _node(ctx, server_name, config, timeout=90)
        return row

    return run


def channels(clients: int) -> Runner:
    """`clients` connections, each publishing closed-loop to its own channel."""

    async def run(ctx: Context, server_name: str) -> Row:
        config = {
            "mode": "channels",
            "clients": clients,
            "window": 1,
            "warmup": ctx.pick(1, 0.5),
            "duration": ctx.pick(5, 3),
        }
        row, _ = await _node(ctx, server_name, config, timeout=90)
        return row

    return run


# --- connections ---------------------------------------------------------------------------------


def idle(connections: int, quick_connections: int) -> Runner:
    """`connections` idle clients: server memory per connection from VmRSS before and after."""

    async def run(ctx: Context, server_name: str) -> Row:
        count = ctx.pick(connections, quick_connections)
        config = {"mode": "idle", "connections": count, "connectBatch": 250, "settle": 2}
        row, phases = await _node(ctx, server_name, config, timeout=180)
        before, opened = phases.get("before"), phases.get("open")
        if before is not None and opened is not None:
            open_count = int(opened.info.get("open") or 0)
            row["server_rss_before_kb"] = before.sample.rss_kb
            row["server_rss_open_kb"] = opened.sample.rss_kb
            if open_count:
                delta = opened.sample.rss_kb - before.sample.rss_kb
                row["rss_per_conn_kb"] = round(delta / open_count, 2)
            row["lost"] = count - open_count
        return row

    return run


def storm(clients: int) -> Runner:
    """`clients` connecting and subscribing at once: connections/s, time to subscribed."""

    async def run(ctx: Context, server_name: str) -> Row:
        config = {"mode": "storm", "clients": clients, "rounds": ctx.pick(3, 1)}
        row, _ = await _node(ctx, server_name, config, timeout=120)
        return row

    return run


# --- the database: REST → WebSocket, the bridge, metric.update ------------------------------------


@contextlib.asynccontextmanager
async def _scratch_postgres(admin_url: str) -> AsyncIterator[str]:
    """A database of our own on the PostgreSQL server of `admin_url`, dropped afterwards."""
    import asyncpg
    from sqlalchemy.engine import make_url

    url = make_url(admin_url.replace("+asyncpg", ""))
    name = f"cm_bench_{os.getpid()}_{secrets.token_hex(3)}"
    dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield url.set(drivername="postgresql+asyncpg", database=name).render_as_string(
                hide_password=False
            )
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def rest(postgres: bool) -> Runner:
    """POST /api/tasks on an idle service until its task.created arrives on `global`."""

    async def run(ctx: Context, server_name: str) -> Row:
        config = {
            "mode": "rest",
            "requests": ctx.pick(200, 40),
            "warmupRequests": 5,
            "gapMs": 20,
        }
        if not postgres:
            row, _ = await _node(ctx, server_name, config, timeout=120, command="serve")
            return row
        if ctx.postgres_url is None:
            return {"skipped": "no PostgreSQL: pass --postgres-url or set BENCH_POSTGRES_URL"}
        async with _scratch_postgres(ctx.postgres_url) as database_url:
            row, _ = await _node(
                ctx, server_name, config, timeout=120, command="serve", database_url=database_url
            )
        return row

    return run


def bridge(postgres: bool) -> Runner:
    """Rows inserted into `tasks` with raw SQL, from another process, until their events arrive."""

    async def run(ctx: Context, server_name: str) -> Row:
        if postgres and ctx.postgres_url is None:
            return {"skipped": "no PostgreSQL: pass --postgres-url or set BENCH_POSTGRES_URL"}
        config: dict[str, Any] = {"rows": ctx.pick(5000, 1000), "batch": 50, "wait": 15}
        async with contextlib.AsyncExitStack() as stack:
            database_url = None
            if postgres:
                assert ctx.postgres_url is not None
                database_url = await stack.enter_async_context(_scratch_postgres(ctx.postgres_url))
            server = await stack.enter_async_context(
                run_server(
                    server_name,
                    ctx.workdir,
                    ctx.pinning,
                    command="serve",
                    database_url=database_url,
                    extra_env=ctx.server_env,
                )
            )
            config.update(url=server.ws_url, database_url=server.database_url)
            import orjson

            argv = [sys.executable, "-m", "bench.bridge_load", orjson.dumps(config).decode()]
            result, phases = await _drive(ctx, server, argv, 120)
            end = sample(server.pid)
        row: Row = {"params": {"rows": config["rows"], "batch": config["batch"]}}
        row.update(result)
        row.update(_window(phases))
        row["server_rss_peak_kb"] = end.hwm_kb
        return row

    return run


async def metrics_cost(ctx: Context, server_name: str) -> Row:
    """`python -m bench.metrics_cost` (another engineer's tool), when it exists."""
    import asyncio

    import orjson

    if not (ROOT / "bench" / "metrics_cost.py").exists():
        return {"skipped": "bench/metrics_cost.py is not there yet"}
    if ctx.quick:
        return {"skipped": "not in --quick (it seeds a million rows)"}
    database_url = f"sqlite+aiosqlite:///{ctx.workdir / 'metrics-cost.db'}"
    argv = ctx.pinning.wrap(
        [sys.executable, "-m", "bench.metrics_cost", "--database-url", database_url],
        ctx.pinning.server,
    )
    process = await asyncio.create_subprocess_exec(
        *argv,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), 300)
    except TimeoutError:
        process.kill()
        await process.wait()
        return {"failed": "bench.metrics_cost did not finish within 300 s"}
    if process.returncode != 0:
        tail = stderr.decode(errors="replace")[-500:]
        return {"failed": f"bench.metrics_cost exited {process.returncode}: {tail}"}
    text = stdout.decode()
    try:
        figures = orjson.loads(text[text.index("{") :])  # one JSON object, maybe indented
    except (ValueError, orjson.JSONDecodeError):
        return {"failed": f"bench.metrics_cost printed no JSON object: {text[-300:]!r}"}
    return {"metrics_cost": figures, "params": {"database_url": "sqlite (temp)"}}


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "fanout-100-rate",
        "100 subscribers, one channel, 10 events/s",
        fanout(100, 10),
        score=lowest_p99,
    ),
    Scenario(
        "fanout-1000-rate",
        "1,000 subscribers, one channel, 10 events/s",
        fanout(1000, 10),
        rounds=2,
        score=lowest_p99,
    ),
    Scenario("fanout-100-max", "100 subscribers, closed-loop publisher", fanout(100, 0), rounds=3),
    Scenario(
        "fanout-1000-max", "1,000 subscribers, closed-loop publisher", fanout(1000, 0), rounds=3
    ),
    Scenario(
        "channels-1000",
        "1,000 clients, each publishing to its own channel",
        channels(1000),
        rounds=3,
    ),
    Scenario("idle-10000", "10,000 idle connections: memory per connection", idle(10000, 2000)),
    Scenario("storm-1000", "1,000 clients connecting and subscribing at once", storm(1000)),
    Scenario("rest-ws", "POST /api/tasks → task.created on global (SQLite)", rest(False), (OURS,)),
    Scenario(
        "rest-ws-postgres", "POST /api/tasks → task.created (PostgreSQL)", rest(True), (OURS,)
    ),
    Scenario("bridge", "raw SQL INSERT INTO tasks → task.created (SQLite)", bridge(False), (OURS,)),
    Scenario(
        "bridge-postgres",
        "raw SQL INSERT INTO tasks → task.created (PostgreSQL)",
        bridge(True),
        (OURS,),
    ),
    Scenario(
        "rest-write",
        "POST /api/tasks, 16 clients, vs a naive FastAPI service (SQLite; the full matrix: "
        "python -m bench.rest_write)",
        rest_write(False),
        rounds=2,
    ),
    Scenario(
        "rest-write-postgres",
        "POST /api/tasks, 16 clients, vs a naive FastAPI service (PostgreSQL)",
        rest_write(True),
        rounds=2,
    ),
    Scenario("metrics-cost", "metric.update with a million rows", metrics_cost, (OURS,)),
    Scenario(
        "connections-100k",
        "100,000 idle connections on one node: memory, open, broadcast, 10,000 channels",
        connections_100k,
        (OURS,),
        heavy=True,
    ),
    Scenario(
        "cluster",
        "2 and 4 ws nodes on 1 and 2 Redis shards: deliveries/s, p99, Redis CPU",
        cluster,
        (OURS,),
        heavy=True,
    ),
)
BY_NAME = {scenario.name: scenario for scenario in SCENARIOS}
