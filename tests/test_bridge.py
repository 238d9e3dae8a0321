"""The bridge: every change of tasks, subtasks and messages reaches the WebSocket, once,
whoever wrote it — on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from tests.conftest import Client, ClientFactory, ServiceFactory
from tests.databases import BACKENDS, api, data_settings, fresh_database


@pytest.fixture(params=BACKENDS)
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with fresh_database(request, tmp_path) as url:
        yield url


async def collect(client: Client, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The next `count` event frames (not metric.update), then check nothing more comes."""
    events: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len(events) < count:
        frame = await client.next_event(timeout=max(0.05, deadline - loop.time()))
        if frame["event"] != "metric.update":
            events.append(frame)
    return events


async def execute_raw(database_url: str, statement: str) -> None:
    """Run SQL over a connection of its own, as psql or sqlite3 would."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":

        def run() -> None:
            with sqlite3.connect(url.database or "", timeout=10) as connection:
                connection.execute(statement)

        await asyncio.to_thread(run)
        return
    connection = await asyncpg.connect(
        url.set(drivername="postgresql").render_as_string(hide_password=False)
    )
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


async def test_rest_changes_reach_global_session_and_agent_channels(
    database_url: str, start_service: ServiceFactory, ws_client: ClientFactory
) -> None:
    service = await start_service(**data_settings(database_url))
    watchers = {}
    for channel in ("global", "sessions/s1", "agents/coder"):
        watchers[channel] = await ws_client(service)
        await watchers[channel].subscribe(channel)
    outsider = await ws_client(service)
    await outsider.subscribe("agents/someone-else")

    async with api(service) as http:
        sent_at = time.perf_counter()
        task = (
            await http.post(
                "/api/tasks", json={"title": "t", "session_id": "s1", "agent_id": "coder"}
            )
        ).json()
        latencies = []
        for channel, client in watchers.items():
            frame = (await collect(client, 1))[0]
            latencies.append(time.perf_counter() - sent_at)
            assert frame["channel"] == channel and frame["event"] == "task.created"
            data = frame["data"]
            assert data["task_id"] == task["id"] and data["status"] == "pending"
            assert data["session_id"] == "s1" and data["agent_id"] == "coder"
            assert data["created_at"] == task["created_at"]  # same ISO 8601 text as REST
            assert isinstance(data["event_id"], int)
        print(f"REST → WS latency: {max(latencies) * 1000:.1f} ms")

        await http.patch(f"/api/tasks/{task['id']}", json={"status": "in_progress"})
        await http.patch(f"/api/tasks/{task['id']}", json={"status": "completed"})
        other = (
            await http.post(
                "/api/tasks", json={"title": "u", "session_id": "s1", "agent_id": "coder"}
            )
        ).json()
        await http.patch(f"/api/tasks/{other['id']}", json={"status": "failed", "error": "boom"})
        sub = (await http.post(f"/api/tasks/{task['id']}/subtasks", json={"title": "s"})).json()
        message = (
            await http.post(
                "/api/messages",
                json={
                    "from_agent": "planner",
                    "to_agent": "coder",
                    "content": "hi",
                    "session_id": "s1",
                },
            )
        ).json()
        await http.post(f"/api/messages/{message['id']}/read")

    expected = [
        ("task.updated", "task_id", task["id"]),
        ("task.completed", "task_id", task["id"]),
        ("task.created", "task_id", other["id"]),
        ("task.failed", "task_id", other["id"]),
        ("subtask.created", "subtask_id", sub["id"]),
        ("message.new", "message_id", message["id"]),
        ("message.read", "message_id", message["id"]),
    ]
    for channel, client in watchers.items():
        frames = await collect(client, len(expected))
        got = [
            (f["event"], key, f["data"][key])
            for f, (_, key, _) in zip(frames, expected, strict=True)
        ]
        assert got == expected, channel
        assert frames[0]["data"]["previous_status"] == "pending"
        assert frames[3]["data"]["error"] == "boom"
        assert frames[4]["data"]["task_id"] == task["id"]  # a subtask routes via its task
        assert frames[5]["data"]["from_agent"] == "planner"
        assert frames[5]["data"]["content"] == "hi"
        await client.no_frame(0.3)  # once, not twice
    await outsider.no_frame(0.1)


async def test_raw_sql_update_from_another_connection(
    database_url: str, start_service: ServiceFactory, ws_client: ClientFactory
) -> None:
    service = await start_service(**data_settings(database_url))
    watcher = await ws_client(service)
    await watcher.subscribe("agents/coder")
    async with api(service) as http:
        task = (await http.post("/api/tasks", json={"title": "t", "agent_id": "coder"})).json()
        assert (await collect(watcher, 1))[0]["event"] == "task.created"

    await execute_raw(database_url, f"UPDATE tasks SET status = 'failed' WHERE id = '{task['id']}'")
    frame = (await collect(watcher, 1))[0]
    assert frame["event"] == "task.failed"
    assert frame["data"]["task_id"] == task["id"] and frame["data"]["status"] == "failed"

    await execute_raw(
        database_url,
        "INSERT INTO messages (id, from_agent, to_agent, content) "
        "VALUES ('raw-1', 'x', 'coder', 'psql')",
    )
    frame = (await collect(watcher, 1))[0]
    assert frame["event"] == "message.new" and frame["data"]["message_id"] == "raw-1"
    # An UPDATE that changes nothing is not an event.
    await execute_raw(database_url, f"UPDATE tasks SET status = status WHERE id = '{task['id']}'")
    await watcher.no_frame(0.6)


async def test_websocket_message_new_is_stored_then_delivered_once(
    database_url: str, start_service: ServiceFactory, ws_client: ClientFactory
) -> None:
    service = await start_service(**data_settings(database_url))
    recipient = await ws_client(service, agent_id="coder")
    await recipient.subscribe("agents/coder")
    sender = await ws_client(service, agent_id="planner", session_id="s9")
    ack = await sender.request(
        {
            "type": "publish",
            "channel": "agents/coder",
            "event": "message.new",
            "data": {"content": "Hello!", "ttl_seconds": 600},
            "id": "p1",
        }
    )
    assert ack["type"] == "ack" and ack["message_id"].startswith("msg_")
    frame = (await collect(recipient, 1))[0]
    assert frame["channel"] == "agents/coder" and frame["event"] == "message.new"
    data = frame["data"]
    assert data["message_id"] == ack["message_id"]
    assert (data["from_agent"], data["to_agent"], data["content"]) == ("planner", "coder", "Hello!")
    assert data["session_id"] == "s9" and data["expires_at"] is not None
    await recipient.no_frame(0.4)  # exactly once

    async with api(service) as http:
        inbox = (
            await http.get("/api/messages", params={"to_agent": "coder", "unread": "true"})
        ).json()
    assert [m["id"] for m in inbox["items"]] == [ack["message_id"]]
    assert inbox["items"][0]["data"] == {"content": "Hello!", "ttl_seconds": 600}

    # Non-string content is kept as JSON text; other events on agents/ are not stored.
    ack = await sender.request(
        {
            "type": "publish",
            "channel": "agents/coder",
            "event": "message.new",
            "data": [1, 2],
            "id": "p2",
        }
    )
    assert (await collect(recipient, 1))[0]["data"]["content"] == "[1,2]"
    ack = await sender.request(
        {
            "type": "publish",
            "channel": "agents/coder",
            "event": "note.added",
            "data": {},
            "id": "p3",
        }
    )
    assert "offset" in ack and "message_id" not in ack


async def test_concurrent_writers_every_event_once(
    database_url: str, start_service: ServiceFactory, ws_client: ClientFactory
) -> None:
    service = await start_service(**data_settings(database_url))
    watcher = await ws_client(service)
    await watcher.subscribe("global")
    async with api(service) as http:
        responses = await asyncio.gather(
            *(http.post("/api/tasks", json={"title": f"t{i}"}) for i in range(40))
        )
    created = {r.json()["id"] for r in responses}
    frames = await collect(watcher, 40, timeout=20)
    ids = [f["data"]["task_id"] for f in frames]
    assert set(ids) == created and len(ids) == 40
    offsets = [f["data"]["event_id"] for f in frames]
    assert offsets == sorted(offsets)  # delivered in outbox order
    await watcher.no_frame(0.3)


async def test_two_processes_one_database(
    database_url: str, start_service: ServiceFactory, ws_client: ClientFactory
) -> None:
    """A change made through one service reaches the clients of another; a message expires
    exactly once although both run a sweeper."""
    first = await start_service(**data_settings(database_url))
    second = await start_service(**data_settings(database_url, migrate_on_start=False))
    watchers: list[Client] = []
    for service in (first, second):
        client = await ws_client(service)
        await client.subscribe("agents/coder")
        watchers.append(client)
    async with api(first) as http:
        task = (await http.post("/api/tasks", json={"title": "t", "agent_id": "coder"})).json()
        for client in watchers:
            assert (await collect(client, 1))[0]["data"]["task_id"] == task["id"]
        message_ids = []
        for i in range(5):
            body = {"from_agent": "a", "to_agent": "coder", "content": str(i), "ttl_seconds": 1}
            message_ids.append((await http.post("/api/messages", json=body)).json()["id"])
    for client in watchers:
        frames = await collect(client, 10, timeout=15)
        expired = [f["data"]["message_id"] for f in frames if f["event"] == "message.expired"]
        assert sorted(expired) == sorted(message_ids)  # each exactly once
        await client.no_frame(0.5)
    assert await count_events(database_url, "message.expired") == 5


async def count_events(database_url: str, event: str) -> int:
    """Rows of the outbox with this event name."""
    url = make_url(database_url)
    query = f"SELECT count(*) FROM events WHERE event = '{event}'"
    if url.get_backend_name() == "sqlite":
        with sqlite3.connect(url.database or "") as connection:
            count: int = connection.execute(query).fetchone()[0]
            return count
    connection = await asyncpg.connect(
        url.set(drivername="postgresql").render_as_string(hide_password=False)
    )
    try:
        return int(await connection.fetchval(query))
    finally:
        await connection.close()


async def test_agents_follow_websocket_with_batched_heartbeats(
    database_url: str, start_service: ServiceFactory, ws_client: ClientFactory
) -> None:
    service = await start_service(
        **data_settings(database_url, heartbeat_interval=0, agent_flush_interval=0.5)
    )
    recorder = service.app.state.agents
    client = await ws_client(service, agent_id="pinger")
    async with api(service) as http:
        for _ in range(100):
            agent = await http.get("/api/agents/pinger")
            if agent.status_code == 200:
                break
            await asyncio.sleep(0.02)
        assert agent.json()["status"] == "online"
        first_seen = agent.json()["last_seen"]
        writes_before = recorder.rows_written
        for _ in range(30):
            await client.send({"type": "ping"})
            assert (await client.recv())["type"] == "pong"
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.8)
        # 30 pings in ~0.6 s: at most a couple of batched writes, not 30.
        assert recorder.rows_written - writes_before <= 3
        stored = (await http.get("/api/agents/pinger")).json()
        assert stored["last_seen"] > first_seen
