"""The inbox: a gapless seq per recipient, reads after a cursor, a durable ack, long polls."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from tests.conftest import ServiceFactory
from tests.databases import BACKENDS, api, data_settings, fresh_database


@pytest.fixture(params=BACKENDS)
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with fresh_database(request, tmp_path) as url:
        yield url


async def send(http: httpx.AsyncClient, to: str, content: str, **extra: Any) -> dict[str, Any]:
    body = {"from_agent": "boss", "to_agent": to, "content": content, **extra}
    response = await http.post("/api/messages", json=body)
    assert response.status_code == 201, response.text
    sent: dict[str, Any] = response.json()
    return sent


async def inbox(http: httpx.AsyncClient, agent: str, **params: Any) -> dict[str, Any]:
    response = await http.get(f"/api/agents/{agent}/inbox", params=params)
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()
    return page


async def test_seq_cursor_and_ack(database_url: str, start_service: ServiceFactory) -> None:
    service = await start_service(**data_settings(database_url))
    async with api(service) as http:
        seqs = [(await send(http, "coder", f"m{i}"))["seq"] for i in range(5)]
        assert seqs == [1, 2, 3, 4, 5]
        assert (await send(http, "other", "x"))["seq"] == 1  # per recipient

        page = await inbox(http, "coder", limit=2)
        assert [m["content"] for m in page["messages"]] == ["m0", "m1"] and page["cursor"] == 2
        page = await inbox(http, "coder", after=page["cursor"])
        assert [m["seq"] for m in page["messages"]] == [3, 4, 5] and page["cursor"] == 5
        # Reading marks nothing, and does not move the acknowledged position.
        assert (await inbox(http, "coder"))["cursor"] == 5
        assert [m["seq"] for m in (await inbox(http, "coder"))["messages"]] == [1, 2, 3, 4, 5]
        assert all(m["read_at"] is None for m in (await inbox(http, "coder"))["messages"])

        acked = await http.post("/api/agents/coder/inbox/ack", json={"up_to": 3})
        assert acked.json() == {"agent_id": "coder", "acked": 3, "last_seq": 5}
        assert [m["seq"] for m in (await inbox(http, "coder"))["messages"]] == [4, 5]
        back = await http.post("/api/agents/coder/inbox/ack", json={"up_to": 1})
        assert back.json()["acked"] == 3  # only forwards
        past = await http.post("/api/agents/coder/inbox/ack", json={"up_to": 9})
        assert past.status_code == 422 and past.json()["code"] == "INVALID_CURSOR"
        empty = await inbox(http, "nobody")
        assert empty == {"messages": [], "cursor": 0}
        nothing_new = await inbox(http, "coder", after=5)
        assert nothing_new == {"messages": [], "cursor": 5}


async def test_a_send_answers_what_a_read_then_finds(
    database_url: str, start_service: ServiceFactory
) -> None:
    """A message's answer is built from the values it inserted (and the seq its batch took),
    not read back: it must equal a GET, for every field a sender can give."""
    service = await start_service(**data_settings(database_url))
    async with api(service) as http:
        first = await send(http, "coder", "plain")
        full = await send(
            http,
            "coder",
            "full",
            id="msg-full",
            data={"k": [1, "x"], "n": 1.5},
            session_id="s1",
            ttl_seconds=600,
            thread_id="t1",
            reply_to=first["id"],
        )
        answers = [first, full]
        answers += await asyncio.gather(*(send(http, f"r{i % 3}", f"c{i}") for i in range(9)))
        for answer in answers:
            assert answer == (await http.get(f"/api/messages/{answer['id']}")).json()
        assert full["seq"] == 2 and full["expires_at"] is not None and full["read_at"] is None
        assert sorted(a["seq"] for a in answers[2:] if a["to_agent"] == "r1") == [1, 2, 3]


async def test_expired_messages_are_skipped_with_their_seq(
    database_url: str, start_service: ServiceFactory
) -> None:
    service = await start_service(**data_settings(database_url))
    async with api(service) as http:
        await send(http, "coder", "soon gone", ttl_seconds=1)
        await send(http, "coder", "stays")
        await asyncio.sleep(1.2)
        page = await inbox(http, "coder")
        assert [(m["seq"], m["content"]) for m in page["messages"]] == [(2, "stays")]
        assert page["cursor"] == 2


async def test_a_waiting_read_wakes_on_a_new_message(
    database_url: str, start_service: ServiceFactory
) -> None:
    service = await start_service(**data_settings(database_url))
    async with api(service) as http:
        # The wait is long and the bound generous (a loaded CI machine has taken 3 s from
        # send to wake, against 0.05 s here): what is asserted is that the message.new
        # publication woke the read, well before its wait was over.
        waiting = asyncio.create_task(inbox(http, "coder", wait=40))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        started = time.monotonic()
        await send(http, "coder", "wake up")
        page = await asyncio.wait_for(waiting, 30)
        woke = time.monotonic() - started
        assert [m["content"] for m in page["messages"]] == ["wake up"]
        assert woke < 15, woke
        started = time.monotonic()
        assert (await inbox(http, "coder", after=1, wait=0.5))["messages"] == []
        assert 0.4 < time.monotonic() - started < 10


async def test_threads_and_raw_sql_messages_get_a_seq(
    database_url: str, start_service: ServiceFactory
) -> None:
    service = await start_service(**data_settings(database_url))
    async with api(service) as http:
        first = await send(http, "coder", "question", thread_id="th-1")
        answer = await send(http, "coder", "more", thread_id="th-1", reply_to=first["id"])
        await send(http, "coder", "unrelated")
        assert answer["reply_to"] == first["id"]
        thread = (await http.get("/api/messages", params={"thread_id": "th-1"})).json()
        assert [m["id"] for m in thread["items"]] == [first["id"], answer["id"]]

        # A writer outside the API (psql) still gets the next seq, from the trigger.
        engine = service.app.state.engine
        async with engine.begin() as connection:
            await connection.execute(
                text(
                    "INSERT INTO messages (id, from_agent, to_agent, content) "
                    "VALUES ('raw-1', 'psql', 'coder', 'by hand')"
                )
            )
        page = await inbox(http, "coder", after=3)
        assert [(m["id"], m["seq"]) for m in page["messages"]] == [("raw-1", 4)]
        assert (await send(http, "coder", "next"))["seq"] == 5
