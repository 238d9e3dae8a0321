"""`context-manager tail | publish | status` as real processes against a real service."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
from context_manager_client import Event

from app.cli_client import Painter, event_style, format_event, parse_data
from app.server import Service
from tests.conftest import ServiceFactory, free_port


async def cli(*args: str, stdin: bytes | None = None, timeout: float = 20) -> tuple[int, str, str]:
    """Run `context-manager ARGS…` to completion: (exit status, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app.cli",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={"NO_COLOR": "", "PATH": "/usr/bin:/bin"},
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def ports(service: Service) -> list[str]:
    s = service.settings
    return ["--ws-port", str(s.ws_port), "--api-port", str(s.api_port)]


class Tail:
    """A running `tail` process, read line by line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def stderr_until(self, text: str, timeout: float = 15) -> list[str]:
        assert self.proc.stderr is not None
        seen: list[str] = []
        while True:
            line = await asyncio.wait_for(self.proc.stderr.readline(), timeout)
            if not line:
                raise AssertionError(f"tail exited before {text!r}; stderr: {seen}")
            seen.append(line.decode().rstrip())
            if text in seen[-1]:
                return seen

    async def line(self, timeout: float = 10) -> str:
        assert self.proc.stdout is not None
        return (await asyncio.wait_for(self.proc.stdout.readline(), timeout)).decode().rstrip()


@pytest.fixture
async def tail() -> AsyncIterator[Any]:
    procs: list[asyncio.subprocess.Process] = []

    async def start(*args: str) -> Tail:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "app.cli",
            "tail",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={"PATH": "/usr/bin:/bin"},
        )
        procs.append(proc)
        return Tail(proc)

    yield start
    for proc in procs:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()


# --- formatting, in process ---------------------------------------------------------------


def test_event_lines_and_colours() -> None:
    event = Event("global", "task.failed", {"task_id": "t1"}, 1_700_000_000_123)
    plain = format_event(event, Painter(False))
    assert "global" in plain and "task.failed" in plain and '{"task_id":"t1"}' in plain
    assert ".123" in plain and "\x1b[" not in plain
    coloured = format_event(event, Painter(True))
    assert "\x1b[31mtask.failed" in coloured  # failures in red
    assert event_style("task.created") == "blue" and event_style("message.expired") == "red"


def test_publish_data_is_json() -> None:
    assert parse_data(None) == {}
    assert parse_data('{"a": [1, 2]}') == {"a": [1, 2]}
    assert parse_data('"text"') == "text"
    with pytest.raises(ValueError, match="quotes"):
        parse_data("text")


# --- processes ------------------------------------------------------------------------------


async def test_publish_and_tail_json(start_service: ServiceFactory, tail: Any) -> None:
    service = await start_service(surfaces=("api", "ws", "dashboard"))
    watcher = await tail(
        "topics/cli", "global", "--event", "note.*", "--json", "-n", "2", *ports(service)
    )
    await watcher.stderr_until("subscribed to global")

    status, out, err = await cli("publish", "topics/cli", "other.thing", "{}", *ports(service))
    assert status == 0, err
    status, out, err = await cli("publish", "topics/cli", "note.added", '{"n": 1}', *ports(service))
    assert status == 0, err
    assert out.strip().startswith("published note.added on topics/cli (offset ")
    status, out, _ = await cli(
        "publish", "topics/cli", "note.added", "-", "--json", *ports(service), stdin=b'{"n": 2}'
    )
    assert status == 0 and json.loads(out)["success"] is True

    frames = [json.loads(await watcher.line()), json.loads(await watcher.line())]
    assert [f["data"] for f in frames] == [{"n": 1}, {"n": 2}]  # other.thing filtered out
    assert all(f["channel"] == "topics/cli" and f["event"] == "note.added" for f in frames)
    assert await asyncio.wait_for(watcher.proc.wait(), 10) == 0  # -n 2: done


async def test_publish_errors(start_service: ServiceFactory) -> None:
    service = await start_service(surfaces=("ws",))
    status, _, err = await cli("publish", "not a channel", "note.added", *ports(service))
    assert status == 1 and "INVALID_CHANNEL" in err
    status, _, err = await cli("publish", "topics/x", "note.added", "not json", *ports(service))
    assert status == 2 and "not JSON" in err
    status, _, err = await cli(
        "publish", "topics/x", "note.added", "--ws-port", str(free_port()), "--timeout", "2"
    )
    assert status == 1 and "could not connect" in err


async def test_tail_prints_colour_only_when_asked_and_survives_a_restart(
    start_service: ServiceFactory, tail: Any
) -> None:
    first = await start_service(surfaces=("ws",))
    settings = first.settings
    watcher = await tail("topics/restart", "--color", "always", "-n", "2", *ports(first))
    await watcher.stderr_until("subscribed to topics/restart")
    await first.manager.publish("topics/restart", "task.failed", {"before": True})
    line = await watcher.line()
    assert "\x1b[31mtask.failed" in line and '{"before":true}' in line

    await first.stop()
    await watcher.stderr_until("reconnecting")
    second = await start_service(settings=settings, surfaces=("ws",))
    await watcher.stderr_until("connected to")
    for _ in range(100):  # resubscribed by itself
        if second.manager.hub.channel_stats().get("topics/restart"):
            break
        await asyncio.sleep(0.05)
    await second.manager.publish("topics/restart", "note.added", {"after": True})
    assert '{"after":true}' in await watcher.line()
    assert await asyncio.wait_for(watcher.proc.wait(), 10) == 0


async def test_tail_output_is_plain_when_piped(start_service: ServiceFactory, tail: Any) -> None:
    service = await start_service(surfaces=("ws",))
    watcher = await tail("-n", "1", *ports(service))  # default channel: global
    await watcher.stderr_until("subscribed to global")
    await service.manager.publish("global", "task.created", {"task_id": "t1"})
    line = await watcher.line()
    assert "task.created" in line and "\x1b[" not in line


async def test_status_prints_health_and_stats(start_service: ServiceFactory) -> None:
    service = await start_service(surfaces=("api", "ws", "dashboard"))
    await service.manager.publish("global", "note.added", {})
    s = service.settings
    args = (
        "--api-port",
        str(s.api_port),
        "--ws-port",
        str(s.ws_port),
        "--dashboard-port",
        str(s.dashboard_port),
    )
    status, out, err = await cli("status", *args)
    assert status == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["SERVICE", "URL", "STATUS"]
    assert any(line.startswith("api") and "healthy · database reachable" in line for line in lines)
    assert any(line.startswith("websocket") and "healthy" in line for line in lines)
    assert any(line.startswith("dashboard") and "healthy" in line for line in lines)
    assert "WEBSOCKET SERVER" in out and "publications" in out and service.manager.node_id in out

    status, out, _ = await cli("status", "--json", *args)
    document = json.loads(out)
    assert document["api"]["status"] == "healthy" and document["stats"]["node_id"]


async def test_status_reports_what_is_down(start_service: ServiceFactory) -> None:
    service = await start_service(surfaces=("ws",))
    s = service.settings
    status, out, _ = await cli(
        "status",
        "--ws-port",
        str(s.ws_port),
        "--api-port",
        str(free_port()),
        "--dashboard-port",
        str(free_port()),
        "--timeout",
        "2",
    )
    assert status == 1
    assert any(line.startswith("api") and "unreachable" in line for line in out.splitlines())
    assert any(line.startswith("websocket") and "healthy" in line for line in out.splitlines())


async def test_tail_gives_up_after_its_timeout_when_nothing_listens() -> None:
    started = asyncio.get_running_loop().time()
    status, _, err = await cli("tail", "--ws-port", str(free_port()), "--timeout", "1.5")
    elapsed = asyncio.get_running_loop().time() - started
    assert status == 1
    assert "could not connect to ws://127.0.0.1:" in err and "within 1.5 s" in err
    assert elapsed < 10, elapsed  # not for ever (generous: a process start is in it)


async def test_status_into_a_closed_pipe_exits_quietly(start_service: ServiceFactory) -> None:
    """`context-manager status --json | head`: the reader is gone, no traceback."""
    service = await start_service(surfaces=("api", "ws"))
    read, write = os.pipe()
    os.close(read)  # every write now fails with EPIPE, as once `head` has exited
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "app.cli",
            "status",
            "--json",
            *ports(service),
            stdout=write,
            stderr=asyncio.subprocess.PIPE,
            env={"PATH": "/usr/bin:/bin"},
        )
    finally:
        os.close(write)
    _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert b"Traceback" not in err and b"BrokenPipeError" not in err, err.decode()
    assert proc.returncode == 128 + signal.SIGPIPE
