"""`context-manager mcp` (stdio, launched as a subprocess) and `context-manager inbox --hook`."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from mcp import Client, StdioServerParameters
from mcp.shared.exceptions import MCPError

from app.core.security import TokenCodec
from app.server import Service
from tests.conftest import ServiceFactory, free_port
from tests.mcp_helpers import body, call, http_client, refused, two_agents_coordinate

ROOT = Path(__file__).resolve().parents[1]
SECRET = "s" * 64


def api(service: Service) -> str:
    return f"http://127.0.0.1:{service.settings.api_port}"


def _env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTEXT_MANAGER_")}
    env.update(values)
    return env


@contextlib.asynccontextmanager
async def stdio_client(url: str, **env: str) -> AsyncIterator[Client]:
    """`python -m app.cli mcp` as a subprocess, with CONTEXT_MANAGER_* from `env`."""
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "app.cli", "mcp"],
        env=_env(CONTEXT_MANAGER_URL=url, **env),
        cwd=str(ROOT),
    )
    async with Client(params) as client:
        yield client


async def test_two_agents_coordinate_over_stdio(service: Service) -> None:
    @contextlib.asynccontextmanager
    async def connect(agent: str) -> AsyncIterator[Client]:
        async with stdio_client(api(service), CONTEXT_MANAGER_AGENT_ID=agent) as client:
            yield client

    await two_agents_coordinate(connect)


async def test_stdio_with_a_token_acts_as_the_token(start_service: ServiceFactory) -> None:
    service = await start_service(auth_mode="token", secret_key=SECRET)
    codec = TokenCodec(service.settings)
    async with (
        stdio_client(api(service), CONTEXT_MANAGER_TOKEN=codec.create("agent-a")) as a,
        stdio_client(api(service), CONTEXT_MANAGER_TOKEN=codec.create("agent-b")) as b,
    ):
        task = (await call(a, "create_task", title="A's"))["task"]
        lease = (await call(a, "claim_task"))["lease"]["id"]
        error = await refused(b, "complete_task", task_id=task["id"], lease_id=lease)
        assert error["code"] == "FORBIDDEN"
        sent = await call(b, "send_message", to_agent="agent-a", content="hello")
        assert sent["message"]["from_agent"] == "agent-b"
        assert (await call(a, "fetch_inbox"))["messages"][0]["content"] == "hello"
        with pytest.raises(MCPError) as refused_listen:
            async with b.listen(resource_subscriptions=["context-manager://agents/agent-a/inbox"]):
                pass
        assert refused_listen.value.error.data == {"code": "FORBIDDEN"}
    async with stdio_client(api(service), CONTEXT_MANAGER_TOKEN="not-a-token") as bad:
        assert (await refused(bad, "list_tasks"))["code"] == "UNAUTHORIZED"


async def test_stdio_survives_the_service_being_away(start_service: ServiceFactory) -> None:
    """Down: a clean UNAVAILABLE for that call (the catalog is still listed); up: it works."""
    port = free_port()
    async with stdio_client(f"http://127.0.0.1:{port}", CONTEXT_MANAGER_AGENT_ID="early") as c:
        tools = {tool.name for tool in (await c.list_tools()).tools}
        assert "wait_for_messages" in tools
        away = await refused(c, "list_agents")
        assert away["code"] == "UNAVAILABLE" and str(port) in away["message"]
        await start_service(api_port=port)
        assert (await call(c, "register_agent"))["agent"]["id"] == "early"


async def test_stdio_relays_progress_and_resource_updates(service: Service) -> None:
    async with (
        stdio_client(api(service), CONTEXT_MANAGER_AGENT_ID="listener") as listener,
        http_client(api(service), agent="writer") as writer,
    ):
        beats: list[float] = []

        async def progress(progress: float, total: float | None, message: str | None) -> None:
            beats.append(progress)

        # The service reports every 5 s: one beat within a 6 s wait.
        waited = await listener.call_tool(
            "wait_for_messages", {"timeout_seconds": 6}, progress_callback=progress
        )
        assert body(waited)["messages"] == [] and beats
        uri = "context-manager://agents/listener/inbox"
        async with listener.listen(resource_subscriptions=[uri]) as updates:
            seen: list[Any] = []

            async def collect() -> None:
                async for event in updates:
                    seen.append(event.uri)

            collector = asyncio.create_task(collect())
            try:
                # Acknowledged once the relay's own listen to the service is live.
                await call(writer, "send_message", to_agent="listener", content="ping")
                for _ in range(100):
                    if seen:
                        break
                    await asyncio.sleep(0.05)
                assert seen == [uri]
            finally:
                collector.cancel()
        read = await listener.read_resource(uri)
        assert orjson.loads(read.contents[0].text)["messages"][0]["content"] == "ping"


async def _inbox_command(url: str, *args: str, **env: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app.cli",
        "inbox",
        *args,
        cwd=ROOT,
        env=_env(CONTEXT_MANAGER_URL=url, **env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_inbox_hook_prints_unread_mail_for_claude_code(service: Service) -> None:
    code, out, _ = await _inbox_command(api(service), "--agent", "hooked", "--hook")
    assert (code, out) == (0, "")  # nothing unread: the hook adds nothing
    async with http_client(api(service), agent="boss") as boss:
        await call(boss, "send_message", to_agent="hooked", content="review PR 7", thread_id="t1")
    code, out, _ = await _inbox_command(api(service), "--hook", CONTEXT_MANAGER_AGENT_ID="hooked")
    assert code == 0
    output = orjson.loads(out)["hookSpecificOutput"]
    assert output["hookEventName"] == "UserPromptSubmit"
    context = output["additionalContext"]
    assert (
        "review PR 7" in context and "from boss" in context and "ack_messages(up_to=1)" in context
    )
    # Shown again until acknowledged; --ack acknowledges what it shows.
    code, out, _ = await _inbox_command(
        api(service), "--agent", "hooked", "--hook", "--event", "SessionStart", "--ack"
    )
    assert orjson.loads(out)["hookSpecificOutput"]["hookEventName"] == "SessionStart"
    code, out, _ = await _inbox_command(api(service), "--agent", "hooked", "--hook")
    assert (code, out) == (0, "")


async def test_inbox_hook_reports_an_unreachable_service() -> None:
    code, out, err = await _inbox_command(
        f"http://127.0.0.1:{free_port()}", "--agent", "x", "--hook"
    )
    assert code == 1 and out == "" and "could not be reached" in err


async def test_inbox_hook_in_token_mode(start_service: ServiceFactory) -> None:
    service = await start_service(auth_mode="token", secret_key=SECRET)
    token = TokenCodec(service.settings).create("tok-agent")
    async with http_client(api(service), token=TokenCodec(service.settings).create("b")) as b:
        await call(b, "send_message", to_agent="tok-agent", content="with a token")
    # The token names the agent; --agent may be left out.
    code, out, err = await _inbox_command(api(service), "--hook", CONTEXT_MANAGER_TOKEN=token)
    assert code == 0, err
    assert "with a token" in orjson.loads(out)["hookSpecificOutput"]["additionalContext"]
