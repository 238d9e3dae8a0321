"""`Idempotency-Key` on every POST of the API: a retry gets the first answer, not a second write.

An agent whose POST timed out cannot tell whether it happened; it sends it again with the same
key. The first request with a key runs and its answer (status, body) is stored for 24 hours;
a retry with the same key and the same request (method, path, query and body) gets that answer
again — `Idempotent-Replayed: true` — and writes nothing. The same key with another request is
a mistake: 422 IDEMPOTENCY_KEY_REUSED. While the first is still running, a retry gets 409
IDEMPOTENCY_KEY_IN_USE (retry shortly).

Keys belong to the caller: in token mode the token's role and agent, so two agents' keys never
meet; in open mode every caller is the server and shares one space (use random keys, as
clients do). Stored in the database (`idempotency_keys`), so a retry may reach any node. A
5xx is not stored (nothing was acknowledged): its retry runs again. A first request whose
process died while running leaves a pending row; after IN_FLIGHT_SECONDS a retry takes it
over and runs. Rows older than KEY_TTL are pruned by the sweeper and ignored before that.

Pure ASGI, inside the body-size limit, so the body it reads is already bounded.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
from fastapi import FastAPI
from sqlalchemy import delete, update
from sqlalchemy.exc import IntegrityError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.security import TokenError, bearer_token
from app.db.models import IDEMPOTENCY_TTL, IdempotencyKey
from app.db.types import utcnow

HEADER = b"idempotency-key"
MAX_KEY_LENGTH = 200
KEY_TTL = IDEMPOTENCY_TTL
IN_FLIGHT_SECONDS = 60.0


def _error(status: int, code: str, detail: str) -> tuple[int, bytes]:
    return status, orjson.dumps({"detail": detail, "code": code})


class Idempotency:
    """Replay the stored answer to a POST whose Idempotency-Key was seen (module docstring)."""

    def __init__(self, app: ASGIApp, root: FastAPI) -> None:
        self.app = app
        self.root = root

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The REST API's POSTs; not /mcp, whose answers stream (progress) and carry their own
        # JSON-RPC ids.
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or not scope["path"].startswith("/api/")
        ):
            await self.app(scope, receive, send)
            return
        key = None
        authorization = None
        for name, value in scope["headers"]:
            if name == HEADER:
                key = value
            elif name == b"authorization":
                authorization = value
        if key is None:
            await self.app(scope, receive, send)
            return
        text = key.decode("latin-1").strip()
        if not 0 < len(text) <= MAX_KEY_LENGTH or not text.isprintable():
            await _answer(send, *_error(422, "INVALID_IDEMPOTENCY_KEY", "Bad Idempotency-Key"))
            return
        owner = self._owner(authorization)
        if owner is None:  # a bad token: let the API answer 401, store nothing
            await self.app(scope, receive, send)
            return
        body, more = await _read_body(receive)
        digest = hashlib.sha256()
        for part in (scope["path"], scope.get("query_string", b"").decode("latin-1")):
            digest.update(part.encode() + b"\0")
        digest.update(body)
        request_hash = digest.hexdigest()

        claimed = await self._claim(owner, text, request_hash)
        if claimed is not None:  # replay, or refuse
            status, payload, content_type = claimed
            headers = [(b"idempotent-replayed", b"true")] if status != 409 else []
            await _answer(send, status, payload, content_type, headers)
            return

        captured: dict[str, Any] = {"status": 500, "headers": [], "body": []}

        unread = [body]

        async def replay_receive() -> Message:
            if unread:
                return {"type": "http.request", "body": unread.pop(), "more_body": False}
            return await more()

        sent: list[Message] = []

        async def capture(message: Message) -> None:
            # Held back until the answer is stored: a retry the client sends the moment it
            # has the answer must find it.
            if message["type"] == "http.response.start":
                captured["status"] = message["status"]
                captured["headers"] = message.get("headers", [])
            elif message["type"] == "http.response.body":
                captured["body"].append(message.get("body", b""))
            sent.append(message)

        try:
            await self.app(scope, replay_receive, capture)
        finally:
            await self._finish(owner, text, captured)
        for message in sent:
            await send(message)

    def _owner(self, authorization: bytes | None) -> str | None:
        """Whose key space: the token's role and agent (token mode), or the open space."""
        tokens = self.root.state.manager.tokens
        if tokens is None:
            return "open"
        token = bearer_token(authorization.decode("latin-1") if authorization else None)
        if token is None:
            return None
        try:
            identity = tokens.verify(token)
        except TokenError:
            return None
        return f"{identity.role.value}:{identity.agent_id or ''}"

    async def _claim(
        self, owner: str, key: str, request_hash: str
    ) -> tuple[int, bytes, str] | None:
        """Take the key for this request (None: run it), or the answer a retry gets."""
        now = utcnow()
        async with self.root.state.sessionmaker() as db:
            for _ in range(3):
                row = await db.get(IdempotencyKey, (owner, key), populate_existing=True)
                if row is None:
                    db.add(
                        IdempotencyKey(
                            scope=owner, key=key, request_hash=request_hash, created_at=now
                        )
                    )
                    try:
                        await db.commit()
                    except IntegrityError:
                        await db.rollback()
                        continue  # taken meanwhile: look again
                    return None
                if row.created_at < now - KEY_TTL:
                    await db.delete(row)  # past its 24 hours: as if never seen
                    await db.commit()
                    continue
                if row.request_hash != request_hash:
                    return (
                        *_error(
                            422,
                            "IDEMPOTENCY_KEY_REUSED",
                            "This Idempotency-Key was used with another request",
                        ),
                        "application/json",
                    )
                if row.status_code is not None:
                    body = (row.response_body or "").encode()
                    return row.status_code, body, row.content_type or "application/json"
                if (now - row.created_at).total_seconds() < IN_FLIGHT_SECONDS:
                    return (
                        *_error(
                            409,
                            "IDEMPOTENCY_KEY_IN_USE",
                            "A request with this Idempotency-Key is still running; retry",
                        ),
                        "application/json",
                    )
                # Its first request died running: take it over.
                taken: Any = await db.execute(
                    update(IdempotencyKey)
                    .where(
                        IdempotencyKey.scope == owner,
                        IdempotencyKey.key == key,
                        IdempotencyKey.created_at == row.created_at,
                    )
                    .values(created_at=now)
                    .execution_options(synchronize_session=False)
                )
                await db.commit()
                if taken.rowcount == 1:
                    return None
        return (
            *_error(409, "IDEMPOTENCY_KEY_IN_USE", "Idempotency-Key contended; retry"),
            "application/json",
        )

    async def _finish(self, owner: str, key: str, captured: dict[str, Any]) -> None:
        """Store the answer (or forget the key after a 5xx: nothing was acknowledged)."""
        status = int(captured["status"])
        async with self.root.state.sessionmaker() as db:
            where = (IdempotencyKey.scope == owner, IdempotencyKey.key == key)
            if status >= 500:
                await db.execute(delete(IdempotencyKey).where(*where))
            else:
                content_type = "application/json"
                for name, value in captured["headers"]:
                    if name == b"content-type":
                        content_type = value.decode("latin-1")
                await db.execute(
                    update(IdempotencyKey)
                    .where(*where)
                    .values(
                        status_code=status,
                        response_body=b"".join(captured["body"]).decode("utf-8", "replace"),
                        content_type=content_type[:100],
                    )
                    .execution_options(synchronize_session=False)
                )
            await db.commit()


async def _read_body(receive: Receive) -> tuple[bytes, Receive]:
    """The whole request body, and a `receive` for what comes after it (a disconnect)."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks), receive


async def _answer(
    send: Send,
    status: int,
    body: bytes,
    content_type: str = "application/json",
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [
        (b"content-type", content_type.encode("latin-1")),
        (b"content-length", str(len(body)).encode()),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
