"""Figures of the agent-work API: claims, the inbox's wake-up, and the price of idempotency.

    python -m bench.agent_work                 # SQLite, about a minute
    python -m bench.agent_work --postgres-url postgresql://postgres@127.0.0.1:5432/test
    python -m bench.agent_work --tasks 2000 --workers 20 --wake-samples 300

Three phases against `context-manager serve` in a process of its own (bench/service.py):

- claims: WORKERS workers drain TASKS ready tasks, each a closed loop of claim → complete over
  REST; claims per second, and the claim → complete time of each task (p50 / p99).
- wake: an agent waits on its inbox (`wait=10`); another posts it a message; the time from the
  POST's answer to the waiting GET's answer, one at a time with the service idle in between.
- idempotency: POST /api/tasks one at a time with and without an `Idempotency-Key`: the
  extra milliseconds a key costs (it stores the answer before sending it).

Prints one JSON line per phase.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from typing import Any

import httpx

from bench.bridge_load import percentiles
from bench.service import running_service


def emit(row: dict[str, Any]) -> None:
    print(json.dumps(row), flush=True)


async def claims(api: str, database: str, tasks: int, workers: int) -> None:
    async with httpx.AsyncClient(base_url=api, timeout=30) as http:
        for start in range(0, tasks, 200):
            await asyncio.gather(
                *(
                    http.post("/api/tasks", json={"title": f"t{i}", "priority": i % 5})
                    for i in range(start, min(tasks, start + 200))
                )
            )
    durations: list[float] = []
    done = 0

    async def worker(n: int) -> None:
        nonlocal done
        async with httpx.AsyncClient(base_url=api, timeout=30) as http:
            while True:
                asked = time.monotonic()
                claimed = await http.post("/api/tasks/claim", json={"agent_id": f"w{n}"})
                if claimed.status_code == 204:
                    return
                claimed.raise_for_status()
                body = claimed.json()
                completed = await http.post(
                    f"/api/tasks/{body['task']['id']}/complete",
                    json={"lease_id": body["lease"]["id"]},
                )
                completed.raise_for_status()
                durations.append((time.monotonic() - asked) * 1000)
                done += 1

    started = time.monotonic()
    await asyncio.gather(*(worker(n) for n in range(workers)))
    elapsed = time.monotonic() - started
    emit(
        {
            "phase": "claims",
            "database": database,
            "tasks": done,
            "workers": workers,
            "claims_per_s": round(done / elapsed, 1),
            "claim_to_complete_ms": percentiles(durations),
        }
    )


async def wake(api: str, database: str, samples: int) -> None:
    latencies: list[float] = []
    async with (
        httpx.AsyncClient(base_url=api, timeout=30) as reader,
        httpx.AsyncClient(base_url=api, timeout=30) as writer,
    ):
        cursor = 0
        for i in range(samples):
            waiting = asyncio.create_task(
                reader.get("/api/agents/waiter/inbox", params={"after": cursor, "wait": 10})
            )
            await asyncio.sleep(0.05)  # the GET is waiting, the service idle
            sent = await writer.post(
                "/api/messages", json={"from_agent": "b", "to_agent": "waiter", "content": str(i)}
            )
            sent.raise_for_status()
            answered = time.monotonic()
            page = (await waiting).json()
            latencies.append((time.monotonic() - answered) * 1000)
            cursor = page["cursor"]
    emit(
        {
            "phase": "wake",
            "database": database,
            "message_post_to_waiting_get_ms": percentiles(latencies),
        }
    )


async def idempotency(api: str, database: str, requests: int) -> None:
    async def timed(keyed: bool) -> list[float]:
        out = []
        async with httpx.AsyncClient(base_url=api, timeout=30) as http:
            for i in range(requests):
                headers = {"Idempotency-Key": uuid.uuid4().hex} if keyed else {}
                started = time.monotonic()
                response = await http.post("/api/tasks", json={"title": f"i{i}"}, headers=headers)
                out.append((time.monotonic() - started) * 1000)
                response.raise_for_status()
        return out

    plain, keyed = [], []
    for _ in range(3):  # interleaved rounds: the machine's drift hits both alike
        plain += await timed(False)
        keyed += await timed(True)
    emit(
        {
            "phase": "idempotency",
            "database": database,
            "post_ms": percentiles(plain),
            "post_with_key_ms": percentiles(keyed),
            "extra_ms_median": round(statistics.median(keyed) - statistics.median(plain), 3),
        }
    )


async def run(args: argparse.Namespace) -> None:
    async with running_service(args.postgres_url) as (api, database_url):
        database = database_url.split(":", 1)[0]
        await claims(api, database, args.tasks, args.workers)
        await wake(api, database, args.wake_samples)
        await idempotency(api, database, args.idempotency_requests)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.agent_work", description=__doc__)
    parser.add_argument("--postgres-url", help="run on a scratch database of this server")
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=20)
    parser.add_argument("--wake-samples", type=int, default=200)
    parser.add_argument("--idempotency-requests", type=int, default=100)
    asyncio.run(run(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
