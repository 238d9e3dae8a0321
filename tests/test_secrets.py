"""Secrets never appear in logs, banners or error bodies; errors never carry stack traces."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import ServiceFactory, free_port, ws_url

SECRET = "super-secret-signing-key-" + "q" * 40
PASSWORD = "hunter2-db-password"


async def test_no_secret_in_logs_or_answers(
    start_service: ServiceFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    service = await start_service(auth_mode="token", secret_key=SECRET, log_level="debug")
    stolen = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c3RvbGVuLXNpZ25hdHVyZQ"
    answers: list[str] = []
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.settings.api_port}") as http:
        for headers in ({}, {"Authorization": f"Bearer {stolen}"}):
            reply = await http.get("/api/tasks", headers=headers)
            assert reply.status_code == 401
            answers.append(reply.text)
        health = await http.get("/health")
        answers.append(health.text)
    async with connect(ws_url(service, token=stolen)) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await ws.recv()
        assert closed.value.rcvd is not None
        answers.append(closed.value.rcvd.reason)
    # The server's own loggers: the test's client library logs its own requests, and asyncio's
    # debug mode prints coroutine arguments; neither is the service.
    server = [r for r in caplog.records if r.name.startswith(("context_manager", "uvicorn"))]
    assert server
    for secret in (SECRET, stolen):
        leaking = {r.name for r in server if secret in r.getMessage() + str(vars(r))}
        assert not leaking, leaking
        assert all(secret not in answer for answer in answers)
    assert all("Traceback" not in answer for answer in answers)


def test_database_password_is_masked_in_the_banner_and_errors() -> None:
    env = {
        **os.environ,
        "DATABASE_URL": f"postgresql://postgres:{PASSWORD}@127.0.0.1:{free_port()}/nothing",
        "WS_PORT": str(free_port()),
        "API_PORT": str(free_port()),
        "DASHBOARD_PORT": str(free_port()),
        "SECRET_KEY": SECRET,
    }
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    output = done.stdout + done.stderr
    assert "***" in output  # the URL is shown, masked
    assert PASSWORD not in output and SECRET not in output
