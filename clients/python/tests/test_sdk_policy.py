"""Reconnect policy, backoff, event globs, and what the client imports."""

from __future__ import annotations

import subprocess
import sys

from context_manager_client import Backoff, event_matcher, should_reconnect
from context_manager_client.realtime import reconnect_hint


def test_backoff_grows_caps_and_jitters() -> None:
    backoff = Backoff(initial=0.5, maximum=4, factor=2, jitter=0.5)
    assert [backoff.delay(n, lambda: 0.0) for n in range(5)] == [0.5, 1, 2, 4, 4]
    # Equal jitter: never below half of the base delay.
    assert backoff.delay(3, lambda: 1.0) == 2
    assert backoff.delay(10_000, lambda: 0.0) == 4


def test_reconnect_policy_follows_the_close_code_ranges() -> None:
    for code in (None, 1001, 1006, 1011, 1012, 3001, 3005, 3008, 4000):
        assert should_reconnect(code), code
    for code in (1000, 1007, 1008, 1009, 3500, 3503, 3504, 3999):
        assert not should_reconnect(code), code


def test_a_draining_server_names_its_delay() -> None:
    assert reconnect_hint("reconnect:250", 10) == 0.25
    assert reconnect_hint("reconnect:99999", 10) == 10  # capped by the backoff's maximum
    assert reconnect_hint("going away", 10) is None


def test_event_glob() -> None:
    matches = event_matcher("task.*, *.failed")
    assert matches("task.created") and matches("subtask.failed")
    assert not matches("subtask.created") and not matches("message.new")
    assert event_matcher(None)("anything.at_all")


def test_imports_nothing_but_websockets_and_httpx() -> None:
    """Importing the client loads no server package and no third-party module besides its two
    dependencies (and theirs)."""
    code = (
        "import sys, context_manager_client, context_manager_client.rest\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'app','fastapi','starlette','sqlalchemy','pydantic','pydantic_settings','uvicorn',"
        "'orjson','alembic','asyncpg','aiosqlite','redis'})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"server modules imported by the client: {out.stdout}"
