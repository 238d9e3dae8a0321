"""The MCP endpoint: the SDK's `MCPServer` with our tools, served at /mcp on the API port.

    McpSurface(settings, runtime)       built by create_app, routed at /mcp (and, in token
        ├── MCPServer                   mode, RFC 9728 metadata at /.well-known/…/mcp)
        │     tools.py · resources.py   every call → Door → app/domain (one rule, every door)
        │     auth: JwtVerifier          token mode (identity.py); open mode: ?agent_id=
        │     middleware: Feeds          subscriptions/listen: who may watch, and the feeds
        └── running()                   entered by app.main.lifespan: the SDK's session manager

Streamable HTTP, stateless: a 2026-07-28 request is one self-contained POST and a legacy one
gets a fresh transport per request (`stateless_http`), so any node behind a load balancer
serves any call and a restarted node loses nothing. Tool calls answer as SSE streams (not
JSON bodies) so a waiting tool's progress notifications reach the client. Host and Origin are
checked as the SDK does against DNS rebinding: on a loopback HOST only loopback Hosts and
Origins (plus ALLOWED_ORIGINS); elsewhere token mode protects the endpoint and ALLOWED_ORIGINS,
when set, is the list of browser Origins let through.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

from mcp.server.auth.routes import build_resource_metadata_url
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer
from mcp.server.subscriptions import InMemorySubscriptionBus
from mcp.server.transport_security import TransportSecuritySettings
from pydantic import AnyHttpUrl
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from app import __version__
from app.core.config import Settings
from app.core.security import TokenCodec
from app.mcp.door import Door, ToolErrors
from app.mcp.identity import JwtVerifier
from app.mcp.resources import Feeds, register_resources
from app.mcp.tools import register_tools
from app.runtime import Runtime

MCP_PATH = "/mcp"

INSTRUCTIONS = """\
context-manager is your team's coordination board. Start with register_agent (it tells you \
what you still hold after a restart). Work loop: claim_task → reserve_paths for the files you \
will touch → add_subtask/update_subtask as you go → complete_task (or fail_task / \
release_task) → release_paths. Talk to other agents with send_message; read with \
fetch_inbox, wait with wait_for_messages, and ack_messages what you handled. Every result has \
`pending`: unread > 0 means mail is waiting; leases_expiring > 0 means call heartbeat now."""


def _base_url(settings: Settings) -> str:
    host = settings.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.api_port}"


def public_url(settings: Settings) -> str:
    """Where agents reach the endpoint (MCP_PUBLIC_URL, else this node's API port)."""
    return settings.mcp_public_url or f"{_base_url(settings)}{MCP_PATH}"


def transport_security(settings: Settings) -> TransportSecuritySettings:
    """The SDK's Host/Origin check, following HOST and ALLOWED_ORIGINS (module docstring)."""
    if not settings.is_loopback:
        return TransportSecuritySettings(enable_dns_rebinding_protection=False)
    hosts = ["127.0.0.1", "localhost", "[::1]"]
    origins = [f"http://{host}" for host in hosts]
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=hosts + [f"{host}:*" for host in hosts],
        allowed_origins=origins + [f"{origin}:*" for origin in origins] + settings.allowed_origins,
    )


class McpSurface:
    """The ASGI app routed at the MCP paths; serves once `running()` has been entered."""

    def __init__(self, settings: Settings, runtime: Callable[[], Runtime]) -> None:
        self.settings = settings
        token_mode = settings.auth_mode == "token"
        self.door = Door(runtime, token_mode)
        self.bus = InMemorySubscriptionBus()
        self.feeds = Feeds(self.bus, self.door)
        auth: dict[str, Any] = {}
        self.paths = [MCP_PATH]
        if token_mode:
            resource = AnyHttpUrl(public_url(settings))
            auth = {
                "token_verifier": JwtVerifier(TokenCodec(settings)),
                "auth": AuthSettings(
                    issuer_url=AnyHttpUrl(settings.mcp_issuer_url or _base_url(settings)),
                    resource_server_url=resource,
                    # Our verifier checks signature and expiry; our tokens carry no audience.
                    validate_token_resource=False,
                ),
            }
            self.paths.append(urlsplit(str(build_resource_metadata_url(resource))).path)
        self.server: MCPServer[Any] = MCPServer(
            "context-manager",
            title="context-manager",
            instructions=INSTRUCTIONS,
            version=__version__,
            subscriptions=self.bus,
            middleware=[self.feeds],
            **auth,
        )
        register_tools(self.server, self.door)
        register_resources(self.server, self.door)
        self.server.middleware.append(ToolErrors(self.server))
        self._app: ASGIApp | None = None

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Serve: the SDK's session manager runs for as long as this is entered.

        The manager's task group lives in a task of its own: anyio wants a cancel scope left
        in the task that entered it, and a lifespan may be entered and left by two tasks.
        """
        app = self.server.streamable_http_app(
            streamable_http_path=MCP_PATH,
            stateless_http=True,
            json_response=False,
            transport_security=transport_security(self.settings),
            max_request_body_size=self.settings.max_request_bytes,
        )
        started, stopping = asyncio.Event(), asyncio.Event()

        async def manage() -> None:
            async with self.server.session_manager.run():
                started.set()
                await stopping.wait()

        manager = asyncio.create_task(manage(), name="mcp-session-manager")
        ready = asyncio.create_task(started.wait())
        await asyncio.wait({manager, ready}, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if manager.done():
            manager.result()  # it failed to start: raise why
        self._app = app
        try:
            yield
        finally:
            self._app = None
            stopping.set()
            await manager
            await self.feeds.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._app is None or scope["type"] != "http":
            await PlainTextResponse("MCP is not being served", 503)(scope, receive, send)
            return
        if scope["method"] == "GET" and scope["path"] == MCP_PATH:
            # Stateless: no stream of server-initiated messages to open (the spec's 405).
            # Updates come on subscriptions/listen streams, and with every tool result.
            await PlainTextResponse(
                "No standalone SSE stream: POST requests", 405, {"Allow": "POST"}
            )(scope, receive, send)
            return
        allowed = self.settings.allowed_origins
        origin = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"origin"), None)
        if allowed and origin and not self.settings.is_loopback and origin not in allowed:
            await JSONResponse({"detail": "Origin not allowed", "code": "FORBIDDEN"}, 403)(
                scope, receive, send
            )
            return
        await self._app(scope, receive, send)
