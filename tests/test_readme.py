"""The README's snippets, run as a newcomer runs them, so they cannot rot.

The JavaScript snippet runs in Node (its WebSocket is the browser's API: global in Node 22+,
behind --experimental-websocket in Node 20) with only its address changed to the test
service's; the curl one runs in bash with curl. What they print is asserted.

The snippet's keepalive is tested at a smaller scale: a test cannot wait 60 s, so the service
closes idle connections after 2 s and the snippet's ping interval is scaled by the same factor
(25 s of 60 → 0.83 s of 2): the ratio a newcomer's client lives with. A control run without the
snippet's ping line shows that the same service does close it.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from app.core.config import Settings
from app.server import Service
from tests.conftest import IN_CI, ServiceFactory

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
README_WS = "ws://127.0.0.1:3849"
SNIPPET_IDLE_TIMEOUT = 2.0  # seconds, instead of the default 60


def js_snippet() -> str:
    match = re.search(r"```js\n(.*?)```", README, re.S)
    assert match, "the README has a ```js snippet"
    snippet = match.group(1)
    assert README_WS in snippet
    return snippet


def curl_snippet() -> str:
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        if block.lstrip().startswith("curl "):
            return str(block)
    raise AssertionError("the README has a ```bash block starting with curl")


PING_INTERVAL = re.compile(r"setInterval\((.*?),\s*([\d_]+)\);")


def ping_interval_ms(snippet: str) -> int:
    match = PING_INTERVAL.search(snippet)
    assert match and "ping" in match.group(1), "the snippet pings with setInterval"
    return int(match.group(2).replace("_", ""))


def _missing(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"CI=true and {reason}")
    pytest.skip(reason)


def node_command() -> list[str]:
    """Node with a global WebSocket (the flag only where it needs one), or skip."""
    node = shutil.which("node")
    if node is None:
        _missing("node is not installed (apt-get install nodejs)")
    assert node is not None
    for flags in ([], ["--experimental-websocket"]):
        probe = subprocess.run(
            [node, *flags, "-e", "process.exit(typeof WebSocket === 'function' ? 0 : 3)"],
            capture_output=True,
            timeout=30,
        )
        if probe.returncode == 0:
            return [node, *flags]
    _missing("this node has no WebSocket (Node 22+, or 20 with --experimental-websocket)")
    raise AssertionError("unreachable")


# console.log of an object prints Node's inspect format: one JSON line each instead.
PREAMBLE = "console.log = (value) => process.stdout.write(JSON.stringify(value) + '\\n');\n"


class Snippet:
    """The JavaScript snippet running in Node; its console.log lines, decoded."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.frames: list[dict[str, Any]] = []

    async def next(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10) -> Any:
        assert self.process.stdout is not None
        async with asyncio.timeout(timeout):
            while True:
                line = await self.process.stdout.readline()
                if not line:
                    assert self.process.stderr is not None
                    error = (await self.process.stderr.read()).decode()
                    raise AssertionError(f"the snippet ended: {error}")
                frame = json.loads(line)
                self.frames.append(frame)
                if predicate(frame):
                    return frame


SnippetRunner = Callable[[Service, str], Awaitable[Snippet]]


@pytest.fixture
async def run_snippet(tmp_path: Path) -> AsyncIterator[SnippetRunner]:
    node = node_command()
    processes: list[asyncio.subprocess.Process] = []

    async def run(service: Service, source: str) -> Snippet:
        script = tmp_path / f"snippet-{len(processes)}.js"
        address = f"ws://127.0.0.1:{service.settings.ws_port}"
        script.write_text(PREAMBLE + source.replace(README_WS, address))
        process = await asyncio.create_subprocess_exec(
            *node,
            str(script),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        processes.append(process)
        return Snippet(process)

    yield run
    for process in processes:
        if process.returncode is None:
            process.kill()
        await process.wait()


def connections_of(service: Service, agent_id: str) -> int:
    return sum(1 for c in service.manager.connections.values() if c.agent_id == agent_id)


async def test_the_readme_snippets_work_together(
    service: Service, run_snippet: SnippetRunner
) -> None:
    if shutil.which("curl") is None:
        _missing("curl is not installed (apt-get install curl)")
    snippet = await run_snippet(service, js_snippet())
    hello = await snippet.next(lambda f: f.get("type") == "connected")
    assert hello["client_id"].startswith("ws_")
    ack = await snippet.next(lambda f: f.get("id") == "sub-1")
    assert ack["success"] is True and ack["channel"] == "global"

    command = curl_snippet().replace("localhost:3847", f"127.0.0.1:{service.settings.api_port}")
    assert str(service.settings.api_port) in command
    curl = await asyncio.create_subprocess_exec(
        "bash", "-c", command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(curl.communicate(), 30)
    assert curl.returncode == 0
    task = json.loads(out)
    assert task["title"] == "Write the release notes" and task["agent_id"] == "my-agent"

    event = await snippet.next(lambda f: f.get("event") == "task.created")
    assert event["channel"] == "global"
    assert event["data"]["task_id"] == task["id"]
    assert event["data"]["title"] == "Write the release notes"


def test_the_snippet_pings_well_within_the_idle_timeout() -> None:
    interval = ping_interval_ms(js_snippet())
    idle = Settings.model_fields["ws_idle_timeout"].default
    assert interval == 25_000  # the seed's cadence
    assert interval <= idle * 1000 / 2  # a late timer or a slow network still fits


async def test_the_snippet_stays_connected_past_the_idle_timeout(
    start_service: ServiceFactory, run_snippet: SnippetRunner
) -> None:
    service = await start_service(ws_idle_timeout=SNIPPET_IDLE_TIMEOUT)
    source = js_snippet()
    default_idle = Settings.model_fields["ws_idle_timeout"].default
    scaled = round(ping_interval_ms(source) * SNIPPET_IDLE_TIMEOUT / default_idle)
    scaled_source = PING_INTERVAL.sub(lambda m: f"setInterval({m.group(1)}, {scaled});", source)
    snippet = await run_snippet(service, scaled_source)
    await snippet.next(lambda f: f.get("id") == "sub-1")
    pings_before = service.manager.stats.messages_in["ping"]
    await asyncio.sleep(3 * SNIPPET_IDLE_TIMEOUT)
    assert connections_of(service, "my-agent") == 1  # not closed as idle
    assert service.manager.stats.messages_in["ping"] - pings_before >= 4
    await snippet.next(lambda f: f.get("type") == "pong")  # and it was answered


async def test_without_its_ping_the_snippet_would_be_closed_as_idle(
    start_service: ServiceFactory, run_snippet: SnippetRunner
) -> None:
    """The control: the same service closes the snippet once its ping line is gone."""
    service = await start_service(ws_idle_timeout=SNIPPET_IDLE_TIMEOUT)
    source = js_snippet()
    without_ping = PING_INTERVAL.sub("", source)
    assert without_ping != source
    snippet = await run_snippet(service, without_ping)
    await snippet.next(lambda f: f.get("id") == "sub-1")
    for _ in range(int(3 * SNIPPET_IDLE_TIMEOUT / 0.1)):
        if connections_of(service, "my-agent") == 0:
            break
        await asyncio.sleep(0.1)
    assert connections_of(service, "my-agent") == 0
    assert service.manager.stats.snapshot()["connections"]["closed"] >= 1


def test_ci_installs_every_system_package_the_readme_lists() -> None:
    section = README.split("### System packages", 1)[1].split("\n## ", 1)[0]
    packages = re.findall(r"^\| `([a-z0-9.+-]+)`", section, re.M)
    assert {"chromium", "nginx", "gettext-base", "curl", "nodejs"} <= set(packages)
    ci = (ROOT / ".ci" / "run").read_text()
    installed = set(re.findall(r"[\w.+-]+:([\w.+-]+)", ci.split("for need in", 1)[1].split(";")[0]))
    # PostgreSQL comes with this kind of machine (.ci/run starts it); docker is optional.
    assert set(packages) - {"postgresql", "docker"} == installed
