"""MCP resources: an agent's inbox and a task, with resource-updated notifications.

    context-manager://agents/{agent_id}/inbox   the unread messages (after the ack) and the
                                                inbox position; an agent reads only its own
    context-manager://tasks/{task_id}           the task, as GET /api/tasks/{id} answers it

A client that opens a `subscriptions/listen` stream naming these URIs hears
`notifications/resources/updated` when they change — from any door, on any node: the feeds
here watch the channels the bridge publishes every change on (`agents/{id}`: message.new;
`global`: task.*), one watch per URI per node however many streams name it, and publish a
`ResourceUpdated` into the SDK's bus, which routes it to the streams that asked. Events are
cues, not payloads: the client reads the resource again. Clients that never listen lose
nothing — every tool answers `pending` too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

import orjson
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver import Context as ToolContext
from mcp.server.mcpserver import MCPServer
from mcp.server.subscriptions import ResourceUpdated, SubscriptionBus
from mcp.shared.exceptions import MCPError
from mcp.types import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    SubscriptionsListenRequestParams,
)
from pydantic import ValidationError
from sqlalchemy import select

from app.core.security import Role
from app.db.models import Task
from app.domain import inbox, tasks
from app.domain.errors import DomainError
from app.mcp.door import Door, dump
from app.mcp.identity import CallerUnknown
from app.realtime.channels import agent_channel
from app.runtime import Runtime

logger = logging.getLogger("context_manager.mcp")

INBOX_URI = "context-manager://agents/{agent_id}/inbox"
TASK_URI = "context-manager://tasks/{task_id}"
_INBOX_RE = re.compile(r"^context-manager://agents/([^/]+)/inbox$")
_TASK_RE = re.compile(r"^context-manager://tasks/([^/]+)$")
# A feed re-enters its watch this often (a watch has a deadline; a feed runs for as long as a
# stream listens). Between two watches nothing is missed that matters: it re-reads on entry.
FEED_WATCH_SECONDS = 3600.0
FEED_RETRY_SECONDS = 1.0
MAX_URIS_PER_STREAM = 100


def inbox_uri(agent_id: str) -> str:
    return INBOX_URI.format(agent_id=agent_id)


def task_uri(task_id: str) -> str:
    return TASK_URI.format(task_id=task_id)


def _refused(exc: Exception) -> MCPError:
    if isinstance(exc, CallerUnknown):
        return MCPError(INVALID_REQUEST, exc.message, {"code": exc.code})
    if isinstance(exc, DomainError):
        return MCPError(INVALID_PARAMS, exc.message, {"code": exc.code})
    return MCPError(INVALID_PARAMS, str(exc), {"code": "INVALID"})


def register_resources(server: MCPServer[Any], door: Door) -> None:
    """Add the resource templates to `server`."""

    async def read(ctx: ToolContext[Any, Any], reader: Callable[..., Any]) -> str:
        try:
            identity = door.identify(ctx.request_context.request)
            async with door.acting(identity) as domain:
                body = await reader(domain)
        except (CallerUnknown, DomainError, ValidationError) as exc:
            raise _refused(exc) from None
        except Exception:
            logger.exception("MCP resource read failed")
            raise MCPError(INTERNAL_ERROR, "The service could not read this resource") from None
        return orjson.dumps(body).decode()

    @server.resource(
        INBOX_URI,
        name="inbox",
        title="An agent's inbox",
        description="Your unread messages (after your acknowledged position) and the inbox "
        "position. Updated whenever a message arrives.",
        mime_type="application/json",
    )
    async def read_inbox(agent_id: str, ctx: ToolContext) -> str:
        async def reader(domain: Any) -> dict[str, Any]:
            position = await inbox.position(domain, agent_id)
            page = await inbox.read(domain, agent_id, position.acked, 100)
            return {"position": dump(position), **dump(page)}

        return await read(ctx, reader)

    @server.resource(
        TASK_URI,
        name="task",
        title="A task",
        description="One task: status, lease, dependencies, result. Updated on every change.",
        mime_type="application/json",
    )
    async def read_task(task_id: str, ctx: ToolContext) -> str:
        async def reader(domain: Any) -> dict[str, Any]:
            return dump(await tasks.get_task(domain, task_id))  # type: ignore[no-any-return]

        return await read(ctx, reader)


class Feeds:
    """What feeds the listen streams: per watched URI, one task on this node (refcounted)."""

    def __init__(self, bus: SubscriptionBus, door: Door) -> None:
        self._bus = bus
        self._door = door
        self._inboxes: dict[str, tuple[asyncio.Task[None], int]] = {}
        self._tasks: dict[str, int] = {}  # task id → streams naming it
        self._task_feed: asyncio.Task[None] | None = None
        self._wake_tasks = asyncio.Event()

    @property
    def _runtime(self) -> Runtime:
        return self._door.runtime()

    # --- the listen gate (ServerMiddleware) --------------------------------------------------

    async def __call__(
        self, ctx: ServerRequestContext[Any, Any], call_next: CallNext
    ) -> HandlerResult:
        """Check a listen stream's URIs against the caller, and feed them while it is open."""
        if ctx.method != "subscriptions/listen":
            return await call_next(ctx)
        try:
            params = SubscriptionsListenRequestParams.model_validate(ctx.params or {})
        except ValidationError:
            return await call_next(ctx)  # the SDK answers the malformed request
        uris = list(dict.fromkeys(params.notifications.resource_subscriptions or ()))
        if len(uris) > MAX_URIS_PER_STREAM:
            raise MCPError(INVALID_PARAMS, f"At most {MAX_URIS_PER_STREAM} resources per stream")
        try:
            identity = self._door.identify(ctx.request)
        except CallerUnknown as exc:
            raise _refused(exc) from None
        for uri in uris:
            match = _INBOX_RE.match(uri)
            if match and identity.role is Role.AGENT and match.group(1) != identity.agent_id:
                # Uniform wording: a refusal does not say which inboxes exist.
                raise MCPError(
                    INVALID_PARAMS, "An agent listens only to its own inbox", {"code": "FORBIDDEN"}
                )
        acquired = [uri for uri in uris if self.acquire(uri)]
        try:
            return await call_next(ctx)
        finally:
            for uri in acquired:
                self.release(uri)

    # --- feeds -------------------------------------------------------------------------------

    def acquire(self, uri: str) -> bool:
        """Feed `uri` (one of ours) until released; False if it is not ours."""
        if match := _INBOX_RE.match(uri):
            agent_id = match.group(1)
            task, count = self._inboxes.get(agent_id) or (None, 0)
            if task is None:
                task = asyncio.create_task(self._inbox_feed(agent_id), name=f"mcp-inbox-{agent_id}")
            self._inboxes[agent_id] = (task, count + 1)
            return True
        if match := _TASK_RE.match(uri):
            task_id = match.group(1)
            self._tasks[task_id] = self._tasks.get(task_id, 0) + 1
            if self._task_feed is None:
                self._task_feed = asyncio.create_task(self._tasks_feed(), name="mcp-tasks")
            self._wake_tasks.set()  # read the new one's state now
            return True
        return False

    def release(self, uri: str) -> None:
        if match := _INBOX_RE.match(uri):
            agent_id = match.group(1)
            task, count = self._inboxes[agent_id]
            if count > 1:
                self._inboxes[agent_id] = (task, count - 1)
            else:
                del self._inboxes[agent_id]
                task.cancel()
        elif match := _TASK_RE.match(uri):
            task_id = match.group(1)
            left = self._tasks.pop(task_id) - 1
            if left:
                self._tasks[task_id] = left
            elif not self._tasks and self._task_feed is not None:
                self._task_feed.cancel()
                self._task_feed = None

    async def close(self) -> None:
        """Stop every feed (the lifespan ends)."""
        running = [task for task, _ in self._inboxes.values()]
        if self._task_feed is not None:
            running.append(self._task_feed)
        self._inboxes.clear()
        self._tasks.clear()
        self._task_feed = None
        for task in running:
            task.cancel()
        for task in running:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _inbox_feed(self, agent_id: str) -> None:
        uri = inbox_uri(agent_id)
        channel = agent_channel(agent_id)
        while True:
            try:
                async with self._runtime.manager.watch(
                    channel, _inbox_event, FEED_WATCH_SECONDS
                ) as watch:
                    while not watch.expired:
                        if await watch.wait():
                            await self._bus.publish(ResourceUpdated(uri=uri))
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a broker outage: keep feeding once it is back
                logger.exception("MCP inbox feed for %s failed; retrying", agent_id)
                await asyncio.sleep(FEED_RETRY_SECONDS)

    async def _tasks_feed(self) -> None:
        seen: dict[str, datetime | None] = {}
        while True:
            try:
                async with self._runtime.manager.watch(
                    "global", _task_event, FEED_WATCH_SECONDS
                ) as watch:
                    while not watch.expired:
                        for task_id in await self._changed_tasks(seen):
                            await self._bus.publish(ResourceUpdated(uri=task_uri(task_id)))
                        self._wake_tasks.clear()
                        woken = asyncio.ensure_future(self._wake_tasks.wait())
                        published = asyncio.ensure_future(watch.wait())
                        try:
                            await asyncio.wait(
                                {woken, published}, return_when=asyncio.FIRST_COMPLETED
                            )
                        finally:
                            woken.cancel()
                            published.cancel()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - keep feeding once the database is back
                logger.exception("MCP task feed failed; retrying")
                await asyncio.sleep(FEED_RETRY_SECONDS)

    async def _changed_tasks(self, seen: dict[str, datetime | None]) -> list[str]:
        """Watched tasks whose updated_at moved since the last look (new ones: not changed)."""
        watched = list(self._tasks)
        if not watched:
            return []
        async with self._runtime.sessionmaker() as db:
            rows = (
                await db.execute(select(Task.id, Task.updated_at).where(Task.id.in_(watched)))
            ).all()
        now = {row.id: row.updated_at for row in rows}
        changed = [ident for ident, stamp in now.items() if ident in seen and seen[ident] != stamp]
        for ident in list(seen):
            if ident not in self._tasks:
                del seen[ident]
        for ident in watched:
            if ident not in seen:
                seen[ident] = now.get(ident)
            elif ident in now:
                seen[ident] = now[ident]
        return changed


def _inbox_event(event: str) -> bool:
    return event == "message.new"


def _task_event(event: str) -> bool:
    return event.startswith("task.")
