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
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from bench.bridge_load import percentiles
from bench.service import running_service

ROOT = Path(__file__).resolve().parents[1]


def emit(row: dict[str, Any]) -> None:
    print(json.dumps(row), flush=True)


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
    from tests.webhook_receiver import Receiver

    env = {"WEBHOOK_ALLOW_PRIVATE": "true"}
    async with running_service(args.postgres_url, env) as (api, database_url):
        async with Receiver() as receiver, httpx.AsyncClient(base_url=api, timeout=10) as http:
            await latency(http, receiver, args.latency_samples, database_url)
            await throughput(http, receiver, args.events, args.endpoints, database_url)


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
