"""The Redis broker: pub/sub between nodes, streams for history, one script per publication.

Keys, under BROKER_PREFIX (``cm`` by default; ``{…}`` keeps a channel's keys in one slot)::

    cm:{<channel>}:m     hash   e = epoch, o = last offset        (TTL: max(history TTL, 1 h))
    cm:{<channel>}:s     stream id <offset>-0, p = payload, t = s (TTL: history TTL, MAXLEN size)
    cm:pub:<channel>     pub/sub channel: "<offset>:<epoch>:<payload>"

Publishing is ONE Lua script, as in Centrifugo's Redis broker: it increments the channel's
offset, reads (or creates) its epoch, appends to the stream trimmed to the policy's size with
the policy's TTL, and PUBLISHes — atomically, so offsets have no gaps and every node sees a
channel's publications in offset order. When the hash is gone (Redis restarted or flushed, the
stream idle past its TTL) the script creates a new epoch and drops any stale stream, so an old
position can never be taken for a place in the new stream.

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
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from app.core.tasks import cancel_and_wait
from app.realtime.broker.base import BrokerHandler, StoredHistory
from app.realtime.broker.resume import DeliveryTracker, ListenLoop
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
# A stream's hash outlives its entries so that offsets continue across quiet periods.
META_MIN_TTL = 3600

PUBLISH_SCRIPT = """
local epoch = redis.call("hget", KEYS[1], "e")
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
redis.call("publish", KEYS[3], offset .. ":" .. epoch .. ":" .. ARGV[1])
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
    """The node's pub/sub connection: parse RESP pushes and dispatch them synchronously."""

    def __init__(
        self,
        prefix_length: int,
        on_publication: Callable[[Publication], None],
        on_subscribed: Callable[[str], None],
    ) -> None:
        self._prefix_length = prefix_length
        self._on_publication = on_publication
        self._on_subscribed = on_subscribed
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
            if kind == b"message":
                try:
                    publication = decode_message(value[2])
                except Exception:  # noqa: BLE001 - not ours (another writer on the channel)
                    logger.warning("undecodable message on %r", value[1])
                    return
                self._on_publication(publication)
                return
            if kind == b"subscribe":
                self._on_subscribed(value[1][self._prefix_length :].decode())
                return
            if kind == b"pong":
                self.last_pong = time.monotonic()
                return
            if kind == b"unsubscribe":
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


class RedisBroker(StoredHistory, ListenLoop[_PubSubProtocol]):
    """Broker over Redis (see the module docstring)."""

    link_name = "Redis pub/sub"

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
        self._channels: set[str] = set()
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._tracker = DeliveryTracker()
        self._client: aioredis.Redis | None = None
        self._protocol: _PubSubProtocol | None = None
        self._listener: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._healthy = False
        self._closing = False
        # Observable by /metrics and /stats.
        self.reconnects = 0
        self.recovered_after_reconnect = 0
        self.last_outage_seconds = 0.0

    # --- keys -------------------------------------------------------------------------------

    def _keys(self, channel: str) -> tuple[str, str, bytes]:
        base = f"{self._prefix}:{{{channel}}}"
        return f"{base}:m", f"{base}:s", self._pub_prefix + channel.encode()

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self, handler: BrokerHandler) -> None:
        self._tracker.bind(handler)
        self._client = aioredis.Redis.from_url(
            self._url,
            socket_connect_timeout=CONNECT_TIMEOUT,
            socket_timeout=CONNECT_TIMEOUT + 2,
            # One quick retry on a fresh connection: a pooled socket may predate a restart.
            retry=Retry(NoBackoff(), 1),
            health_check_interval=30,
        )
        self._publish_script = self._client.register_script(PUBLISH_SCRIPT)
        self._history_script = self._client.register_script(HISTORY_SCRIPT)
        self._listener = asyncio.create_task(
            self._listen(self.history), name="redis-broker-listener"
        )
        # Normally connected in a few ms; if Redis is down the node starts anyway, unready.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected.wait(), CONNECT_TIMEOUT)
        if not self._healthy:
            logger.warning("Redis is not reachable yet; retrying in the background")

    async def close(self) -> None:
        self._closing = True
        self._tracker.bind(None)
        await cancel_and_wait(self._listener)
        self._listener = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    @property
    def healthy(self) -> bool:
        return self._healthy

    # --- the listener -----------------------------------------------------------------------

    async def _connect_link(self) -> _PubSubProtocol:
        parts = urlsplit(self._url)
        if parts.scheme not in ("redis", "rediss"):
            raise ValueError(f"unsupported Redis URL scheme {parts.scheme!r}")
        context = ssl.create_default_context() if parts.scheme == "rediss" else None
        loop = asyncio.get_running_loop()
        _, protocol = await asyncio.wait_for(
            loop.create_connection(
                lambda: _PubSubProtocol(
                    len(self._pub_prefix), self._tracker.deliver, self._on_subscribed
                ),
                parts.hostname or "127.0.0.1",
                parts.port or 6379,
                ssl=context,
            ),
            CONNECT_TIMEOUT,
        )
        if parts.password is not None:
            credentials = [unquote(parts.password)]
            if parts.username:
                credentials.insert(0, unquote(parts.username))
            await asyncio.wait_for(protocol.call("AUTH", *credentials), CONNECT_TIMEOUT)
        self._protocol = protocol
        return protocol

    def _on_subscribed(self, channel: str) -> None:
        for waiter in self._waiters.pop(channel, ()):
            if not waiter.done():
                waiter.set_result(None)

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
            protocol.send(b"SUBSCRIBE", *(self._pub_prefix + c.encode() for c in batch))
        if waiters:
            await asyncio.wait_for(asyncio.gather(*waiters), SUBSCRIBE_TIMEOUT)

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
                await asyncio.wait_for(asyncio.shield(protocol.closed), interval)
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
        if protocol is None or not self._healthy:
            raise BrokerUnavailable(channel)
        self._channels.add(channel)
        waiter = self._expect_subscribed(channel)
        try:
            protocol.send(b"SUBSCRIBE", self._pub_prefix + channel.encode())
            await asyncio.wait_for(waiter, SUBSCRIBE_TIMEOUT)
        except BaseException as exc:
            self._channels.discard(channel)
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise BrokerUnavailable(channel) from exc
        await self._track_from_now(channel)

    async def unsubscribe(self, channel: str) -> None:
        if channel not in self._channels:
            return
        self._channels.discard(channel)
        self._tracker.forget(channel)
        protocol = self._protocol
        if protocol is not None:
            with contextlib.suppress(ConnectionError):
                protocol.send(b"UNSUBSCRIBE", self._pub_prefix + channel.encode())

    async def publish(self, publication: Publication) -> Publication:
        policy = self._policies.by_kind[publication.kind]
        publication.origin = self._node_id
        meta, stream, pubsub = self._keys(publication.channel)
        try:
            offset, epoch = await self._publish_script(
                keys=[meta, stream, pubsub],
                args=[
                    encode_payload(publication),
                    policy.size,
                    max(1, int(policy.ttl)),
                    max(META_MIN_TTL, int(policy.ttl)),
                    new_epoch(),
                ],
            )
        except (RedisError, OSError) as exc:
            raise BrokerUnavailable(publication.channel) from exc
        publication.offset = int(offset)
        publication.epoch = epoch.decode()
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
