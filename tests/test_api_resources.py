"""REST: sessions, agents, messages, actions and server-side publish — endpoints and errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import ClientFactory, ServiceFactory
from tests.databases import BACKENDS, api, data_settings, fresh_database


@pytest.fixture(params=BACKENDS)
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with fresh_database(request, tmp_path) as url:
        yield url


async def test_sessions(database_url: str, start_service: ServiceFactory) -> None:
    service = await start_service(**data_settings(database_url))
    async with api(service) as http:
        created = await http.post("/api/sessions", json={"id": "abc123", "name": "Release"})
        assert created.status_code == 201
        session = created.json()
        assert session["status"] == "active" and session["ended_at"] is None
        generated = (await http.post("/api/sessions", json={})).json()
        assert generated["id"].startswith("session_")
        assert (await http.post("/api/sessions", json={"id": "abc123"})).status_code == 409
        assert (await http.post("/api/sessions", json={"id": "a b"})).status_code == 422

        assert (await http.get("/api/sessions/abc123")).json() == session
        assert (await http.get("/api/sessions/nope")).status_code == 404

        ended = await http.patch("/api/sessions/abc123", json={"status": "ended"})
        assert ended.status_code == 200
        assert ended.json()["status"] == "ended" and ended.json()["ended_at"] is not None
        restart = await http.patch("/api/sessions/abc123", json={"status": "active"})
        assert restart.status_code == 409 and restart.json()["code"] == "ILLEGAL_TRANSITION"
        assert (await http.patch("/api/sessions/nope", json={"status": "ended"})).status_code == 404
        assert (await http.patch("/api/sessions/abc123", json={"status": "x"})).status_code == 422

        active = (await http.get("/api/sessions", params={"status": "active"})).json()
        assert [s["id"] for s in active["items"]] == [generated["id"]]
        everything = (await http.get("/api/sessions")).json()
        assert [s["id"] for s in everything["items"]] == ["abc123", generated["id"]]


async def test_agents_register_idempotent_and_presence(
    database_url: str, start_service: ServiceFactory, ws_client: ClientFactory
) -> None:
    service = await start_service(**data_settings(database_url))
    async with api(service) as http:
        first = await http.post("/api/agents", json={"id": "planner", "kind": "llm"})
        assert first.status_code == 201
        assert first.json()["status"] == "offline" and first.json()["online"] is False
        again = await http.post("/api/agents", json={"id": "planner", "name": "The planner"})
        assert again.status_code == 200
        assert again.json()["name"] == "The planner" and again.json()["kind"] == "llm"
        assert (await http.post("/api/agents", json={"name": "no id"})).status_code == 422
        assert (await http.get("/api/agents/ghost")).status_code == 404
        assert (await http.post("/api/agents/ghost/heartbeat")).status_code == 404

        # A REST heartbeat shows at once, though it is written in the next batch.
        beat = await http.post("/api/agents/planner/heartbeat")
        assert beat.status_code == 200 and beat.json()["last_seen"] is not None

        # An agent connecting over WebSocket appears online, from the live connection.
        client = await ws_client(service, agent_id="coder")
        for _ in range(100):  # upserted by the next (debounced) batch
            listed = (await http.get("/api/agents")).json()["items"]
            coder = next((a for a in listed if a["id"] == "coder"), None)
            if coder is not None:
                break
            await asyncio.sleep(0.05)
        assert coder is not None
        assert coder["online"] is True and coder["connections"] == 1
        await client.close()
        for _ in range(100):
            agent = (await http.get("/api/agents/coder")).json()
            if agent["status"] == "offline":
                break
            await asyncio.sleep(0.05)
        assert agent["status"] == "offline" and agent["online"] is False
        offline = (await http.get("/api/agents", params={"status": "offline"})).json()["items"]
        assert {a["id"] for a in offline} == {"planner", "coder"}


async def test_messages_inbox_read_once(database_url: str, start_service: ServiceFactory) -> None:
    service = await start_service(**data_settings(database_url))
    async with api(service) as http:
        sent = await http.post(
            "/api/messages",
            json={"from_agent": "a", "to_agent": "b", "content": "hi", "data": {"k": 1}},
        )
        assert sent.status_code == 201
        message = sent.json()
        assert message["id"].startswith("msg_") and message["read_at"] is None
        await http.post("/api/messages", json={"from_agent": "a", "to_agent": "c", "content": "x"})
        for body in (
            {"from_agent": "a", "to_agent": "b"},
            {"from_agent": "a", "to_agent": "b", "content": "x", "ttl_seconds": 0},
            {"from_agent": "a", "to_agent": "b b", "content": "x"},
            {"from_agent": "a", "to_agent": "b", "content": "x", "data": {"bad": "\u0000"}},
        ):
            assert (await http.post("/api/messages", json=body)).status_code == 422, body

        inbox = (await http.get("/api/messages", params={"to_agent": "b", "unread": "true"})).json()
        assert [m["id"] for m in inbox["items"]] == [message["id"]]

        read = await http.post(f"/api/messages/{message['id']}/read")
        assert read.status_code == 200 and read.json()["read_at"] is not None
        again = await http.post(f"/api/messages/{message['id']}/read")
        assert again.json()["read_at"] == read.json()["read_at"]  # idempotent
        assert (await http.post("/api/messages/nope/read")).status_code == 404
        assert (await http.get("/api/messages/nope")).status_code == 404
        assert (await http.get(f"/api/messages/{message['id']}")).json()["read_at"] is not None

        unread = (
            await http.get("/api/messages", params={"to_agent": "b", "unread": "true"})
        ).json()
        assert unread["items"] == []
        read_ones = (await http.get("/api/messages", params={"unread": "false"})).json()
        assert [m["id"] for m in read_ones["items"]] == [message["id"]]


async def test_message_ttl_expires_and_cannot_be_read(
    database_url: str, start_service: ServiceFactory
) -> None:
    service = await start_service(**data_settings(database_url))
    async with api(service) as http:
        message = (
            await http.post(
                "/api/messages",
                json={"from_agent": "a", "to_agent": "b", "content": "soon", "ttl_seconds": 1},
            )
        ).json()
        assert message["expires_at"] is not None
        for _ in range(100):
            row = (await http.get(f"/api/messages/{message['id']}")).json()
            if row["expired_at"] is not None:
                break
            await asyncio.sleep(0.05)
        assert row["expired_at"] is not None
        late = await http.post(f"/api/messages/{message['id']}/read")
        assert late.status_code == 409 and late.json()["code"] == "MESSAGE_EXPIRED"
        inbox = (await http.get("/api/messages", params={"to_agent": "b"})).json()
        assert inbox["items"] == []  # expired messages leave the inbox


async def test_actions(database_url: str, start_service: ServiceFactory) -> None:
    service = await start_service(**data_settings(database_url))
    async with api(service) as http:
        created = await http.post(
            "/api/actions", json={"agent_id": "coder", "kind": "file_edit", "detail": {"p": 1}}
        )
        assert created.status_code == 201
        assert created.json()["id"].startswith("act_") and created.json()["detail"] == {"p": 1}
        dup = await http.post(
            "/api/actions", json={"id": created.json()["id"], "agent_id": "c", "kind": "k"}
        )
        assert dup.status_code == 409
        assert (await http.post("/api/actions", json={"agent_id": "coder"})).status_code == 422


async def test_server_side_publish(
    database_url: str, start_service: ServiceFactory, ws_client: ClientFactory
) -> None:
    service = await start_service(**data_settings(database_url))
    listener = await ws_client(service)
    await listener.subscribe("topics/deployments")
    async with api(service) as http:
        published = await http.post(
            "/api/events",
            json={"channel": "topics/deployments", "event": "deploy.started", "data": {"v": 1}},
        )
        assert published.status_code == 200
        assert (
            published.json()["offset"] >= 1 and published.json()["channel"] == "topics/deployments"
        )
        frame = await listener.next_event("deploy.started")
        assert frame["channel"] == "topics/deployments" and frame["data"] == {"v": 1}

        bad_channel = await http.post("/api/events", json={"channel": "nope/x", "event": "a.b"})
        assert bad_channel.status_code == 422 and bad_channel.json()["code"] == "INVALID_CHANNEL"
        bad_event = await http.post("/api/events", json={"channel": "global", "event": "Bad"})
        assert bad_event.status_code == 422 and bad_event.json()["code"] == "INVALID_EVENT"
        assert (await http.post("/api/events", json={"channel": "global"})).status_code == 422
