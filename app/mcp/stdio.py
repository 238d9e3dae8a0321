"""`context-manager mcp`: the MCP tools over stdio, for an agent that launches its servers.

It holds no state and writes nothing itself: every request is relayed to a running service's
Streamable HTTP endpoint (CONTEXT_MANAGER_URL + /mcp), as that service's own /mcp would answer
it — the same tools, results, `pending`, error codes and resources, one writer, and the
events flow as for any client. The caller is CONTEXT_MANAGER_TOKEN (sent as the bearer token)
or, in open mode, CONTEXT_MANAGER_AGENT_ID (sent as `?agent_id=`).

    stdio client ── tools/list, resources/templates/list   answered here (the same catalog)
                 ── tools/call, resources/read              one POST each to the service
                 ── resources/subscribe (handshake era),    a listen stream to the service
                    subscriptions/listen (2026-07-28)       per URI, relayed as updates

The service being down (restarting, or not started) is a tool error UNAVAILABLE for that
call; the next call reaches it again. Progress notifications of a waiting tool are relayed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlencode, urlsplit, urlunsplit

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.mcpserver import MCPServer
from mcp.server.session import ServerSession
from mcp.server.stdio import stdio_server
from mcp.server.subscriptions import (
    InMemorySubscriptionBus,
    ListenHandler,
    ResourceUpdated,
)
from mcp.shared.exceptions import MCPError
from mcp.types import (
    CallToolRequestParams,
    CallToolResult,
    EmptyResult,
    ListResourcesResult,
    ListResourceTemplatesResult,
    ListToolsResult,
    PaginatedRequestParams,
    ReadResourceRequestParams,
    ReadResourceResult,
    SubscribeRequestParams,
    SubscriptionsListenRequestParams,
    UnsubscribeRequestParams,
)
from pydantic import ValidationError

from app import __version__
from app.core.tasks import wait_event
from app.mcp.door import Door, failed
from app.mcp.hook import DEFAULT_URL as DEFAULT_URL
from app.mcp.resources import register_resources
from app.mcp.server import INSTRUCTIONS, MCP_PATH
from app.mcp.tools import register_tools
from app.runtime import Runtime

logger = logging.getLogger("context_manager.mcp.stdio")

MODERN = "2026-07-28"  # every request a self-contained POST: nothing to set up or lose
RELISTEN_SECONDS = 1.0
READY_SECONDS = 5.0  # a listen stream waits this long at most for the service's
T = TypeVar("T")


class Unavailable(Exception):
    """The service could not be reached (or the connection broke) for one request."""


def endpoint(url: str, agent_id: str | None) -> str:
    """The service's MCP URL: `url` + /mcp (unless given), with ?agent_id= in open mode."""
    parts = urlsplit(url.rstrip("/"))
    path = parts.path if parts.path.endswith(MCP_PATH) else parts.path + MCP_PATH
    query = parts.query
    if agent_id:
        query = "&".join(q for q in (query, urlencode({"agent_id": agent_id})) if q)
    return urlunsplit(parts._replace(path=path, query=query))


class Remote:
    """The service's /mcp, one short-lived client per request over a shared HTTP pool."""

    def __init__(self, url: str, token: str | None, agent_id: str | None) -> None:
        self.url = endpoint(url, agent_id)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        # The SDK's client keeps no HTTP status of a refused request: remember a 401 here.
        self.unauthorized = False
        # Reads may wait: a tool waits up to 50 s, a listen stream for as long as it lasts.
        self.http = httpx2.AsyncClient(
            headers=headers,
            timeout=httpx2.Timeout(30, read=None),
            event_hooks={"response": [self._saw]},
        )

    async def _saw(self, response: httpx2.Response) -> None:
        self.unauthorized = response.status_code == 401

    async def aclose(self) -> None:
        await self.http.aclose()

    @contextlib.asynccontextmanager
    async def client(self) -> AsyncIterator[Client]:
        transport = streamable_http_client(self.url, http_client=self.http)
        async with Client(transport, mode=MODERN) as client:
            yield client

    async def request(self, work: Callable[[Client], Awaitable[T]]) -> T:
        """`work` against the service; MCPError (the service's answer) passes through."""
        try:
            async with self.client() as client:
                return await work(client)
        except MCPError as exc:
            if exc.code == -32000 and exc.message == "Connection closed":
                raise Unavailable(exc.message) from None
            raise
        except Exception as exc:  # noqa: BLE001 - a transport failure, however the SDK wraps it
            raise Unavailable(_reason(exc)) from None


def _refusal(exc: BaseException) -> MCPError | None:
    """The service's own error inside `exc` (a lost connection is none)."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if (found := _refusal(inner)) is not None:
                return found
        return None
    if isinstance(exc, MCPError) and exc.code not in (-32000, -32603):
        return exc
    return None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_reason(inner) for inner in exc.exceptions)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _no_runtime() -> Runtime:
    raise RuntimeError("the stdio relay runs no tools itself")


def catalog() -> MCPServer[Any]:
    """The tools and resource templates, as the service lists them (never called here)."""
    server: MCPServer[Any] = MCPServer("context-manager", instructions=INSTRUCTIONS)
    door = Door(_no_runtime, token_mode=False)
    register_tools(server, door)
    register_resources(server, door)
    return server


class _RelayFeed:
    """The service's listen stream for one URI: its task, the local streams and subscribers it
    serves, and once `settled`, live or refused (`refusal`)."""

    def __init__(self) -> None:
        self.task: asyncio.Task[None] | None = None
        self.streams = 0
        self.settled = asyncio.Event()
        self.refusal: MCPError | None = None


class Relay:
    """The stdio server: answers listings itself, relays the rest to `remote`."""

    def __init__(self, remote: Remote) -> None:
        self.remote = remote
        self.catalog = catalog()
        self.bus = InMemorySubscriptionBus()
        self._feeds: dict[str, _RelayFeed] = {}
        self._subscribers: dict[str, set[ServerSession]] = {}
        self.server: Server[Any] = Server(
            "context-manager",
            version=__version__,
            instructions=INSTRUCTIONS,
            on_list_tools=self.list_tools,
            on_call_tool=self.call_tool,
            on_list_resources=self.list_resources,
            on_list_resource_templates=self.list_resource_templates,
            on_read_resource=self.read_resource,
            on_subscribe_resource=self.subscribe,
            on_unsubscribe_resource=self.unsubscribe,
            on_subscriptions_listen=ListenHandler(self.bus),
        )
        self.server.middleware.append(self.listen_gate)

    async def list_tools(
        self, ctx: ServerRequestContext[Any], params: PaginatedRequestParams | None
    ) -> ListToolsResult:
        return ListToolsResult(tools=await self.catalog.list_tools())

    async def call_tool(
        self, ctx: ServerRequestContext[Any], params: CallToolRequestParams
    ) -> CallToolResult:
        async def relay_progress(progress: float, total: float | None, message: str | None) -> None:
            with contextlib.suppress(Exception):
                await ctx.session.report_progress(progress, total, message)

        async def call(client: Client) -> CallToolResult:
            return await client.call_tool(
                params.name, params.arguments or {}, progress_callback=relay_progress
            )

        try:
            return await self.remote.request(call)
        except Unavailable as exc:
            if self.remote.unauthorized:
                return failed(
                    "UNAUTHORIZED",
                    "The service refused CONTEXT_MANAGER_TOKEN (401: missing, invalid or "
                    "expired); mint one with `context-manager token create --agent <id>`.",
                )
            return failed(
                "UNAVAILABLE",
                f"context-manager at {self.remote.url.split('?')[0]} could not be reached "
                f"({exc}); it may be restarting — retry the call.",
            )

    async def list_resources(
        self, ctx: ServerRequestContext[Any], params: PaginatedRequestParams | None
    ) -> ListResourcesResult:
        return ListResourcesResult(resources=[])

    async def list_resource_templates(
        self, ctx: ServerRequestContext[Any], params: PaginatedRequestParams | None
    ) -> ListResourceTemplatesResult:
        templates = await self.catalog.list_resource_templates()
        return ListResourceTemplatesResult(resource_templates=templates)

    async def read_resource(
        self, ctx: ServerRequestContext[Any], params: ReadResourceRequestParams
    ) -> ReadResourceResult:
        try:
            return await self.remote.request(lambda client: client.read_resource(str(params.uri)))
        except Unavailable as exc:
            raise MCPError(-32603, f"context-manager could not be reached ({exc})") from None

    # --- resource updates --------------------------------------------------------------------

    async def subscribe(
        self, ctx: ServerRequestContext[Any], params: SubscribeRequestParams
    ) -> EmptyResult:
        """resources/subscribe (handshake era): updates of `uri` sent on this session."""
        uri = str(params.uri)
        sessions = self._subscribers.setdefault(uri, set())
        if ctx.session not in sessions:
            sessions.add(ctx.session)
            self.acquire(uri)
        return EmptyResult()

    async def unsubscribe(
        self, ctx: ServerRequestContext[Any], params: UnsubscribeRequestParams
    ) -> EmptyResult:
        uri = str(params.uri)
        sessions = self._subscribers.get(uri, set())
        if ctx.session in sessions:
            sessions.discard(ctx.session)
            if not sessions:
                del self._subscribers[uri]
            self.release(uri)
        return EmptyResult()

    async def listen_gate(
        self, ctx: ServerRequestContext[Any, Any], call_next: CallNext
    ) -> HandlerResult:
        """ServerMiddleware: a 2026-07-28 listen stream is acknowledged once the service
        listens for its URIs (or refused as the service refuses them), and fed while open."""
        if ctx.method != "subscriptions/listen":
            return await call_next(ctx)
        try:
            params = SubscriptionsListenRequestParams.model_validate(ctx.params or {})
        except ValidationError:
            return await call_next(ctx)
        uris = list(dict.fromkeys(params.notifications.resource_subscriptions or ()))
        feeds = [self.acquire(uri) for uri in uris]
        try:
            for feed in feeds:
                await wait_event(feed.settled, READY_SECONDS)
                if feed.refusal is not None:
                    raise feed.refusal
            return await call_next(ctx)
        finally:
            for uri in uris:
                self.release(uri)

    def acquire(self, uri: str) -> _RelayFeed:
        feed = self._feeds.get(uri)
        if feed is None:
            feed = self._feeds[uri] = _RelayFeed()
            feed.task = asyncio.create_task(self._feed(uri, feed), name=f"mcp-relay-{uri}")
        feed.streams += 1
        return feed

    def release(self, uri: str) -> None:
        feed = self._feeds.get(uri)
        if feed is None:
            return
        feed.streams -= 1
        if feed.streams <= 0:
            del self._feeds[uri]
            if feed.task is not None:
                feed.task.cancel()

    async def _feed(self, uri: str, feed: _RelayFeed) -> None:
        """Listen to `uri` on the service and relay each update, re-listening after a drop."""
        again = False
        while True:
            try:
                async with self.remote.client() as client:
                    async with client.listen(resource_subscriptions=[uri]) as subscription:
                        feed.settled.set()
                        if again:
                            # Whatever changed while the stream was down: read it again.
                            await self._updated(uri)
                        async for _ in subscription:
                            await self._updated(uri)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - refused, or the service away
                refusal = _refusal(exc)
                if refusal is not None:
                    logger.warning("the service refused updates of %s: %s", uri, refusal.message)
                    feed.refusal = refusal
                    feed.settled.set()
                    return
                logger.info("updates of %s interrupted (%s); listening again", uri, _reason(exc))
            again = True
            await asyncio.sleep(RELISTEN_SECONDS)

    async def _updated(self, uri: str) -> None:
        await self.bus.publish(ResourceUpdated(uri=uri))
        for session in list(self._subscribers.get(uri, ())):
            try:
                await session.send_resource_updated(uri)
            except Exception:  # noqa: BLE001 - that client went away
                self._subscribers.get(uri, set()).discard(session)

    async def close(self) -> None:
        tasks = [feed.task for feed in self._feeds.values() if feed.task is not None]
        self._feeds.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def serve(url: str, token: str | None, agent_id: str | None) -> None:
    """Serve MCP on stdin/stdout until the client closes it."""
    remote = Remote(url, token, agent_id)
    relay = Relay(remote)
    try:
        async with stdio_server() as (read_stream, write_stream):
            await relay.server.run(
                read_stream, write_stream, relay.server.create_initialization_options()
            )
    finally:
        await relay.close()
        await remote.aclose()
