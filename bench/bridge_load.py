"""Load generator of the bridge scenario: raw SQL inserts into `tasks` until their events arrive.

    python -m bench.bridge_load '{"url": "ws://…", "database_url": "sqlite+aiosqlite:///…",
                                  "rows": 5000, "batch": 50, "wait": 15}'

It writes from its own process and its own database connection, as any other writer would (a
script, psql), so only the service's bridge can turn the rows into events. Each row's id and
title carry this run's name and a sequence number; latency is measured from the commit of the
row's batch to the arrival of its task.created on `global`. It speaks the orchestrator's
line protocol (bench/loadgen.py): phase barriers, then one `result` line.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sqlite3
import sys
import time
from datetime import UTC, datetime
from typing import Any

import orjson
import websockets

NOT_AVAILABLE = "bridge not available"


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def phase(name: str) -> None:
    """A barrier: the orchestrator samples the server, then answers on stdin."""
    emit({"phase": name})
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


def percentiles(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"p50": None, "p99": None, "max": None, "n": 0}
    ordered = sorted(values)
    n = len(ordered)

    def at(q: float) -> float:
        return round(ordered[min(n - 1, int(q * n))], 3)

    return {"p50": at(0.5), "p99": at(0.99), "max": round(ordered[-1], 3), "n": n}


# --- writing rows the way an outside writer would -------------------------------------------------


class Writer:
    """Inserts task rows with raw SQL, filling whatever NOT NULL columns the schema has."""

    def __init__(self, database_url: str) -> None:
        self.url = database_url
        self.columns: list[tuple[str, str, bool, bool]] = []  # name, type, required, has default
        self._sqlite: sqlite3.Connection | None = None
        self._pg: Any = None

    async def open(self) -> bool:
        """Connect and read the columns of `tasks`; False when there is no such table."""
        if self.url.startswith("sqlite"):
            path = self.url.split("///", 1)[1]
            self._sqlite = sqlite3.connect(path, timeout=10, isolation_level=None)
            self._sqlite.execute("PRAGMA busy_timeout=10000")
            info = self._sqlite.execute("PRAGMA table_info(tasks)").fetchall()
            self.columns = [
                (r[1], (r[2] or "").lower(), bool(r[3]), r[4] is not None) for r in info
            ]
        else:
            import asyncpg

            dsn = self.url.replace("postgresql+asyncpg://", "postgresql://")
            self._pg = await asyncpg.connect(dsn)
            info = await self._pg.fetch(
                "SELECT column_name, data_type, is_nullable, column_default "
                "FROM information_schema.columns WHERE table_name = 'tasks' "
                "AND table_schema = current_schema() ORDER BY ordinal_position"
            )
            self.columns = [(r[0], r[1].lower(), r[2] == "NO", r[3] is not None) for r in info]
        return bool(self.columns)

    def _value(self, name: str, kind: str, row_id: str, title: str) -> Any:
        if name == "id":
            return row_id
        if name == "title":
            return title
        if name == "status":
            return "pending"
        if "json" in kind or name in ("payload", "metadata", "result"):
            return "{}"
        if "time" in kind or "date" in kind or name.endswith("_at"):
            now = datetime.now(UTC)
            return now if self._pg is not None else now.isoformat(sep=" ")
        if "int" in kind or "numeric" in kind:
            return 0
        if "bool" in kind:
            return False
        return ""

    def _row(self, row_id: str, title: str) -> tuple[list[str], list[Any]]:
        names, values = [], []
        for name, kind, required, has_default in self.columns:
            if name in ("id", "title", "status") or (required and not has_default):
                names.append(name)
                values.append(self._value(name, kind, row_id, title))
        return names, values

    async def insert(self, rows: list[tuple[str, str]]) -> None:
        """Insert rows (id, title) in one transaction."""
        names, _ = self._row("x", "x")
        columns = ", ".join(f'"{n}"' for n in names)
        if self._sqlite is not None:
            marks = ", ".join("?" for _ in names)
            sql = f"INSERT INTO tasks ({columns}) VALUES ({marks})"
            self._sqlite.execute("BEGIN IMMEDIATE")
            self._sqlite.executemany(sql, [self._row(i, t)[1] for i, t in rows])
            self._sqlite.execute("COMMIT")
        else:
            marks = ", ".join(f"${k + 1}" for k in range(len(names)))
            sql = f"INSERT INTO tasks ({columns}) VALUES ({marks})"
            await self._pg.executemany(sql, [self._row(i, t)[1] for i, t in rows])

    async def close(self) -> None:
        if self._sqlite is not None:
            self._sqlite.close()
        if self._pg is not None:
            await self._pg.close()


# --- the scenario ---------------------------------------------------------------------------------


async def main(cfg: dict[str, Any]) -> dict[str, Any]:
    run = secrets.token_hex(4)
    arrivals: dict[str, list[float]] = {}

    async with websockets.connect(cfg["url"], compression=None, max_queue=None) as ws:
        await ws.recv()  # connected
        await ws.send(orjson.dumps({"type": "subscribe", "channel": "global", "id": "g"}).decode())

        async def receive() -> None:
            async for raw in ws:
                now = time.perf_counter()
                msg = orjson.loads(raw)
                if msg.get("event") != "task.created" or not isinstance(msg.get("data"), dict):
                    continue
                data = msg["data"]
                key = data.get("task_id") or data.get("id")
                if isinstance(key, str) and key.startswith(f"bench-{run}-"):
                    arrivals.setdefault(key, []).append(now)

        receiver = asyncio.create_task(receive())
        writer = Writer(cfg["database_url"])
        try:
            if not await writer.open():
                return {"skipped": f"{NOT_AVAILABLE} (no tasks table)"}
            # Probe: one row, and its event within five seconds, or the bridge is not there.
            probe = f"bench-{run}-probe"
            try:
                await writer.insert([(probe, f"bench bridge {run} probe")])
            except Exception as exc:  # noqa: BLE001 - any schema surprise means: cannot run it
                return {"skipped": f"{NOT_AVAILABLE} (insert failed: {exc})"[:300]}
            deadline = time.perf_counter() + 5
            while probe not in arrivals and time.perf_counter() < deadline:
                await asyncio.sleep(0.01)
            if probe not in arrivals:
                return {"skipped": f"{NOT_AVAILABLE} (no task.created within 5 s of an INSERT)"}

            total, batch = int(cfg["rows"]), int(cfg["batch"])
            committed: dict[str, float] = {}
            await phase("measure_start")
            start = time.perf_counter()
            for first in range(0, total, batch):
                rows = [
                    (f"bench-{run}-{k}", f"bench bridge {run} {k}")
                    for k in range(first, min(total, first + batch))
                ]
                await writer.insert(rows)
                now = time.perf_counter()
                for row_id, _ in rows:
                    committed[row_id] = now
                await asyncio.sleep(0)  # let the receiver run between batches
            written = time.perf_counter()
            deadline = written + float(cfg["wait"])
            while time.perf_counter() < deadline and not all(k in arrivals for k in committed):
                await asyncio.sleep(0.02)
            await phase("measure_end")
        finally:
            receiver.cancel()
            await writer.close()

    got = [k for k in committed if k in arrivals]
    last = max((arrivals[k][0] for k in got), default=written)
    latencies = [(arrivals[k][0] - committed[k]) * 1000 for k in got]
    order = [
        int(k.rsplit("-", 1)[1])
        for k, _ in sorted(arrivals.items(), key=lambda kv: kv[1][0])
        if not k.endswith("probe")
    ]
    out_of_order = sum(1 for a, b in zip(order, order[1:], strict=False) if b < a)
    elapsed = last - start
    return {
        "rows": total,
        "insert_seconds": round(written - start, 3),
        "duration_s": round(elapsed, 3),
        "delivered": len(got),
        "delivered_per_s": round(len(got) / elapsed, 1) if elapsed > 0 else None,
        "latency_ms": percentiles(latencies),
        "lost": total - len(got),
        "duplicated": sum(len(v) - 1 for v in arrivals.values()),
        "out_of_order": out_of_order,
    }


if __name__ == "__main__":
    config = json.loads(sys.argv[1])
    try:
        result = asyncio.run(main(config))
    except Exception as exc:  # noqa: BLE001 - reported to the orchestrator as the row's failure
        result = {"failed": f"{type(exc).__name__}: {exc}"[:500]}
    emit({"result": result})
