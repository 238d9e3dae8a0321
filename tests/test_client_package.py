"""The Python client as a newcomer installs it: its own distribution, in a fresh virtualenv.

`pip install clients/python` into a new virtualenv brings the client and its two dependencies
only; the quick start of docs/clients.md then runs there, as written but for the ports, against
a real service. Building the package needs setuptools from the package index (pip's cache after
the first run).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ServiceFactory

ROOT = Path(__file__).resolve().parent.parent
CLIENT = ROOT / "clients" / "python"
CLIENTS_MD = (ROOT / "docs" / "clients.md").read_text()
SERVER_PACKAGES = ("app", "fastapi", "starlette", "sqlalchemy", "pydantic", "uvicorn", "orjson")


def python_quickstart() -> str:
    """The first ```python block of docs/clients.md: a whole script."""
    blocks = re.findall(r"```python\n(.*?)```", CLIENTS_MD, re.S)
    assert blocks and blocks[0].startswith("import asyncio"), "docs/clients.md's quick start"
    return str(blocks[0])


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with `pip install clients/python` (from a copy: no build/ left here)."""
    base = tmp_path_factory.mktemp("client-venv")
    source = base / "src"
    shutil.copytree(CLIENT, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "tests"))
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    install = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(source)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    return venv


def test_the_fresh_virtualenv_has_no_server_dependency(client_venv: Path) -> None:
    code = (
        "import importlib.util, pathlib, context_manager_client as c\n"
        f"print([m for m in {SERVER_PACKAGES!r} if importlib.util.find_spec(m)])\n"
        "print((pathlib.Path(c.__file__).parent / 'py.typed').exists(), c.__version__)\n"
    )
    out = subprocess.run(
        [str(client_venv / "bin" / "python"), "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=client_venv,
        env={"PATH": os.environ["PATH"]},
    )
    missing, typed = out.stdout.splitlines()
    assert missing == "[]", f"server packages in the client's virtualenv: {missing}"
    assert typed.startswith("True ")
    listed = subprocess.run(
        [str(client_venv / "bin" / "python"), "-m", "pip", "list", "--format=freeze"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.lower()
    assert "context-manager-client==" in listed and "websockets==" in listed
    assert "httpx==" in listed and "context-manager==" not in listed


async def test_the_docs_quick_start_runs_against_a_real_service(
    client_venv: Path, start_service: ServiceFactory, tmp_path: Path
) -> None:
    service = await start_service(surfaces=("api", "ws"))
    script = python_quickstart()
    assert "127.0.0.1:3849" in script and "127.0.0.1:3847" in script
    script = script.replace("127.0.0.1:3849", f"127.0.0.1:{service.settings.ws_port}")
    script = script.replace("127.0.0.1:3847", f"127.0.0.1:{service.settings.api_port}")
    folder = tmp_path / "newcomer"
    folder.mkdir()
    (folder / "quickstart.py").write_text(script)
    process = await asyncio.create_subprocess_exec(
        str(client_venv / "bin" / "python"),
        "quickstart.py",
        cwd=folder,
        env={"PATH": os.environ["PATH"]},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()[-2000:]
    assert out.decode().split() == ["task.created", "True", "completed"]


def test_the_dockerfile_installs_the_client_package_with_the_server() -> None:
    """The server's build includes clients/python/context_manager_client: the image copies it
    before each `pip install` (the first one with only its __init__, for the dependency layer)."""
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    copies = [
        i
        for i, line in enumerate(lines)
        if line.startswith("COPY ") and "clients/python/context_manager_client" in line
    ]
    installs = [i for i, line in enumerate(lines) if "pip install" in line and "-e ." in line]
    assert len(copies) == 2 and len(installs) == 2
    assert copies[0] < installs[0] < copies[1] < installs[1]
    for index in copies:
        source = lines[index].split()[1]
        assert (ROOT / source).exists(), source
