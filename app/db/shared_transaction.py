"""Shared transaction: the read-check-write calls of concurrent requests, in one transaction.

A PATCH reads its row, checks who may change it and to what, and writes it with a
compare-and-set UPDATE. Alone, that is a transaction per request: a session and a pooled
connection, the SELECT, the UPDATE, the COMMIT, and a bridge round after it. Here one writer at
a time takes every call waiting and runs them one after another in one session, then commits
once and answers each caller: sixteen PATCHes in flight make one COMMIT and one bridge round,
not sixteen. The group commit (group_commit.py) does this for calls that only insert; this is
for calls that read first. As there, a batch needs no timer: while one runs, the next queue.

A call (`Work`) is a coroutine function given the batch's session. It must not commit or roll
back, and its only effects are in the database: it may be run twice. How one call's failure is
kept from the others, without a SAVEPOINT each (two more statements per call):

- A call that raises a refusal (one of `refusals`: the composition root passes the domain's
  `DomainError`) before it wrote anything (not found, forbidden, an illegal transition) has
  nothing to undo: its caller gets the error and
  the batch goes on. `engine.writes_made` counts the writes, as the bridge's commit hook does.
- A call that raises `Retry` before it wrote (its compare-and-set found the row changed by
  another connection) is run again at once; every statement of a batch sees what others
  committed before it (PostgreSQL's READ COMMITTED; SQLite has one connection).
- Anything else, or any error after a write, leaves the transaction in doubt: the batch is
  rolled back and each of its calls is run again alone, in a transaction of its own, as the
  group commit retries a failed batch. An error then reaches only the caller whose call
  raised it, and nothing of a failed call stays. A failed COMMIT is handled the same way.

Row locks: on PostgreSQL a batch holds the locks its calls took until its COMMIT, so two
nodes' batches could wait on each other. Calls given a `key` (the row they change) run in key
order, so batches take their locks in one order and do not deadlock one another. A deadlock
or serialization failure the server reports all the same (with a transaction of another kind)
ended a transaction that committed nothing: the batch is split as above, and a call alone
that meets one runs again, up to `ATTEMPTS` times.

A caller is answered only after the COMMIT of the transaction that holds its call. A caller
cancelled while it waits leaves its call to commit, or not, with the batch.

`writers`: how many batches run at once. One on SQLite (one connection, one writer). On
PostgreSQL a batch's calls wait on the server one after another, so a single writer left the
service idle behind it (claims at 16 clients: 27 % of a core, fewer claims/s than one
transaction each); a few writers, each with its own connection, keep both busy.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db.engine import count_writes, writes_made

logger = logging.getLogger("context_manager.shared_transaction")

T = TypeVar("T")
Work = Callable[[AsyncSession], Awaitable[T]]

# A bound on one transaction's length (and on how long its row locks are held).
MAX_CALLS = 64
# How often a call whose compare-and-set kept missing is run again before it gives up.
ATTEMPTS = 5
# PostgreSQL's deadlock_detected and serialization_failure: the server rolled the
# transaction back, so running it again is safe.
TRANSIENT = frozenset({"40P01", "40001"})


def transient(exc: BaseException) -> bool:
    """Whether the database ended the transaction for a reason that running it again fixes."""
    return isinstance(exc, DBAPIError) and getattr(exc.orig, "sqlstate", None) in TRANSIENT


class Retry(Exception):
    """Raised by a call that found the database changed under it (a compare-and-set that
    matched no row): run it again. After `ATTEMPTS` runs its caller gets `give_up`."""

    def __init__(self, give_up: Exception) -> None:
        super().__init__(str(give_up))
        self.give_up = give_up


@dataclass(slots=True)
class _Call:
    work: Work[Any]
    key: str
    done: asyncio.Future[Any]
    result: Any = None
    error: BaseException | None = None


class SharedTransaction:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        refusals: tuple[type[Exception], ...],
        max_calls: int = MAX_CALLS,
        writers: int = 1,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._refusals = refusals
        count_writes(sessionmaker)  # what tells a clean refusal from one after a write
        self._max_calls = max_calls
        self._pending: list[_Call] = []
        self._writers: set[asyncio.Task[None]] = set()
        self._max_writers = writers
        # What /metrics and the tests read: transactions committed, the calls they held, and
        # batches that failed and were run call by call.
        self.batches = 0
        self.calls = 0
        self.split = 0

    async def run(self, work: Work[T], key: str = "") -> T:
        """Run `work` with the next batch; its result once that is committed, or its error.
        `key`: the row it locks, if it waits for row locks (calls run in key order)."""
        call = _Call(work, key, asyncio.get_running_loop().create_future())
        self._pending.append(call)
        if len(self._writers) < self._max_writers:
            # A context of its own: not the first caller's (its request id, its trace).
            writer = asyncio.create_task(
                self._drain(), name="shared-transaction", context=contextvars.Context()
            )
            self._writers.add(writer)
        result: T = await call.done
        return result

    async def close(self) -> None:
        """Wait for the calls already handed in (called before the engine is disposed)."""
        while self._writers:
            await asyncio.shield(next(iter(self._writers)))

    async def _drain(self) -> None:
        batch: list[_Call] = []
        try:
            while self._pending:
                batch = self._pending[: self._max_calls]
                del self._pending[: self._max_calls]
                batch.sort(key=_by_key)  # stable: calls of one key in the order they came
                await self._write(batch)
        except BaseException:
            # Cancelled (the node stops), or a bug: nobody is left waiting for ever.
            for call in (*batch, *self._pending):
                _answer(call, RuntimeError("the shared transaction stopped"))
            self._pending.clear()
            raise
        finally:
            # At once, not in a done callback: a call handed in from now on starts a writer.
            self._writers.discard(asyncio.current_task())

    async def _write(self, batch: list[_Call]) -> None:
        if len(batch) > 1:
            try:
                await self._together(batch)
            except Exception as exc:  # noqa: BLE001 - each call gets its own fate below
                logger.debug("a batch of %d failed (%r): running each alone", len(batch), exc)
                self.split += 1
            else:
                for call in batch:
                    _answer(call)
                return
        for call in batch:
            await self._alone(call)
            _answer(call)

    async def _together(self, batch: list[_Call]) -> None:
        async with self._sessionmaker() as db:
            for call in batch:
                call.error = None
                for _ in range(ATTEMPTS):
                    before = writes_made(db)
                    try:
                        call.result = await call.work(db)
                    except Retry as retry:
                        if writes_made(db) != before:
                            raise
                        call.error = retry.give_up
                        continue
                    except Exception as exc:
                        if not isinstance(exc, self._refusals) or writes_made(db) != before:
                            raise
                        call.error = exc
                    else:
                        call.error = None
                    break
                else:
                    # It kept missing: let it try in a transaction of its own.
                    raise RuntimeError("a call kept finding its row changed")
            await db.commit()
        self.batches += 1
        self.calls += len(batch)

    async def _alone(self, call: _Call) -> None:
        for _ in range(ATTEMPTS):
            async with self._sessionmaker() as db:
                try:
                    call.result = await call.work(db)
                    await db.commit()
                except Retry as retry:
                    await db.rollback()
                    call.error = retry.give_up
                    continue
                except Exception as exc:  # noqa: BLE001 - the caller's error
                    await db.rollback()
                    call.error = exc
                    if transient(exc):
                        continue
                    return
            call.error = None
            self.batches += 1
            self.calls += 1
            return


def _by_key(call: _Call) -> str:
    return call.key


def _answer(call: _Call, stopped: BaseException | None = None) -> None:
    if call.done.done():  # cancelled by its caller meanwhile
        return
    error = stopped or call.error
    if error is not None:
        call.done.set_exception(error)
    else:
        call.done.set_result(call.result)
