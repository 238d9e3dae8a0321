"""Which machine and which code a result came from: printed with every run."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_commit(root: Path) -> str | None:
    """The commit the working tree is on (with -dirty when it has changes)."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=10"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def node_ws_version(root: Path) -> str | None:
    """The `ws` package installed in bench/node (load generator and the node-ws reference)."""
    try:
        text = (root / "bench" / "node" / "node_modules" / "ws" / "package.json").read_text()
    except OSError:
        return None
    version = json.loads(text).get("version")
    return str(version) if version else None


def describe(root: Path) -> dict[str, object]:
    """nproc, CPU model, Python, Node and library versions, commit."""
    import uvicorn
    import websockets

    node = None
    try:
        node = subprocess.run(
            ["node", "--version"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu_model(),
        "python": platform.python_version(),
        "node": node,
        "websockets": websockets.__version__,
        "ws": node_ws_version(root),
        "uvicorn": uvicorn.__version__,
        "kernel": platform.release(),
        "commit": git_commit(root),
    }
