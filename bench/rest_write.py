"""REST writes against a naive FastAPI service: requests/s, latency, CPU per request, events.

    python -m bench.rest_write                          # SQLite, 16 and 64 clients, 5 operations
    python -m bench.rest_write --postgres-url postgresql://postgres@127.0.0.1:5432/test
    python -m bench.rest_write --ops create --concurrency 16 --seconds 10 --rounds 3
    python -m bench.rest_write --quick                  # 2 s windows
    python -m bench --scenario rest-write               # the suite's row: POST /api/tasks, 16

For each database (SQLite; PostgreSQL with --postgres-url) × concurrency × operation, and for
each server — `naive` (bench/rest_reference.py: FastAPI + SQLAlchemy ORM, no events) and
`ours` (`context-manager serve` as a user starts it, default log level, the bench limits of
bench/servers.py) — a fresh server on a fresh database (SQLite file, or a scratch PostgreSQL
database created and dropped), pinned to CPU 0; the load generator (bench/node/rest_write.mjs,
Node's http keep-alive agent: CONCURRENCY closed-loop clients, each one request in flight)
pinned to CPU 1. The servers alternate within each cell; with --rounds R each cell runs R
times per server and the best round (most requests/s) is kept, every round's figure stays in
the row.

Operations:
    create   POST /api/tasks {title, description, priority}
    patch    PATCH /api/tasks/{id}, SEED tasks pre-created, round robin; alternately the
             description (always a new one) and the priority (1, 2, 3, 4, 1, …): every PATCH
             changes the row
    message  POST /api/messages {from_agent: client, to_agent: one of 100, content}
    claim    POST /api/tasks/claim {agent_id: client}: CLAIM_SEED pending tasks pre-created;
             each client claims again and again, never completing (one request per claim); a
             204 (queue empty) ends the window early (`queue_exhausted`)
    complete claim → POST /api/tasks/{id}/complete {lease_id}: an agent's work loop, CLAIM_SEED
             tasks pre-created; each client completes what it claimed, then claims again (two
             requests per task, both counted)

Per row: requests/s in the window (2xx only; every other answer is an error and counted),
latency p50/p99/max, server CPU % of one core and CPU µs per request (/proc, over the window),
the generator's CPU (†: ≥ 90 %, the figure may be the generator's limit), other % (busy time
of the server's core that was not the server). For `ours` a WebSocket subscriber on `global`,
opened before the first write, checks every successful write's event — task.created,
task.updated, task.claimed, task.completed, message.new, by id, seeds included: emitted /
delivered / lost / duplicated. Lost or duplicated ≠ 0 makes the exit status 1.

JSON lines on stdout (appended to bench/results/<UTC date>.jsonl), the table on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench.loadgen import NODE_DIR, ensure_node, run_load
from bench.machine import describe
from bench.procfs import cpu_percent, machine_busy_percent, other_on_core_percent, sample
from bench.profile import Profiler, summarize
from bench.report import LOAD_BOUND_PCT, append
from bench.servers import (
    OURS,
    ROOT,
    Pinning,
    RunningServer,
    free_ports,
    raise_file_limit,
    run_server,
)
from bench.service import scratch_postgres

Row = dict[str, Any]
NAIVE = "naive"
FLOOR = "floor"  # the naive service's routes with the rows in memory: FastAPI's own cost
SERVERS = (NAIVE, OURS)
OPS = ("create", "patch", "message", "claim", "complete")
CONCURRENCY = (16, 64)
QUIET_PERCENT = 15.0


@dataclasses.dataclass(frozen=True)
class Settings:
    """What every cell of one run shares."""

    workdir: Path
    pinning: Pinning
    seconds: float
    warmup: float
    patch_seed: int
    claim_seed: int
    server_env: dict[str, str] = dataclasses.field(default_factory=dict)
    profile_dir: Path | None = None
    profile_native: bool = False
    quiet_wait: float = 2.0


# --- the servers -------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def naive_server(
    workdir: Path, pinning: Pinning, database_url: str, name: str = NAIVE
) -> AsyncIterator[RunningServer]:
    """bench/rest_reference.py on a free port, pinned to the server's CPU; stopped on exit.

    `database_url` "memory:" is the floor: the same routes with no database."""
    (port,) = free_ports(1)
    log_path = workdir / f"{name}-{port}.log"
    argv = [
        sys.executable,
        str(ROOT / "bench" / "rest_reference.py"),
        "--database-url",
        database_url,
        "--port",
        str(port),
    ]
    env = dict(os.environ)
    env.pop("PYTHONSTARTUP", None)
    with open(log_path, "wb") as log:
        process = await asyncio.create_subprocess_exec(
            *pinning.wrap(argv, pinning.server),
            cwd=workdir,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            preexec_fn=raise_file_limit,
        )
    api = f"http://127.0.0.1:{port}"
    server = RunningServer(name, process, "", api, database_url, log_path)
    try:
        deadline = time.monotonic() + 30
        async with httpx.AsyncClient(timeout=2) as http:
            while True:
                if process.returncode is not None:
                    raise RuntimeError(f"{name} server exited:\n{server.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(f"{api}/health")).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} server not ready:\n{server.log_tail()}")
                await asyncio.sleep(0.05)
        yield server
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 15)
            except TimeoutError:
                process.kill()
                await process.wait()


@contextlib.asynccontextmanager
async def database(workdir: Path, postgres_url: str | None, label: str) -> AsyncIterator[str]:
    """A fresh database: a SQLite file in `workdir`, or a scratch PostgreSQL database."""
    if postgres_url is None:
        yield f"sqlite+aiosqlite:///{workdir / f'{label}.db'}"
        return
    async with scratch_postgres(postgres_url) as url:
        yield url


@contextlib.asynccontextmanager
async def server_on(
    name: str, settings: Settings, database_url: str
) -> AsyncIterator[RunningServer]:
    if name in (NAIVE, FLOOR):
        url = "memory:" if name == FLOOR else database_url
        async with naive_server(settings.workdir, settings.pinning, url, name) as server:
            yield server
        return
    async with run_server(
        OURS,
        settings.workdir,
        settings.pinning,
        command="serve",
        database_url=database_url,
        extra_env=settings.server_env,
    ) as server:
        yield server


# --- one cell ----------------------------------------------------------------------------------


async def wait_quiet(limit: float) -> float | None:
    if limit <= 0:
        return None
    deadline = time.monotonic() + limit
    while True:
        busy = await asyncio.to_thread(machine_busy_percent, 0.5)
        if busy < QUIET_PERCENT or time.monotonic() >= deadline:
            return round(busy, 1)


async def measure(
    settings: Settings,
    name: str,
    postgres_url: str | None,
    op: str,
    concurrency: int,
    label: str,
) -> Row:
    """One fresh server on one fresh database, one operation at one concurrency: one row."""
    busy = await wait_quiet(settings.quiet_wait)
    started = time.monotonic()
    db_name = "postgresql" if postgres_url else "sqlite"
    row: Row = {"bench": "rest-write", "server": name, "database": db_name, "op": op}
    row["concurrency"] = concurrency
    try:
        async with (
            database(settings.workdir, postgres_url, label) as url,
            server_on(name, settings, url) as server,
        ):
            assert server.api_url is not None
            config = {
                "apiUrl": server.api_url,
                "wsUrl": server.ws_url if name == OURS else None,
                "op": op,
                "concurrency": concurrency,
                "warmup": settings.warmup,
                "duration": settings.seconds,
                "seed": settings.claim_seed if op in ("claim", "complete") else settings.patch_seed,
                "drain": 15,
            }
            argv = [ensure_node(), str(NODE_DIR / "rest_write.mjs"), orjson.dumps(config).decode()]
            result, window = await drive(settings, server, argv, label)
            end = sample(server.pid)
        row.update(result)
        row.update(window)
        row["server_rss_peak_kb"] = end.hwm_kb
        cpu, requests = row.get("server_cpu_s"), row.get("requests")
        if isinstance(cpu, int | float) and requests:
            row["server_cpu_us_per_req"] = round(cpu * 1e6 / requests, 1)
        events = row.get("events") or {}
        row["lost"] = events.get("lost")
        row["duplicated"] = events.get("duplicated")
    except Exception as exc:  # noqa: BLE001 - a failed cell is a row, not the end of the run
        row["failed"] = f"{type(exc).__name__}: {exc}"[:500]
    row["wall_s"] = round(time.monotonic() - started, 1)
    if busy is not None:
        row["machine_busy_before_pct"] = busy
    return row


async def drive(
    settings: Settings, server: RunningServer, argv: list[str], label: str
) -> tuple[Row, Row]:
    """The generator to its end (py-spy over its window if asked); its result and the window."""
    profiler: Profiler | None = None
    raw: Path | None = None
    if settings.profile_dir is not None:
        settings.profile_dir.mkdir(parents=True, exist_ok=True)
        raw = settings.profile_dir / f"{label}.txt"
        profiler = Profiler(server.pid, raw, settings.pinning, native=settings.profile_native)

    async def on_phase(phase: str) -> None:
        if profiler is not None and phase == "measure_start":
            await profiler.start()
        elif profiler is not None and phase == "measure_end":
            await profiler.stop()

    result, phases = await run_load(
        argv, server.pid, settings.pinning, 180, label, on_phase=on_phase
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
    window: Row = {}
    start, end = phases.get("measure_start"), phases.get("measure_end")
    if start is not None and end is not None:
        window = {
            "server_cpu_pct": cpu_percent(start.sample, end.sample),
            "server_cpu_s": round(end.sample.cpu_seconds - start.sample.cpu_seconds, 3),
            "sampled_window_s": round(end.sample.wall - start.sample.wall, 3),
            "other_on_server_core_pct": other_on_core_percent(start.sample, end.sample),
        }
    return row, window


def rps(row: Row) -> float:
    value = row.get("requests_per_s")
    return float(value) if isinstance(value, int | float) and "failed" not in row else -1.0


def best(rows: list[Row]) -> Row:
    chosen = dict(max(rows, key=rps))
    if len(rows) > 1:
        chosen["rounds"] = [row.get("requests_per_s") for row in rows]
    return chosen


def add_ratio(ours: Row, naive: Row) -> None:
    ratio: dict[str, float] = {}
    if rps(ours) > 0 and rps(naive) > 0:
        ratio["requests_per_s"] = round(rps(ours) / rps(naive), 2)
    a, b = ours.get("server_cpu_us_per_req"), naive.get("server_cpu_us_per_req")
    if isinstance(a, int | float) and isinstance(b, int | float) and b:
        ratio["cpu_per_req"] = round(a / b, 2)
    if ratio:
        ours["ratio"] = ratio


async def cell(
    settings: Settings,
    postgres_url: str | None,
    op: str,
    concurrency: int,
    servers: tuple[str, ...],
    rounds: int,
) -> list[Row]:
    """Both servers on one (database, op, concurrency), alternating for `rounds` rounds."""
    tried: dict[str, list[Row]] = {name: [] for name in servers}
    db_name = "pg" if postgres_url else "sqlite"
    for number in range(rounds):
        for name in servers:
            label = f"rest-write-{db_name}-{op}-{concurrency}-{name}-{number + 1}"
            print(f"## {label}", file=sys.stderr)
            row = await measure(settings, name, postgres_url, op, concurrency, label)
            print(f"   {summary_line(row)}", file=sys.stderr)
            tried[name].append(row)
    chosen = {name: best(rows) for name, rows in tried.items()}
    if OURS in chosen and NAIVE in chosen:
        add_ratio(chosen[OURS], chosen[NAIVE])
    return list(chosen.values())


# --- output ------------------------------------------------------------------------------------


def _num(value: Any, digits: int = 0) -> str:
    if not isinstance(value, int | float):
        return "–"
    return f"{value:,.{digits}f}"


def summary_line(row: Row) -> str:
    if "failed" in row:
        return f"FAILED {row['failed']}"
    latency = row.get("latency_ms") or {}
    events = row.get("events")
    ev = "" if not events else f" events {events['delivered']}/{events['emitted']}"
    return (
        f"{_num(row.get('requests_per_s'))} req/s p50 {_num(latency.get('p50'), 2)} "
        f"p99 {_num(latency.get('p99'), 2)} ms, {_num(row.get('server_cpu_us_per_req'))} µs/req, "
        f"load {_num(row.get('load_cpu_pct'))} %, errors {row.get('errors')}{ev}"
    )


def table(rows: list[Row]) -> str:
    lines = [
        "| db | op | conc | server | req/s | p50 ms | p99 ms | CPU % | CPU µs/req | load % "
        "| other % | events emitted/delivered/lost/dup | errors | ours/naive req/s | cpu/req |",
        "|" + "---|" * 15,
    ]
    for row in rows:
        head = f"| {row['database']} | {row['op']} | {row['concurrency']} | {row['server']} "
        if "failed" in row:
            lines.append(head + f"| FAILED: {row['failed'][:120]} |" + " |" * 10)
            continue
        latency = row.get("latency_ms") or {}
        load = row.get("load_cpu_pct")
        mark = " †" if isinstance(load, int | float) and load >= LOAD_BOUND_PCT else ""
        events = row.get("events")
        ev = (
            "–"
            if not events
            else "/".join(str(events[k]) for k in ("emitted", "delivered", "lost", "duplicated"))
        )
        ratio = row.get("ratio") or {}
        exhausted = " (queue ran out)" if row.get("queue_exhausted") else ""
        lines.append(
            head + f"| {_num(row.get('requests_per_s'))}{mark}{exhausted} "
            f"| {_num(latency.get('p50'), 2)} | {_num(latency.get('p99'), 2)} "
            f"| {_num(row.get('server_cpu_pct'))} | {_num(row.get('server_cpu_us_per_req'))} "
            f"| {_num(load)} | {_num(row.get('other_on_server_core_pct'))} | {ev} "
            f"| {row.get('errors', '–')} | {_num(ratio.get('requests_per_s'), 2)} "
            f"| {_num(ratio.get('cpu_per_req'), 2)} |"
        )
    lines.append(
        f"\n† the load generator used ≥ {LOAD_BOUND_PCT:.0f} % of its core. CPU µs/req = server "
        "CPU over the window / requests answered 2xx in it. events: ours only (naive emits "
        "none), seeds included."
    )
    return "\n".join(lines)


# --- the suite's scenario (bench/scenarios.py: rest-write, rest-write-postgres) ------------------


def scenario(postgres: bool) -> Any:
    """`python -m bench --scenario rest-write`: POST /api/tasks at 16 clients, one row/server.

    The suite's reference server (`reference`) stands for the naive REST service here.
    """

    async def run(ctx: Any, server_name: str) -> Row:
        if postgres and ctx.postgres_url is None:
            return {"skipped": "no PostgreSQL: pass --postgres-url or set BENCH_POSTGRES_URL"}
        settings = Settings(
            ctx.workdir,
            ctx.pinning,
            seconds=ctx.pick(5, 2),
            warmup=ctx.pick(1, 0.5),
            patch_seed=0,
            claim_seed=0,
            server_env=ctx.server_env,
            profile_dir=ctx.profile_dir,
            profile_native=ctx.profile_native,
            quiet_wait=0,
        )
        name = OURS if server_name == OURS else NAIVE
        row = await measure(
            settings, name, ctx.postgres_url if postgres else None, "create", 16, ctx.label or name
        )
        if "failed" in row:
            return {"failed": row["failed"]}
        # In the suite's vocabulary: one delivered unit = one request answered.
        row["delivered_per_s"] = row.get("requests_per_s")
        row["server_cpu_us_per_unit"] = row.get("server_cpu_us_per_req")
        row["server_rss_peak_kb"] = row.get("server_rss_peak_kb")
        row.setdefault("lost", 0)
        row.setdefault("duplicated", 0)
        row["out_of_order"] = 0
        for key in ("bench", "server"):
            row.pop(key, None)
        return row

    return run


# --- the command -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.rest_write",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--postgres-url",
        default=None,
        help="also run on PostgreSQL: a scratch database per cell on this server",
    )
    parser.add_argument("--no-sqlite", action="store_true", help="only PostgreSQL")
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCY))
    parser.add_argument("--ops", nargs="+", choices=OPS, default=list(OPS))
    parser.add_argument("--servers", nargs="+", choices=(FLOOR, *SERVERS), default=list(SERVERS))
    parser.add_argument("--seconds", type=float, default=None, help="window (default 5, quick 2)")
    parser.add_argument("--warmup", type=float, default=None, help="default 1, quick 0.5")
    parser.add_argument("--rounds", type=int, default=1, help="rounds per cell and server")
    parser.add_argument("--patch-seed", type=int, default=1000, help="tasks PATCHed round robin")
    parser.add_argument(
        "--claim-seed",
        type=int,
        default=None,
        help="pending tasks before the claims (default 2000, quick 1000)",
    )
    parser.add_argument("--quick", action="store_true", help="2 s windows")
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--profile", type=Path, metavar="DIR", help="py-spy over each window")
    parser.add_argument("--native", action="store_true", help="with --profile: C frames too")
    parser.add_argument("--quiet-wait", type=float, default=2.0)
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    return parser


async def main(args: argparse.Namespace) -> int:
    pinning = Pinning.detect(not args.no_pin)
    if pinning.load:
        os.sched_setaffinity(0, {int(pinning.load)})
    machine = describe(ROOT)
    stamp = datetime.now(UTC)
    print(
        f"# rest-write {stamp:%Y-%m-%d %H:%M} UTC · {machine['nproc']} CPUs · {machine['cpu']} · "
        f"Python {machine['python']} · node {machine['node']} · commit {machine['commit']} · "
        f"{pinning.describe()}{' · quick' if args.quick else ''}",
        file=sys.stderr,
    )
    databases: list[str | None] = [] if args.no_sqlite else [None]
    if args.postgres_url:
        databases.append(args.postgres_url)
    rows: list[Row] = []
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="cm-rest-write-") as tmp:
        settings = Settings(
            Path(tmp),
            pinning,
            seconds=args.seconds or (2.0 if args.quick else 5.0),
            warmup=args.warmup if args.warmup is not None else (0.5 if args.quick else 1.0),
            patch_seed=args.patch_seed,
            claim_seed=args.claim_seed or (1000 if args.quick else 2000),
            server_env=dict(item.split("=", 1) for item in args.env),
            profile_dir=args.profile,
            profile_native=args.native,
            quiet_wait=args.quiet_wait,
        )
        results = args.results / f"{stamp:%Y-%m-%d}.jsonl"
        for postgres_url in databases:
            for concurrency in args.concurrency:
                for op in args.ops:
                    servers = tuple(s for s in (FLOOR, *SERVERS) if s in args.servers)
                    for row in await cell(
                        settings, postgres_url, op, concurrency, servers, args.rounds
                    ):
                        row.update(
                            run=stamp.isoformat(timespec="seconds"),
                            quick=args.quick,
                            pinned=bool(pinning.server),
                            machine=machine,
                        )
                        print(orjson.dumps(row).decode(), flush=True)
                        append(results, row)
                        rows.append(row)
    print(f"\n{table(rows)}\n", file=sys.stderr)
    bad = [r for r in rows if r.get("lost") or r.get("duplicated") or "failed" in r]
    for row in bad:
        what = row.get("failed") or row.get("events")
        print(
            f"NOT ZERO / FAILED: {row['database']} {row['op']} {row['concurrency']} "
            f"{row['server']}: {what}",
            file=sys.stderr,
        )
    print(
        f"{len(rows)} rows in {time.monotonic() - began:.0f} s, appended to {results}",
        file=sys.stderr,
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(build_parser().parse_args())))
