"""A real webhook receiver for the tests: a small HTTP/1.1 server on loopback.

It records every request (headers, body, arrival time) and answers what the test's `plan`
says — a status, headers and a body, after an optional delay, or never (`hang`). `stop()`
closes the listening socket and every open connection, so the receiver is really down
(connection refused) until `start()` again on the same port. Signatures are checked the way a
receiver would, with the `standardwebhooks` package.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from standardwebhooks import Webhook

from tests.conftest import free_port


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic() on arrival

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)

    def verify(self, secret: str) -> Any:
        """The payload, if the signature verifies with `secret` (standardwebhooks raises else)."""
        return Webhook(secret).verify(self.body, self.headers)


@dataclass
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"
    delay: float = 0.0
    hang: bool = False


Plan = Callable[[Received], Answer | Awaitable[Answer]]

REASONS = {200: "OK", 204: "No Content", 302: "Found", 410: "Gone", 429: "Too Many Requests"}


class Receiver:
    def __init__(
        self,
        plan: Plan | None = None,
        port: int | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.plan: Plan = plan or (lambda _r: Answer())
        self.port = port or free_port()
        self.tls = tls
        self.requests: list[Received] = []
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.StreamWriter] = set()
        self._arrived = asyncio.Event()
        self.release = asyncio.Event()  # ends every `hang`

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}/hook"

    async def start(self) -> Receiver:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, ssl=self.tls)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._connections):
                writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None

    async def __aenter__(self) -> Receiver:
        return await self.start()

    async def __aexit__(self, *_: object) -> None:
        self.release.set()
        await self.stop()

    async def wait_for(
        self, check: Callable[[list[Received]], bool], timeout: float = 15.0
    ) -> list[Received]:
        """Until `check(requests)` holds; the requests then."""
        deadline = time.monotonic() + timeout
        while not check(self.requests):
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"receiver: timed out with {len(self.requests)} requests"
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), min(remaining, 0.2))
        return self.requests

    def unique_ids(self) -> list[str]:
        """Webhook ids in order of first arrival."""
        return list(dict.fromkeys(r.webhook_id for r in self.requests))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections.add(writer)
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                method, path, _version = line.decode().split(" ", 2)
                headers: dict[str, str] = {}
                while True:
                    header = await reader.readline()
                    if header in (b"\r\n", b"\n", b""):
                        break
                    name, _, value = header.decode().partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                received = Received(method, path, headers, body, time.monotonic())
                self.requests.append(received)
                self._arrived.set()
                answer = self.plan(received)
                if not isinstance(answer, Answer):
                    answer = await answer
                if answer.hang:
                    await self.release.wait()
                    return
                if answer.delay:
                    await asyncio.sleep(answer.delay)
                head = [f"HTTP/1.1 {answer.status} {REASONS.get(answer.status, 'Status')}"]
                extra = {"content-length": str(len(answer.body)), **answer.headers}
                head += [f"{name}: {value}" for name, value in extra.items()]
                writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + answer.body)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            return
        finally:
            self._connections.discard(writer)
            writer.close()
