"""MCP on two API nodes sharing PostgreSQL and Redis: any node serves any call.

Real `context-manager serve` processes (tests/test_cluster.py's `Nodes`); the SDK's client
over Streamable HTTP. A wait on one node is woken by a message sent through the other; a call
in flight on a node that is shut down fails cleanly, and the same call succeeds on the other
node; the restarted node serves the same state.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from mcp.shared.exceptions import MCPError

from tests.mcp_helpers import body, call, http_client
from tests.test_cluster import Node, Nodes, _drop_prefix

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.timeout(120)]


@pytest.fixture
async def pg_nodes(
    tmp_path: Path, migrated_postgres_url: str, redis_url: str
) -> AsyncIterator[Nodes]:
    prefix = f"t{secrets.token_hex(5)}"
    group = Nodes(
        tmp_path,
        {
            "BROKER": "redis",
            "REDIS_URL": redis_url,
            "BROKER_PREFIX": prefix,
            "DATABASE_URL": migrated_postgres_url,
            "SHUTDOWN_TIMEOUT": "1",
        },
    )
    try:
        yield group
    finally:
        await group.close()
        await _drop_prefix(redis_url, prefix)


def api(node: Node) -> str:
    return f"http://127.0.0.1:{node.api_port}"


async def test_mcp_across_nodes_and_a_node_restart(pg_nodes: Nodes) -> None:
    one, two = await pg_nodes.start_many("mcp-1", "mcp-2")
    async with http_client(api(one), agent="agent-a") as a:
        await call(a, "register_agent", capabilities=["python"])

        # A waits on node 1; B's message through node 2 wakes it (the Redis fan-out).
        async with http_client(api(two), agent="agent-b") as b:
            await call(b, "register_agent", capabilities=["python"])
            waiting = asyncio.create_task(a.call_tool("wait_for_messages", {"timeout_seconds": 30}))
            await asyncio.sleep(0.5)
            sent_at = time.monotonic()
            await call(b, "send_message", to_agent="agent-a", content="from node 2")
            woke = body(await asyncio.wait_for(waiting, 15))
            assert time.monotonic() - sent_at < 5
            assert [m["content"] for m in woke["messages"]] == ["from node 2"]

        # B waits for a task on node 2; node 2 goes down under the call.
        async with http_client(api(two), agent="agent-b") as b:
            in_flight = asyncio.create_task(
                b.call_tool("claim_task", {"wait_seconds": 40, "capabilities": ["python"]})
            )
            await asyncio.sleep(0.5)
            stopped = asyncio.create_task(two.stop(signal.SIGTERM, 20))
            failed_at = time.monotonic()
            # The node answers the call with an error (or drops it) as it goes: a JSON-RPC
            # error at once, never a hang and never a half-made claim.
            with pytest.raises(MCPError):
                await asyncio.wait_for(in_flight, 15)
            assert time.monotonic() - failed_at < 15
            await stopped

        # The same call on node 1 succeeds: nothing was claimed by the call that failed.
        task = (await call(a, "create_task", title="after the restart", capabilities=["python"]))[
            "task"
        ]
        async with http_client(api(one), agent="agent-b") as b:
            claimed = await call(b, "claim_task", wait_seconds=5, capabilities=["python"])
            assert claimed["task"]["id"] == task["id"]
            assert claimed["task"]["attempts"] == 1

        # Node 2 back: it serves the same board (B's lease, the mail A acknowledged or not).
        restarted = await pg_nodes.start("mcp-2")
        async with http_client(api(restarted), agent="agent-b") as b:
            resumed = await call(b, "register_agent")
            assert [held["task"]["id"] for held in resumed["leases"]] == [task["id"]]
            done = await call(
                b, "complete_task", task_id=task["id"], lease_id=claimed["lease"]["id"]
            )
            assert done["task"]["status"] == "completed"
        assert (await call(a, "list_tasks", status="completed"))["items"][0]["id"] == task["id"]
