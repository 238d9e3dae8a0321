"""The MCP server over Streamable HTTP (app/mcp/): the SDK's client against a real service."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from app.core.security import Role, TokenCodec
from app.mcp import door
from app.server import Service
from tests.conftest import ServiceFactory
from tests.mcp_helpers import body, call, http_client, refused, two_agents_coordinate

SECRET = "m" * 64


def base(service: Service) -> str:
    return f"http://127.0.0.1:{service.settings.api_port}"


def token(service: Service, agent: str, role: Role = Role.AGENT) -> str:
    return TokenCodec(service.settings).create(agent, role=role)


@pytest.mark.parametrize("auth", ["open", "token"])
async def test_two_agents_coordinate(start_service: ServiceFactory, auth: str) -> None:
    service = await start_service(auth_mode=auth, secret_key=SECRET if auth == "token" else None)

    @contextlib.asynccontextmanager
    async def connect(agent: str) -> AsyncIterator[Client]:
        if auth == "token":
            connected = http_client(base(service), token=token(service, agent))
        else:
            connected = http_client(base(service), agent=agent)
        async with connected as client:
            yield client

    await two_agents_coordinate(connect)


async def test_a_token_acts_only_as_its_agent(start_service: ServiceFactory) -> None:
    """B's token, through every tool, never acts as A: what names a writer is the token."""
    service = await start_service(auth_mode="token", secret_key=SECRET)
    async with (
        http_client(base(service), token=token(service, "agent-a")) as a,
        http_client(base(service), token=token(service, "agent-b")) as b,
    ):
        await call(a, "register_agent", name="A")
        task = (await call(a, "create_task", title="A's work"))["task"]
        lease = (await call(a, "claim_task"))["lease"]["id"]
        subtask = (await call(a, "add_subtask", task_id=task["id"], title="step"))["subtask"]
        mine = (await call(a, "create_task", title="assigned", session_id=None))["task"]
        reservation = (await call(a, "reserve_paths", paths=["a/**"]))["reservation"]
        await call(b, "send_message", to_agent="agent-a", content="for A only")

        # What names the caller is never an argument: unknown ones are refused, not obeyed.
        as_a = await refused(b, "register_agent", name="x", id="agent-a")
        assert as_a["code"] == "INVALID"
        forged = await refused(
            b, "send_message", to_agent="agent-c", content="x", from_agent="agent-a"
        )
        assert forged["code"] == "INVALID"
        assert (await call(b, "register_agent", name="B"))["agent"]["id"] == "agent-b"
        assert (await call(b, "heartbeat", status="working"))["agent"]["id"] == "agent-b"
        sent = await call(b, "send_message", to_agent="agent-c", content="hi")
        assert sent["message"]["from_agent"] == "agent-b"

        # B's inbox is B's: A's mail is not in it, and acking moves only B's position.
        assert (await call(b, "fetch_inbox"))["messages"] == []
        assert (await call(b, "wait_for_messages", timeout_seconds=0))["messages"] == []
        assert (await refused(b, "ack_messages", up_to=1))["code"] == "INVALID_CURSOR"
        assert (await call(a, "fetch_inbox"))["pending"]["unread"] == 1

        # A's lease, subtask, reservation: FORBIDDEN to B.
        for tool, arguments in (
            ("renew_lease", {"task_id": task["id"], "lease_id": lease}),
            ("complete_task", {"task_id": task["id"], "lease_id": lease}),
            ("fail_task", {"task_id": task["id"], "lease_id": lease, "error": "x"}),
            ("release_task", {"task_id": task["id"], "lease_id": lease}),
            ("release_paths", {"reservation_id": reservation["id"]}),
        ):
            assert (await refused(b, tool, **arguments))["code"] == "FORBIDDEN", tool
        # A claimed the task without an assignee: it is A's only through its lease, so B may
        # add steps to unassigned tasks but not change a subtask assigned to A.
        await call(a, "update_subtask", subtask_id=subtask["id"], status="in_progress")
        claimed_by_b = await call(b, "claim_task")
        assert claimed_by_b["task"]["id"] == mine["id"]
        assert claimed_by_b["lease"]["agent_id"] == "agent-b"

        # A's private channel and system events stay closed to B.
        assert (await refused(b, "read_channel", channel="agents/agent-a"))["code"] == "FORBIDDEN"
        forged_event = await refused(b, "publish", channel="global", event="task.completed")
        assert forged_event["code"] == "FORBIDDEN"
        assert (await call(b, "read_channel", channel="agents/agent-b"))[
            "channel"
        ] == "agents/agent-b"

        # And what B did is B's: A's task is still leased to A, A's reservation still held.
        held = await call(a, "register_agent")
        assert [h["task"]["id"] for h in held["leases"]] == [task["id"]]
        assert [r["id"] for r in held["reservations"]] == [reservation["id"]]

        # The resources: B reads no other agent's inbox, and listens to none.
        with pytest.raises(MCPError) as denied:
            await b.read_resource("context-manager://agents/agent-a/inbox")
        assert denied.value.error.data["code"] == "FORBIDDEN"
        with pytest.raises(MCPError) as refused_listen:
            async with b.listen(resource_subscriptions=["context-manager://agents/agent-a/inbox"]):
                pass
        assert refused_listen.value.error.data == {"code": "FORBIDDEN"}

        # A dashboard token reads but writes nothing.
        async with http_client(base(service), token=token(service, "dash", Role.DASHBOARD)) as d:
            assert (await call(d, "list_tasks"))["items"]
            assert (await refused(d, "create_task", title="no"))["code"] == "FORBIDDEN"


async def test_token_mode_refuses_calls_without_a_token(start_service: ServiceFactory) -> None:
    service = await start_service(auth_mode="token", secret_key=SECRET)
    async with httpx.AsyncClient(base_url=base(service)) as http:
        request = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
        headers = {"Accept": "application/json, text/event-stream"}
        missing = await http.post("/mcp", json=request, headers=headers)
        assert missing.status_code == 401
        challenge = missing.headers["www-authenticate"]
        assert challenge.startswith("Bearer ") and "resource_metadata=" in challenge
        bad = await http.post(
            "/mcp", json=request, headers={**headers, "Authorization": "Bearer x"}
        )
        assert bad.status_code == 401
        metadata = await http.get("/.well-known/oauth-protected-resource/mcp")
        assert metadata.status_code == 200
        assert metadata.json()["resource"] == f"{base(service)}/mcp"


async def test_open_mode_needs_the_agent_to_name_itself(service: Service) -> None:
    async with http_client(base(service)) as anonymous:
        error = await refused(anonymous, "list_tasks")
        assert error["code"] == "AGENT_ID_REQUIRED" and "agent_id" in error["message"]
    async with http_client(base(service), agent="not a valid id!") as bad:
        assert (await refused(bad, "list_tasks"))["code"] == "INVALID_AGENT_ID"


async def test_errors_are_coded_tool_errors(service: Service) -> None:
    async with http_client(base(service), agent="coder") as client:
        wrong_type = await refused(client, "create_task", title="x", priority="high")
        assert wrong_type["code"] == "INVALID" and "priority" in wrong_type["message"]
        bad_status = await refused(client, "list_tasks", status="done")
        assert bad_status["code"] == "INVALID"
        too_long = await refused(client, "create_task", title="x" * 501)
        assert too_long["code"] == "INVALID" and too_long["problems"][0]["field"] == "title"
        cycle = await refused(client, "create_task", title="x", depends_on=["task_nope"])
        assert cycle["code"] not in ("INTERNAL", "INVALID_ARGUMENTS")
        missing = await refused(
            client, "complete_task", task_id="task_x", lease_id="lease_" + "0" * 32
        )
        assert missing["code"] == "NOT_FOUND"
        bad_lease = await refused(client, "renew_lease", task_id="task_x", lease_id="nope")
        assert bad_lease["code"] == "INVALID"
        assert (await refused(client, "heartbeat"))["code"] == "NOT_FOUND"  # not registered
        assert (await refused(client, "no_such_tool"))["code"] == "UNKNOWN_TOOL"
        bad_channel = await refused(client, "publish", channel="nope!", event="a.b")
        assert bad_channel["code"] == "INVALID_CHANNEL"


async def test_legacy_clients_are_served_statelessly(service: Service) -> None:
    """A handshake-era client (2025-11-25) gets the same tools, without a session to keep."""
    async with http_client(base(service), agent="old", mode="legacy") as client:
        assert client.protocol_version != "2026-07-28"
        names = {tool.name for tool in (await client.list_tools()).tools}
        assert {"register_agent", "wait_for_messages", "claim_task", "check_paths"} <= names
        assert (await call(client, "register_agent"))["agent"]["id"] == "old"
    async with httpx.AsyncClient(base_url=base(service)) as http:
        # No Mcp-Session-Id: any node serves the next request.
        answer = await http.post(
            "/mcp?agent_id=old",
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            headers={"Accept": "application/json, text/event-stream"},
        )
        assert answer.status_code == 200 and "mcp-session-id" not in answer.headers
        # Nor a standalone GET stream to hold open: 405, as the spec lets a server answer.
        stream = await http.get("/mcp?agent_id=old", headers={"Accept": "text/event-stream"})
        assert stream.status_code == 405


async def test_wait_for_messages_streams_progress(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While it waits it reports progress, so the answer is an SSE stream, not one body."""
    monkeypatch.setattr(door, "PROGRESS_INTERVAL", 0.2)
    async with http_client(base(service), agent="waiter") as client:
        beats: list[float] = []

        async def progress(progress: float, total: float | None, message: str | None) -> None:
            beats.append(progress)

        result = await client.call_tool(
            "wait_for_messages", {"timeout_seconds": 1}, progress_callback=progress
        )
        assert body(result)["messages"] == []
        assert len(beats) >= 2 and beats == sorted(beats)
    request = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {
            "name": "wait_for_messages",
            "arguments": {"timeout_seconds": 1},
            "_meta": {"progressToken": "p7"},
        },
    }
    async with httpx.AsyncClient(base_url=base(service), timeout=10) as http:
        async with http.stream(
            "POST",
            "/mcp?agent_id=waiter",
            json=request,
            headers={"Accept": "application/json, text/event-stream"},
        ) as answer:
            assert answer.headers["content-type"].startswith("text/event-stream")
            events = [
                orjson.loads(line[5:])
                async for line in answer.aiter_lines()
                if line.startswith("data:")
            ]
    assert events[0]["method"] == "notifications/progress"
    assert events[0]["params"]["progressToken"] == "p7"
    assert events[-1]["id"] == 7 and events[-1]["result"]["structuredContent"]["messages"] == []


async def test_wait_for_messages_returns_at_once_with_mail(service: Service) -> None:
    async with (
        http_client(base(service), agent="r") as reader,
        http_client(base(service), agent="s") as sender,
    ):
        await call(sender, "send_message", to_agent="r", content="already here")
        started = time.monotonic()
        got = await call(reader, "wait_for_messages", timeout_seconds=20)
        assert time.monotonic() - started < 3
        assert [m["content"] for m in got["messages"]] == ["already here"]
        assert got["pending"]["unread"] == 1


async def test_resources_and_their_updates(service: Service) -> None:
    async with (
        http_client(base(service), agent="reader") as reader,
        http_client(base(service), agent="writer") as writer,
    ):
        inbox_uri = "context-manager://agents/reader/inbox"
        templates = {
            t.uri_template for t in (await reader.list_resource_templates()).resource_templates
        }
        assert templates == {
            "context-manager://agents/{agent_id}/inbox",
            "context-manager://tasks/{task_id}",
        }
        task = (await call(writer, "create_task", title="watched"))["task"]
        task_uri = f"context-manager://tasks/{task['id']}"
        async with reader.listen(resource_subscriptions=[inbox_uri, task_uri]) as updates:
            events: list[Any] = []

            async def collect() -> None:
                async for event in updates:
                    events.append(event.uri)

            collector = asyncio.create_task(collect())
            try:
                await call(writer, "send_message", to_agent="reader", content="ping")
                await _until(lambda: inbox_uri in events)
                claimed = await call(writer, "claim_task")
                assert claimed["task"]["id"] == task["id"]
                await _until(lambda: task_uri in events)
            finally:
                collector.cancel()
        inbox = orjson.loads((await reader.read_resource(inbox_uri)).contents[0].text)
        assert [m["content"] for m in inbox["messages"]] == ["ping"]
        assert inbox["position"] == {"agent_id": "reader", "acked": 0, "last_seq": 1}
        read_task = orjson.loads((await reader.read_resource(task_uri)).contents[0].text)
        assert read_task["status"] == "in_progress" and read_task["lease"]["agent_id"] == "writer"
        with pytest.raises(MCPError) as missing:
            await reader.read_resource("context-manager://tasks/task_nope")
        assert missing.value.error.data["code"] == "NOT_FOUND"


async def _until(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "no update arrived"
        await asyncio.sleep(0.02)


async def test_hosts_and_origins_follow_host_and_allowed_origins(
    start_service: ServiceFactory,
) -> None:
    service = await start_service(allowed_origins=["https://board.example"])
    request = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    headers = {"Accept": "application/json, text/event-stream"}
    async with httpx.AsyncClient(base_url=base(service)) as http:
        rebound = await http.post(
            "/mcp?agent_id=a", json=request, headers={**headers, "Host": "evil.example"}
        )
        assert rebound.status_code == 421
        foreign = await http.post(
            "/mcp?agent_id=a", json=request, headers={**headers, "Origin": "https://evil.example"}
        )
        assert foreign.status_code == 403
        allowed = await http.post(
            "/mcp?agent_id=a", json=request, headers={**headers, "Origin": "https://board.example"}
        )
        assert allowed.status_code == 200


async def test_legacy_clients_with_a_token(start_service: ServiceFactory) -> None:
    service = await start_service(auth_mode="token", secret_key=SECRET)
    async with http_client(base(service), token=token(service, "legacy-a"), mode="legacy") as a:
        assert (await call(a, "register_agent"))["agent"]["id"] == "legacy-a"
        sent = await call(a, "send_message", to_agent="legacy-b", content="x")
        assert sent["message"]["from_agent"] == "legacy-a"
