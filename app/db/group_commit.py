"""Group commit: the inserts of concurrent requests, written in one transaction.

A request whose whole write is new rows (a task without dependencies, a message) hands them
here instead of running a transaction of its own. One writer at a time takes every write
waiting, runs one executemany INSERT per table and one COMMIT, and answers each caller once
its rows are committed. Sixteen requests in flight make one transaction, not sixteen. Rows
of a table that give different columns go in separate statements of the same transaction.

Why: through aiosqlite every statement and every commit is a round trip to its thread (on
asyncpg, to the server), and the fixed cost is the round trips, not the rows. Measured on
this machine (SQLite, CPU of both threads): one INSERT and its COMMIT, 810 µs; a row of a
16-row executemany and one COMMIT, 60 µs. The batch needs no timer: while one transaction is
being written the next requests queue, so a batch is as large as the load makes it and a lone
request is written at once.

A taken id does not fail the batch: the batch reads which of the ids its callers chose are
there (one SELECT per table, none when every id was generated) and leaves those rows out, and
out of its prepare step (a taken message takes no seq: seqs stay gapless); their callers get
`Taken`, alone. Without that read, one client posting a taken id again and again failed every
batch it landed in and pushed everyone back to one transaction per request (measured, one
core's load generator: beside 4 such clients 16 others created 320 req/s; now 362, as beside 4
ordinary clients, 352). A batch that fails all the same (a race for an id, anything else) is
rolled back and each of its writes is tried again alone, so an error reaches only the caller
whose row caused it, the others commit, and nothing of a failed write stays.

A caller cancelled while it waits (its client went away) leaves its write to commit, or not,
with the batch: the same as a request cancelled during its own COMMIT.

`prepare(table, step)`: a step run in the batch's transaction on that table's rows before they
are inserted, to fill in values that depend on the database (a message's inbox seq).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table, insert, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

logger = logging.getLogger("context_manager.group_commit")

Values = dict[str, Any]
Prepare = Callable[[AsyncSession, list[Values]], Awaitable[None]]

# Enough to absorb every request a node has in flight; a bound on one transaction's size.
MAX_WRITES = 256


class Taken(Exception):
    """The row's id is taken (by a committed row, or by an earlier row of its batch)."""


@dataclass(slots=True)
class _Write:
    table: Table
    values: Values
    chosen: bool  # the caller chose the id (a generated one is never taken)
    done: asyncio.Future[None]
    taken: bool = False


class GroupCommit:
    def __init__(
        self, sessionmaker: async_sessionmaker[AsyncSession], max_writes: int = MAX_WRITES
    ) -> None:
        self._sessionmaker = sessionmaker
        self._max_writes = max_writes
        self._prepare: dict[Table, Prepare] = {}
        self._pending: list[_Write] = []
        self._writer: asyncio.Task[None] | None = None
        # What /metrics and the tests read: transactions committed, writes they held.
        self.batches = 0
        self.writes = 0

    def prepare(self, table: Table, step: Prepare) -> None:
        self._prepare[table] = step

    async def insert(self, table: Table, values: Values, chosen: bool = True) -> None:
        """Insert one row (its primary key is `id`; `chosen`: by the client) with the next batch.

        Returns once it is committed; raises `Taken` when its id was, or what writing it
        alone raised."""
        write = _Write(table, values, chosen, asyncio.get_running_loop().create_future())
        self._pending.append(write)
        if self._writer is None:
            # A context of its own: not the first caller's (its request id, its trace).
            self._writer = asyncio.create_task(
                self._drain(), name="group-commit", context=contextvars.Context()
            )
        await write.done

    async def close(self) -> None:
        """Wait for the writes already handed in (called before the engine is disposed)."""
        while self._writer is not None:
            await asyncio.shield(self._writer)

    async def _drain(self) -> None:
        batch: list[_Write] = []
        try:
            while self._pending:
                batch = self._pending[: self._max_writes]
                del self._pending[: self._max_writes]
                await self._write(batch)
        finally:
            self._writer = None
            # Only when this task was cancelled are any of these still waiting.
            for write in (*batch, *self._pending):
                _fail(write, RuntimeError("the group commit stopped"))
            self._pending.clear()

    async def _write(self, batch: list[_Write]) -> None:
        try:
            await self._commit(batch)
        except Exception as exc:  # noqa: BLE001 - each write gets its own fate below
            if len(batch) == 1:
                _fail(batch[0], exc)
                return
            logger.debug("a batch of %d failed (%r): writing each alone", len(batch), exc)
            for write in batch:
                try:
                    await self._commit([write])
                except Exception as alone:  # noqa: BLE001 - the caller's error
                    _fail(write, alone)
                else:
                    _succeed(write)
            return
        for write in batch:
            _succeed(write)

    async def _commit(self, batch: list[_Write]) -> None:
        # One executemany per table and set of columns, in the order they first appear.
        groups: dict[tuple[Table, tuple[str, ...]], list[_Write]] = {}
        for write in batch:
            groups.setdefault((write.table, tuple(write.values)), []).append(write)
        async with self._sessionmaker() as db:
            for (table, _), writes in groups.items():
                fresh = await _not_taken(db, table, writes)
                if not fresh:
                    continue
                rows = [write.values for write in fresh]
                step = self._prepare.get(table)
                if step is not None:
                    await step(db, rows)
                await db.execute(insert(table), rows)
            await db.commit()
        self.batches += 1
        self.writes += sum(not write.taken for write in batch)


async def _not_taken(db: AsyncSession, table: Table, writes: list[_Write]) -> list[_Write]:
    """The writes whose id is free; the others are marked taken (an earlier row of the batch
    with the same id goes first). A row committed by someone else between this read and the
    INSERT fails the batch, which is then written write by write: this read, again, finds it."""
    chosen = [write.values["id"] for write in writes if write.chosen]
    present: set[str] = set()
    if chosen:
        found = await db.execute(select(table.c.id).where(table.c.id.in_(chosen)))
        present.update(found.scalars())
    fresh = []
    for write in writes:
        ident = write.values["id"]
        write.taken = ident in present
        if not write.taken:
            present.add(ident)
            fresh.append(write)
    return fresh


def _succeed(write: _Write) -> None:
    if write.taken:
        _fail(write, Taken(write.values["id"]))
    elif not write.done.done():  # not cancelled by its caller meanwhile
        write.done.set_result(None)


def _fail(write: _Write, exc: BaseException) -> None:
    if not write.done.done():
        write.done.set_exception(exc)
