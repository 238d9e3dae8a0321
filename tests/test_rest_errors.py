"""REST input that once answered 500: a documented 4xx now, the connection kept, nothing stored.

Python's JSON parser (Starlette's) reads NaN, Infinity, 1e400 and lone surrogates, which strict
JSON cannot carry back: FastAPI's 422 handler echoed them and failed. A forged cursor whose
timestamp an offset pushes beyond year 1 or 9999 overflowed in the database layer, and one whose
id holds NUL failed in PostgreSQL. The issue's strings first, then the whole class (hypothesis,
tests/strict_json.py), on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.exceptions import RequestValidationError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.api import errors
from app.server import Service
from tests.conftest import ServiceFactory
from tests.databases import BACKENDS, api, data_settings, fresh_database
from tests.strict_json import FORGED_CURSOR, cursor_of, dumps, poisoned

JSON = {"content-type": "application/json"}
# The issue's cursors: a timestamp whose UTC time is before year 1, or after year 9999.
ISSUE_CURSORS = [
    cursor_of(["0001-01-01T00:00:00+23:59", "x"]),
    cursor_of(["9999-12-31T23:59:59-23:59", "x"]),
]
LISTS = ["/api/tasks", "/api/messages", "/api/sessions", "/api/agents", "/api/tasks/t1/subtasks"]


@pytest.fixture(params=BACKENDS)
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with fresh_database(request, tmp_path) as url:
        yield url


@pytest.fixture
async def data_service(database_url: str, start_service: ServiceFactory) -> Service:
    # `critical`: a regression shows as a 500 in the assertion, not a traceback per example.
    return await start_service(
        surfaces=("api",), **data_settings(database_url), log_level="critical"
    )


def assert_validation_error(reply: httpx.Response, code: str = "VALIDATION_ERROR") -> list[Any]:
    """A 422 in the one shape of every 422; its `detail` list."""
    assert reply.status_code == 422, (reply.status_code, reply.text)
    body = reply.json()
    assert body["code"] == code, body
    assert isinstance(body["detail"], list) and body["detail"], body
    for item in body["detail"]:
        assert isinstance(item["loc"], list), item
        assert isinstance(item["msg"], str) and isinstance(item["type"], str), item
    detail: list[Any] = body["detail"]
    return detail


class KeptAlive:
    """HTTP/1.1 over one TCP connection, to see that a request does not cost the connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        head = f"{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {len(body)}\r\n"
        self.writer.write(head.encode() + b"Content-Type: application/json\r\n\r\n" + body)
        await self.writer.drain()
        lines = (await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 5)).split(b"\r\n")
        length = next(
            int(line.split(b":")[1]) for line in lines if line.lower().startswith(b"content-length")
        )
        payload = await asyncio.wait_for(self.reader.readexactly(length), 5)
        return int(lines[0].split()[1]), payload


# --- the issue's strings -------------------------------------------------------------------------

ISSUE_BODIES = [
    # path, body, where the error is, the input as the 422 shows it
    ("/api/tasks", '{"title":"n","priority":NaN}', ["body", "priority"], "NaN"),
    ("/api/tasks", '{"title":"n","priority":1e400}', ["body", "priority"], "Infinity"),
    (
        "/api/messages",
        '{"from_agent":"a","to_agent":"b","content":"c","ttl_seconds":Infinity}',
        ["body", "ttl_seconds"],
        "Infinity",
    ),
    ("/api/events", '{"channel":NaN}', ["body", "channel"], "NaN"),
    ("/api/tasks", '{"title":"\\ud800"}', ["body", "title"], "\\ud800"),
    ("/api/tasks", '{"title":"n","payload":{"a":[-Infinity]}}', ["body", "payload"], None),
    ("/api/sessions", '{"metadata":{"\\udfff":1}}', ["body", "metadata"], None),
]


async def test_the_issues_bodies_are_422_and_keep_the_connection(data_service: Service) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", data_service.settings.api_port)
    connection = KeptAlive(reader, writer)
    try:
        for path, body, loc, shown in ISSUE_BODIES:
            status, payload = await connection.request("POST", path, body.encode())
            reply = httpx.Response(status, content=payload, headers=JSON)
            detail = assert_validation_error(reply)
            [error] = [item for item in detail if item["loc"] == loc]
            if shown is not None:
                assert error["input"] == shown, (body, detail)
        # The same connection still serves: nothing was stored, nothing was published.
        for path in ("/api/tasks", "/api/messages", "/api/sessions"):
            status, payload = await connection.request("GET", path)
            assert status == 200 and json.loads(payload)["items"] == [], (path, payload)
    finally:
        writer.close()


async def test_the_issues_cursors_are_invalid_cursor(data_service: Service) -> None:
    async with api(data_service) as http:
        assert (await http.post("/api/tasks", json={"id": "t1", "title": "one"})).status_code == 201
        nul = cursor_of(["2026-01-30T12:00:00+00:00", "t\u0000"])  # PostgreSQL text holds no NUL
        for path in LISTS:
            for cursor in [*ISSUE_CURSORS, nul]:
                for order in ("asc", "desc"):
                    reply = await http.get(path, params={"cursor": cursor, "order": order})
                    detail = assert_validation_error(reply, "INVALID_CURSOR")
                    assert detail[0]["loc"] == ["query", "cursor"]
        # The calendar's ends themselves, in UTC, are positions like any other.
        for stamp in ("0001-01-01T00:00:00+00:00", "9999-12-31T23:59:59.999999+00:00"):
            reply = await http.get("/api/tasks", params={"cursor": cursor_of([stamp, "x"])})
            assert reply.status_code == 200, reply.text
        # A cursor the API handed out still pages.
        assert (await http.post("/api/tasks", json={"id": "t2", "title": "two"})).status_code == 201
        first = (await http.get("/api/tasks", params={"limit": 1})).json()
        rest = (await http.get("/api/tasks", params={"cursor": first["next_cursor"]})).json()
        assert [t["id"] for t in first["items"] + rest["items"]] == ["t1", "t2"]


async def test_json_values_reach_the_database_or_a_422(data_service: Service) -> None:
    """What strict JSON allows is stored and read back; what it does not is refused, unstored."""
    edges: dict[str, Any] = {
        "u64": 2**64 - 1,
        "i64": -(2**63),
        "max": 1.7976931348623157e308,
        "tiny": 5e-324,
        "emoji": "\U0001f600\ufeff\u2028",
        "key\u2028": [1.5, 1e20, 1e-7, None, True],
        "deep": json.loads("[" * 30 + "]" * 30),
    }
    async with api(data_service) as http:
        created = await http.post("/api/tasks", json={"title": "edges", "payload": edges})
        assert created.status_code == 201, created.text
        stored = (await http.get(f"/api/tasks/{created.json()['id']}")).json()["payload"]
        # PostgreSQL's jsonb writes numbers as decimals (1e308 comes back as 10**308): same number.
        assert stored.keys() == edges.keys()
        for key, value in edges.items():
            if isinstance(value, float):
                assert float(stored[key]) == value, (key, stored[key])
            else:
                assert stored[key] == value, key
        refused = [
            '{"payload":{"a":{"b":[1,NaN]}}}',
            '{"payload":{"a":1e400}}',
            '{"payload":{"a":"x\\udbff"}}',
            '{"payload":{"\\ud800":1}}',
            '{"payload":{"a":"\\u0000"}}',
            '{"payload":{"a":18446744073709551616}}',
            '{"payload":' + "[" * 40 + "]" * 40 + "}",
        ]
        for body in refused:
            reply = await http.post("/api/tasks", content=body[:-1] + ',"title":"n"}', headers=JSON)
            assert_validation_error(reply)
        assert len((await http.get("/api/tasks")).json()["items"]) == 1


async def test_a_since_epoch_with_nul_is_a_422(
    database_url: str, start_service: ServiceFactory
) -> None:
    """The PostgreSQL broker compares `since_epoch` in SQL: a NUL in it failed with a 500."""
    broker = "postgres" if database_url.startswith("postgresql") else "memory"
    service = await start_service(
        surfaces=("api",), **data_settings(database_url), broker=broker, log_level="critical"
    )
    async with api(service) as http:
        path = "/api/channels/topics/a/history"
        reply = await http.get(path, params={"since_offset": 1, "since_epoch": "e\u0000"})
        [error] = assert_validation_error(reply)
        assert error["loc"] == ["query", "since_epoch"]
        assert (await http.get(path, params={"since_offset": 1, "since_epoch": "e"})).is_success


async def test_a_channel_with_a_line_feed_is_a_documented_404(data_service: Service) -> None:
    """`{channel:path}` never matches a line feed: no route, and the document says so."""
    async with api(data_service) as http:
        document = (await http.get("/openapi.json")).json()
        for suffix in ("history", "presence"):
            responses = document["paths"][f"/api/channels/{{channel}}/{suffix}"]["get"]["responses"]
            assert "404" in responses, suffix
            reply = await http.get(f"/api/channels/topics/a%0Ab/{suffix}")
            assert reply.status_code == 404 and reply.json() == {"detail": "Not Found"}


# --- the classes ---------------------------------------------------------------------------------

BODIES: list[tuple[str, str, dict[str, Any]]] = [
    ("POST", "/api/tasks", {"title": "t", "priority": 2, "payload": {"a": [1, {"b": "c"}]}}),
    ("PATCH", "/api/tasks/t1", {"status": "in_progress", "result": {"pr": [42]}}),
    ("POST", "/api/tasks/t1/subtasks", {"title": "s", "payload": {"k": {"v": 1}}}),
    (
        "POST",
        "/api/messages",
        {"from_agent": "a", "to_agent": "b", "content": "c", "data": {"x": [1]}, "ttl_seconds": 60},
    ),
    ("POST", "/api/sessions", {"name": "s", "metadata": {"team": {"size": 3}}}),
    ("PATCH", "/api/sessions/s1", {"name": "s", "metadata": {"a": [1]}}),
    ("POST", "/api/agents", {"id": "ag", "kind": "coder", "metadata": {"m": [True]}}),
    ("POST", "/api/actions", {"agent_id": "ag", "kind": "edit", "detail": {"path": ["a"]}}),
    ("POST", "/api/events", {"channel": "topics/t", "event": "note.x", "data": {"v": [1.5]}}),
]


@pytest.fixture
async def seeded(data_service: Service) -> Service:
    """The service with the rows the PATCHes and the subtask list name (once per test)."""
    async with api(data_service) as http:
        assert (await http.post("/api/tasks", json={"id": "t1", "title": "one"})).status_code == 201
        assert (await http.post("/api/sessions", json={"id": "s1"})).status_code == 201
    return data_service


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=st.sampled_from(BODIES).flatmap(lambda c: st.tuples(st.just(c), poisoned(c[2]))))
async def test_no_body_strict_json_cannot_carry_reaches_a_5xx(
    seeded: Service, case: tuple[tuple[str, str, dict[str, Any]], Any]
) -> None:
    (method, path, _valid), body = case
    async with api(seeded) as http:
        reply = await http.request(method, path, content=dumps(body).encode(), headers=JSON)
        assert_validation_error(reply)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(path=st.sampled_from(LISTS), cursor=FORGED_CURSOR, order=st.sampled_from(["asc", "desc"]))
async def test_no_forged_cursor_reaches_a_5xx(
    seeded: Service, path: str, cursor: str, order: str
) -> None:
    async with api(seeded) as http:
        reply = await http.get(path, params={"cursor": cursor, "order": order})
        if reply.status_code != 200:
            assert_validation_error(reply, "INVALID_CURSOR")


# --- the handler itself --------------------------------------------------------------------------


def test_encodable_spells_out_what_strict_json_cannot_carry() -> None:
    value = {"n": float("nan"), "i": [float("inf"), -float("inf")], "\ud800k": "a\udfffb", "ok": 1}
    assert errors.encodable(value) == {
        "n": "NaN",
        "i": ["Infinity", "-Infinity"],
        "\\ud800k": "a\\udfffb",
        "ok": 1,
    }


async def test_an_input_too_deep_to_show_is_left_out() -> None:
    deep: list[Any] = []
    for _ in range(100_000):
        deep = [deep]
    error = {"type": "value_error", "loc": ("body", "payload"), "msg": "too deep", "input": deep}
    reply = await errors._validation_failed(None, RequestValidationError([error]))  # type: ignore[arg-type]
    assert reply.status_code == 422
    assert json.loads(bytes(reply.body)) == {
        "detail": [{"type": "value_error", "loc": ["body", "payload"], "msg": "too deep"}],
        "code": "VALIDATION_ERROR",
    }
