"""The npm package as a newcomer installs it, and the dashboard's copy of it.

- The browser bundle the dashboard serves (app/dashboard/static/client.js, react-hooks.js) is
  what clients/js's sources build: rebuilt into a temporary folder and compared.
- `npm pack` → the tarball installed into an empty folder (with TypeScript, React 18 and
  react-test-renderer from the registry) → `tsc --noEmit` over clients/js/examples (every
  export) and the examples of docs/clients.md → the TypeScript example run, and the seed's React
  example rendered, against a real service.

They need clients/js/node_modules (`npm ci`, as .ci/run does): without it they are skipped
locally and fail under CI=true. `npm test` in clients/js runs the package's own tests.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import IN_CI, ServiceFactory

ROOT = Path(__file__).resolve().parent.parent
JS = ROOT / "clients" / "js"
STATIC = ROOT / "app" / "dashboard" / "static"
CLIENTS_MD = (ROOT / "docs" / "clients.md").read_text()
PACKAGE = json.loads((JS / "package.json").read_text())
DEV = PACKAGE["devDependencies"]


def _require_npm() -> tuple[str, str]:
    node, npm = shutil.which("node"), shutil.which("npm")
    reason = None
    if node is None or npm is None:
        reason = "node and npm are not installed (apt-get install nodejs npm)"
    elif not (JS / "node_modules" / ".bin" / "tsc").exists():
        reason = "clients/js/node_modules is missing: (cd clients/js && npm ci)"
    if reason:
        if IN_CI:
            pytest.fail(f"CI=true and {reason}")
        pytest.skip(reason)
    assert node and npm
    return node, npm


def _run(*command: str, cwd: Path, timeout: float = 300) -> str:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(command)}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
    return done.stdout


def _block(language: str) -> str:
    blocks = re.findall(rf"```{language}\n(.*?)```", CLIENTS_MD, re.S)
    assert len(blocks) == 1, f"docs/clients.md has one ```{language} example"
    return str(blocks[0])


def test_the_served_bundle_is_built_from_the_sources(tmp_path: Path) -> None:
    _require_npm()
    dist = tmp_path / "dist"
    _run(str(JS / "node_modules/.bin/tsc"), "-p", "tsconfig.json", "--outDir", str(dist), cwd=JS)
    # bundle.mjs reads ../dist: build it from a copy of scripts/ placed beside this dist.
    scripts = tmp_path / "scripts"
    shutil.copytree(JS / "scripts", scripts)
    shutil.copy(JS / "package.json", tmp_path / "package.json")
    os.symlink(JS / "node_modules", tmp_path / "node_modules")
    out = tmp_path / "bundle"
    env = {**os.environ, "BUNDLE_OUT_DIR": str(out)}
    done = subprocess.run(
        ["node", str(scripts / "bundle.mjs")], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    for name in ("client.js", "react-hooks.js"):
        assert (out / name).read_text() == (STATIC / name).read_text(), (
            f"app/dashboard/static/{name} is stale: (cd clients/js && npm run build)"
        )


@pytest.fixture(scope="module")
def newcomer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """An empty folder with the packed package (and TypeScript, React) installed."""
    _, npm = _require_npm()
    base = tmp_path_factory.mktemp("npm-newcomer")
    _run(str(JS / "node_modules/.bin/tsc"), "-p", "tsconfig.json", cwd=JS)
    tarball = _run(npm, "pack", "--ignore-scripts", "--pack-destination", str(base), cwd=JS)
    folder = base / "app"
    folder.mkdir()
    (folder / "package.json").write_text(json.dumps({"name": "newcomer", "type": "module"}))
    _run(
        npm,
        "install",
        "--no-audit",
        "--no-fund",
        str(base / tarball.strip().splitlines()[-1]),
        f"typescript@{DEV['typescript']}",
        f"@types/node@{DEV['@types/node']}",
        f"@types/react@{DEV['@types/react']}",
        f"react@{DEV['react']}",
        f"react-test-renderer@{DEV['react']}",
        cwd=folder,
        timeout=600,
    )
    yield folder


def test_the_examples_type_check_against_the_packed_package(newcomer: Path) -> None:
    for name in ("example.ts", "react-example.tsx", "tsconfig.json"):
        shutil.copy(JS / "examples" / name, newcomer / name)
    (newcomer / "quickstart.ts").write_text(_block("ts"))
    (newcomer / "dashboard.tsx").write_text(_block("tsx"))
    _run(str(newcomer / "node_modules/.bin/tsc"), "-p", "tsconfig.json", cwd=newcomer)
    # "Every export": each runtime export of both entries is named by the examples.
    exports = _run(
        "node",
        "-e",
        "const a = await import('@context-manager/client');"
        "const b = await import('@context-manager/client/react');"
        "console.log(JSON.stringify([Object.keys(a), Object.keys(b)]))",
        "--input-type=module",
        cwd=newcomer,
    )
    root, react = json.loads(exports)
    example = (JS / "examples" / "example.ts").read_text()
    react_example = (JS / "examples" / "react-example.tsx").read_text()
    assert [n for n in root if n != "default" and n not in example] == []
    assert [n for n in react if n not in react_example] == []


def _node(folder: Path) -> list[str]:
    probe = subprocess.run(["node", "-e", "process.exit(typeof WebSocket === 'function' ? 0 : 3)"])
    return ["node"] if probe.returncode == 0 else ["node", "--experimental-websocket"]


async def _run_node(folder: Path, script: str, timeout: float = 60) -> str:
    process = await asyncio.create_subprocess_exec(
        *_node(folder),
        script,
        cwd=folder,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode == 0, (out + err).decode()[-3000:]
    return out.decode()


def _compile(folder: Path, source: str, name: str, ports: dict[int, int]) -> None:
    for default, port in ports.items():
        source = source.replace(f"127.0.0.1:{default}", f"127.0.0.1:{port}")
    (folder / name).write_text(source)
    config = {
        "compilerOptions": {
            "target": "ES2022",
            "module": "NodeNext",
            "moduleResolution": "NodeNext",
            "jsx": "react-jsx",
            "strict": True,
            "esModuleInterop": True,
            "types": ["node"],
            "outDir": "out",
        },
        "files": [name],
    }
    (folder / "tsconfig.run.json").write_text(json.dumps(config))
    _run(str(folder / "node_modules/.bin/tsc"), "-p", "tsconfig.run.json", cwd=folder)


async def test_the_docs_typescript_example_runs(
    newcomer: Path, start_service: ServiceFactory
) -> None:
    service = await start_service(surfaces=("api", "ws"))
    ports = {3849: service.settings.ws_port, 3847: service.settings.api_port}
    _compile(newcomer, _block("ts"), "quickstart.ts", ports)
    out = await _run_node(newcomer, "out/quickstart.js")
    lines = out.splitlines()
    assert "state connecting" in lines[0] and "state connected" in lines[1]
    assert re.search(r"^published at offset \d+$", out, re.M)
    assert "INVALID_EVENT" in lines and "task.created Ship it" in lines


RENDER = """
import { act, create } from "react-test-renderer";
import React from "react";
import { getClient } from "@context-manager/client/react";
import { Dashboard } from "./dashboard.js";

globalThis.IS_REACT_ACT_ENVIRONMENT = true;
const text = (r) => JSON.stringify(r.toJSON());
const until = async (r, what) => {
  for (let i = 0; i < 200 && !what(text(r)); i++) {
    await act(() => new Promise((s) => setTimeout(s, 25)));
  }
  if (!what(text(r))) throw new Error("never rendered as expected: " + text(r));
};
let root;
await act(async () => { root = create(React.createElement(Dashboard)); });
await until(root, (t) => t.includes('"live"'));
await fetch("http://127.0.0.1:3847/api/tasks", { method: "POST",
  headers: { "content-type": "application/json" }, body: JSON.stringify({ title: "React" }) });
await until(root, (t) => t.includes("task.created"));
await until(root, (t) => /agents: ","\\d+/.test(t) || /agents: \\d+/.test(t));
console.log(text(root));
await act(async () => { root.unmount(); });
getClient().close();
"""


async def test_the_seeds_react_example_renders_against_a_real_service(
    newcomer: Path, start_service: ServiceFactory
) -> None:
    service = await start_service(surfaces=("api", "ws"), metrics_interval=0.3)
    ports = {3849: service.settings.ws_port, 3847: service.settings.api_port}
    _compile(newcomer, _block("tsx"), "dashboard.tsx", ports)
    render = RENDER.replace("127.0.0.1:3847", f"127.0.0.1:{service.settings.api_port}")
    (newcomer / "out" / "render.mjs").write_text(render)
    out = await _run_node(newcomer, "out/render.mjs")
    assert "live" in out and "task.created" in out
