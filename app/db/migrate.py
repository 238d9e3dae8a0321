"""Apply the Alembic migrations from code: `context-manager migrate` and the lifespan.

Alembic's async env.py would start its own event loop; here the caller's loop lends a
connection instead (``config.attributes["connection"]``). Concurrent starters are serialised:
an advisory lock on PostgreSQL, ``BEGIN IMMEDIATE`` (the write lock) on SQLite, so two
processes starting on one fresh database do not both create the tables.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

# The repository root holds alembic.ini and alembic/ (the layout the issue asks for).
ROOT = Path(__file__).resolve().parents[2]
MIGRATE_LOCK = 0x636D6D67  # "cmmg"


def alembic_config(database_url: str | None = None) -> Config:
    """The Alembic Config of this repository, optionally pointed at `database_url`."""
    ini = ROOT / "alembic.ini"
    config = Config(str(ini)) if ini.exists() else Config()
    config.set_main_option("script_location", str(ROOT / "alembic"))
    if database_url is not None:
        # ConfigParser interpolates %: a password containing one must survive.
        config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def _apply(connection: Connection, revision: str, downgrade: bool) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    if downgrade:
        command.downgrade(config, revision)
    else:
        command.upgrade(config, revision)


async def migrate(engine: AsyncEngine, revision: str = "head", downgrade: bool = False) -> None:
    """Upgrade (or downgrade) the database behind `engine` to `revision`."""
    postgres = engine.dialect.name == "postgresql"
    async with engine.connect() as connection:
        if postgres:
            await connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATE_LOCK})
            await connection.commit()
        else:
            await connection.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            await connection.run_sync(_apply, revision, downgrade)
            await connection.commit()
        finally:
            if postgres:
                await connection.rollback()
                await connection.execute(
                    text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATE_LOCK}
                )
                await connection.commit()


async def current_revision(engine: AsyncEngine) -> str | None:
    """The revision the database is at, or None before the first migration."""
    from alembic.runtime.migration import MigrationContext

    def _current(connection: Connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    async with engine.connect() as connection:
        return await connection.run_sync(_current)


class NotMigrated(RuntimeError):
    """The database is behind this version's schema, and this process does not migrate it."""


async def require_migrated(engine: AsyncEngine) -> None:
    """Raise NotMigrated when the database has no revision or an older one of ours.

    A process that does not migrate on start (PostgreSQL's default: a shared database is
    migrated once, by `context-manager migrate`) would otherwise fail on its first query with
    "relation … does not exist". A revision this version does not know is a newer one (a
    rolling upgrade migrated it first): that is let through."""
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory.from_config(alembic_config())
    head = scripts.get_current_head()
    current = await current_revision(engine)
    if current == head:
        return
    known = {script.revision for script in scripts.walk_revisions()}
    if current is not None and current not in known:
        return
    found = "no revision (never migrated)" if current is None else f"revision {current}"
    raise NotMigrated(
        f"the database is at {found}, this version needs {head}: run `context-manager migrate`"
        " first, or start with MIGRATE_ON_START=true"
    )
