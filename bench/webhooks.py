"""Webhook figures: event → delivery latency on an idle service, and deliveries per second.

    python -m bench.webhooks                      # SQLite, about 30 s
    python -m bench.webhooks --postgres-url postgresql://postgres@127.0.0.1:5432/test
    python -m bench.webhooks --events 2000 --endpoints 4 --latency-samples 200

The service runs as its own process (`context-manager serve`), the receiver in this one
(tests/webhook_receiver.py: a real HTTP server on loopback answering 200). Two phases:

- latency: one task at a time over REST, idle in between (50 ms); for each, the time from
  sending the POST (and from its 201) to the webhook's arrival at the receiver. The first
  attempt of each delivery is what is measured (the receiver never fails).
- throughput: N tasks inserted by an outside writer in one transaction; the time from that
  commit until the receiver has every delivery, with 1 endpoint (deliveries to one endpoint
  go one at a time, in order) and with several (in parallel).

Prints one JSON line per phase; nothing is left running.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from bench.bridge_load import percentiles

ROOT = Path(__file__).resolve().parents[1]


def emit(row: dict[str, Any]) -> None:
    print(json.dumps(row), flush=True)


async def wait_ready(url: str, process: asyncio.subprocess.Process, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=2) as http:
        while time.monotonic() < deadline:
            if process.returncode is not None:
                raise SystemExit(f"the service exited with {process.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(f"{url}/readyz")).status_code == 200:
                    return
            await asyncio.sleep(0.1)
    raise SystemExit("the service did not become ready")


async def raw_insert(database_url: str, titles: list[str]) -> None:
    """One transaction of task rows, written the way any outside writer would."""
    values = [(f"bench-{title}", title) for title in titles]
    if database_url.startswith("sqlite"):
        path = database_url.split("///", 1)[1]

        def write() -> None:
            with sqlite3.connect(path, timeout=30) as connection:
                connection.executemany("INSERT INTO tasks (id, title) VALUES (?, ?)", values)

        await asyncio.to_thread(write)
        return
    connection = await asyncpg.connect(database_url.replace("+asyncpg", ""))
    try:
        async with connection.transaction():
            await connection.executemany("INSERT INTO tasks (id, title) VALUES ($1, $2)", values)
    finally:
        await connection.close()


async def run(args: argparse.Namespace) -> None:
    from tests.conftest import free_port
    from tests.webhook_receiver import Receiver

    scratch = tempfile.TemporaryDirectory(prefix="cm-bench-webhooks-")
    database = None
    if args.postgres_url:
        database = f"cm_bench_{secrets.token_hex(4)}"
        admin = await asyncpg.connect(args.postgres_url)
        await admin.execute(f'CREATE DATABASE "{database}"')
        await admin.close()
        base = args.postgres_url.rsplit("/", 1)[0]
        database_url = f"{base.replace('postgresql://', 'postgresql+asyncpg://')}/{database}"
    else:
        database_url = f"sqlite+aiosqlite:///{Path(scratch.name) / 'bench.db'}"
    api_port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("WEBHOOK_", "DATABASE_"))},
        "DATABASE_URL": database_url,
        "MIGRATE_ON_START": "true",
        "HOST": "127.0.0.1",
        "API_PORT": str(api_port),
        "WS_PORT": str(free_port()),
        "DASHBOARD_PORT": str(free_port()),
        "LOG_LEVEL": "warning",
        "WEBHOOK_ALLOW_PRIVATE": "true",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app.cli",
        "serve",
        cwd=scratch.name,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
    )
    api = f"http://127.0.0.1:{api_port}"
    try:
        await wait_ready(api, process)
        async with Receiver() as receiver, httpx.AsyncClient(base_url=api, timeout=10) as http:
            await latency(http, receiver, args.latency_samples, database_url)
            await throughput(http, receiver, args.events, args.endpoints, database_url)
    finally:
        process.terminate()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), 20)
        if process.returncode is None:
            process.kill()
            await process.wait()
        if database is not None:
            admin = await asyncpg.connect(args.postgres_url)
            await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            await admin.close()
        scratch.cleanup()


async def register(http: httpx.AsyncClient, url: str) -> str:
    response = await http.post("/api/webhooks", json={"url": url, "events": ["task.created"]})
    response.raise_for_status()
    return str(response.json()["id"])


async def latency(http: httpx.AsyncClient, receiver: Any, samples: int, database_url: str) -> None:
    hook = await register(http, receiver.url + "?latency")
    from_request, from_answer = [], []
    for i in range(samples):
        title = f"lat-{i}"
        seen = len(receiver.requests)
        sent = time.monotonic()
        response = await http.post("/api/tasks", json={"title": title})
        answered = time.monotonic()
        response.raise_for_status()
        arrived = await receiver.wait_for(lambda rs, seen=seen: len(rs) > seen, 10)
        at = next(r.at for r in arrived[seen:] if r.json["data"]["title"] == title)
        from_request.append((at - sent) * 1000)
        from_answer.append((at - answered) * 1000)
        await asyncio.sleep(0.05)  # idle between events
    await http.delete(f"/api/webhooks/{hook}")
    emit(
        {
            "phase": "latency",
            "database": database_url.split(":", 1)[0],
            "samples": samples,
            "from_post_ms": percentiles(from_request),
            "from_201_ms": percentiles(from_answer),
        }
    )


async def throughput(
    http: httpx.AsyncClient, receiver: Any, events: int, endpoints: int, database_url: str
) -> None:
    for count in sorted({1, endpoints}):
        hooks = [await register(http, f"{receiver.url}?n={count}&e={e}") for e in range(count)]
        receiver.requests.clear()
        titles = [f"tp{count}-{i:06d}" for i in range(events)]
        started = time.monotonic()
        await raw_insert(database_url, titles)
        committed = time.monotonic()
        total = events * count
        await receiver.wait_for(lambda rs, total=total: len(rs) >= total, 600)
        done = max(r.at for r in receiver.requests)
        per_path: dict[str, list[str]] = {}
        for request in receiver.requests:
            per_path.setdefault(request.path, []).append(request.json["data"]["title"])
        in_order = all(got == titles for got in per_path.values())
        for hook in hooks:
            await http.delete(f"/api/webhooks/{hook}")
        emit(
            {
                "phase": "throughput",
                "database": database_url.split(":", 1)[0],
                "endpoints": count,
                "deliveries": len(receiver.requests),
                "insert_s": round(committed - started, 3),
                "seconds": round(done - committed, 3),
                "deliveries_per_s": round(len(receiver.requests) / max(done - committed, 1e-9)),
                "in_order_per_endpoint": in_order,
            }
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.webhooks", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--events", type=int, default=2000, help="events of the throughput phase")
    parser.add_argument("--endpoints", type=int, default=4, help="endpoints of its second run")
    parser.add_argument("--latency-samples", type=int, default=200)
    parser.add_argument("--postgres-url", default=None, help="run on a scratch PostgreSQL database")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
