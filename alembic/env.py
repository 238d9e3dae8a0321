"""Alembic environment: async engines, the URL from Settings, or a connection handed in.

Where the URL comes from, first match wins:

1. ``config.attributes["connection"]``: a sync connection lent by `app.db.migrate` (the lifespan
   and `context-manager migrate` run migrations inside their own event loop this way);
2. ``alembic -x database_url=…``;
3. ``sqlalchemy.url`` set on the Config by a caller (tests);
4. `Settings().database_url`: DATABASE_URL or `.env`, as the service itself reads it.
"""

from __future__ import annotations

import asyncio
import importlib
import pkgutil

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

import app.db
from app.db.models import Base

# Every module of app/db named *models declares tables on Base.metadata: import them all, so
# autogenerate (and `alembic check`) compares the whole schema, not just the first module.
for _module in pkgutil.iter_modules(app.db.__path__):
    if _module.name.endswith("models"):
        importlib.import_module(f"app.db.{_module.name}")

config = context.config
target_metadata = Base.metadata


def _database_url() -> str:
    from app.core.config import Settings

    x_url = context.get_x_argument(as_dictionary=True).get("database_url")
    raw = x_url or config.get_main_option("sqlalchemy.url") or Settings().database_url
    # The Settings validator maps postgresql:// to asyncpg and sqlite:// to aiosqlite.
    return Settings(database_url=raw).database_url


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
    )


def _run(connection: Connection) -> None:
    _configure(connection)
    with context.begin_transaction():
        context.run_migrations()


async def _run_async(url: str) -> None:
    engine = create_async_engine(url, poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await engine.dispose()


def run_migrations_offline() -> None:
    """Emit SQL to stdout (`alembic upgrade head --sql`)."""
    context.configure(
        url=_database_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    lent = config.attributes.get("connection")
    if lent is not None:
        _run(lent)
    else:
        asyncio.run(_run_async(_database_url()))


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
