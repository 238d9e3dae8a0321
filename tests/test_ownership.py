"""Token mode over REST: every cell of the ownership table (docs/security.md), on both databases.

Agent `a` (its session `s-a`) acts against agent `b`'s data; the dashboard role reads and never
writes; an admin does all. Each cell is a request with the status it must get; a refused write
must also change nothing, which the tests after the table check where a write could leak.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.core.security import Role, TokenCodec
from app.server import Service
from tests.conftest import ClientFactory, ServiceFactory
from tests.databases import BACKENDS, data_settings, fresh_database

SECRET = "s" * 64


@pytest.fixture(params=BACKENDS)
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with fresh_database(request, tmp_path) as url:
        yield url


@dataclass(frozen=True)
class Cell:
    who: str  # a, b, dashboard, admin
    method: str
    path: str
    expect: int
    body: dict[str, Any] | None = None
    params: dict[str, str] | None = None

    def __str__(self) -> str:
        return f"{self.who} {self.method} {self.path} {self.body or self.params or ''}"


class Board:
    """A service in token mode with one token per identity and the fixtures of the table."""

    def __init__(self, service: Service, http: httpx.AsyncClient) -> None:
        self.service = service
        self.http = http
        codec = TokenCodec(service.settings)
        self.tokens = {
            "a": codec.create("a", session_id="s-a"),
            "b": codec.create("b", session_id="s-b"),
            "dashboard": codec.create("wall", role=Role.DASHBOARD),
            "admin": codec.create("root", role=Role.ADMIN),
        }

    async def call(
        self,
        who: str,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"}
        return await self.http.request(method, path, json=body, params=params, headers=headers)

    async def admin(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = await self.call("admin", method, path, body)
        assert response.status_code < 300, response.text
        return response.json()

    async def seed(self) -> None:
        for ident, agent in (("t-b", "b"), ("t-a", "a"), ("t-none", None)):
            await self.admin("POST", "/api/tasks", {"id": ident, "title": ident, "agent_id": agent})
        await self.admin("POST", "/api/tasks/t-b/subtasks", {"id": "st-b", "title": "b's"})
        await self.admin(
            "POST", "/api/tasks/t-b/subtasks", {"id": "st-b-for-a", "title": "x", "agent_id": "a"}
        )
        await self.admin("POST", "/api/tasks/t-a/subtasks", {"id": "st-a", "title": "a's"})
        for ident, sender, recipient in (
            ("m-cb", "c", "b"),
            ("m-ca", "c", "a"),
            ("m-ab", "a", "b"),
        ):
            await self.admin(
                "POST",
                "/api/messages",
                {"id": ident, "from_agent": sender, "to_agent": recipient, "content": ident},
            )
        for agent in ("a", "b"):
            await self.admin("POST", "/api/agents", {"id": agent})
        for session in ("s-a", "s-b"):
            await self.admin("POST", "/api/sessions", {"id": session})

    async def check(self, cells: list[Cell]) -> None:
        wrong = []
        for cell in cells:
            response = await self.call(cell.who, cell.method, cell.path, cell.body, cell.params)
            if response.status_code != cell.expect:
                wrong.append(f"{cell}: {response.status_code} (want {cell.expect}) {response.text}")
            elif cell.expect == 403:
                assert response.json()["code"] == "FORBIDDEN", response.text
        assert not wrong, "\n".join(wrong)


@pytest.fixture
async def board(database_url: str, start_service: ServiceFactory) -> AsyncIterator[Board]:
    service = await start_service(
        **data_settings(database_url), auth_mode="token", secret_key=SECRET
    )
    port = service.settings.api_port
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
        board = Board(service, http)
        await board.seed()
        yield board


READS = [
    Cell(who, "GET", path, 200)
    for who in ("a", "dashboard", "admin")
    for path in (
        "/api/tasks",
        "/api/tasks/t-b",
        "/api/tasks/t-b/subtasks",
        "/api/agents",
        "/api/agents/b",
        "/api/sessions",
        "/api/sessions/s-b",
    )
]

MESSAGES = [
    # Reading one message: an agent only its own (to or from it).
    Cell("a", "GET", "/api/messages/m-cb", 403),
    Cell("a", "GET", "/api/messages/m-ca", 200),
    Cell("a", "GET", "/api/messages/m-ab", 200),
    Cell("dashboard", "GET", "/api/messages/m-cb", 200),
    Cell("admin", "GET", "/api/messages/m-cb", 200),
    # Marking read: the recipient's receipt.
    Cell("a", "POST", "/api/messages/m-cb/read", 403),
    Cell("a", "POST", "/api/messages/m-ab/read", 403),
    Cell("a", "POST", "/api/messages/m-ca/read", 200),
    Cell("dashboard", "POST", "/api/messages/m-ca/read", 403),
    Cell("admin", "POST", "/api/messages/m-cb/read", 200),
    # Sending: as itself.
    Cell("a", "POST", "/api/messages", 403, {"from_agent": "b", "to_agent": "c", "content": ""}),
    Cell("a", "POST", "/api/messages", 201, {"from_agent": "a", "to_agent": "c", "content": ""}),
    Cell("a", "POST", "/api/messages", 201, {"to_agent": "c", "content": "x"}),
    Cell("dashboard", "POST", "/api/messages", 403, {"to_agent": "c", "content": "x"}),
    Cell(
        "admin", "POST", "/api/messages", 201, {"from_agent": "b", "to_agent": "c", "content": "x"}
    ),
]

TASKS = [
    Cell("a", "POST", "/api/tasks", 201, {"title": "for b", "agent_id": "b"}),
    Cell("dashboard", "POST", "/api/tasks", 403, {"title": "x"}),
    Cell("a", "PATCH", "/api/tasks/t-b", 403, {"status": "completed", "result": "forged"}),
    Cell("a", "PATCH", "/api/tasks/t-b", 403, {"title": "t-b"}),  # even a no-op
    Cell("a", "PATCH", "/api/tasks/t-a", 200, {"status": "in_progress"}),
    Cell("a", "PATCH", "/api/tasks/t-none", 200, {"priority": 3}),
    Cell("dashboard", "PATCH", "/api/tasks/t-none", 403, {"priority": 4}),
    Cell("admin", "PATCH", "/api/tasks/t-b", 200, {"priority": 5}),
    # Subtasks: of a task it may change, or assigned to it.
    Cell("a", "POST", "/api/tasks/t-b/subtasks", 403, {"title": "x"}),
    Cell("a", "POST", "/api/tasks/t-a/subtasks", 201, {"title": "x"}),
    Cell("a", "POST", "/api/tasks/t-none/subtasks", 201, {"title": "x"}),
    Cell("dashboard", "POST", "/api/tasks/t-a/subtasks", 403, {"title": "x"}),
    Cell("admin", "POST", "/api/tasks/t-b/subtasks", 201, {"title": "x"}),
    Cell("a", "PATCH", "/api/subtasks/st-b", 403, {"status": "completed"}),
    Cell("a", "PATCH", "/api/subtasks/st-b-for-a", 200, {"status": "completed"}),
    Cell("a", "PATCH", "/api/subtasks/st-a", 200, {"status": "in_progress"}),
    Cell("dashboard", "PATCH", "/api/subtasks/st-a", 403, {"status": "completed"}),
    Cell("admin", "PATCH", "/api/subtasks/st-b", 200, {"status": "in_progress"}),
]

AGENTS = [
    Cell("a", "POST", "/api/agents", 403, {"id": "b", "name": "I am b"}),
    Cell("a", "POST", "/api/agents", 200, {"id": "a", "name": "a"}),
    Cell("a", "POST", "/api/agents", 200, {"kind": "coder"}),  # id from the token
    Cell("dashboard", "POST", "/api/agents", 403, {"id": "wall"}),
    Cell("admin", "POST", "/api/agents", 200, {"id": "b", "kind": "reviewer"}),
    Cell("a", "POST", "/api/agents/b/heartbeat", 403),
    Cell("a", "POST", "/api/agents/a/heartbeat", 200),
    Cell("dashboard", "POST", "/api/agents/a/heartbeat", 403),
    Cell("admin", "POST", "/api/agents/b/heartbeat", 200),
    Cell("a", "POST", "/api/actions", 403, {"agent_id": "b", "kind": "file_edit"}),
    Cell("a", "POST", "/api/actions", 201, {"agent_id": "a", "kind": "file_edit"}),
    Cell("a", "POST", "/api/actions", 201, {"kind": "file_edit"}),
    Cell("dashboard", "POST", "/api/actions", 403, {"kind": "file_edit"}),
    Cell("admin", "POST", "/api/actions", 201, {"agent_id": "b", "kind": "file_edit"}),
]

SESSIONS = [
    Cell("a", "POST", "/api/sessions", 201, {"name": "new"}),
    Cell("dashboard", "POST", "/api/sessions", 403, {"name": "new"}),
    Cell("a", "PATCH", "/api/sessions/s-b", 403, {"name": "taken"}),
    Cell("a", "PATCH", "/api/sessions/s-a", 200, {"name": "mine"}),
    Cell("dashboard", "PATCH", "/api/sessions/s-a", 403, {"name": "x"}),
    Cell("admin", "PATCH", "/api/sessions/s-b", 200, {"name": "renamed"}),
]


def _event(channel: str, event: str) -> dict[str, Any]:
    return {"channel": channel, "event": event, "data": {"forged": True}}


EVENTS = [
    # An agent follows the WebSocket publish rules: no server event anywhere.
    Cell("a", "POST", "/api/events", 403, _event("agents/b", "message.new")),
    Cell("a", "POST", "/api/events", 403, _event("agents/b", "task.completed")),
    Cell("a", "POST", "/api/events", 403, _event("topics/x", "message.read")),
    Cell("a", "POST", "/api/events", 403, _event("topics/x", "agent.connected")),
    Cell("a", "POST", "/api/events", 403, _event("topics/x", "subtask.created")),
    Cell("a", "POST", "/api/events", 403, _event("metrics", "metric.update")),
    Cell("a", "POST", "/api/events", 403, _event("global", "deploy.done")),
    Cell("a", "POST", "/api/events", 403, _event("sessions/s-b", "note.added")),
    Cell("a", "POST", "/api/events", 200, _event("sessions/s-a", "note.added")),
    Cell("a", "POST", "/api/events", 200, _event("agents/b", "note.added")),
    Cell("a", "POST", "/api/events", 200, _event("topics/x", "note.added")),
    Cell("dashboard", "POST", "/api/events", 403, _event("topics/x", "note.added")),
    Cell("admin", "POST", "/api/events", 200, _event("global", "task.completed")),
    Cell("admin", "POST", "/api/events", 200, _event("agents/b", "message.new")),
    # Reading a channel: the subscribe rules.
    Cell("a", "GET", "/api/channels/agents/b/history", 403),
    Cell("a", "GET", "/api/channels/agents/a/history", 200),
    Cell("a", "GET", "/api/channels/sessions/s-b/presence", 403),
    Cell("a", "GET", "/api/channels/sessions/s-a/presence", 200),
    Cell("dashboard", "GET", "/api/channels/agents/b/history", 200),
    Cell("admin", "GET", "/api/channels/agents/b/history", 200),
]

TABLE = {
    "reads": READS,
    "messages": MESSAGES,
    "tasks": TASKS,
    "agents": AGENTS,
    "sessions": SESSIONS,
    "events": EVENTS,
}


@pytest.mark.parametrize("group", list(TABLE))
async def test_ownership_table(board: Board, group: str) -> None:
    await board.check(TABLE[group])


async def test_an_agent_lists_only_its_own_mail(board: Board) -> None:
    for params in ({}, {"to_agent": "b"}, {"from_agent": "c"}, {"unread": "true"}):
        listed = await board.call("a", "GET", "/api/messages", params=params)
        assert listed.status_code == 200
        for message in listed.json()["items"]:
            assert "a" in (message["from_agent"], message["to_agent"]), (params, message)
    everything = await board.call("a", "GET", "/api/messages")
    assert {m["id"] for m in everything.json()["items"]} == {"m-ca", "m-ab"}
    to_b = await board.call("a", "GET", "/api/messages", params={"to_agent": "b"})
    assert [m["id"] for m in to_b.json()["items"]] == ["m-ab"]  # what a sent b, not b's mail
    dashboard = await board.call("dashboard", "GET", "/api/messages", params={"to_agent": "b"})
    assert {m["id"] for m in dashboard.json()["items"]} == {"m-cb", "m-ab"}


async def test_refused_writes_change_nothing(board: Board) -> None:
    before = await board.admin("GET", "/api/tasks/t-b")
    forged = await board.call("a", "PATCH", "/api/tasks/t-b", {"status": "completed"})
    assert forged.status_code == 403
    assert await board.admin("GET", "/api/tasks/t-b") == before

    assert (await board.call("a", "POST", "/api/messages/m-cb/read")).status_code == 403
    assert (await board.admin("GET", "/api/messages/m-cb"))["read_at"] is None

    sent = await board.call(
        "a", "POST", "/api/messages", {"from_agent": "b", "to_agent": "c", "content": "forged"}
    )
    assert sent.status_code == 403
    mail = await board.admin("GET", "/api/messages?to_agent=c")
    assert all(m["content"] != "forged" for m in mail["items"])

    renamed = await board.call("a", "POST", "/api/agents", {"id": "b", "name": "I am b"})
    assert renamed.status_code == 403
    assert (await board.admin("GET", "/api/agents/b"))["name"] is None

    # A forged system event never reaches the victim's history.
    event = _event("agents/b", "message.new")
    assert (await board.call("a", "POST", "/api/events", event)).status_code == 403
    history = await board.admin("GET", "/api/channels/agents/b/history")
    assert all(not (p["data"] or {}).get("forged") for p in history["publications"])


async def test_sender_comes_from_the_token(board: Board) -> None:
    sent = await board.call("a", "POST", "/api/messages", {"to_agent": "b", "content": "hi"})
    assert sent.status_code == 201 and sent.json()["from_agent"] == "a"
    action = await board.call("a", "POST", "/api/actions", {"kind": "tool_call"})
    assert action.status_code == 201 and action.json()["agent_id"] == "a"
    registered = await board.call("a", "POST", "/api/agents", {"name": "Agent A"})
    assert registered.status_code == 200 and registered.json()["id"] == "a"


async def test_websocket_direct_message_is_sent_as_the_connection(
    board: Board, ws_client: ClientFactory
) -> None:
    """The WebSocket door goes through the same domain call: the sender is the token's agent,
    whatever the message data claims."""
    client = await ws_client(board.service, token=board.tokens["a"])
    ack = await client.request(
        {
            "type": "publish",
            "channel": "agents/b",
            "event": "message.new",
            "data": {"content": "hello", "from_agent": "b"},
            "id": "dm",
        }
    )
    assert ack["type"] == "ack", ack
    stored = await board.admin("GET", f"/api/messages/{ack['message_id']}")
    assert stored["from_agent"] == "a" and stored["to_agent"] == "b"


async def test_agent_work_ownership(board: Board) -> None:
    """Claims, leases, the inbox and reservations: an agent acts only as itself."""
    # b claims its task (t-b is assigned to b); a may not use b's lease.
    held = await board.call("b", "POST", "/api/tasks/claim", {"capabilities": []})
    assert held.status_code == 200, held.text
    lease = held.json()["lease"]["id"]
    task_id = held.json()["task"]["id"]
    reserved = await board.call("b", "POST", "/api/reservations", {"paths": ["src/b/**"]})
    assert reserved.status_code == 201
    reservation = reserved.json()["id"]
    await board.check(
        [
            Cell("a", "POST", "/api/tasks/claim", 403, {"agent_id": "b"}),
            Cell("dashboard", "POST", "/api/tasks/claim", 403, {}),
            Cell("a", "POST", f"/api/tasks/{task_id}/complete", 403, {"lease_id": lease}),
            Cell("a", "POST", f"/api/tasks/{task_id}/fail", 403, {"lease_id": lease, "error": "x"}),
            Cell("a", "POST", f"/api/tasks/{task_id}/release", 403, {"lease_id": lease}),
            Cell("a", "POST", f"/api/tasks/{task_id}/lease", 403, {"lease_id": lease}),
            Cell("dashboard", "POST", f"/api/tasks/{task_id}/lease", 403, {"lease_id": lease}),
            Cell("b", "POST", f"/api/tasks/{task_id}/lease", 200, {"lease_id": lease}),
            Cell("a", "GET", "/api/agents/b/inbox", 403),
            Cell("a", "GET", "/api/agents/a/inbox", 200),
            Cell("dashboard", "GET", "/api/agents/b/inbox", 200),
            Cell("admin", "GET", "/api/agents/b/inbox", 200),
            Cell("a", "POST", "/api/agents/b/inbox/ack", 403, {"up_to": 0}),
            Cell("a", "POST", "/api/agents/a/inbox/ack", 200, {"up_to": 1}),
            Cell("dashboard", "POST", "/api/agents/a/inbox/ack", 403, {"up_to": 1}),
            Cell("a", "POST", "/api/reservations", 403, {"agent_id": "b", "paths": ["x"]}),
            Cell("a", "POST", "/api/reservations", 201, {"paths": ["src/a/**"]}),
            Cell("dashboard", "POST", "/api/reservations", 403, {"paths": ["y"]}),
            Cell("a", "POST", f"/api/reservations/{reservation}/renew", 403, {}),
            Cell("a", "DELETE", f"/api/reservations/{reservation}", 403),
            Cell("dashboard", "GET", "/api/reservations", 200),
            Cell("a", "GET", "/api/reservations", 200),
            Cell("admin", "DELETE", f"/api/reservations/{reservation}", 204),
            Cell("admin", "POST", "/api/tasks/claim", 200, {"agent_id": "b"}),  # t-none
        ]
    )
    # The refused lease calls changed nothing: b's lease still holds, with its holder.
    still = await board.admin("GET", f"/api/tasks/{task_id}")
    assert still["status"] == "in_progress" and still["lease"]["id"] == lease
