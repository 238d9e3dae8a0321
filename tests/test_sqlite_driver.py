"""app/db/sqlite_driver.py: SQLAlchemy on aiosqlite with one thread hop per statement.

Every DB-API answer a statement gives (rows, column names, rowcount, lastrowid, errors) is the
one the stock adapter gives, a statement is one call on aiosqlite's thread, and streamed
results and concurrent use still work. The whole suite runs on this engine too.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, insert, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.db.engine import create_engine
from app.db.sqlite_driver import OneHopCursor

metadata = MetaData()
# No RETURNING: the inserted key comes from the cursor's lastrowid.
items = Table(
    "items",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(20), unique=True, nullable=False),
    implicit_returning=False,
)


async def _engine(url: str, one_hop: bool) -> AsyncEngine:
    engine = create_engine(url) if one_hop else create_async_engine(url)
    async with engine.begin() as connection:
        await connection.run_sync(metadata.create_all)
    return engine


@pytest.fixture(params=["one-hop", "stock"])
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    """The service's engine, and SQLAlchemy's stock one as the reference it must equal."""
    engine = await _engine(
        f"sqlite+aiosqlite:///{tmp_path / 'driver.db'}", request.param == "one-hop"
    )
    yield engine
    await engine.dispose()


async def test_the_service_engine_uses_the_one_hop_cursor(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    async with engine.connect() as connection:
        raw = await connection.get_raw_connection()
        assert isinstance(raw.dbapi_connection.cursor(), OneHopCursor)  # type: ignore[union-attr]
    await engine.dispose()


async def test_rows_columns_rowcount_and_keys(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        first = await connection.execute(insert(items).values(name="a"))
        second = await connection.execute(insert(items).values(name="b"))
        assert first.inserted_primary_key == (1,)
        assert second.inserted_primary_key == (2,)
        many = await connection.execute(insert(items), [{"name": "c"}, {"name": "d"}])
        assert many.rowcount == 2
    async with engine.connect() as connection:
        result = await connection.execute(select(items.c.id, items.c.name).order_by(items.c.id))
        assert list(result.keys()) == ["id", "name"]
        assert result.all() == [(1, "a"), (2, "b"), (3, "c"), (4, "d")]
        none = await connection.execute(select(items).where(items.c.name == "zz"))
        assert none.all() == []
        assert await connection.scalar(text("SELECT count(*) FROM items")) == 4
        changed = await connection.execute(
            update(items).where(items.c.id > 2).values(name=items.c.name + "!")
        )
        assert changed.rowcount == 2
        missed = await connection.execute(update(items).where(items.c.id == 99).values(name="x"))
        assert missed.rowcount == 0
        await connection.rollback()
        kept = await connection.scalars(select(items.c.name).order_by(items.c.id))
        assert kept.all() == ["a", "b", "c", "d"]


async def test_an_error_is_the_dbapi_error_and_changes_nothing(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        await connection.execute(insert(items).values(name="taken"))
    with pytest.raises(IntegrityError):
        async with engine.begin() as connection:
            await connection.execute(insert(items).values(name="new"))
            await connection.execute(insert(items).values(name="taken"))
    async with engine.connect() as connection:  # the pool's connection is still good
        names = await connection.scalars(select(items.c.name))
        assert names.all() == ["taken"]


async def test_streamed_results_and_concurrent_use(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        await connection.execute(insert(items), [{"name": f"n{i}"} for i in range(300)])
    async with engine.connect() as connection:
        streamed = await connection.stream(select(items.c.id).order_by(items.c.id))
        ids = [row.id async for row in streamed]
    assert ids == list(range(1, 301))

    async def read(i: int) -> Any:
        async with engine.connect() as connection:
            return await connection.scalar(select(items.c.name).where(items.c.id == i + 1))

    assert await asyncio.gather(*(read(i) for i in range(100))) == [f"n{i}" for i in range(100)]


async def test_a_statement_is_one_call_on_the_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the module is for: the stock adapter makes four calls for a SELECT."""
    calls: list[str] = []
    queue = aiosqlite.Connection._execute

    async def counted(self: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(getattr(fn, "__name__", repr(fn)))
        return await queue(self, fn, *args, **kwargs)

    counts = {}
    for one_hop in (True, False):
        engine = await _engine(f"sqlite+aiosqlite:///{tmp_path / f'{one_hop}.db'}", one_hop)
        async with engine.connect() as connection:
            monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)
            calls.clear()
            await connection.execute(select(items.c.id, items.c.name))
            counts[one_hop] = len(calls)
            monkeypatch.setattr(aiosqlite.Connection, "_execute", queue)
        await engine.dispose()
    assert counts == {True: 1, False: 4}
