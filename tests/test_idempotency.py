"""Idempotency-Key on POST: a retry gets the first answer and writes nothing (both databases)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from app.core.security import TokenCodec
from tests.conftest import ServiceFactory
from tests.databases import BACKENDS, api, data_settings, fresh_database


@pytest.fixture(params=BACKENDS)
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with fresh_database(request, tmp_path) as url:
        yield url


async def count(http: httpx.AsyncClient, path: str) -> int:
    return len((await http.get(path, params={"limit": 500})).json()["items"])


async def test_a_retry_replays_the_first_answer(
    database_url: str, start_service: ServiceFactory
) -> None:
    service = await start_service(**data_settings(database_url))
    async with api(service) as http:
        key = {"Idempotency-Key": "retry-1"}
        first = await http.post("/api/tasks", json={"title": "once"}, headers=key)
        assert first.status_code == 201 and "idempotent-replayed" not in first.headers
        again = await http.post("/api/tasks", json={"title": "once"}, headers=key)
        assert again.status_code == 201 and again.headers["idempotent-replayed"] == "true"
        assert again.json() == first.json()
        assert await count(http, "/api/tasks") == 1

        other = await http.post("/api/tasks", json={"title": "twice"}, headers=key)
        assert other.status_code == 422 and other.json()["code"] == "IDEMPOTENCY_KEY_REUSED"
        elsewhere = await http.post(
            "/api/messages", json={"from_agent": "a", "to_agent": "b", "content": "x"}, headers=key
        )
        assert elsewhere.status_code == 422  # the same key on another request
        # Errors are answers too: a 409 is replayed, not retried into a 201.
        taken = {"Idempotency-Key": "dup"}
        await http.post("/api/tasks", json={"id": "t1", "title": "x"})
        conflict = await http.post("/api/tasks", json={"id": "t1", "title": "x"}, headers=taken)
        assert conflict.status_code == 409
        assert (
            await http.post("/api/tasks", json={"id": "t1", "title": "x"}, headers=taken)
        ).json() == conflict.json()

        # Without a key, every POST is its own.
        for _ in range(2):
            await http.post("/api/tasks", json={"title": "free"})
        assert await count(http, "/api/tasks") == 4
        bad = await http.post("/api/tasks", json={"title": "x"}, headers={"Idempotency-Key": ""})
        assert bad.status_code == 422 and bad.json()["code"] == "INVALID_IDEMPOTENCY_KEY"


async def test_concurrent_retries_write_once(
    database_url: str, start_service: ServiceFactory
) -> None:
    service = await start_service(**data_settings(database_url))
    async with api(service) as http:
        key = {"Idempotency-Key": "storm"}
        body = {"from_agent": "a", "to_agent": "b", "content": "hello"}
        answers = await asyncio.gather(
            *(http.post("/api/messages", json=body, headers=key) for _ in range(10))
        )
        statuses = sorted(a.status_code for a in answers)
        assert set(statuses) <= {201, 409}, statuses
        assert statuses.count(201) >= 1
        ids = {a.json()["id"] for a in answers if a.status_code == 201}
        assert len(ids) == 1  # every 201 is the same message
        assert await count(http, "/api/messages") == 1
        replay = await http.post("/api/messages", json=body, headers=key)
        assert replay.status_code == 201 and replay.json()["id"] in ids


async def test_keys_belong_to_their_agent(database_url: str, start_service: ServiceFactory) -> None:
    service = await start_service(
        **data_settings(database_url), auth_mode="token", secret_key="k" * 40
    )
    codec = TokenCodec(service.settings)
    async with api(service) as http:

        def as_agent(agent: str) -> dict[str, str]:
            token = codec.create(agent)
            return {"Authorization": f"Bearer {token}", "Idempotency-Key": "k1"}

        a = await http.post("/api/tasks", json={"title": "a's"}, headers=as_agent("a"))
        b = await http.post("/api/tasks", json={"title": "b's"}, headers=as_agent("b"))
        assert a.status_code == b.status_code == 201
        assert a.json()["id"] != b.json()["id"]  # one key, two agents: two tasks
