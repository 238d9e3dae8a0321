"""Helpers of the MCP tests: the SDK's own client (`mcp.Client`) against a real server.

`two_agents_coordinate` is the end-to-end story, run over Streamable HTTP (test_mcp.py) and
over stdio (test_mcp_stdio.py) with the same body.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult

Connect = Callable[[str], AbstractAsyncContextManager[Client]]


@contextlib.asynccontextmanager
async def http_client(
    base: str, *, agent: str | None = None, token: str | None = None, mode: str = "auto"
) -> AsyncIterator[Client]:
    """A client of `base`/mcp as `agent` (open mode) or with `token`."""
    url = f"{base}/mcp" + (f"?agent_id={agent}" if agent else "")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=120)) as http:
        async with Client(streamable_http_client(url, http_client=http), mode=mode) as client:
            yield client


def body(result: CallToolResult) -> dict[str, Any]:
    assert result.structured_content is not None, result
    return result.structured_content


async def call(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    """A tool call that must succeed; its JSON result (with `pending`)."""
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, (tool, result.content)
    found = body(result)
    assert set(found["pending"]) == {"unread", "leases_expiring"}, found
    return found


async def refused(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    """A tool call that must fail as a tool error; its `error` object ({code, message, …})."""
    result = await client.call_tool(tool, arguments)
    assert result.is_error, (tool, result.content)
    error: dict[str, Any] = body(result)["error"]
    assert isinstance(error["code"], str) and error["message"], error
    assert "Traceback" not in error["message"]
    return error


async def two_agents_coordinate(connect: Connect) -> None:
    """A creates a task with a dependency; B claims the first and reserves paths; B messages
    A, whose wait wakes; B completes; the dependent becomes claimable and A claims it."""
    async with connect("agent-a") as a, connect("agent-b") as b:
        joined = await call(a, "register_agent", name="A", capabilities=["planning"])
        assert joined["agent"]["id"] == "agent-a"
        assert joined["leases"] == [] and joined["reservations"] == []
        await call(b, "register_agent", name="B", kind="coder", capabilities=["python"])

        first = (await call(a, "create_task", title="Write the parser", priority=5))["task"]
        second = (
            await call(a, "create_task", title="Ship it", depends_on=[first["id"]], priority=9)
        )["task"]
        ready = await call(a, "list_tasks", ready_only=True)
        assert [t["id"] for t in ready["items"]] == [first["id"]]

        claimed = await call(b, "claim_task", capabilities=[])
        assert claimed["task"]["id"] == first["id"]
        assert claimed["lease"]["agent_id"] == "agent-b"
        lease = claimed["lease"]["id"]
        # Nothing else is ready: the dependent waits for its dependency.
        assert (await call(a, "claim_task", capabilities=[])) | {"pending": None} == {
            "task": None,
            "lease": None,
            "pending": None,
        }

        reserved = await call(b, "reserve_paths", paths=["src/parser/**"], reason="parser")
        assert reserved["reservation"]["agent_id"] == "agent-b"
        seen = await call(a, "check_paths", paths=["src/parser/lexer.py", "docs/"])
        assert [len(p["reservations"]) for p in seen["paths"]] == [1, 0]
        conflict = await refused(a, "reserve_paths", paths=["src/parser/ast.py"])
        assert conflict["code"] == "RESERVATION_CONFLICT"
        assert conflict["conflicts"][0]["agent_id"] == "agent-b"

        # A waits for mail; B's message wakes it.
        waiting = asyncio.create_task(a.call_tool("wait_for_messages", {"timeout_seconds": 30}))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        sent_at = time.monotonic()
        sent = await call(b, "send_message", to_agent="agent-a", content="parser done soon")
        assert sent["message"]["from_agent"] == "agent-b"
        woke = body(await asyncio.wait_for(waiting, 10))
        assert time.monotonic() - sent_at < 5, "wait_for_messages did not wake"
        assert [m["content"] for m in woke["messages"]] == ["parser done soon"]
        assert woke["pending"]["unread"] == 1  # not acknowledged yet
        assert (await call(a, "ack_messages", up_to=woke["cursor"]))["pending"]["unread"] == 0

        await call(b, "add_subtask", task_id=first["id"], title="lexer")
        done = await call(b, "complete_task", task_id=first["id"], lease_id=lease, result={"ok": 1})
        assert done["task"]["status"] == "completed"
        lost = await refused(b, "complete_task", task_id=first["id"], lease_id=lease)
        assert lost["code"] == "LEASE_LOST"
        await call(b, "release_paths", reservation_id=reserved["reservation"]["id"])

        mine = await call(a, "claim_task", capabilities=[])
        assert mine["task"]["id"] == second["id"]
        assert mine["lease"]["agent_id"] == "agent-a"
        # A restarted A learns what it holds from register_agent.
        again = await call(a, "register_agent")
        assert [held["task"]["id"] for held in again["leases"]] == [second["id"]]
