"""The server's events (app/events.py): every name the server can emit is declared by a
resource, and the reserved set is what the declarations say.

The emitted names are collected from what is really there: the triggers that the migrations
create in a fresh database (SQLite here, PostgreSQL too when TEST_POSTGRES_URL is set), and the
publish calls in app/ that name their event with a literal. A resource added without its
declaration fails here.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import text

from app.core.config import Settings
from app.db.engine import create_engine
from app.db.migrate import migrate
from app.events import DECLARED, declaration, is_reserved
from app.realtime.broker.postgres import asyncpg_dsn
from app.realtime.channels import is_valid_event

APP = Path(__file__).resolve().parent.parent / "app"
# A quoted SQL literal in the event grammar ('task.created').
_SQL_EVENT = re.compile(r"'([a-z][a-z0-9_-]*(?:\.[a-z][a-z0-9_-]*)+)'")
# Functions that publish; their literal string arguments in the event grammar are event names.
_PUBLISHERS = re.compile(r"publish|announce")
# Triggers whose SQL mentions the outbox feed the bridge.
_OUTBOX = re.compile(r"\bevents\b|cm_emit_event")

# What the scans must at least find today, so that a scan broken into finding nothing fails.
KNOWN_TRIGGER_EVENTS = {
    "task.created",
    "task.updated",
    "task.completed",
    "task.failed",
    "subtask.created",
    "subtask.failed",
    "message.new",
    "message.read",
    "message.expired",
}


def undeclared(events: set[str]) -> set[str]:
    return {event for event in events if declaration(event) is None}


# --- what the triggers emit ------------------------------------------------------------------


async def sqlite_trigger_events(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(
                text("SELECT sql FROM sqlite_master WHERE type = 'trigger'")
            )
            found: set[str] = set()
            for (sql,) in rows:
                if _OUTBOX.search(sql):
                    found |= set(_SQL_EVENT.findall(sql))
            return found
    finally:
        await engine.dispose()


async def migrated_sqlite(tmp_path: Path) -> str:
    url = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'events.db'}").database_url
    engine = create_engine(url)
    try:
        await migrate(engine)
    finally:
        await engine.dispose()
    return url


async def test_every_event_a_sqlite_trigger_emits_is_declared(tmp_path: Path) -> None:
    emitted = await sqlite_trigger_events(await migrated_sqlite(tmp_path))
    assert emitted >= KNOWN_TRIGGER_EVENTS
    assert undeclared(emitted) == set()


async def test_a_trigger_with_an_undeclared_event_is_caught(tmp_path: Path) -> None:
    """The check above can fail: a new resource's trigger, its events not declared."""
    url = await migrated_sqlite(tmp_path)
    engine = create_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.execute(
                text(
                    "CREATE TRIGGER widgets_event_insert AFTER INSERT ON sessions BEGIN "
                    "INSERT INTO events (event, entity, entity_id, data, created_at) "
                    "VALUES ('widget.created', 'widget', NEW.id, '{}', 0); END"
                )
            )
    finally:
        await engine.dispose()
    assert undeclared(await sqlite_trigger_events(url)) == {"widget.created"}


async def test_every_event_a_postgres_trigger_emits_is_declared(migrated_postgres_url: str) -> None:
    connection = await asyncpg.connect(asyncpg_dsn(migrated_postgres_url))
    try:
        rows = await connection.fetch(
            "SELECT pg_get_triggerdef(t.oid) AS trigger, pg_get_functiondef(t.tgfoid) AS body "
            "FROM pg_trigger t WHERE NOT t.tgisinternal"
        )
    finally:
        await connection.close()
    emitted: set[str] = set()
    for row in rows:
        sql = f"{row['trigger']}\n{row['body']}"
        if _OUTBOX.search(sql):
            emitted |= set(_SQL_EVENT.findall(sql))
    assert emitted >= KNOWN_TRIGGER_EVENTS
    assert undeclared(emitted) == set()


# --- what the server's code publishes --------------------------------------------------------


def published_literals(source: str) -> set[str]:
    """Event names given as literals (or module constants) to a publish/announce call."""
    tree = ast.parse(source)
    constants = {
        target.id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    found: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if not _PUBLISHERS.search(name):
            continue
        for arg in [*node.args, *(keyword.value for keyword in node.keywords)]:
            value = None
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                value = arg.value
            elif isinstance(arg, ast.Name):
                value = constants.get(arg.id)
            if value is not None and is_valid_event(value):
                found.add(value)
    return found


def test_every_event_the_server_code_publishes_is_declared() -> None:
    emitted: set[str] = set()
    for path in APP.rglob("*.py"):
        if "client" in path.relative_to(APP).parts[0]:
            continue  # the SDKs publish on a client's behalf
        emitted |= published_literals(path.read_text())
    assert undeclared(emitted) == set()


def test_the_code_scan_finds_literals_and_constants() -> None:
    source = (
        'EVENT = "widget.renamed"\n'
        "async def f(manager):\n"
        '    await manager.publish("global", "widget.created", {})\n'
        "    await manager.publish(channel, EVENT, {})\n"
        '    await manager.announce_agent_event("agent.connected", "a1", {})\n'
        '    logger.info("not.an.event")\n'
    )
    assert published_literals(source) == {"widget.created", "widget.renamed", "agent.connected"}
    assert undeclared(published_literals(source)) == {"widget.created", "widget.renamed"}


# --- the declarations ------------------------------------------------------------------------


def test_declared_names_follow_the_grammar_and_their_family() -> None:
    for declared in DECLARED:
        assert declared.names, declared
        for name in declared.names:
            assert is_valid_event(name), name
            if declared.family is not None:
                assert name.startswith(f"{declared.family}."), name


def test_no_event_is_both_reserved_and_open() -> None:
    for declared in DECLARED:
        for name in declared.names:
            claims = {d.reserved for d in DECLARED if d.covers(name)}
            assert claims == {declared.reserved}, name


@pytest.mark.parametrize(
    ("event", "reserved"),
    [
        ("task.created", True),
        ("task.anything_new", True),  # a family claims every name under it
        ("subtask.failed", True),
        ("agent.connected", True),
        ("metric.update", True),
        ("message.read", True),
        ("message.expired", True),
        # Sent with the WebSocket's "send" command (a publish on agents/{id}), never published.
        ("message.new", True),
        ("message.other", True),  # the family
        ("reservation.created", True),
        ("task.claimed", True),
        ("note.added", False),
        ("tasks.created", False),
    ],
)
def test_reserved_set(event: str, reserved: bool) -> None:
    assert is_reserved(event) is reserved
