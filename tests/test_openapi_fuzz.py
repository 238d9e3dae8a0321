"""Schemathesis over /openapi.json of a running service: no 5xx, and every response (status,
content type, body) is the one the document promises; invalid input is refused.

Bounded: 5 examples per operation and phase, one worker, a fixed seed — 10 to 30 s per
database. It drives the endpoints of the data API (sessions, agents, tasks, subtasks,
messages, actions, events, metrics).

A third run goes beyond what the document describes (tests/schemathesis_hooks.py): half the
bodies carry a value strict JSON cannot (NaN, Infinity, 1e400, a lone surrogate) somewhere
inside, half the `cursor` queries a forged cursor, and every error body must have the
documented shape. Fuzzing phase only (10 examples per operation, about 20 s per database): the
stateful phase would spend minutes chaining links that a poisoned create never yields.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.core.security import Role, TokenCodec
from tests.conftest import ServiceFactory
from tests.databases import BACKENDS, data_settings, fresh_database

CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
        "negative_data_rejection",
    ]
)
# A run covers every operation of the API; on two busy cores that can take minutes.
pytestmark = pytest.mark.timeout(360)
HOOKS = Path(__file__).with_name("schemathesis_hooks.py")
PATHS = (
    r"^/api/(sessions|agents|tasks|subtasks|messages|actions|events|metrics|channels"
    r"|reservations)"
)
# Long polls (claim wait_seconds, inbox wait) end quickly here: the fuzzer asks for 50 s.
QUICK = {"long_poll_max": 0.2, "log_level": "error"}


@pytest.fixture(params=BACKENDS)
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with fresh_database(request, tmp_path) as url:
        yield url


async def test_schemathesis_finds_nothing(
    database_url: str, start_service: ServiceFactory, tmp_path: Path
) -> None:
    service = await start_service(**data_settings(database_url), **QUICK)
    await _run_schemathesis(service.settings.api_port, tmp_path, [])


async def test_schemathesis_in_token_mode(start_service: ServiceFactory, tmp_path: Path) -> None:
    """The same run with AUTH_MODE=token and an admin's Bearer token (SQLite)."""
    secret = "z" * 64
    url = f"sqlite+aiosqlite:///{tmp_path / 'token.db'}"
    service = await start_service(
        **data_settings(url), **QUICK, auth_mode="token", secret_key=secret
    )
    token = TokenCodec(service.settings).create("fuzzer", role=Role.ADMIN, ttl=600)
    await _run_schemathesis(
        service.settings.api_port, tmp_path, ["--header", f"Authorization: Bearer {token}"]
    )


async def test_schemathesis_with_what_strict_json_cannot_carry(
    database_url: str, start_service: ServiceFactory, tmp_path: Path
) -> None:
    """Non-finite numbers, lone surrogates and forged cursors anywhere: never a 5xx."""
    service = await start_service(
        **data_settings(database_url), **{**QUICK, "log_level": "critical"}
    )
    await _run_schemathesis(
        service.settings.api_port,
        tmp_path,
        ["--phases", "fuzzing", "--max-examples", "10"],
        checks=f"{CHECKS},documented_error_body",
        # The hooks import tests.strict_json: the repository's root goes on the path.
        env={"SCHEMATHESIS_HOOKS": str(HOOKS), "PYTHONPATH": str(HOOKS.parents[1])},
    )


async def _run_schemathesis(
    port: int,
    tmp_path: Path,
    extra: list[str],
    checks: str = CHECKS,
    env: dict[str, str] | None = None,
) -> None:
    schema_url = f"http://127.0.0.1:{port}/openapi.json"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        schema_url,
        "--include-path-regex",
        PATHS,
        "--checks",
        checks,
        "--max-examples",
        "5",
        "--seed",
        "1",
        "--workers",
        "1",
        "--no-color",
        *extra,  # last: an option given again here wins
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=tmp_path,  # schemathesis may write a report or cache beside it
        env={**os.environ, **(env or {})},
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout=300)
    except TimeoutError:
        process.kill()
        await process.communicate()  # reap it and close its pipe
        raise
    text = output.decode(errors="replace")
    assert process.returncode == 0, text[-6000:]
    assert "passed" in text and "Tested: " in text
