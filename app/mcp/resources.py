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
# A listen stream is acknowledged once its feeds are live, or after this long regardless.
READY_SECONDS = 5.0
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


class _Feed:
    """One running feed: its task, the streams it serves, and whether its watch is live."""

    __slots__ = ("task", "streams", "live")

    def __init__(self) -> None:
        self.task: asyncio.Task[None] | None = None
        self.streams = 0
        self.live = asyncio.Event()


class Feeds:
    """What feeds the listen streams on this node: one feed per watched inbox, one for every
    watched task (refcounted by the streams naming them).

    A stream is acknowledged only once its feeds watch and its tasks' state is read, so no
    change after the acknowledgment is missed.
    """

    def __init__(self, bus: SubscriptionBus, door: Door) -> None:
        self._bus = bus
        self._door = door
        self._inboxes: dict[str, _Feed] = {}
        self._tasks: dict[str, int] = {}  # task id → streams naming it
        self._stamps: dict[str, datetime | None] = {}  # task id → updated_at last seen
        self._task_feed = _Feed()

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
            await self._ready(acquired)
            return await call_next(ctx)
        finally:
            for uri in acquired:
                self.release(uri)

    async def _ready(self, uris: list[str]) -> None:
        """Until the feeds of `uris` watch and their tasks' current state is known."""
        waits = []
        for uri in uris:
            if match := _INBOX_RE.match(uri):
                waits.append(self._inboxes[match.group(1)].live.wait())
            elif _TASK_RE.match(uri):
                waits.append(self._task_feed.live.wait())
        task_ids = [m.group(1) for uri in uris if (m := _TASK_RE.match(uri))]
        try:
            async with asyncio.timeout(READY_SECONDS):
                await asyncio.gather(*waits, self._prime(task_ids))
        except TimeoutError:
            logger.warning(
                "MCP feeds not live after %s s; serving the stream anyway", READY_SECONDS
            )

    async def _prime(self, task_ids: list[str]) -> None:
        new = [ident for ident in task_ids if ident not in self._stamps]
        if new:
            for ident, stamp in (await self._read_stamps(new)).items():
                self._stamps.setdefault(ident, stamp)

    # --- feeds -------------------------------------------------------------------------------

    def acquire(self, uri: str) -> bool:
        """Feed `uri` (one of ours) until released; False if it is not ours."""
        if match := _INBOX_RE.match(uri):
            agent_id = match.group(1)
            feed = self._inboxes.setdefault(agent_id, _Feed())
            if feed.task is None:
                feed.task = asyncio.create_task(
                    self._inbox_feed(agent_id, feed), name=f"mcp-inbox-{agent_id}"
                )
            feed.streams += 1
            return True
        if match := _TASK_RE.match(uri):
            task_id = match.group(1)
            self._tasks[task_id] = self._tasks.get(task_id, 0) + 1
            feed = self._task_feed
            if feed.task is None:
                feed.task = asyncio.create_task(self._tasks_feed(feed), name="mcp-tasks")
            feed.streams += 1
            return True
        return False

    def release(self, uri: str) -> None:
        if match := _INBOX_RE.match(uri):
            feed = self._inboxes.get(match.group(1))
            if feed is not None:
                feed.streams -= 1
                if feed.streams <= 0:
                    del self._inboxes[match.group(1)]
                    _stop(feed)
        elif match := _TASK_RE.match(uri):
            task_id = match.group(1)
            left = self._tasks.pop(task_id, 0) - 1
            if left > 0:
                self._tasks[task_id] = left
            else:
                self._stamps.pop(task_id, None)
            self._task_feed.streams -= 1
            if self._task_feed.streams <= 0:
                _stop(self._task_feed)
                self._task_feed = _Feed()

    async def close(self) -> None:
        """Stop every feed (the lifespan ends)."""
        feeds = [*self._inboxes.values(), self._task_feed]
        self._inboxes.clear()
        self._tasks.clear()
        self._stamps.clear()
        self._task_feed = _Feed()
        running = [feed.task for feed in feeds if feed.task is not None]
        for feed in feeds:
            _stop(feed)
        for task in running:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _inbox_feed(self, agent_id: str, feed: _Feed) -> None:
        uri = inbox_uri(agent_id)
        channel = agent_channel(agent_id)
        while True:
            try:
                async with self._runtime.manager.watch(
                    channel, _inbox_event, FEED_WATCH_SECONDS
                ) as watch:
                    feed.live.set()
                    while not watch.expired:
                        if await watch.wait():
                            await self._bus.publish(ResourceUpdated(uri=uri))
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a broker outage: keep feeding once it is back
                logger.exception("MCP inbox feed for %s failed; retrying", agent_id)
                await asyncio.sleep(FEED_RETRY_SECONDS)

    async def _tasks_feed(self, feed: _Feed) -> None:
        while True:
            try:
                async with self._runtime.manager.watch(
                    "global", _task_event, FEED_WATCH_SECONDS
                ) as watch:
                    feed.live.set()
                    while not watch.expired:
                        # Re-read after (re-)entering the watch too: nothing slips between.
                        for task_id in await self._changed_tasks():
                            await self._bus.publish(ResourceUpdated(uri=task_uri(task_id)))
                        await watch.wait()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - keep feeding once the database is back
                logger.exception("MCP task feed failed; retrying")
                await asyncio.sleep(FEED_RETRY_SECONDS)

    async def _read_stamps(self, task_ids: list[str]) -> dict[str, datetime | None]:
        async with self._runtime.sessionmaker() as db:
            rows = (
                await db.execute(select(Task.id, Task.updated_at).where(Task.id.in_(task_ids)))
            ).all()
        found: dict[str, datetime | None] = {ident: None for ident in task_ids}
        found.update({row.id: row.updated_at for row in rows})
        return found

    async def _changed_tasks(self) -> list[str]:
        """Watched tasks whose updated_at moved since the last look."""
        watched = list(self._tasks)
        if not watched:
            return []
        now = await self._read_stamps(watched)
        changed = []
        for ident, stamp in now.items():
            if ident not in self._tasks:
                continue  # released meanwhile
            if ident in self._stamps and self._stamps[ident] != stamp:
                changed.append(ident)
            self._stamps[ident] = stamp
        return changed


def _stop(feed: _Feed) -> None:
    if feed.task is not None:
        feed.task.cancel()


def _inbox_event(event: str) -> bool:
    return event == "message.new"


def _task_event(event: str) -> bool:
    return event.startswith("task.")
