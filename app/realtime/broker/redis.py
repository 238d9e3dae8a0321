"""The Redis broker: pub/sub between nodes, streams for history, one script per publication.

Keys, under BROKER_PREFIX (``cm`` by default; ``{…}`` keeps a channel's keys in one slot)::

    cm:{<channel>}:m     hash   e = epoch, o = last offset        (TTL: max(history TTL, 1 h))
    cm:{<channel>}:s     stream id <offset>-0, p = payload, t = s (TTL: history TTL, MAXLEN size)
    cm:{<channel>}:k:<k> string "<offset>:<epoch>" of the publication that idempotency key k
                                made                                   (TTL: history TTL)
    cm:pub:<channel>     pub/sub channel: "<offset>:<epoch>:<payload>"
    cm:{<channel>}:p     the same, as a shard channel (SSUBSCRIBE) on Redis Cluster

One `RedisBroker` talks to one Redis; several of them are the shards of a sharded broker
(redis_sharded.py: many instances, or the masters of a Redis Cluster, redis_cluster.py).

Publishing is ONE Lua script, as in Centrifugo's Redis broker: it increments the channel's
offset, reads (or creates) its epoch, appends to the stream trimmed to the policy's size with
the policy's TTL, and PUBLISHes — atomically, so offsets have no gaps and every node sees a
channel's publications in offset order. When the hash is gone (Redis restarted or flushed, the
stream idle past its TTL) the script creates a new epoch and drops any stale stream, so an old
position can never be taken for a place in the new stream. With an idempotency key the script
first looks the key up: when the channel accepted it in this epoch, it answers with that
offset and changes nothing.

Delivery: a node subscribes to a channel once (one SUBSCRIBE on its one pub/sub connection,
however many local clients) and hands each message to the hub once. Its own publications come
back the same way — the echo is the local delivery — so every node, the publishing one
included, delivers a channel's publications in the same order: the order of the offsets.
That costs the publisher's local subscribers one Redis round trip, and buys a single order.

The pub/sub connection is an `asyncio.Protocol` with a small RESP2 reader rather than redis-py's
PubSub: messages are parsed and dispatched in `data_received`, with no task switch and no
per-message instrumentation, and the SUBSCRIBE confirmation is awaited before `subscribe`
returns (the hub's "live first, then history" relies on it). Commands (the scripts) go through
redis-py's pooled client.

When the pub/sub connection breaks the broker reports unhealthy, reconnects with capped
exponential backoff and jitter, re-subscribes every channel, then reads each channel's history
since the last publication it delivered and delivers what it missed (resume.py) before going
live again. Publications made while Redis was down failed at the publisher (an error, not a
silent loss). After a restart that lost the data a channel starts a new epoch: the node tells
its subscribers that the old epoch's tail may be lost (a StreamReset), then delivers the new
epoch from its first publication — other nodes may have published there before this node's
link came back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import orjson
import redis.asyncio as aioredis
from redis.asyncio import BlockingConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from app.core.tasks import cancel_and_wait, wait_event
from app.realtime.broker.base import (
    BrokerHandler,
    DuplicatePublication,
    LinkState,
    StoredHistory,
)
from app.realtime.broker.resume import KeptPubSub
from app.realtime.history import (
    HistoryPolicies,
    StreamPosition,
    new_epoch,
)
from app.realtime.hub import BrokerUnavailable
from app.realtime.publication import Publication

logger = logging.getLogger("context_manager.broker.redis")

CONNECT_TIMEOUT = 3.0
SUBSCRIBE_TIMEOUT = 5.0
# The listener PINGs this often; no PONG for two intervals means a dead link (no RST seen):
# a silent network failure is noticed within 10-15 s.
PING_INTERVAL = 5.0
# Connections to one Redis per node for commands, and how long a command waits for one.
POOL_SIZE = 64
POOL_WAIT = 5.0
# A stream's hash outlives its entries so that offsets continue across quiet periods.
META_MIN_TTL = 3600

# KEYS: meta, stream, pub/sub channel[, idempotency key]. ARGV: payload, size, stream TTL,
# meta TTL, new epoch. Returns {offset, epoch} or, for a repeated key, {offset, epoch, 1}.
PUBLISH_SCRIPT = """
local epoch = redis.call("hget", KEYS[1], "e")
if KEYS[4] and epoch then
  local first = redis.call("get", KEYS[4])
  if first then
    local cut = string.find(first, ":", 1, true)
    if string.sub(first, cut + 1) == epoch then
      return {tonumber(string.sub(first, 1, cut - 1)), epoch, 1}
    end
  end
end
if not epoch then
  epoch = ARGV[5]
  redis.call("del", KEYS[2])
  redis.call("hset", KEYS[1], "e", epoch, "o", 0)
end
local offset = redis.call("hincrby", KEYS[1], "o", 1)
redis.call("expire", KEYS[1], ARGV[4])
if tonumber(ARGV[2]) > 0 then
  local now = redis.call("time")
  redis.call("xadd", KEYS[2], "maxlen", ARGV[2], offset .. "-0", "p", ARGV[1], "t", now[1])
  redis.call("expire", KEYS[2], ARGV[3])
end
if KEYS[4] then
  redis.call("set", KEYS[4], offset .. ":" .. epoch, "ex", ARGV[3])
end
redis.call("PUBLISH_COMMAND", KEYS[3], offset .. ":" .. epoch .. ":" .. ARGV[1])
return {offset, epoch}
"""

# ARGV: 1 since offset (-1 = from the oldest), 2 count (0 = all), 3 meta TTL, 4 new epoch,
# 5 since epoch ("" = any), 6 read entries (1/0).
HISTORY_SCRIPT = """
local meta = redis.call("hmget", KEYS[1], "e", "o")
local epoch = meta[1]
local offset = tonumber(meta[2]) or 0
if not epoch then
  epoch = ARGV[4]
  offset = 0
  redis.call("del", KEYS[2])
  redis.call("hset", KEYS[1], "e", epoch, "o", 0)
  redis.call("expire", KEYS[1], ARGV[3])
end
local now = redis.call("time")[1]
local entries = {}
if ARGV[6] == "1" and (ARGV[5] == "" or ARGV[5] == epoch) then
  local start = "-"
  local since = tonumber(ARGV[1])
  if since >= 0 then start = (since + 1) .. "-0" end
  if ARGV[2] ~= "0" then
    entries = redis.call("xrange", KEYS[2], start, "+", "COUNT", ARGV[2])
  else
    entries = redis.call("xrange", KEYS[2], start, "+")
  end
end
return {offset, epoch, now, entries}
"""


def encode_payload(publication: Publication) -> bytes:
    """What travels and is stored: everything but the offset and epoch the script assigns."""
    return orjson.dumps(
        [
            publication.channel,
            publication.event,
            publication.data,
            publication.timestamp,
            publication.origin,
        ]
    )


def decode_payload(payload: bytes | memoryview, offset: int, epoch: str) -> Publication:
    channel, event, data, timestamp, origin = orjson.loads(payload)
    return Publication(channel, event, data, timestamp, offset, epoch, origin)


def decode_message(message: bytes) -> Publication:
    """Parse "<offset>:<epoch>:<payload>" once; the hub encodes its frame once."""
    first = message.index(b":")
    second = message.index(b":", first + 1)
    return decode_payload(
        memoryview(message)[second + 1 :],
        int(message[:first]),
        message[first + 1 : second].decode(),
    )


# --- the pub/sub connection ------------------------------------------------------------------


class RespError(Exception):
    """An error reply from Redis on the pub/sub connection."""


_INCOMPLETE = object()


def _parse(buf: bytearray, pos: int) -> tuple[Any, int]:
    """One RESP2 value from `buf` at `pos`: (value, next position), or (_INCOMPLETE, pos)."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        return _INCOMPLETE, pos
    kind = buf[pos]
    if kind == 36:  # "$" bulk string
        size = int(buf[pos + 1 : end])
        if size < 0:
            return None, end + 2
        start = end + 2
        stop = start + size
        if len(buf) < stop + 2:
            return _INCOMPLETE, pos
        return bytes(buf[start:stop]), stop + 2
    if kind == 42:  # "*" array
        count = int(buf[pos + 1 : end])
        items = []
        cursor = end + 2
        for _ in range(count):
            item, cursor = _parse(buf, cursor)
            if item is _INCOMPLETE:
                return _INCOMPLETE, pos
            items.append(item)
        return items, cursor
    if kind == 58:  # ":" integer
        return int(buf[pos + 1 : end]), end + 2
    if kind == 43:  # "+" simple string
        return bytes(buf[pos + 1 : end]), end + 2
    if kind == 45:  # "-" error
        return RespError(buf[pos + 1 : end].decode(errors="replace")), end + 2
    raise RespError(f"unexpected RESP type byte {kind!r}")


class _PubSubProtocol(asyncio.Protocol):
    """The node's pub/sub connection: parse RESP pushes and dispatch them synchronously.

    Plain (SUBSCRIBE) and shard (SSUBSCRIBE, Redis Cluster) channels alike; `channel_of` maps
    a pub/sub channel's name back to the broker channel it carries.
    """

    def __init__(
        self,
        channel_of: Callable[[bytes], str],
        on_publication: Callable[[Publication], None],
        on_subscribed: Callable[[str], None],
        on_unsubscribed: Callable[[str], None],
    ) -> None:
        self._channel_of = channel_of
        self._on_publication = on_publication
        self._on_subscribed = on_subscribed
        self._on_unsubscribed = on_unsubscribed
        self._buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # Replies to AUTH / PING, in order.
        self._replies: list[asyncio.Future[Any]] = []
        self.last_pong = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        error = exc or ConnectionError("Redis closed the pub/sub connection")
        for waiter in self._replies:
            if not waiter.done():
                waiter.set_exception(error)
        self._replies.clear()
        if not self.closed.done():
            self.closed.set_result(None)

    def send(self, *parts: bytes | str) -> None:
        if self.transport is None or self.transport.is_closing():
            raise ConnectionError("Redis pub/sub connection is closed")
        chunks = [b"*%d\r\n" % len(parts)]
        for part in parts:
            data = part.encode() if isinstance(part, str) else part
            chunks.append(b"$%d\r\n%s\r\n" % (len(data), data))
        self.transport.write(b"".join(chunks))

    async def call(self, *parts: bytes | str) -> Any:
        """Send a command answered by a plain reply (AUTH, HELLO-less handshake)."""
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._replies.append(waiter)
        self.send(*parts)
        return await waiter

    def data_received(self, data: bytes) -> None:
        buf = self._buffer
        buf += data
        pos = 0
        try:
            while pos < len(buf):
                value, after = _parse(buf, pos)
                if value is _INCOMPLETE:
                    break
                pos = after
                self._dispatch(value)
        except Exception:  # noqa: BLE001 - a corrupt stream: drop the connection, reconnect
            logger.exception("unreadable data on the Redis pub/sub connection")
            if self.transport is not None:
                self.transport.abort()
            return
        if pos:
            del buf[:pos]

    def _dispatch(self, value: Any) -> None:
        if isinstance(value, list) and value:
            kind = value[0]
            if kind == b"message" or kind == b"smessage":
                try:
                    publication = decode_message(value[2])
                except Exception:  # noqa: BLE001 - not ours (another writer on the channel)
                    logger.warning("undecodable message on %r", value[1])
                    return
                self._on_publication(publication)
                return
            if kind == b"subscribe" or kind == b"ssubscribe":
                self._on_subscribed(self._channel_of(value[1]))
                return
            if kind == b"pong":
                self.last_pong = time.monotonic()
                return
            if kind == b"unsubscribe":
                return
            if kind == b"sunsubscribe":
                # Also sent unasked, when the channel's slot moved to another master.
                self._on_unsubscribed(self._channel_of(value[1]))
                return
        # A plain reply (AUTH) or an error.
        if self._replies:
            waiter = self._replies.pop(0)
            if not waiter.done():
                if isinstance(value, RespError):
                    waiter.set_exception(value)
                else:
                    waiter.set_result(value)
        elif isinstance(value, RespError):
            logger.error("Redis pub/sub error: %s", value)


# --- the broker ------------------------------------------------------------------------------


def command_client(url: str) -> aioredis.Redis:
    """A pooled client for scripts and commands, at most POOL_SIZE connections to `url`.

    A burst of more concurrent commands (a thousand clients subscribing at once) waits for a
    free connection — up to POOL_WAIT seconds — instead of failing with "Too many connections"
    as redis-py's default pool does past its 100.
    """
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=POOL_SIZE,
        timeout=POOL_WAIT,
        socket_connect_timeout=CONNECT_TIMEOUT,
        socket_timeout=CONNECT_TIMEOUT + 2,
        # One quick retry on a fresh connection: a pooled socket may predate a restart.
        retry=Retry(NoBackoff(), 1),
        health_check_interval=30,
    )
    return aioredis.Redis.from_pool(pool)  # closing the client closes the pool


def shard_name(url: str) -> str:
    """How logs and /stats name the Redis at `url`: host:port/db, never its password."""
    parts = urlsplit(url)
    db = parts.path.strip("/") or "0"
    return f"{parts.hostname or '127.0.0.1'}:{parts.port or 6379}/{db}"


class RedisBroker(StoredHistory):
    """Broker over one Redis (see the module docstring); also one shard of a sharded broker."""

    # Plain pub/sub; Redis Cluster's shards (redis_cluster.py) use shard channels instead.
    subscribe_command = b"SUBSCRIBE"
    unsubscribe_command = b"UNSUBSCRIBE"
    publish_command = "publish"

    def __init__(
        self,
        node_id: str,
        policies: HistoryPolicies,
        url: str,
        prefix: str = "cm",
        ping_interval: float = PING_INTERVAL,
    ) -> None:
        self._node_id = node_id
        self._ping_interval = ping_interval
        self._policies = policies
        self._url = url
        self._prefix = prefix
        self._pub_prefix = f"{prefix}:pub:".encode()
        self.name = shard_name(url)
        self.link_name = f"Redis pub/sub ({self.name})"
        self._channels: set[str] = set()
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._client: aioredis.Redis | None = None
        self._protocol: _PubSubProtocol | None = None
        self._listener: asyncio.Task[None] | None = None
        self._closing = False
        # The pub/sub link, kept up (and caught up after an outage), and its delivery tracker.
        self._link = KeptPubSub(self, self._channels)
        self._tracker = self._link.tracker

    # --- names ------------------------------------------------------------------------------

    def _keys(self, channel: str) -> tuple[str, str, bytes]:
        base = f"{self._prefix}:{{{channel}}}"
        return f"{base}:m", f"{base}:s", self._pubsub_name(channel)

    def _idempotency_key(self, channel: str, key: str) -> str:
        return f"{self._prefix}:{{{channel}}}:k:{key}"

    def _pubsub_name(self, channel: str) -> bytes:
        return self._pub_prefix + channel.encode()

    def _channel_of(self, name: bytes) -> str:
        return name[len(self._pub_prefix) :].decode()

    # --- lifecycle --------------------------------------------------------------------------

    def _make_client(self) -> aioredis.Redis:
        """The client the scripts run on (pooled)."""
        return command_client(self._url)

    async def _close_client(self, client: aioredis.Redis) -> None:
        await client.aclose()

    async def start(self, handler: BrokerHandler) -> None:
        self._tracker.bind(handler)
        client = self._client = self._make_client()
        self._publish_script = client.register_script(
            PUBLISH_SCRIPT.replace("PUBLISH_COMMAND", self.publish_command)
        )
        self._history_script = client.register_script(HISTORY_SCRIPT)
        self._listener = asyncio.create_task(
            self._link.run(), name=f"redis-broker-listener-{self.name}"
        )
        # Normally connected in a few ms; if Redis is down the node starts anyway, unready.
        await wait_event(self._link.connected, CONNECT_TIMEOUT)
        if not self.healthy:
            logger.warning("Redis %s is not reachable yet; retrying in the background", self.name)

    async def close(self) -> None:
        self._closing = True
        self._tracker.bind(None)
        await cancel_and_wait(self._listener)
        self._listener = None
        if self._client is not None:
            await self._close_client(self._client)
            self._client = None

    @property
    def healthy(self) -> bool:
        return self._link.healthy

    def link_state(self) -> LinkState:
        return self._link.state()

    # --- the listener -----------------------------------------------------------------------

    async def _link_address(self) -> tuple[str, int]:
        """Where the pub/sub connection goes (a cluster shard asks the cluster each time)."""
        parts = urlsplit(self._url)
        return parts.hostname or "127.0.0.1", parts.port or 6379

    async def _connect_link(self) -> _PubSubProtocol:
        parts = urlsplit(self._url)
        if parts.scheme not in ("redis", "rediss"):
            raise ValueError(f"unsupported Redis URL scheme {parts.scheme!r}")
        context = ssl.create_default_context() if parts.scheme == "rediss" else None
        host, port = await self._link_address()
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(CONNECT_TIMEOUT):
            _, protocol = await loop.create_connection(
                lambda: _PubSubProtocol(
                    self._channel_of,
                    self._tracker.deliver,
                    self._on_subscribed,
                    self._on_unsubscribed,
                ),
                host,
                port,
                ssl=context,
            )
        if parts.password is not None:
            credentials = [unquote(parts.password)]
            if parts.username:
                credentials.insert(0, unquote(parts.username))
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await protocol.call("AUTH", *credentials)
        self._protocol = protocol
        return protocol

    def _on_subscribed(self, channel: str) -> None:
        for waiter in self._waiters.pop(channel, ()):
            if not waiter.done():
                waiter.set_result(None)

    def _on_unsubscribed(self, channel: str) -> None:
        """The server dropped a subscription we hold (a cluster slot moved): start over."""
        protocol = self._protocol
        if channel in self._channels and protocol is not None and protocol.transport is not None:
            logger.warning("%s dropped the subscription to %s; reconnecting", self.name, channel)
            protocol.transport.abort()

    def _fail_waiters(self) -> None:
        waiters, self._waiters = self._waiters, {}
        for futures in waiters.values():
            for waiter in futures:
                if not waiter.done():
                    waiter.set_exception(BrokerUnavailable("Redis connection lost"))

    def _expect_subscribed(self, channel: str) -> asyncio.Future[None]:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(channel, []).append(waiter)
        return waiter

    async def _subscribe_link(self, protocol: _PubSubProtocol, channels: list[str]) -> None:
        waiters = [self._expect_subscribed(channel) for channel in channels]
        for start in range(0, len(channels), 500):
            batch = channels[start : start + 500]
            protocol.send(self.subscribe_command, *(self._pubsub_name(c) for c in batch))
        if waiters:
            async with asyncio.timeout(SUBSCRIBE_TIMEOUT):
                await asyncio.gather(*waiters)

    def _drop_link(self, protocol: _PubSubProtocol | None) -> None:
        self._protocol = None
        self._fail_waiters()
        if protocol is not None and protocol.transport is not None:
            protocol.transport.abort()

    async def _watch(self, protocol: _PubSubProtocol) -> None:
        """Return when the connection closes; PING so a silent network failure is seen too."""
        while True:
            interval = self._ping_interval
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await asyncio.shield(protocol.closed)
            if protocol.closed.done():
                raise ConnectionError("Redis pub/sub connection closed")
            if time.monotonic() - protocol.last_pong > 2 * interval:
                raise ConnectionError("Redis did not answer PING")
            protocol.send(b"PING")

    # --- the broker contract ----------------------------------------------------------------

    async def subscribe(self, channel: str) -> None:
        if channel in self._channels:
            return
        protocol = self._protocol
        if protocol is None or not self.healthy:
            raise BrokerUnavailable(channel)
        self._channels.add(channel)
        waiter = self._expect_subscribed(channel)
        try:
            protocol.send(self.subscribe_command, self._pubsub_name(channel))
            async with asyncio.timeout(SUBSCRIBE_TIMEOUT):
                await waiter
        except BaseException as exc:
            self._channels.discard(channel)
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise BrokerUnavailable(channel) from exc
        await self._link.track_from_now(channel)

    async def unsubscribe(self, channel: str) -> None:
        if channel not in self._channels:
            return
        self._channels.discard(channel)
        self._tracker.forget(channel)
        protocol = self._protocol
        if protocol is not None:
            with contextlib.suppress(ConnectionError):
                protocol.send(self.unsubscribe_command, self._pubsub_name(channel))

    async def publish(
        self, publication: Publication, idempotency_key: str | None = None
    ) -> Publication:
        policy = self._policies.by_kind[publication.kind]
        publication.origin = self._node_id
        channel = publication.channel
        keys: list[str | bytes] = list(self._keys(channel))
        if idempotency_key is not None:
            keys.append(self._idempotency_key(channel, idempotency_key))
        try:
            reply = await self._publish_script(
                keys=keys,
                args=[
                    encode_payload(publication),
                    policy.size,
                    max(1, int(policy.ttl)),
                    max(META_MIN_TTL, int(policy.ttl)),
                    new_epoch(),
                ],
            )
        except (RedisError, OSError) as exc:
            raise BrokerUnavailable(channel) from exc
        offset, epoch = int(reply[0]), reply[1].decode()
        if len(reply) > 2:
            raise DuplicatePublication(channel, StreamPosition(offset, epoch))
        publication.offset = offset
        publication.epoch = epoch
        return publication

    async def _read(
        self, channel: str, since: StreamPosition | None, limit: int | None, entries: bool
    ) -> tuple[StreamPosition, list[Publication]]:
        policy = self._policies.for_channel(channel)
        meta, stream, _ = self._keys(channel)
        try:
            offset, epoch, now, raw = await self._history_script(
                keys=[meta, stream],
                args=[
                    since.offset if since is not None else -1,
                    limit or 0,
                    max(META_MIN_TTL, int(policy.ttl)),
                    new_epoch(),
                    since.epoch if since is not None else "",
                    1 if entries and policy.size else 0,
                ],
            )
        except (RedisError, OSError) as exc:
            raise BrokerUnavailable(channel) from exc
        position = StreamPosition(int(offset), epoch.decode())
        horizon = int(now) - policy.ttl
        publications = []
        for entry_id, fields in raw:
            values = dict(zip(fields[::2], fields[1::2], strict=True))
            if int(values[b"t"]) < horizon:
                continue  # older than the policy's TTL: as good as trimmed
            entry_offset = int(entry_id.split(b"-", 1)[0])
            publications.append(decode_payload(values[b"p"], entry_offset, position.epoch))
        return position, publications
