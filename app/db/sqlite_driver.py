"""SQLite through aiosqlite, one thread hop per statement instead of four.

aiosqlite runs each sqlite3 call on its connection's thread and hands the result back to the
event loop: a queue put, a thread wake-up, `call_soon_threadsafe` and a loop wake-up, about
200 µs of CPU across both threads on this machine. SQLAlchemy's stock adapter makes one such
hop per DB-API call — open a cursor, execute, fetch the rows, close — so a SELECT is four
hops and an INSERT three, and the hops, not SQLite, were most of a write's cost
(docs/performance.md, "Fourth pass"). Here a statement is one function run on that thread:
open, execute, fetch, close, and back with the description, rows, rowcount and lastrowid.

Everything else is SQLAlchemy's aiosqlite dialect unchanged (its dialect, its exceptions,
its connection, commit and rollback, which are one hop each already, and its server-side
cursor for streamed results). The one thing taken from aiosqlite that is not its public
API is `Connection._execute`, the entry to its thread's queue that its own methods use;
the version is pinned and tests/test_sqlite_driver.py runs every path through it.
"""

from __future__ import annotations

import collections
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any

import aiosqlite
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)
from sqlalchemy.util import EMPTY_DICT

Outcome = tuple[Any, list[Any], int, int | None]


def _statement(conn: sqlite3.Connection, operation: str, parameters: Any, many: bool) -> Outcome:
    """One statement, run on the connection's thread: open, execute, fetch, close."""
    cursor = conn.cursor()
    try:
        if many:
            cursor.executemany(operation, parameters)
        elif parameters is None:
            cursor.execute(operation)
        else:
            cursor.execute(operation, parameters)
        description = cursor.description
        rows = cursor.fetchall() if description else []
        return description, rows, cursor.rowcount, cursor.lastrowid
    finally:
        cursor.close()


async def _on_thread(
    connection: aiosqlite.Connection, operation: str, parameters: Any, many: bool
) -> Outcome:
    """`_statement` on the connection's thread, as aiosqlite's own methods queue their calls."""
    queue: Callable[..., Awaitable[Outcome]] = connection._execute
    return await queue(_statement, connection._conn, operation, parameters, many)


class OneHopCursor(AsyncAdapt_aiosqlite_cursor):
    """A buffered cursor whose every execute is one call on the connection's thread.

    It holds no sqlite3 cursor between calls, so there is nothing to open or close on the
    loop's side: what the statement returned is kept here until the next execute.
    """

    __slots__ = ("_description", "_rowcount", "_lastrowid")

    def __init__(self, adapt_connection: AsyncAdapt_aiosqlite_connection) -> None:
        self._adapt_connection = adapt_connection
        self._connection = adapt_connection._connection
        self._cursor = None  # type: ignore[assignment]
        self._soft_closed_memoized = EMPTY_DICT
        self._rows = collections.deque()
        self._description: Any = None
        self._rowcount = -1
        self._lastrowid: int | None = None

    @property
    def description(self) -> Any:
        return self._description

    @property
    def rowcount(self) -> int:
        return self._rowcount

    @property
    def lastrowid(self) -> int:
        return self._lastrowid  # type: ignore[return-value]

    @property
    def arraysize(self) -> int:
        return 1

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        pass  # the rows are all fetched at execute: nothing to size

    async def _async_soft_close(self) -> None:
        pass  # no sqlite3 cursor is held open

    def close(self) -> None:
        self._rows.clear()

    def _keep(self, outcome: Outcome) -> None:
        self._description, rows, self._rowcount, self._lastrowid = outcome
        self._rows = collections.deque(rows)

    async def _execute_async(self, operation: Any, parameters: Any) -> None:
        connection: aiosqlite.Connection = self._connection  # type: ignore[assignment]
        async with self._adapt_connection._execute_mutex:
            self._keep(await _on_thread(connection, operation, parameters, many=False))

    async def _executemany_async(self, operation: Any, seq_of_parameters: Any) -> None:
        connection: aiosqlite.Connection = self._connection  # type: ignore[assignment]
        async with self._adapt_connection._execute_mutex:
            self._keep(await _on_thread(connection, operation, seq_of_parameters, many=True))


class OneHopConnection(AsyncAdapt_aiosqlite_connection):
    __slots__ = ()

    _cursor_cls = OneHopCursor  # type: ignore[assignment]


class OneHopDbapi(AsyncAdapt_aiosqlite_dbapi):
    """The aiosqlite DB-API shim, its connections making `OneHopCursor`s."""

    def connect(self, *arg: Any, **kw: Any) -> OneHopConnection:
        stock = super().connect(*arg, **kw)
        return OneHopConnection(self, stock._connection)


def one_hop_dbapi() -> OneHopDbapi:
    """The `module=` for `create_async_engine` on a `sqlite+aiosqlite` URL."""
    return OneHopDbapi(aiosqlite, sqlite3)
