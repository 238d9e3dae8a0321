"""Run the application: one uvicorn server per surface, in one event loop, one lifespan.

uvicorn runs the lifespan once per `Server`, so the servers here run with ``lifespan="off"`` and
`Service` enters the application's lifespan itself, once. Each server's own signal capture is
disabled: `Service` handles SIGTERM/SIGINT for all of them and shuts down in a fixed order —

1. stop accepting on every port;
2. close every WebSocket client with 1012 (service restart) after flushing what was queued;
3. let uvicorn finish in-flight HTTP requests (bounded by SHUTDOWN_TIMEOUT);
4. leave the lifespan: background tasks, broker, database engine.

If one server fails to start (a port in use), the others are stopped and the error raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import signal
import socket
from collections.abc import Generator, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, cast

import uvicorn

from app.core import gc_policy
from app.core.admission import ConnectionGuard, descriptor_budget
from app.core.config import Settings
from app.core.http_protocol import BoundedHttpProtocol, HeadLimits
from app.core.logging import install_redaction
from app.main import create_app
from app.realtime.manager import ConnectionManager
from app.realtime.protocol import CloseCode
from app.realtime.uvicorn_protocol import FrameLimits, UpgradeProtocol

logger = logging.getLogger("context_manager.server")

SURFACES = ("api", "ws", "dashboard")


class StartupError(RuntimeError):
    """A server could not start (typically: its port is in use)."""


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # Signals are handled once, by Service, for every server of the process.
        yield


def _why_not_listening(host: str, port: int, surface: str) -> str:
    """Why HOST:PORT cannot be bound, and the option (and variable) that changes it."""
    option = f"--{surface.replace('_', '-')}-port or {surface.upper()}_PORT"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.create_server((host, port), family=family):
            return f"choose another port with {option}"
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return f"the port is in use by another program; choose another with {option}"
        if exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT) or isinstance(
            exc, socket.gaierror
        ):
            return f"this machine has no address {host}; choose another with --host or HOST"
        if exc.errno == errno.EACCES:
            return f"not allowed to listen on port {port}; choose another with {option}"
        return f"{exc.strerror or exc}; choose another port with {option}"


def _port(settings: Settings, surface: str) -> int:
    return {
        "api": settings.api_port,
        "ws": settings.ws_port,
        "dashboard": settings.dashboard_port,
    }[surface]


class Service:
    """The running process: `await Service(settings).run()`, or `async with` in tests."""

    def __init__(self, settings: Settings, surfaces: Sequence[str] = SURFACES) -> None:
        self.settings = settings
        self.surfaces = tuple(surfaces)
        self.app = create_app(settings)
        self.servers: dict[str, _Server] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._lifespan: AbstractAsyncContextManager[Any] | None = None
        self._stop = asyncio.Event()
        # Every client connection of the three ports, from accept to close (admission.py).
        self.guard = ConnectionGuard(
            settings.max_connections_per_ip, descriptor_budget(settings.fd_reserve)
        )

    @property
    def manager(self) -> ConnectionManager:
        manager: ConnectionManager = self.app.state.manager
        return manager

    def _config(self, surface: str) -> uvicorn.Config:
        settings = self.settings
        head = HeadLimits(
            settings.max_request_head_bytes,
            settings.max_request_headers,
            settings.request_head_timeout,
        )
        # Every port bounds its request heads and admits through the one guard
        # (app/core/http_protocol.py). The WebSocket port parses each upgrade once and hands
        # frames to the endpoint without uvicorn's receive queue (realtime/uvicorn_protocol.py).
        protocol: Any
        if surface == "ws":
            frames = FrameLimits(
                settings.frame_rate,
                float(settings.frame_burst),
                settings.max_message_fragments,
                settings.outbound_queue_bytes,
            )
            protocol = functools.partial(
                UpgradeProtocol, limits=head, guard=self.guard, frames=frames
            )
        else:
            protocol = functools.partial(BoundedHttpProtocol, limits=head, guard=self.guard)
        return uvicorn.Config(
            self.app.state.surfaces[surface],
            host=settings.host,
            port=_port(settings, surface),
            lifespan="off",
            loop="none",
            # uvicorn calls it as a class (config, server_state, app_state): a partial works.
            http=cast("type[asyncio.Protocol]", protocol),
            ws="websockets-sansio",
            ws_max_size=settings.max_frame_bytes,
            ws_ping_interval=settings.ws_ping_interval or None,
            ws_ping_timeout=settings.ws_ping_timeout,
            ws_per_message_deflate=False,
            log_config=None,
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=int(max(1, settings.shutdown_timeout)),
        )

    async def start(self) -> None:
        """Enter the lifespan and start every server; return once all listen."""
        install_redaction()  # tokens in WebSocket query strings never reach a log line
        self._lifespan = self.app.router.lifespan_context(self.app)
        await self._lifespan.__aenter__()
        try:
            for surface in self.surfaces:
                server = _Server(self._config(surface))
                self.servers[surface] = server
                task = asyncio.create_task(self._serve(surface, server), name=f"uvicorn-{surface}")
                self._tasks.append(task)
                while not server.started:
                    if task.done():
                        host, port = self.settings.host, _port(self.settings, surface)
                        raise StartupError(
                            f"the {surface} server could not listen on {host}:{port}: "
                            + _why_not_listening(host, port, surface)
                        )
                    await asyncio.sleep(0.01)
        except BaseException:
            await self.stop()
            raise
        for surface in self.surfaces:
            logger.info(
                "%s listening on http://%s:%d%s",
                surface,
                self.settings.host,
                _port(self.settings, surface),
                "/docs" if surface == "api" else "",
            )

    async def _serve(self, surface: str, server: _Server) -> None:
        try:
            await server.serve()
        except SystemExit:
            # uvicorn exits the process when it cannot bind; here it only ends this server.
            logger.error("%s server failed to start", surface)
        finally:
            if not self._stop.is_set() and server.started:
                logger.error("%s server stopped unexpectedly; stopping the service", surface)
            self._stop.set()

    def request_stop(self) -> None:
        """Begin a graceful shutdown (what SIGTERM and SIGINT do)."""
        self._stop.set()

    async def wait(self) -> None:
        await self._stop.wait()

    async def stop(self) -> None:
        """Graceful shutdown in the order of the module docstring."""
        self._stop.set()
        for server in self.servers.values():
            for listener in getattr(server, "servers", []):
                listener.close()
        if self._lifespan is not None and hasattr(self.app.state, "manager"):
            # Rolling restart: 1012 + "reconnect:<ms>", each client its own jittered delay.
            await self.manager.drain(
                CloseCode.SERVICE_RESTART, reconnect_within=self.settings.reconnect_spread
            )
        for server in self.servers.values():
            server.should_exit = True
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._lifespan is not None:
            lifespan, self._lifespan = self._lifespan, None
            await lifespan.__aexit__(None, None, None)

    async def run(self) -> None:
        """Start, serve until SIGTERM/SIGINT or a server failure, then shut down."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.request_stop)
        try:
            await self.start()
            # Everything built so far lives as long as the process, and so does most of what
            # connections build: keep full collections off it (app/core/gc_policy.py). Only here, in
            # the process that serves: tests start many services in one process.
            gc_policy.install(self.settings.gc_sweep_interval)
            await self.wait()
        finally:
            await self.stop()
            gc_policy.uninstall()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    async def __aenter__(self) -> Service:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
