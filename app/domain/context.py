"""What a domain call needs besides its arguments: the database session, who acts, and two ports.

The ports are Protocols the composition root (app/runtime.py) fills with the real parts, so
the domain knows no framework and no concrete realtime class:

- `Realtime`: publishing, agent heartbeats and live connection counts (the ConnectionManager);
- `Presence`: agents' last_seen as the batched recorder holds it (db/agents.AgentRecorder);
- `Writes`: inserts written with concurrent requests' in one transaction (db/group_commit.py);
- `Shared`: read-check-write calls run in one transaction with concurrent requests'
  (db/shared_transaction.py).

A front door opens one `Context` per request, tool call or WebSocket message
(`async with runtime.context(actor) as ctx`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypeVar

from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.shared_transaction import ATTEMPTS, Retry
from app.realtime.history import HistoryPage, StreamPosition
from app.realtime.permissions import Principal
from app.realtime.presence import ClientInfo
from app.realtime.publication import Publication
from app.realtime.waits import EventFilter, Watch

T = TypeVar("T")


class Realtime(Protocol):
    """The realtime core as the domain uses it."""

    @property
    def node_id(self) -> str: ...

    async def publish(self, channel: str, event: str, data: Any) -> Publication:
        """Publish on a (valid) channel through the broker."""

    async def agent_heartbeat(self, agent_id: str, session_id: str | None) -> None:
        """agent.heartbeat for `agent_id`, throttled per agent like a WebSocket ping's."""

    async def live_connections(self) -> dict[str, int]:
        """Agent id → open WebSocket connections (cluster-wide when clustered)."""

    async def channel_history(
        self, channel: str, since: StreamPosition | None, limit: int
    ) -> HistoryPage:
        """A channel's retained publications after `since`."""

    async def channel_presence(self, channel: str) -> dict[str, ClientInfo]:
        """Client id → who is subscribed to `channel`, cluster-wide."""

    def watch(
        self, channel: str, matches: EventFilter, timeout: float
    ) -> AbstractAsyncContextManager[Watch]:
        """Wake on publications of `channel` whose event `matches`, for `timeout` seconds
        (realtime/waits.py): how long polls wait without polling."""


class Presence(Protocol):
    """Agents' last_seen, including what is waiting to be written."""

    def touch(self, agent_id: str, create: bool = False) -> datetime:
        """Seen now (written with the next batch; `create`: the agent exists from now on, as
        one that connects does); returns the time recorded."""

    def last_seen(self, agent_id: str, stored: datetime | None) -> datetime | None:
        """The newer of the stored value and a pending one."""


class Writes(Protocol):
    """New rows written with the next group commit."""

    async def insert(self, table: Table, values: dict[str, Any], chosen: bool = True) -> None:
        """Returns once the row is committed; raises `Taken` (db/group_commit.py) when its
        id (`chosen` by the client, not generated) is, or what writing it alone raised."""


class Shared(Protocol):
    """One transaction for concurrent requests' read-check-write calls."""

    async def run(self, work: Callable[[AsyncSession], Awaitable[T]], key: str = "") -> T:
        """`work(db)` with the next batch (it must not commit): its result once committed, or
        its error; it may run twice, so its only effects are in the database. `key`: the row
        it locks and waits for, if any (a batch locks its rows in key order)."""


@dataclass(slots=True)
class Context:
    """One domain call's parts. Its database session is opened on first use of `db` and closed
    (rolled back if uncommitted) when the context exits: a write that goes only to the group
    commit (a task's create, a message) never opens one, where building and closing an
    AsyncSession per request was ≈ 4 % of such a request's CPU (py-spy)."""

    actor: Principal
    realtime: Realtime
    presence: Presence
    writes: Writes
    shared: Shared
    sessions: Callable[[], AsyncSession]
    _db: AsyncSession | None = field(default=None, init=False)

    @property
    def db(self) -> AsyncSession:
        """This call's session (opened now if it is not yet)."""
        if self._db is None:
            self._db = self.sessions()
        return self._db

    def in_transaction(self) -> bool:
        """Whether this call's session holds a transaction (False when none was opened)."""
        return self._db is not None and self._db.in_transaction()

    async def change(self, work: Callable[[AsyncSession], Awaitable[T]], key: str = "") -> T:
        """Run a read-check-write call (it does not commit, and raises `Retry` when its
        compare-and-set missed): in the shared transaction with concurrent requests' calls,
        or, when this call's session holds a transaction already, in that one, committed
        here (the shared one would wait for SQLite's one connection, which this holds)."""
        if not self.in_transaction():
            return await self.shared.run(work, key)
        db = self.db
        give_up: Exception | None = None
        for _ in range(ATTEMPTS):
            try:
                result = await work(db)
            except Retry as retry:
                await db.rollback()
                give_up = retry.give_up
                continue
            await db.commit()
            return result
        assert give_up is not None
        raise give_up

    def has_session(self) -> bool:
        """Whether `db` was opened (and `aclose` has work to do)."""
        return self._db is not None

    async def aclose(self) -> None:
        """Close the session, if one was opened (rolled back if uncommitted)."""
        if self._db is not None:
            db, self._db = self._db, None
            await db.close()

    async def __aenter__(self) -> Context:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
