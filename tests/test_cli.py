"""The `context-manager` console script: help, configuration errors, ports in use, the banner."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from app.core.config import MAKE_SECRET_KEY
from tests.conftest import ServiceFactory, free_port

CLI = str(Path(sys.executable).parent / "context-manager")


def base_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k.upper() not in {"REDIS_URL", "BROKER", "AUTH_MODE", "DATABASE_URL", "HOST"}
    }
    env.update(
        WS_PORT=str(free_port()),
        API_PORT=str(free_port()),
        DASHBOARD_PORT=str(free_port()),
        DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}",
        LOG_FORMAT="text",
    )
    env.update(overrides)
    return env


async def run(tmp_path: Path, *args: str, timeout: float = 30, **env: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        CLI,
        *args,
        env=base_env(tmp_path, **env),
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def test_console_script_help(tmp_path: Path) -> None:
    code, out, _ = await run(tmp_path, "--help")
    assert code == 0
    for command in ("serve", "ws", "api"):
        assert command in out


def run_main(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> tuple[int | str | None, str, str]:
    """`app.cli.main` in this process (fast) for what never reaches the event loop."""
    from app.cli import main

    try:
        code: int | str | None = main(args)
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No `.env` and no service variables from the developer's shell."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.upper() in {"WS_PORT", "API_PORT", "HOST", "LOG_LEVEL", "DATABASE_URL"}:
            monkeypatch.delenv(name)


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize("command", ["serve", "ws", "api"])
def test_command_help_lists_the_options(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main([command, "--help"], capsys)
    assert code == 0
    for option in ("--host", "--ws-port", "--api-port", "--database-url", "--log-level"):
        assert option in out
    assert "WS_PORT" in out  # every option names its environment variable


@pytest.mark.usefixtures("clean_env")
def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from app import __version__

    code, out, _ = run_main(["--version"], capsys)
    assert code == 0 and __version__ in out


@pytest.mark.usefixtures("clean_env")
def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main([], capsys)
    assert code == 2 and "usage:" in err


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize(
    ("args", "env", "mentions"),
    [
        (["serve"], {"WS_PORT": "not-a-port"}, "ws_port"),
        (["serve", "--ws-port", "70000"], {}, "ws_port"),
        (["serve"], {"LOG_LEVEL": "loud"}, "log"),
        (["serve"], {"WS_IDLE_TIMEOUT": "-1"}, "ws_idle_timeout"),
        (["ws"], {"MAX_FRAME_BYTES": "lots"}, "max_frame_bytes"),
    ],
    ids=["env-not-a-number", "option-out-of-range", "log-level", "negative-timeout", "ws"],
)
def test_invalid_configuration_exits_2(
    args: list[str],
    env: dict[str, str],
    mentions: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code, _, err = run_main(args, capsys)
    assert code == 2, err
    assert "invalid configuration" in err
    assert mentions in err.lower()
    assert "Traceback" not in err
    # One line per problem, not pydantic's dump (its "N validation error" header, its URL).
    assert all(line.startswith("error: invalid configuration: ") for line in err.splitlines())
    assert "validation error" not in err and "pydantic" not in err


@pytest.mark.usefixtures("clean_env")
def test_bad_option_value_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(["serve", "--ws-port", "abc"], capsys)
    assert code == 2 and "--ws-port" in err


async def test_invalid_configuration_from_the_console_script(tmp_path: Path) -> None:
    code, _, err = await run(tmp_path, "serve", WS_PORT="not-a-port")
    assert code == 2 and "invalid configuration" in err and "Traceback" not in err


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port something else is listening on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.parametrize(("command", "variable"), [("serve", "WS_PORT"), ("serve", "API_PORT")])
async def test_port_in_use_exits_1(
    tmp_path: Path, busy_port: int, command: str, variable: str
) -> None:
    code, _, err = await run(tmp_path, command, **{variable: str(busy_port)})
    assert code == 1, err
    assert f"error: the {variable[:-5].lower()} server could not listen" in err
    assert f"127.0.0.1:{busy_port}" in err
    # It says why and what changes it: the option and the variable.
    assert "the port is in use" in err
    assert f"--{variable[:-5].lower()}-port or {variable}" in err
    assert "Traceback" not in err


async def test_banner_says_where_everything_listens(tmp_path: Path) -> None:
    env = base_env(tmp_path)
    process = await asyncio.create_subprocess_exec(
        CLI,
        "serve",
        env=env,
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with httpx.AsyncClient(timeout=1) as http, asyncio.timeout(30):
            while True:
                assert process.returncode is None
                try:
                    url = f"http://127.0.0.1:{env['API_PORT']}/health"
                    if (await http.get(url)).status_code == 200:
                        break
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 10)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0
    banner = stderr.decode()
    assert f"ws://127.0.0.1:{env['WS_PORT']}/" in banner
    assert f"http://127.0.0.1:{env['API_PORT']}/docs" in banner
    assert f"http://127.0.0.1:{env['WS_PORT']}/health" in banner


async def test_every_address_of_the_banner_answers(start_service: ServiceFactory) -> None:
    """The banner's links are what a newcomer clicks first: each one answers 200 (or connects)."""
    from app.cli import _banner

    surfaces = ("api", "ws", "dashboard")
    service = await start_service(surfaces=surfaces)
    banner = _banner(service.settings, surfaces)
    links = re.findall(r"(?:http|ws)://\S+", banner)
    assert len(links) == 6, banner
    async with httpx.AsyncClient(timeout=5) as http:
        for link in links:
            if link.startswith("ws://"):
                async with connect(link, open_timeout=5) as ws:
                    assert json.loads(await ws.recv())["type"] == "connected"
            else:
                response = await http.get(link)
                assert response.status_code == 200, (link, response.status_code)


async def test_api_answers_with_an_index_of_the_resources(start_service: ServiceFactory) -> None:
    service = await start_service(surfaces=("api", "dashboard"))
    s = service.settings
    async with httpx.AsyncClient(timeout=5) as http:
        index = (await http.get(f"http://127.0.0.1:{s.api_port}/api")).json()
        schema = (await http.get(f"http://127.0.0.1:{s.api_port}/openapi.json")).json()
        assert index["docs"] == "/docs" and index["openapi"] == "/openapi.json"
        names = [r["name"] for r in index["resources"]]
        assert {"tasks", "subtasks", "messages", "agents", "sessions", "metrics"} <= set(names)
        listed = {op for r in index["resources"] for op in r["operations"]}
        documented = {
            f"{method.upper()} {path}"
            for path, item in schema["paths"].items()
            if path.startswith("/api/")
            for method in item
        }
        assert listed == documented  # every operation, nothing invented
        for resource in index["resources"]:
            if f"GET {resource['url']}" in resource["operations"]:
                answer = await http.get(f"http://127.0.0.1:{s.api_port}{resource['url']}")
                assert answer.status_code == 200, resource
        # The dashboard port forwards /api: the same index there.
        assert (await http.get(f"http://127.0.0.1:{s.dashboard_port}/api")).json() == index


async def test_a_host_off_loopback_without_a_key_says_in_one_line_what_to_set(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in base_env(tmp_path).items() if k != "SECRET_KEY"}
    env["HOST"] = "0.0.0.0"
    process = await asyncio.create_subprocess_exec(
        CLI, "serve", env=env, cwd=tmp_path, stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 30)
    lines = stderr.decode().splitlines()
    assert process.returncode == 2
    assert len(lines) == 1, lines
    assert "HOST=0.0.0.0 is not a loopback address" in lines[0]
    assert "SECRET_KEY" in lines[0] and MAKE_SECRET_KEY in lines[0]


async def test_token_create_without_a_key_names_it_and_how_to_make_one(tmp_path: Path) -> None:
    env = {k: v for k, v in base_env(tmp_path).items() if k != "SECRET_KEY"}

    async def token_create(**extra: str) -> tuple[int, str, str]:
        process = await asyncio.create_subprocess_exec(
            CLI,
            "token",
            "create",
            "--agent",
            "a1",
            env={**env, **extra},
            cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 30)
        assert process.returncode is not None
        return process.returncode, out.decode(), err.decode()

    code, _, err = await token_create()
    assert code == 2 and "SECRET_KEY" in err and MAKE_SECRET_KEY in err
    code, _, err = await token_create(SECRET_KEY="too-short")
    assert code == 2 and "SECRET_KEY has 9 characters" in err
    # The command it suggests makes a key that works.
    made = await asyncio.create_subprocess_shell(MAKE_SECRET_KEY, stdout=asyncio.subprocess.PIPE)
    key = (await made.communicate())[0].decode().strip()
    code, out, err = await token_create(SECRET_KEY=key)
    assert code == 0, err
    assert out.count(".") == 2  # a JWT
