"""Private redis-server processes for the sharding tests: standalone shards and a 3-master
Redis Cluster, on free ports, without persistence, never the shared 6379.

Synchronous (subprocess) so that one set can serve a whole test module; each test still uses
key prefixes of its own. `restart` stops a server and starts it again on the same port with
its memory gone, as a crash of a Redis without persistence does.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import IN_CI, free_port


def redis_server_binary() -> str:
    """redis-server's path; skipped (failing in CI) when it is not installed."""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(binary).exists():
        if IN_CI:
            pytest.fail("CI=true and redis-server is not installed")
        pytest.skip("redis-server is not installed")
    return binary


def _answers(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2) as s:
        s.sendall(b"PING\r\n")
        return s.recv(16).startswith(b"+PONG")
    return False


class RedisProcess:
    """One redis-server on a private port (`extra` arguments appended)."""

    def __init__(self, workdir: Path, port: int | None = None, *extra: str) -> None:
        self.port = port or free_port()
        self.workdir = workdir / str(self.port)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                redis_server_binary(),
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.workdir),
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while not _answers(self.port):
            assert self.process.poll() is None, "redis-server exited"
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.02)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()  # as a crash: nothing saved, nothing said to clients
            self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


def _cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free and below the ephemeral range."""
    while True:
        port = free_port()
        if port + 10000 >= 32768:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


def _command(port: int, *args: str) -> str:
    cli = shutil.which("redis-cli") or "/usr/bin/redis-cli"
    done = subprocess.run(
        [cli, "-p", str(port), *args], capture_output=True, text=True, timeout=10, check=True
    )
    return done.stdout


@contextlib.contextmanager
def redis_cluster(workdir: Path, masters: int = 3) -> Iterator[list[RedisProcess]]:
    """A Redis Cluster of `masters` masters (no replicas), all 16384 slots assigned."""
    nodes = [
        RedisProcess(workdir, _cluster_port(), "--cluster-enabled", "yes",
                     "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000")
        for _ in range(masters)
    ]  # fmt: skip
    try:
        for node in nodes:
            node.start()
        share = 16384 // masters
        for i, node in enumerate(nodes):
            last = 16383 if i == masters - 1 else (i + 1) * share - 1
            _command(node.port, "CLUSTER", "ADDSLOTSRANGE", str(i * share), str(last))
        for node in nodes[1:]:
            _command(node.port, "CLUSTER", "MEET", "127.0.0.1", str(nodes[0].port))
        deadline = time.monotonic() + 20
        while not all(
            "cluster_state:ok" in _command(n.port, "CLUSTER", "INFO")
            and _command(n.port, "CLUSTER", "INFO").count("cluster_known_nodes:" + str(masters))
            for n in nodes
        ):
            assert time.monotonic() < deadline, "the Redis Cluster did not form"
            time.sleep(0.1)
        yield nodes
    finally:
        for node in nodes:
            node.stop()
