"""Pure ASGI middleware of the REST API (kept off the WebSocket port and its hot path)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from app.domain.context import Context


class BodySizeLimit:
    """Answer 413 to a request body above `limit` bytes, declared or streamed."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.limit:
                    await self._reject(send)
                    return
        received = 0
        rejected = False

        async def limited_receive() -> Message:
            nonlocal received, rejected
            if rejected:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    # Answer now and tell the app the client left: frameworks turn an
                    # exception raised here into their own 400.
                    rejected = True
                    await self._reject(send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not rejected:
                await send(message)

        await self.app(scope, limited_receive, guarded_send)

    async def _reject(self, send: Send) -> None:
        body = orjson.dumps(
            {"detail": f"Request body exceeds {self.limit} bytes", "code": "PAYLOAD_TOO_LARGE"}
        )
        headers: list[Any] = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


CONTEXTS = "context_manager.contexts"  # the scope key of the request's domain contexts


class ContextScope:
    """Close the domain contexts (app/domain/context.py) a request's routes were given, once
    its response is done: what a yield dependency does, without what FastAPI 0.165 wraps
    each one in (an anyio cancel scope, a shielded exit and an exit-stack entry, ≈ 5 % of a
    PATCH's CPU by py-spy). Most write requests never open a session, so closing is a no-op."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        contexts: list[Context] = []
        scope[CONTEXTS] = contexts
        try:
            await self.app(scope, receive, send)
        finally:
            for context in contexts:
                if context.has_session():
                    # Shielded: a cancelled request still returns its connection to the pool.
                    with anyio.CancelScope(shield=True):
                        await context.aclose()
