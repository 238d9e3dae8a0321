"""Deployment files: docker-compose.yml, Dockerfile, the nginx template, scripts/cluster.sh.

No Docker engine runs here. `docker compose config` (or docker-compose v1) validates the compose
file when either is installed; the structural checks below run with PyYAML in any case.
scripts/cluster.sh is run for real: the same topology as local processes, through nginx.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
from pathlib import Path
from string import Template
from typing import Any

import httpx
import orjson
import pytest
import yaml
from websockets.asyncio.client import connect

from tests.conftest import IN_CI, free_port

ROOT = Path(__file__).resolve().parents[1]


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def _compose_cli() -> list[str] | None:
    docker = shutil.which("docker")
    if docker is not None:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy is not None else None


def test_compose_config_validates() -> None:
    cli = _compose_cli()
    if cli is None:
        pytest.skip("neither `docker compose` nor docker-compose is installed (see the YAML test)")
    env = {**os.environ, "SECRET_KEY": secrets.token_urlsafe(48)}
    result = subprocess.run(
        [*cli, "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    # Without the secret it refuses, saying why (no insecure default ships).
    env.pop("SECRET_KEY")
    refused = subprocess.run(
        [*cli, "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )
    assert refused.returncode != 0 and "SECRET_KEY" in refused.stderr + refused.stdout


def test_compose_topology() -> None:
    services = _compose()["services"]
    assert set(services) == {
        "postgres",
        "redis",
        "migrate",
        "api",
        "ws1",
        "ws2",
        "dashboard",
        "lb",
    }
    for name in ("postgres", "redis"):
        assert services[name]["healthcheck"]["test"], name
    assert services["migrate"]["command"] == ["migrate"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name, command in (("api", "api"), ("ws1", "ws"), ("ws2", "ws"), ("dashboard", "dashboard")):
        service = services[name]
        assert service["command"] == [command]
        assert service["build"] == "."
        assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
        assert service["environment"]["BROKER"] == "redis"
        assert service["environment"]["DATABASE_URL"].startswith("postgresql://")
        assert "ports" not in service  # only the balancer is published
    assert {services[n]["environment"]["NODE_ID"] for n in ("ws1", "ws2")} == {"ws1", "ws2"}
    lb = services["lb"]
    assert all(lb["depends_on"][n]["condition"] == "service_healthy" for n in lb["depends_on"])
    assert set(lb["depends_on"]) == {"ws1", "ws2", "api", "dashboard"}
    assert all(port.startswith("127.0.0.1:") for port in lb["ports"])
    mount = lb["volumes"][0].split(":")
    assert mount[0] == "./deploy/nginx.conf.template"
    assert (ROOT / mount[0]).exists()
    assert "ws1:3849" in lb["environment"]["LB_WS_SERVERS"]
    assert "ws2:3849" in lb["environment"]["LB_WS_SERVERS"]


def test_dockerfile() -> None:
    lines = [
        line.strip()
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert lines[0].startswith("FROM python:") and lines[0].endswith("-slim")
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert any(line.startswith("HEALTHCHECK") for line in lines)
    assert any("pip install" in line and "-e ." in line for line in lines)
    assert (ROOT / "deploy" / "healthcheck.py").exists()
    assert (ROOT / ".dockerignore").read_text().count(".venv")


def _nginx() -> str:
    binary = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if binary is None:
        if IN_CI:
            pytest.fail("CI=true and nginx is not installed (.ci/run installs it)")
        pytest.skip("nginx is not installed")
    return binary


def _require_programs(*names: str) -> None:
    """scripts/cluster.sh also runs envsubst (gettext-base), curl and redis-cli (redis-tools)."""
    missing = [name for name in names if shutil.which(name) is None]
    if missing:
        reason = f"{', '.join(missing)} not installed (README: system packages)"
        if IN_CI:
            pytest.fail(f"CI=true and {reason}")
        pytest.skip(reason)


def test_nginx_template_is_a_valid_config(tmp_path: Path) -> None:
    nginx = _nginx()
    config = Template((ROOT / "deploy" / "nginx.conf.template").read_text()).safe_substitute(
        LB_RUN_DIR=str(tmp_path),
        LB_LISTEN_WS=f"127.0.0.1:{free_port()}",
        LB_LISTEN_API=f"127.0.0.1:{free_port()}",
        LB_LISTEN_DASHBOARD=f"127.0.0.1:{free_port()}",
        LB_WS_SERVERS="server 127.0.0.1:1; server 127.0.0.1:2;",
        LB_API_SERVERS="server 127.0.0.1:3;",
        LB_DASHBOARD_SERVERS="server 127.0.0.1:4;",
    )
    assert "${LB_" not in config
    assert "$http_upgrade" in config and "$connection_upgrade" in config
    path = tmp_path / "nginx.conf"
    path.write_text(config)
    result = subprocess.run(
        [nginx, "-t", "-p", str(tmp_path), "-c", str(path), "-e", str(tmp_path / "error.log")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.timeout(180)
async def test_cluster_script_starts_the_topology(
    tmp_path: Path, redis_url: str, postgres_url: str
) -> None:
    _nginx()
    _require_programs("envsubst", "curl", "redis-cli")
    from urllib.parse import urlsplit, urlunsplit

    database = f"cm_script_{secrets.token_hex(4)}"
    parts = urlsplit(postgres_url)
    lb_ws, lb_api, lb_dashboard = free_port(), free_port(), free_port()
    base = 20000 + int.from_bytes(os.urandom(2), "big") % 30000
    env = {
        **os.environ,
        "DATABASE_URL": urlunsplit(parts._replace(path=f"/{database}")),
        "REDIS_URL": redis_url,
        "BROKER_PREFIX": f"t{secrets.token_hex(5)}",
        "CLUSTER_DIR": str(tmp_path / "cluster"),
        "BASE_PORT": str(base),
        "LB_WS_PORT": str(lb_ws),
        "LB_API_PORT": str(lb_api),
        "LB_DASHBOARD_PORT": str(lb_dashboard),
        "NODE_HEARTBEAT_INTERVAL": "0.5",
    }
    script = str(ROOT / "scripts" / "cluster.sh")

    async def run(*args: str) -> str:
        process = await asyncio.create_subprocess_exec(
            script,
            *args,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await asyncio.wait_for(process.communicate(), 120)
        assert process.returncode == 0, output.decode()
        return output.decode()

    try:
        banner = await run("start")
        assert f"ws://127.0.0.1:{lb_ws}/ws" in banner
        status = await run("status")
        assert status.count("up ") == 5, status

        # Through the balancer: a subscriber and a publisher, wherever each lands.
        subscriber = await connect(f"ws://127.0.0.1:{lb_ws}/ws")
        publisher = await connect(f"ws://127.0.0.1:{lb_ws}/ws")
        for ws in (subscriber, publisher):
            assert orjson.loads(await ws.recv())["type"] == "connected"
        await subscriber.send(
            orjson.dumps({"type": "subscribe", "channel": "topics/s", "id": "s"}).decode()
        )
        assert orjson.loads(await subscriber.recv())["success"] is True
        async with httpx.AsyncClient(timeout=10) as http:
            published = await http.post(
                f"http://127.0.0.1:{lb_api}/api/events",
                json={"channel": "topics/s", "event": "note.added", "data": {"via": "api"}},
            )
            assert published.status_code in (200, 201), published.text
            assert (await http.get(f"http://127.0.0.1:{lb_dashboard}/readyz")).status_code == 200
            # Every node sees the whole cluster once a heartbeat round has passed.
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 20
            while True:
                node_stats = [
                    (await http.get(f"http://127.0.0.1:{base + 10 + i}/stats")).json()
                    for i in (1, 2)
                ]
                views = [s["cluster"]["nodes"] for s in node_stats]
                if all(v == ["api", "dashboard", "ws1", "ws2"] for v in views):
                    break
                assert loop.time() < deadline, views
                await asyncio.sleep(0.2)
        event = orjson.loads(await asyncio.wait_for(subscriber.recv(), 10))
        assert event["data"] == {"via": "api"}
        assert sorted(s["node_id"] for s in node_stats) == ["ws1", "ws2"]
        for ws in (subscriber, publisher):
            await ws.close()
    finally:
        stopped = await run("stop")
        admin = urlunsplit(parts._replace(path="/postgres"))
        import asyncpg

        connection = await asyncpg.connect(admin.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            await connection.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        finally:
            await connection.close()
        from tests.test_cluster import _drop_prefix

        await _drop_prefix(redis_url, env["BROKER_PREFIX"])
    assert stopped.count("stopped") == 5
