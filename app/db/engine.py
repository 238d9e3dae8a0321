"""The async SQLAlchemy engine and session factory, built from Settings (never at import)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import ORMExecuteState, Session

from app.db.sqlite_driver import one_hop_dbapi


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers run beside the writer; the busy timeout makes writers queue, not fail.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def create_engine(database_url: str) -> AsyncEngine:
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        # One connection for the process. SQLite has one writer at a time, and writers that
        # find the lock taken sleep and retry in its busy handler, which is not fair: under
        # twenty concurrent claimers one could wait past busy_timeout (a 503). The pool's
        # queue is nearly fair and costs nothing: every statement here takes microseconds to
        # milliseconds, and sessions give their connection back at each commit or rollback
        # (long polls wait without one). Nearly: a connection given back can go to a newcomer
        # ahead of the waiter it woke, who queues again, so a request checks it out once, not
        # twice in a row (domain/claims.claim). Other processes on the same file still meet
        # the busy handler.
        on_disk = bool(url.database) and url.database != ":memory:"
        options: dict[str, Any] = (
            {"pool_size": 1, "max_overflow": 0, "pool_timeout": 30} if on_disk else {}
        )
        if url.get_driver_name() == "aiosqlite":
            options["module"] = one_hop_dbapi()  # one thread hop per statement, not four
        engine = create_async_engine(url, **options)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    if url.get_driver_name() != "asyncpg":
        return create_async_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)
    engine = create_async_engine(url, pool_size=10, max_overflow=20)
    event.listen(engine.sync_engine, "checkout", _refuse_closed)
    return engine


def _refuse_closed(_dbapi_connection: Any, record: Any, _proxy: Any) -> None:
    """Replace, at checkout, a pooled asyncpg connection the server has closed.

    What pool_pre_ping is for, without its round trips. A server that restarts, or ends a
    backend (pg_terminate_backend, an idle timeout), closes the socket; asyncpg's protocol
    sees that within a loop iteration, idle or not, and `is_closed()` says so. Raising
    DisconnectionError makes the pool discard the connection and check out another
    (SQLAlchemy's documented pessimistic-disconnect hook). The pre-ping was three round trips
    per checkout with asyncpg (BEGIN, `;`, ROLLBACK): ≈ 6.5 % of a PATCH's CPU on PostgreSQL
    (py-spy).

    What only the ping would have caught: a connection a middlebox (a NAT, a firewall) dropped
    without telling either end. Its first statement fails instead, the pool discards it, and
    the request is answered 503 DATABASE_CONNECTION_LOST (api/errors.py), not a 500."""
    driver = record.driver_connection
    if driver is None or driver.is_closed():
        raise DisconnectionError("the server closed this pooled connection")


def asyncpg_dsn(database_url: str) -> str:
    """The SQLAlchemy URL (any PostgreSQL driver) as a plain libpq DSN for asyncpg.connect."""
    url = make_url(database_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions on `engine`, of a class of their own (so `on_commit` hooks stay per factory)."""

    class FactorySession(Session):
        pass

    return async_sessionmaker(engine, expire_on_commit=False, sync_session_class=FactorySession)


_WROTE = "context_manager.wrote"  # session.info: writes made in this transaction
_HOOKS = "_context_manager_commit_hooks"  # on the factory's session class: its hooks


def on_commit(sessionmaker: async_sessionmaker[AsyncSession], hook: Callable[[], None]) -> None:
    """Call `hook` after each commit of this factory's sessions that wrote something.

    How the bridge hears of a change made through the ORM at once (on SQLite the only way;
    on PostgreSQL the trigger's NOTIFY does too), whichever front door made it. It runs after
    the database has committed, so the rows are visible to whoever the hook wakes. Every hook
    registered hears every such commit.
    """
    count_writes(sessionmaker).append(hook)


def count_writes(sessionmaker: async_sessionmaker[AsyncSession]) -> list[Callable[[], None]]:
    """Count the writes of this factory's sessions (`writes_made`); its commit hooks.

    The listeners are installed once per factory and call every hook: one set per hook had
    the first hook's listener clear the count the others read."""
    session_class: type[Session] = sessionmaker.kw["sync_session_class"]
    installed: list[Callable[[], None]] | None = session_class.__dict__.get(_HOOKS)
    if installed is not None:
        return installed
    hooks: list[Callable[[], None]] = []
    setattr(session_class, _HOOKS, hooks)

    def wrote(session: Session, *_: Any) -> None:
        session.info[_WROTE] = session.info.get(_WROTE, 0) + 1

    def orm_execute(state: ORMExecuteState) -> None:
        if state.is_insert or state.is_update or state.is_delete:
            state.session.info[_WROTE] = state.session.info.get(_WROTE, 0) + 1

    def after_commit(session: Session) -> None:
        if session.info.pop(_WROTE, 0):
            for hook in hooks:
                hook()

    def after_rollback(session: Session, *_: Any) -> None:
        session.info.pop(_WROTE, None)

    event.listen(session_class, "after_flush", wrote)
    event.listen(session_class, "do_orm_execute", orm_execute)
    event.listen(session_class, "after_commit", after_commit)
    event.listen(session_class, "after_soft_rollback", after_rollback)
    return hooks


def writes_made(session: AsyncSession) -> int:
    """How many writes (flushes, INSERT/UPDATE/DELETE statements) this session's transaction
    has made so far, for a factory passed to `count_writes`: how the shared transaction tells
    a call that refused before it wrote from one that wrote something (db/shared_transaction)."""
    count: int = session.sync_session.info.get(_WROTE, 0)
    return count


async def ping(engine: AsyncEngine, timeout: float = 2.0) -> bool:
    """Whether the database answers a trivial query."""
    import asyncio

    async def _ping() -> None:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    try:
        async with asyncio.timeout(timeout):
            await _ping()
    except Exception:  # noqa: BLE001 - any failure means "unreachable"
        return False
    return True
