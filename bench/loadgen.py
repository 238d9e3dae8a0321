"""Run a load generator process and sample the server around its measurement window.

A load generator (bench/node/load.mjs, or bench/bridge_load.py) prints JSON lines: `phase`
lines are barriers — we read the server's /proc at that instant, then answer on its stdin so
it goes on — and the last line is `{"result": {...}}`. The generator runs on the load CPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bench.procfs import Sample, sample
from bench.servers import ROOT, Pinning, raise_file_limit

NODE_DIR = Path(__file__).resolve().parent / "node"


@dataclass(frozen=True, slots=True)
class Phase:
    """A barrier the generator reached: the server's /proc at that instant, and what it said."""

    sample: Sample
    info: dict[str, Any]


class LoadError(RuntimeError):
    """The load generator failed or said nothing useful."""


def ensure_node() -> str:
    """The node binary, with bench/node's `ws` dependency installed (npm ci on first use)."""
    node = shutil.which("node")
    if node is None:
        raise LoadError("node not found: the load generator needs Node.js 18 or later")
    if not (NODE_DIR / "node_modules" / "ws" / "package.json").exists():
        npm = shutil.which("npm")
        if npm is None:
            raise LoadError("npm not found: cannot install the `ws` package into bench/node")
        print("installing the load generator's dependency (npm ci in bench/node)", file=sys.stderr)
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=NODE_DIR, check=True
        )
    return node


async def run_load(
    argv: Sequence[str],
    server_pid: int,
    pinning: Pinning,
    timeout: float,
    label: str,
    on_phase: Callable[[str], Awaitable[None]] | None = None,
) -> tuple[dict[str, Any], dict[str, Phase]]:
    """Run one generator to its end; return its result and the server samples at each phase.

    `on_phase(name)` runs at each barrier, after the sample and before the generator goes on
    (the profiler starts and stops there).
    """
    process = await asyncio.create_subprocess_exec(
        *pinning.wrap(argv, pinning.load),
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=raise_file_limit,
        limit=16 * 1024 * 1024,
    )
    assert process.stdin is not None and process.stdout is not None
    phases: dict[str, Phase] = {}
    result: dict[str, Any] | None = None
    stderr_task = asyncio.create_task(_read_stderr(process))

    async def converse() -> None:
        nonlocal result
        assert process.stdin is not None and process.stdout is not None
        while line := await process.stdout.readline():
            try:
                message = orjson.loads(line)
            except orjson.JSONDecodeError:
                print(f"  [{label}] {line.decode(errors='replace').rstrip()}", file=sys.stderr)
                continue
            if "phase" in message:
                core = int(pinning.server) if pinning.server else None
                phases[message["phase"]] = Phase(sample(server_pid, core), message)
                if on_phase is not None:
                    await on_phase(message["phase"])
                process.stdin.write(b"go\n")
                await process.stdin.drain()
            elif "log" in message:
                print(f"  [{label}] {message['log']}", file=sys.stderr)
            elif "result" in message:
                result = message["result"]

    try:
        await asyncio.wait_for(converse(), timeout)
        await asyncio.wait_for(process.wait(), 10)
    except TimeoutError:
        raise LoadError(f"load generator did not finish within {timeout:.0f} s") from None
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
        stderr = await stderr_task
    if result is None:
        raise LoadError(f"load generator gave no result (exit {process.returncode}): {stderr}")
    return result, phases


async def _read_stderr(process: asyncio.subprocess.Process) -> str:
    assert process.stderr is not None
    data = await process.stderr.read()
    return data.decode(errors="replace")[-2000:]


def node_argv(config: dict[str, Any]) -> list[str]:
    """The command line of the Node load generator for one scenario's config."""
    return [ensure_node(), str(NODE_DIR / "load.mjs"), orjson.dumps(config).decode()]
