"""What one KPI snapshot costs on a database of about a million rows.

    python -m bench.metrics_cost --database-url sqlite:///./bench-metrics.db
    python -m bench.metrics_cost --database-url postgresql://postgres@127.0.0.1:5432/bench

Migrates the database, seeds it (unless it already holds tasks, or --reuse-only is given):
400k tasks, 100k subtasks, 250k messages, 200k actions, 10k sessions, 2k agents — the triggers
add an outbox row for each task, subtask and message, about 750k more — spread over 30 days,
most tasks finished and most messages read, as a service that has run for a month would hold.
Then computes the snapshot `app.metrics.compute_snapshot` (what every METRICS_INTERVAL tick
runs) several times and prints one JSON object: the row counts, the seed time, and the
snapshot's time in milliseconds: `first` includes the full recount of tasks by status that the
metrics task does every ten minutes; min/median/max are the ticks in between. --scale
shrinks or grows the seed.
Use an empty SQLite file or an empty PostgreSQL database: the seed writes fixed ids.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.core.config import Settings
from app.db.engine import create_engine
from app.db.migrate import migrate
from app.metrics import TaskCounter, compute_snapshot

DAY = 86_400
MONTH = 30 * DAY
BASE_COUNTS = {
    "sessions": 10_000,
    "agents": 2_000,
    "tasks": 400_000,
    "subtasks": 100_000,
    "messages": 250_000,
    "actions": 200_000,
}


class Dialect:
    """The few SQL fragments that differ between SQLite and PostgreSQL."""

    def __init__(self, name: str) -> None:
        self.postgres = name == "postgresql"

    def series(self, count: int, body: str) -> str:
        """`body` (an INSERT … SELECT … using n) over n = 1..count."""
        if self.postgres:
            return body.replace("{FROM}", f"FROM generate_series(1::bigint, {count}) AS s(n)")
        return (
            f"WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < {count}) "
            + body.replace("{FROM}", "FROM s")
        )

    def ago(self, seconds: str) -> str:
        """A timestamp `seconds` (an SQL expression) before now, as each backend stores it."""
        if self.postgres:
            return f"(now() - ({seconds}) * interval '1 second')"
        return f"strftime('%Y-%m-%d %H:%M:%f000', 'now', '-' || ({seconds}) || ' seconds')"

    def json(self, literal: str) -> str:
        return f"'{literal}'::jsonb" if self.postgres else f"'{literal}'"


def _statements(d: Dialect, counts: dict[str, int]) -> list[tuple[str, str]]:
    tasks = counts["tasks"]
    status = (
        "CASE WHEN n % 100 < 85 THEN 'completed' WHEN n % 100 < 93 THEN 'failed' "
        "WHEN n % 100 < 96 THEN 'cancelled' WHEN n % 100 < 98 THEN 'pending' "
        "ELSE 'in_progress' END"
    )
    finished = "n % 100 < 96"
    age = f"(120 + (n * 7919) % {MONTH})"  # seconds ago, spread over the month
    payload = d.json('{"k": 1}')
    return [
        (
            "sessions",
            d.series(
                counts["sessions"],
                "INSERT INTO sessions (id, name, status, started_at, ended_at) "
                "SELECT 'session_' || n, 'session ' || n, "
                "CASE WHEN n % 100 = 0 THEN 'active' ELSE 'ended' END, "
                f"{d.ago(age)}, CASE WHEN n % 100 = 0 THEN NULL ELSE {d.ago(age + ' - 60')} END "
                "{FROM}",
            ),
        ),
        (
            "agents",
            d.series(
                counts["agents"],
                "INSERT INTO agents (id, name, kind, status, last_seen, created_at, updated_at) "
                "SELECT 'agent_' || n, 'agent ' || n, 'coder', "
                "CASE WHEN n % 40 = 0 THEN 'online' ELSE 'offline' END, "
                f"{d.ago('n % 3600')}, {d.ago(age)}, {d.ago('n % 3600')} " + "{FROM}",
            ),
        ),
        (
            "tasks",
            d.series(
                tasks,
                "INSERT INTO tasks (id, session_id, agent_id, title, status, priority, payload, "
                "created_at, updated_at, started_at, completed_at) "
                f"SELECT 'task_' || n, 'session_' || (n % {counts['sessions']} + 1), "
                f"'agent_' || (n % {counts['agents']} + 1), 'task ' || n, {status}, n % 5, "
                f"{payload}, {d.ago(age)}, {d.ago(age + ' - 65')}, "
                f"CASE WHEN n % 100 < 85 OR n % 100 >= 98 THEN {d.ago(age + ' - 5')} END, "
                f"CASE WHEN {finished} THEN {d.ago(age + ' - 65')} END " + "{FROM}",
            ),
        ),
        (
            "subtasks",
            d.series(
                counts["subtasks"],
                "INSERT INTO subtasks (id, task_id, title, status, created_at, updated_at, "
                "completed_at) "
                f"SELECT 'subtask_' || n, 'task_' || (n % {tasks} + 1), 'step ' || n, "
                f"{status}, {d.ago(age)}, {d.ago(age + ' - 30')}, "
                f"CASE WHEN {finished} THEN {d.ago(age + ' - 30')} END " + "{FROM}",
            ),
        ),
        (
            "messages",
            d.series(
                counts["messages"],
                "INSERT INTO messages (id, from_agent, to_agent, session_id, content, "
                "created_at, expires_at, read_at, expired_at) "
                f"SELECT 'msg_' || n, 'agent_' || ((n + 1) % {counts['agents']} + 1), "
                f"'agent_' || (n % {counts['agents']} + 1), "
                f"'session_' || (n % {counts['sessions']} + 1), 'hello ' || n, {d.ago(age)}, "
                f"CASE WHEN n % 100 BETWEEN 95 AND 97 THEN {d.ago(age + ' - 60')} END, "
                f"CASE WHEN n % 100 < 95 THEN {d.ago(age + ' - 10')} END, "
                f"CASE WHEN n % 100 BETWEEN 95 AND 97 THEN {d.ago(age + ' - 61')} END "
                "{FROM}",
            ),
        ),
        (
            "actions",
            d.series(
                counts["actions"],
                "INSERT INTO actions (id, agent_id, session_id, kind, created_at) "
                f"SELECT 'act_' || n, 'agent_' || (n % {counts['agents']} + 1), "
                f"'session_' || (n % {counts['sessions']} + 1), 'tool_call', "
                f"{d.ago(f'(n * 7919) % {MONTH}')} " + "{FROM}",
            ),
        ),
    ]


async def _count(connection: AsyncConnection, table: str) -> int:
    return int(await connection.scalar(text(f"SELECT count(*) FROM {table}")) or 0)


async def seed(engine: AsyncEngine, scale: float) -> float:
    """Write the rows; seconds it took."""
    counts = {table: max(1, int(n * scale)) for table, n in BASE_COUNTS.items()}
    dialect = Dialect(engine.dialect.name)
    started = time.perf_counter()
    for table, statement in _statements(dialect, counts):
        async with engine.begin() as connection:
            await connection.execute(text(statement))
        print(f"seeded {counts[table]:>8} {table}", file=sys.stderr, flush=True)
    async with engine.begin() as connection:
        # The triggers stamped every outbox row "now"; spread them over the month like the
        # rows they describe, or the last-minute window would hold all of them.
        await connection.execute(
            text(f"UPDATE events SET created_at = {dialect.ago(f'(120 + (id * 7919) % {MONTH})')}")
        )
    async with engine.begin() as connection:
        # What autovacuum (PostgreSQL) or `PRAGMA optimize` (SQLite) leaves behind in practice.
        await connection.execute(text("ANALYZE"))
    return time.perf_counter() - started


async def run(database_url: str, scale: float, repeat: int, reuse_only: bool) -> dict[str, Any]:
    engine = create_engine(Settings(_env_file=None, database_url=database_url).database_url)  # type: ignore[call-arg]
    try:
        await migrate(engine)
        async with engine.connect() as connection:
            existing = await _count(connection, "tasks")
        seed_seconds = None
        if not existing and not reuse_only:
            seed_seconds = round(await seed(engine, scale), 1)
        async with engine.connect() as connection:
            rows = {table: await _count(connection, table) for table in (*BASE_COUNTS, "events")}
        timings = []
        snapshot: dict[str, Any] = {}
        counter = TaskCounter()  # as the metrics task keeps it: the first run counts in full
        for _ in range(repeat):
            started = time.perf_counter()
            snapshot = await compute_snapshot(engine, counter=counter)
            timings.append((time.perf_counter() - started) * 1000)
        return {
            "database": engine.dialect.name,
            "rows": rows,
            "total_rows": sum(rows.values()),
            "seed_seconds": seed_seconds,
            "snapshot_ms": {
                "first": round(timings[0], 1),
                "min": round(min(timings), 1),
                "median": round(statistics.median(timings), 1),
                "max": round(max(timings), 1),
                "runs": repeat,
            },
            "snapshot": snapshot,
        }
    finally:
        await engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.metrics_cost", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--database-url", required=True, help="an empty SQLite file or PG db")
    parser.add_argument("--scale", type=float, default=1.0, help="seed size factor (1.0 ≈ 1M)")
    parser.add_argument("--repeat", type=int, default=10, help="snapshots to time (10)")
    parser.add_argument(
        "--reuse-only", action="store_true", help="never seed; time what the database holds"
    )
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.database_url, args.scale, max(1, args.repeat), args.reuse_only))
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
