"""One tool call against the domain layer: who calls, a database session, errors, `pending`.

    tool function (tools.py) ── Door.call(tool_ctx, action)
        identity.caller          token (token mode) or ?agent_id= (open mode)
        Runtime.context(identity)   the same Context a REST request gets
        action(ctx, agent_id)    parse arguments into app/schemas.py models, call app/domain
        pending(ctx, agent_id)   {unread, leases_expiring}, added to every result

Every outcome is a `CallToolResult` whose content is one JSON text block (and the same object
as structured content). Failures are tool errors (`is_error`) whose JSON is
`{"error": {"code", "message", …}}` with the domain's codes (NOT_FOUND, FORBIDDEN, LEASE_LOST,
RESERVATION_CONFLICT, …), INVALID for arguments the schemas refuse, INTERNAL for anything
unexpected (logged here, never a traceback to the agent).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import orjson
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver import Context as ToolContext
from mcp.server.mcpserver import MCPServer
from mcp.types import CallToolResult, TextContent
from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from app.core.security import Identity
from app.domain import claims, inbox
from app.domain.context import Context
from app.domain.errors import DomainError
from app.mcp.identity import CallerUnknown, caller
from app.runtime import Runtime

logger = logging.getLogger("context_manager.mcp")

# A lease that ends within this many seconds counts in `pending.leases_expiring`.
LEASE_WARNING_SECONDS = 60.0
# While a tool waits (wait_for_messages, claim_task with wait_seconds) it reports progress this
# often: the answer becomes an SSE stream, and neither the client nor a proxy times it out.
PROGRESS_INTERVAL = 5.0

T = TypeVar("T")
Action = Callable[[Context, str], Awaitable[dict[str, Any]]]


class ToolFailure(Exception):
    """A refusal the tool reports with a code (beside the domain's own errors)."""

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details or {}


def dump(model: BaseModel | None) -> Any:
    """A response model as the REST API answers it (JSON types, ISO timestamps)."""
    return None if model is None else model.model_dump(mode="json")


def ok(body: dict[str, Any]) -> CallToolResult:
    return CallToolResult(
        content=[TextContent(type="text", text=orjson.dumps(body).decode())],
        structured_content=body,
    )


def failed(code: str, message: str, details: dict[str, Any] | None = None) -> CallToolResult:
    body = {"error": {"code": code, "message": message, **(details or {})}}
    return CallToolResult(
        content=[TextContent(type="text", text=orjson.dumps(body).decode())],
        structured_content=body,
        is_error=True,
    )


def _invalid(exc: ValidationError) -> CallToolResult:
    problems = [
        {"field": ".".join(str(part) for part in err["loc"]), "problem": err["msg"]}
        for err in exc.errors(include_url=False, include_input=False)
    ]
    summary = "; ".join(f"{p['field'] or 'arguments'}: {p['problem']}" for p in problems)
    return failed("INVALID", f"Invalid arguments: {summary}", {"problems": problems})


async def pending(ctx: Context, agent_id: str) -> dict[str, int]:
    """What the agent should notice between calls: mail after its acknowledged position,
    leases about to end."""
    position = await inbox.position(ctx, agent_id)
    expiring = await claims.expiring_leases(ctx, agent_id, LEASE_WARNING_SECONDS)
    await ctx.db.rollback()
    return {"unread": max(0, position.last_seq - position.acked), "leases_expiring": expiring}


async def with_progress(
    tool_ctx: ToolContext[Any, Any], work: Coroutine[Any, Any, T], what: str
) -> T:
    """Await `work`, reporting progress every PROGRESS_INTERVAL seconds while it runs."""
    task = asyncio.ensure_future(work)
    beat = 0
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=PROGRESS_INTERVAL)
            if done:
                return task.result()
            beat += 1
            try:
                await tool_ctx.report_progress(beat, message=what)
            except Exception:  # noqa: BLE001 - a client that went away ends the wait anyway
                logger.debug("progress notification not sent", exc_info=True)
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class Door:
    """Runs tool calls for one application (its Runtime exists once the lifespan started)."""

    def __init__(self, runtime: Callable[[], Runtime], token_mode: bool) -> None:
        self._runtime = runtime
        self.token_mode = token_mode

    def runtime(self) -> Runtime:
        return self._runtime()

    def identify(self, request: object) -> Identity:
        """The caller of the request being served (raises CallerUnknown)."""
        query = dict(request.query_params) if isinstance(request, Request) else None
        return caller(self.token_mode, query)

    def acting(self, identity: Identity) -> Context:
        """A domain Context for `identity`: enter it; its session, if the call opened one,
        is closed on exit."""
        return self.runtime().context(identity)

    async def call(self, tool_ctx: ToolContext[Any, Any], action: Action) -> CallToolResult:
        """Run `action` as the caller and shape its outcome (see the module docstring)."""
        try:
            identity = self.identify(tool_ctx.request_context.request)
        except CallerUnknown as exc:
            return failed(exc.code, exc.message)
        agent_id = identity.agent_id
        assert agent_id is not None
        try:
            async with self.acting(identity) as ctx:
                body = await action(ctx, agent_id)
                body["pending"] = await pending(ctx, agent_id)
                return ok(body)
        except DomainError as exc:
            return failed(exc.code, exc.message, exc.details)
        except ToolFailure as exc:
            return failed(exc.code, exc.message, exc.details)
        except ValidationError as exc:
            return _invalid(exc)
        except Exception:
            logger.exception("MCP tool call failed")
            return failed("INTERNAL", "The service could not complete this call; retry it.")


class ToolErrors:
    """ServerMiddleware: tool calls the SDK refuses itself, in our shape. Arguments a tool
    does not take are refused (INVALID) as the REST API refuses unknown fields, rather than
    ignored; the SDK's own refusals (a value that fails the tool's schema, an unknown tool)
    become `{"error": {"code": "INVALID" | "UNKNOWN_TOOL", …}}`."""

    def __init__(self, server: MCPServer[Any]) -> None:
        self._server = server
        self._takes: dict[str, frozenset[str]] | None = None

    async def _arguments_of(self, tool: object) -> frozenset[str] | None:
        if self._takes is None:
            self._takes = {
                listed.name: frozenset(listed.input_schema.get("properties", {}))
                for listed in await self._server.list_tools()
            }
        return self._takes.get(tool) if isinstance(tool, str) else None

    async def __call__(
        self, ctx: ServerRequestContext[Any, Any], call_next: CallNext
    ) -> HandlerResult:
        if ctx.method != "tools/call":
            return await call_next(ctx)
        params = ctx.params or {}
        arguments = params.get("arguments")
        takes = await self._arguments_of(params.get("name"))
        if takes is not None and isinstance(arguments, dict):
            unknown = sorted(set(arguments) - takes)
            if unknown:
                problems = [
                    {"field": name, "problem": "not an argument of this tool"} for name in unknown
                ]
                message = (
                    f"Unknown argument(s) {', '.join(unknown)}; {params['name']} takes "
                    f"{', '.join(sorted(takes)) or 'none'} (who you are comes from your connection)"
                )
                return _wire(failed("INVALID", message, {"problems": problems}))
        result = await call_next(ctx)
        if not isinstance(result, dict) or not result.get("isError"):
            return result
        structured = result.get("structuredContent")
        if isinstance(structured, dict) and "error" in structured:
            return result  # one of ours
        blocks = result.get("content") or ()
        texts = [block.get("text", "") for block in blocks if isinstance(block, dict)]
        message = " ".join(text for text in texts if text) or "The tool call was refused"
        code = "UNKNOWN_TOOL" if message.startswith("Unknown tool") else "INVALID"
        return {**result, **_wire(failed(code, message))}


def _wire(result: CallToolResult) -> dict[str, Any]:
    return result.model_dump(by_alias=True, mode="json", exclude_none=True)
