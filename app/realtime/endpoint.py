"""The WebSocket endpoint: handshake, read loop, and dispatch of client messages.

It speaks raw ASGI rather than through a framework's WebSocket wrapper so that the sink the
server offers in the scope (transport.py) reaches the connection and nothing wraps `send`.
A connection goes through three steps: `_admit` (draining, origin and connection limits, the
accept), `_authenticate` (the token, or the open-mode query claim; `adopt` is the one way an
identity is taken on, here and on `auth`), and `_serve` (the read loop). Messages from one
connection are handled in order, one at a time; a failure in one message is answered with an
error frame and never ends the connection.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

from app.core.security import Identity, Role, TokenError, bearer_token
from app.realtime.broker.base import MAX_IDEMPOTENCY_KEY, DuplicatePublication
from app.realtime.channels import ChannelKind, check_event, is_valid_id, parse_channel
from app.realtime.connection import Connection
from app.realtime.frames import Frame
from app.realtime.history import StreamPosition
from app.realtime.hub import BrokerUnavailable, Subscribed
from app.realtime.limits import TokenBucket
from app.realtime.manager import ConnectionManager, new_client_id
from app.realtime.presence import presence_stats
from app.realtime.protocol import (
    CloseCode,
    ErrorCode,
    MessageType,
    ProtocolError,
    RequestId,
    ack_frame,
    connected_frame,
    error_frame,
    history_frame,
    optional_str,
    parse_message,
    pong_frame,
    request_id,
    require_str,
)
from app.realtime.transport import address_peers

logger = logging.getLogger("context_manager.endpoint")

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
# What an unauthenticated connection (token mode) may send.
_BEFORE_AUTH = frozenset({MessageType.AUTH, MessageType.PING})

# Most publications a `history` request returns at once (page on with `since`).
HISTORY_LIMIT = 1000

Handler = Callable[["Conversation", dict[str, Any], RequestId | None], Awaitable[None]]


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def _query_identity(query: dict[str, list[str]]) -> tuple[dict[str, str], list[str]]:
    """Open mode: agent_id / session_id from the query string, and the names of invalid ones."""
    identity: dict[str, str] = {}
    invalid: list[str] = []
    for key in ("agent_id", "session_id"):
        values = query.get(key)
        if not values:
            continue
        if is_valid_id(values[-1]):
            identity[key] = values[-1]
        else:
            invalid.append(key)
    return identity, invalid


class Conversation:
    """One connection's conversation with the server: its messages in, its replies out."""

    __slots__ = ("manager", "connection", "_max_message")

    # Filled in below the class: message type → handler (one table for every connection).
    _handlers: dict[str, Handler] = {}

    def __init__(self, manager: ConnectionManager, connection: Connection) -> None:
        self.manager = manager
        self.connection = connection
        self._max_message = manager.settings.max_message_bytes

    # --- output ---------------------------------------------------------------------------

    def reply(self, payload: bytes, kind: str) -> None:
        if self.connection.send(Frame(payload, kind)):
            self.manager.stats.messages_out[kind] += 1

    def ack(self, rid: RequestId | None, extra: dict[str, Any] | None = None) -> None:
        if rid is not None:
            self.reply(ack_frame(rid, extra), "ack")

    def error(self, code: ErrorCode, message: str, rid: RequestId | None = None) -> None:
        self.manager.stats.errors[code.value] += 1
        self.reply(error_frame(code, message, rid), "error")

    # --- input ----------------------------------------------------------------------------

    async def handle(self, text: str) -> None:
        """Answer one client frame."""
        stats = self.manager.stats
        connection = self.connection
        bucket = connection.message_bucket
        if bucket is None:
            # Made on the first message, so an idle connection holds none (idle memory).
            settings = self.manager.settings
            bucket = connection.message_bucket = TokenBucket(
                settings.message_rate, settings.message_burst
            )
        if not bucket.take():
            stats.messages_in["rate_limited"] += 1
            self.error(ErrorCode.RATE_LIMITED, "Too many messages, slow down")
            return
        if len(text) > self._max_message or (
            len(text) * 4 > self._max_message and len(text.encode()) > self._max_message
        ):
            stats.messages_in["invalid"] += 1
            self.error(ErrorCode.MESSAGE_TOO_LARGE, f"Message exceeds {self._max_message} bytes")
            return
        rid: RequestId | None = None
        kind = "invalid"
        try:
            message = parse_message(text)
            rid = request_id(message)
            handler = self._handlers.get(message["type"])
            if handler is None:
                kind = "unknown"
                raise ProtocolError(
                    ErrorCode.UNKNOWN_TYPE, f"Unknown message type {message['type'][:40]!r}"
                )
            kind = message["type"]
            if not connection.authenticated and kind not in _BEFORE_AUTH:
                raise ProtocolError(
                    ErrorCode.UNAUTHORIZED, 'Authenticate first: {"type": "auth", "token": ...}'
                )
            await handler(self, message, rid)
        except ProtocolError as exc:
            self.error(exc.code, exc.message, rid if rid is not None else exc.request_id)
        except BrokerUnavailable:
            self.error(ErrorCode.INTERNAL, "Broker unavailable, try again", rid)
        except Exception:
            ref = secrets.token_hex(4)
            logger.exception("internal error handling a message (ref %s)", ref)
            self.error(ErrorCode.INTERNAL, f"Internal error (ref {ref})", rid)
        finally:
            stats.messages_in[kind] += 1

    async def _subscribe(self, message: dict[str, Any], rid: RequestId | None) -> None:
        channel = parse_channel(require_str(message, "channel"))
        connection = self.connection
        self.manager.permissions.check_subscribe(connection, channel)
        if (
            channel.name not in connection.subscriptions
            and len(connection.subscriptions) >= self.manager.settings.max_subscriptions
        ):
            raise ProtocolError(
                ErrorCode.TOO_MANY_SUBSCRIPTIONS,
                f"At most {self.manager.settings.max_subscriptions} subscriptions per connection",
            )
        raw_since = message.get("since")
        since = None if raw_since is None else StreamPosition.parse(raw_since)

        def acknowledge(outcome: Subscribed) -> None:
            # Runs before the replay: the ack tells the client what follows.
            extra: dict[str, Any] = {"channel": channel.name, **outcome.position.as_dict()}
            if outcome.recovered is not None:
                extra["recovered"] = outcome.recovered
                extra["replayed"] = outcome.replayed
            self.ack(rid, extra)

        await self.manager.subscribe(connection, channel.name, since, acknowledge)

    async def _unsubscribe(self, message: dict[str, Any], rid: RequestId | None) -> None:
        channel = parse_channel(require_str(message, "channel"))
        if not await self.manager.unsubscribe(self.connection, channel.name):
            raise ProtocolError(ErrorCode.NOT_SUBSCRIBED, f"Not subscribed to {channel.name}")
        self.ack(rid, {"channel": channel.name})

    async def _history(self, message: dict[str, Any], rid: RequestId | None) -> None:
        channel = parse_channel(require_str(message, "channel"))
        self.manager.permissions.check_subscribe(self.connection, channel)
        raw_since = message.get("since")
        since = None if raw_since is None else StreamPosition.parse(raw_since)
        limit = message.get("limit", HISTORY_LIMIT)
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= HISTORY_LIMIT:
            raise ProtocolError(
                ErrorCode.INVALID_MESSAGE,
                f"Field 'limit' must be an integer from 1 to {HISTORY_LIMIT}",
            )
        page = await self.manager.broker.history(channel.name, since, limit)
        self.reply(history_frame(rid, channel.name, page), "ack")

    async def _presence(self, message: dict[str, Any], rid: RequestId | None) -> None:
        channel = parse_channel(require_str(message, "channel"))
        self.manager.permissions.check_subscribe(self.connection, channel)
        members = await self.manager.presence_store.members(channel.name)
        clients = {client_id: info.as_dict() for client_id, info in members.items()}
        self.ack(rid, {"channel": channel.name, "presence": clients})

    async def _presence_stats(self, message: dict[str, Any], rid: RequestId | None) -> None:
        channel = parse_channel(require_str(message, "channel"))
        self.manager.permissions.check_subscribe(self.connection, channel)
        members = await self.manager.presence_store.members(channel.name)
        self.ack(rid, {"channel": channel.name, **presence_stats(members)})

    async def _publish(self, message: dict[str, Any], rid: RequestId | None) -> None:
        channel = parse_channel(require_str(message, "channel"))
        event = check_event(require_str(message, "event"))
        key = optional_str(message, "idempotency_key")
        if key is not None and not 0 < len(key) <= MAX_IDEMPOTENCY_KEY:
            raise ProtocolError(
                ErrorCode.INVALID_MESSAGE,
                f"Field 'idempotency_key' must have 1 to {MAX_IDEMPOTENCY_KEY} characters",
            )
        connection = self.connection
        direct = event == "message.new" and channel.kind is ChannelKind.AGENT
        if direct and key is not None:
            raise ProtocolError(
                ErrorCode.INVALID_MESSAGE,
                "A direct message takes no 'idempotency_key': POST /api/messages with an "
                "Idempotency-Key header deduplicates messages",
            )
        if not direct:
            self.manager.permissions.check_publish(connection, channel, event)
        bucket = connection.publish_bucket
        if bucket is None:
            settings = self.manager.settings
            bucket = connection.publish_bucket = TokenBucket(
                settings.publish_rate, settings.publish_burst
            )
        if not bucket.take():
            raise ProtocolError(ErrorCode.RATE_LIMITED, "Too many publishes, slow down")
        if direct:
            # A direct message (anyone may write to an agent's channel) is a message: stored
            # first, so the recipient can read it over REST; the outbox → bridge path then
            # delivers it, once. Publishing here as well would deliver it twice.
            assert channel.id is not None
            data = message.get("data")
            message_id = await self.manager.hooks.store_direct_message(connection, channel.id, data)
            if message_id is not None:
                self.ack(rid, {"channel": channel.name, "message_id": message_id})
                return
        try:
            publication = await self.manager.publish(
                channel.name, event, message.get("data"), encodable=True, idempotency_key=key
            )
        except DuplicatePublication as duplicate:
            offset = duplicate.position.offset
            self.ack(rid, {"channel": channel.name, "offset": offset, "duplicate": True})
            return
        self.ack(rid, {"channel": channel.name, "offset": publication.offset})

    async def _auth(self, message: dict[str, Any], rid: RequestId | None) -> None:
        manager = self.manager
        connection = self.connection
        if manager.tokens is not None:
            token = optional_str(message, "token")
            if token is None:
                raise ProtocolError(ErrorCode.UNAUTHORIZED, "Field 'token' is required")
            try:
                identity = manager.tokens.verify(token)
            except TokenError as exc:
                self.error(ErrorCode.UNAUTHORIZED, str(exc), rid)
                await connection.close(
                    _token_close_code(exc), str(exc), manager.settings.shutdown_timeout
                )
                return
            if connection.authenticated and identity.agent_id != connection.agent_id:
                raise ProtocolError(
                    ErrorCode.FORBIDDEN, "A token for another agent cannot be used here"
                )
        else:
            agent_id = optional_str(message, "agent_id")
            session_id = optional_str(message, "session_id")
            for field, value in (("agent_id", agent_id), ("session_id", session_id)):
                if value is not None and not is_valid_id(value):
                    raise ProtocolError(
                        ErrorCode.INVALID_MESSAGE, f"Field '{field}' is not a valid id"
                    )
            identity = _claimed(connection, agent_id, session_id)
        await adopt(manager, connection, identity)
        self.ack(
            rid,
            {
                "agent_id": connection.agent_id,
                "session_id": connection.session_id,
                "role": connection.role.value,
                "expires_at": connection.expires_at,
            },
        )

    async def _ping(self, message: dict[str, Any], rid: RequestId | None) -> None:
        self.reply(pong_frame(), "pong")
        await self.manager.heartbeat(self.connection)


Conversation._handlers.update(
    {
        MessageType.SUBSCRIBE: Conversation._subscribe,
        MessageType.UNSUBSCRIBE: Conversation._unsubscribe,
        MessageType.PUBLISH: Conversation._publish,
        MessageType.AUTH: Conversation._auth,
        MessageType.PING: Conversation._ping,
        MessageType.HISTORY: Conversation._history,
        MessageType.PRESENCE: Conversation._presence,
        MessageType.PRESENCE_STATS: Conversation._presence_stats,
    }
)


def _token_close_code(exc: TokenError) -> CloseCode:
    return CloseCode.TOKEN_EXPIRED if exc.expired else CloseCode.INVALID_TOKEN


def _claimed(connection: Connection, agent_id: str | None, session_id: str | None) -> Identity:
    """Open mode: who a connection says it is (an agent when it names one, else an observer)."""
    agent_id = agent_id or connection.agent_id
    return Identity(
        agent_id=agent_id,
        session_id=session_id,
        role=Role.AGENT if agent_id else Role.DASHBOARD,
        expires_at=None,
    )


async def adopt(manager: ConnectionManager, connection: Connection, identity: Identity) -> None:
    """Take on an identity (a verified token's, or what an open-mode client claims): its role,
    expiry, agent and session, with presence kept right. The one way a connection's identity
    is set, on connect and on `auth`."""
    connection.role = identity.role
    if manager.tokens is not None:
        connection.expires_at = identity.expires_at
        connection.authenticated = True
    await manager.set_identity(connection, identity.agent_id, identity.session_id)


async def _admit(
    manager: ConnectionManager, scope: dict[str, Any], send: Send
) -> Connection | None:
    """Accept the handshake and make the connection, or refuse it (None)."""
    if manager.draining:
        # Before accept, a close becomes an HTTP 403; the client retries elsewhere.
        manager.stats.connections_rejected["draining"] += 1
        await send({"type": "websocket.close", "code": CloseCode.SERVICE_RESTART})
        return None
    client = scope.get("client") or ("unknown", 0)
    remote = str(client[0])
    refusal = manager.admission(remote, _header(scope, b"origin"), peers=address_peers(scope))
    await send({"type": "websocket.accept"})
    # The refusals below happen after accept so that the client sees a close code and reason.
    if refusal is not None:
        code, reason = refusal
        manager.stats.connections_rejected[reason] += 1
        await send({"type": "websocket.close", "code": code, "reason": reason})
        return None
    settings = manager.settings
    connection = Connection(new_client_id(), agent_id=None, session_id=None, remote=remote)
    connection.authenticated = settings.auth_mode != "token"
    connection.attach(scope, send, settings.outbound_queue_messages, settings.outbound_queue_bytes)
    return connection


def _authenticate(
    manager: ConnectionManager, scope: dict[str, Any]
) -> tuple[Identity | None, list[str]]:
    """Who the handshake says the client is: a token's identity (token mode; None without a
    token: it may still send `auth`), or the query's claim (open mode) and the names of
    invalid query parameters. Raises TokenError for a bad token."""
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    tokens = manager.tokens
    if tokens is not None:
        token = (query.get("token") or [None])[-1] or bearer_token(_header(scope, b"authorization"))
        return (None if token is None else tokens.verify(token)), []
    claimed, notices = _query_identity(query)
    if not claimed:
        return None, notices
    identity = Identity(
        agent_id=claimed.get("agent_id"),
        session_id=claimed.get("session_id"),
        role=Role.AGENT if "agent_id" in claimed else Role.DASHBOARD,
        expires_at=None,
    )
    return identity, notices


async def websocket_endpoint(
    manager: ConnectionManager, scope: dict[str, Any], receive: Receive, send: Send
) -> None:
    """Serve one WebSocket connection from handshake to close: admit, authenticate, serve."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    connection = await _admit(manager, scope, send)
    if connection is None:
        return
    try:
        identity, notices = _authenticate(manager, scope)
    except TokenError as exc:
        manager.stats.connections_rejected[str(exc)] += 1
        await connection.close(_token_close_code(exc), str(exc), manager.settings.shutdown_timeout)
        await connection.detach()
        return
    # Headers were read (Origin, Authorization) before accept; the scope lives as long as the
    # connection, so let them go.
    scope["headers"] = []
    conversation = Conversation(manager, connection)
    conversation.reply(connected_frame(connection.client_id), "connected")
    for name in notices:
        conversation.error(
            ErrorCode.INVALID_MESSAGE, f"Query parameter '{name}' is not a valid id; ignored"
        )
    await manager.connect(connection)
    if identity is not None:
        await adopt(manager, connection, identity)
    await _serve(conversation, receive)


async def _serve(conversation: Conversation, receive: Receive) -> None:
    """The read loop: one client message at a time, until the client goes."""
    manager = conversation.manager
    connection = conversation.connection
    logger.info(
        "connection open",
        extra={
            "client_id": connection.client_id,
            "agent_id": connection.agent_id,
            "remote": connection.remote,
        },
    )
    close_code: int | None = None
    try:
        while True:
            message = await receive()
            kind = message["type"]
            if kind == "websocket.receive":
                connection.last_seen = time.monotonic()
                text = message.get("text")
                if text is None:
                    raw = message.get("bytes") or b""
                    try:
                        text = raw.decode()
                    except UnicodeDecodeError:
                        conversation.error(
                            ErrorCode.INVALID_JSON, "Binary message is not UTF-8 JSON"
                        )
                        continue
                await conversation.handle(text)
            elif kind == "websocket.disconnect":
                close_code = message.get("code")
                break
    finally:
        await manager.disconnect(connection, close_code)
        await connection.detach()
        logger.info(
            "connection closed",
            extra={
                "client_id": connection.client_id,
                "agent_id": connection.agent_id,
                "close_code": connection.close_code
                if connection.close_code is not None
                else close_code,
            },
        )
