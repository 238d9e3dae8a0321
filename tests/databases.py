"""A fresh database per test, on SQLite or PostgreSQL, for the data-layer tests.

PostgreSQL tests get their own database (``cm_test_<random>``, created from template0 through
the server of TEST_POSTGRES_URL and dropped with FORCE afterwards), so they never collide with
other tests running at the same time on the same server.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url

from app.server import Service

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def _plain(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@asynccontextmanager
async def postgres_database(postgres_url: str) -> AsyncIterator[str]:
    """A new, empty PostgreSQL database; yields its asyncpg SQLAlchemy URL."""
    name = f"cm_test_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(_plain(postgres_url))
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
    finally:
        await admin.close()
    url = make_url(postgres_url).set(drivername="postgresql+asyncpg", database=name)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        admin = await asyncpg.connect(_plain(postgres_url))
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@asynccontextmanager
async def fresh_database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """The URL of an empty database of the kind `request.param` names."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'data.db'}"
        return
    postgres_url: str = request.getfixturevalue("postgres_url")
    async with postgres_database(postgres_url) as url:
        yield url


def api(service: Service) -> httpx.AsyncClient:
    """An HTTP client on the service's REST port."""
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.settings.api_port}", timeout=10.0)


def data_settings(database_url: str, **overrides: Any) -> dict[str, Any]:
    """Service overrides for a data-layer test: this database, migrated on start, quick loops."""
    values: dict[str, Any] = {
        "database_url": database_url,
        "migrate_on_start": True,
        "bridge_poll_interval": 0.2,
        "message_sweep_interval": 0.2,
        "agent_flush_interval": 0.2,
    }
    values.update(overrides)
    return values
