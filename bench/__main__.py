"""`python -m bench`: run the suite against the service and the references, print the table.

The references are a bare-`websockets` server (`reference`) and a Node.js `ws` one (`node-ws`),
both speaking the service's JSON protocol; every row of ours carries its ratio to each.

    python -m bench                       # every scenario, a few minutes
    python -m bench --quick               # shorter windows, fewer connections: about a minute
    python -m bench --scenario fanout-1000-max --scenario idle-10000
    python -m bench --scenario channels-1000 --server context-manager --server node-ws
    python -m bench --list

Each row is printed as one JSON line and appended to bench/results/<UTC date>.jsonl.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.machine import describe
from bench.procfs import machine_busy_percent
from bench.report import (
    add_ratios,
    append,
    correctness_problems,
    json_line,
    table,
    targets_report,
)
from bench.scenarios import BY_NAME, SCENARIOS, Context, Row, Scenario
from bench.servers import ROOT, SERVERS, Pinning


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark context-manager against a bare-websockets and a Node.js ws "
        "reference server.",
    )
    parser.add_argument("--quick", action="store_true", help="about a minute: shorter windows")
    parser.add_argument(
        "--scenario",
        action="append",
        choices=sorted(BY_NAME),
        metavar="NAME",
        help="run only this scenario (repeatable; see --list)",
    )
    parser.add_argument(
        "--server",
        action="append",
        choices=SERVERS,
        help="run only against this server (repeatable; default all three)",
    )
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument("--no-pin", action="store_true", help="do not pin server and load to CPUs")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("BENCH_POSTGRES_URL") or os.environ.get("TEST_POSTGRES_URL"),
        help="PostgreSQL server for the *-postgres scenarios; a scratch database is created "
        "and dropped on it (default: $BENCH_POSTGRES_URL, else $TEST_POSTGRES_URL)",
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the service (e.g. LOG_LEVEL=warning); repeatable",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="record the Python servers with py-spy over each window (not node-ws); stacks "
        "and summaries go to DIR",
    )
    parser.add_argument(
        "--native",
        action="store_true",
        help="with --profile: include C frames (uvloop, orjson, libc) in the stacks",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=None,
        metavar="SECONDS",
        help="before each run, wait up to this long for the machine to be idle "
        "(default 2, 0.5 with --quick; 0 = never wait)",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=ROOT / "bench" / "results",
        help="directory of the JSON-lines results (default bench/results)",
    )
    return parser


# The machine counts as idle when less than this share of all CPUs is busy.
QUIET_PERCENT = 15.0


async def wait_quiet(limit: float) -> float:
    """Wait up to `limit` seconds for the machine to go idle; return how busy it was last."""
    deadline = time.monotonic() + limit
    while True:
        busy = await asyncio.to_thread(machine_busy_percent, 0.5)
        if busy < QUIET_PERCENT or time.monotonic() >= deadline:
            return round(busy, 1)


async def run_scenario(scenario: Scenario, ctx: Context, server: str, quiet: float) -> Row:
    """One scenario on one server; failures become a row, never end the suite."""
    busy_before = await wait_quiet(quiet) if quiet > 0 else None
    started = time.monotonic()
    try:
        row = await scenario.run(ctx, server)
    except Exception as exc:  # noqa: BLE001 - reported in the row and the table
        row = {"failed": f"{type(exc).__name__}: {exc}"[:500]}
    row = {"scenario": scenario.name, "server": server, **row}
    row["wall_s"] = round(time.monotonic() - started, 1)
    if busy_before is not None:
        row["machine_busy_before_pct"] = busy_before
    return row


async def run_rounds(
    scenario: Scenario, ctx: Context, servers: tuple[str, ...], quiet: float
) -> list[Row]:
    """Alternate the servers for the scenario's rounds; keep each server's best round.

    The machine is shared and noisy: interference only ever makes a round worse, so the best
    of alternating rounds is the fairest single figure. Every round's score stays in the row.
    """
    targets = [server for server in scenario.servers if server in servers]
    rounds = 1 if ctx.quick else scenario.rounds
    tried: dict[str, list[Row]] = {server: [] for server in targets}
    for number in range(rounds):
        for server in targets:
            suffix = f" (round {number + 1}/{rounds})" if rounds > 1 else ""
            print(f"## {scenario.name} on {server}{suffix}: {scenario.summary}", file=sys.stderr)
            label = f"{scenario.name}-{server}" + (f"-{number + 1}" if rounds > 1 else "")
            run_ctx = dataclasses.replace(ctx, label=label)
            tried[server].append(await run_scenario(scenario, run_ctx, server, quiet))
    best: dict[str, Row] = {}
    for server, rows in tried.items():
        good = [row for row in rows if "failed" not in row and "skipped" not in row]
        chosen = max(good, key=scenario.score) if good else rows[-1]
        if len(rows) > 1:
            chosen["rounds"] = [
                round(scenario.score(row), 3) if row in good else None for row in rows
            ]
        best[server] = chosen
    add_ratios(best)
    return list(best.values())


async def main(args: argparse.Namespace) -> int:
    if args.list:
        for scenario in SCENARIOS:
            names = ", ".join(scenario.servers)
            heavy = "  (heavy: only with --scenario)" if scenario.heavy else ""
            print(f"{scenario.name:18} {scenario.summary}  [{names}]{heavy}")
        return 0
    chosen = (
        [BY_NAME[name] for name in args.scenario]
        if args.scenario
        else [scenario for scenario in SCENARIOS if not scenario.heavy]
    )
    servers = tuple(args.server or SERVERS)
    env = dict(item.split("=", 1) for item in args.env)
    pinning = Pinning.detect(not args.no_pin)
    quiet = args.quiet_wait if args.quiet_wait is not None else (0.5 if args.quick else 2.0)
    if pinning.load:
        # The orchestrator mostly waits, but when it wakes it must not take the server's core.
        os.sched_setaffinity(0, {int(pinning.load)})
    machine = describe(ROOT)
    stamp = datetime.now(UTC)
    results = args.results / f"{stamp:%Y-%m-%d}.jsonl"
    print(
        f"# {stamp:%Y-%m-%d %H:%M} UTC · {machine['nproc']} CPUs · {machine['cpu']} · "
        f"Python {machine['python']} · node {machine['node']} · commit {machine['commit']} · "
        f"{pinning.describe()}{' · quick' if args.quick else ''}",
        file=sys.stderr,
    )
    rows: list[Row] = []
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="cm-bench-") as tmp:
        ctx = Context(
            Path(tmp),
            pinning,
            args.quick,
            env,
            args.postgres_url,
            args.profile,
            args.native,
        )
        for scenario in chosen:
            for row in await run_rounds(scenario, ctx, servers, quiet):
                row.update(
                    run=stamp.isoformat(timespec="seconds"),
                    quick=args.quick,
                    pinned=bool(pinning.server),
                    machine=machine,
                )
                print(json_line(row), flush=True)
                append(results, row)
                rows.append(row)
    elapsed = time.monotonic() - began
    print(f"\n{table(rows)}\n", file=sys.stderr)
    print(f"{targets_report(rows)}\n", file=sys.stderr)
    problems = correctness_problems(rows)
    for problem in problems:
        print(f"NOT ZERO: {problem}", file=sys.stderr)
    print(f"{len(rows)} rows in {elapsed:.0f} s, appended to {results}", file=sys.stderr)
    failed = [row for row in rows if "failed" in row]
    return 1 if failed or problems else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(build_parser().parse_args())))
