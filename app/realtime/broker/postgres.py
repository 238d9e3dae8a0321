"""The PostgreSQL broker: LISTEN/NOTIFY between nodes, tables for offsets and history.

For teams whose only engine is PostgreSQL (BROKER=postgres). Tables in app/db/broker_models.py
(migration 0002), rows under the cluster's namespace (BROKER_PREFIX).

Publishing is one SQL statement (data-modifying CTEs, autocommit): bump the channel's row in
`broker_streams` (creating it, with a new epoch, when missing), insert the publication into
`broker_publications`, and `pg_notify` the namespace's channel. The row lock taken on the
stream row is held until commit, so a second publication on the same channel gets its offset
only after the first committed; NOTIFYs are delivered in commit order; hence every node sees a
channel's publications in offset order, with no gaps.

NOTIFY carries at most 8000 bytes. A publication whose payload fits travels inline as
``"<offset> <epoch> <channel>\\n<payload>"``; a larger one travels as ``"#<id> <channel>"`` and
each node reads the row by id (a publication is never truncated). Rows are kept for a grace
period beyond the history policy so that a node can still fetch them.

Every node LISTENs on one notification channel per namespace with a dedicated connection
(asyncpg) and filters by the channels it subscribes to — a dict lookup before any decoding.
So "subscribing a node to a channel" costs nothing on the server; the price is that every
node receives every publication of the cluster, which is fine for the sizes a PostgreSQL-only
team runs. Like the Redis broker, a node's own publications come back through NOTIFY (one
order for all nodes), and after a lost connection the node reconnects with capped, jittered
backoff, LISTENs again, and wins back what it missed from the table (resume.py).

A publish with an idempotency key runs in one transaction of two statements. The first claims
the key in `broker_idempotency` (INSERT … ON CONFLICT on its primary key): a second publisher
of the same key waits on the first's uncommitted row, then sees it committed — the first
publication's offset — and publishes nothing; a fresh claim (or one past its expiry) goes on,
in the same statement, to the stream, the row and the NOTIFY as above. The second statement
writes the offset into the claimed key row, before the commit that makes both visible.

History rows are trimmed by a periodic cleanup (every CLEANUP_SECONDS on one node at a time,
under a transaction-scoped advisory lock); reads apply the size and age limits themselves.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
from typing import Any

import asyncpg
import orjson

from app.core.tasks import cancel_and_wait, wait_event
from app.db.engine import asyncpg_dsn
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

logger = logging.getLogger("context_manager.broker.postgres")

CONNECT_TIMEOUT = 5.0
# The LISTEN connection runs a trivial query this often; a failure means it is gone.
PING_INTERVAL = 5.0
CLEANUP_SECONDS = 30.0
# Rows past the history limits are kept this long, so nodes can fetch large payloads by id.
FETCH_GRACE_SECONDS = 60
# Largest payload sent inline: NOTIFY's limit is 8000 bytes, minus the header.
INLINE_LIMIT = 7600
STREAM_MIN_TTL = 3600
CLEANUP_LOCK = 0x636D6263  # "cmbc"

PUBLISH_SQL = """
WITH s AS (
    INSERT INTO broker_streams AS bs (namespace, channel, epoch, top_offset, updated_at)
    VALUES ($1, $2, $3, 1, now())
    ON CONFLICT (namespace, channel)
    DO UPDATE SET top_offset = bs.top_offset + 1, updated_at = now()
    RETURNING top_offset, epoch
), p AS (
    INSERT INTO broker_publications (namespace, channel, epoch, "offset", payload)
    SELECT $1, $2, s.epoch, s.top_offset, $4 FROM s
    RETURNING id, "offset", epoch
)
SELECT p."offset", p.epoch, pg_notify(
    $5,
    CASE WHEN octet_length($4) <= $6
        THEN p."offset" || ' ' || p.epoch || ' ' || $2 || E'\\n' || $4
        ELSE '#' || p.id || ' ' || $2
    END
) FROM p
"""

# $7 the idempotency key, $8 its TTL in seconds. A claimed key has epoch '' until the second
# statement (CLAIMED_SQL) names its publication; a live duplicate returns the first's position.
PUBLISH_KEYED_SQL = """
WITH k AS (
    INSERT INTO broker_idempotency AS bi (namespace, channel, key, epoch, "offset", expires_at)
    VALUES ($1, $2, $7, '', 0, now() + make_interval(secs => $8::float8))
    ON CONFLICT (namespace, channel, key) DO UPDATE SET
        epoch = CASE WHEN bi.expires_at <= now() THEN '' ELSE bi.epoch END,
        "offset" = CASE WHEN bi.expires_at <= now() THEN 0 ELSE bi."offset" END,
        expires_at = CASE WHEN bi.expires_at <= now() THEN EXCLUDED.expires_at
                          ELSE bi.expires_at END
    RETURNING bi.epoch, bi."offset"
), s AS (
    INSERT INTO broker_streams AS bs (namespace, channel, epoch, top_offset, updated_at)
    SELECT $1, $2, $3, 1, now() FROM k WHERE k.epoch = ''
    ON CONFLICT (namespace, channel)
    DO UPDATE SET top_offset = bs.top_offset + 1, updated_at = now()
    RETURNING top_offset, epoch
), p AS (
    INSERT INTO broker_publications (namespace, channel, epoch, "offset", payload)
    SELECT $1, $2, s.epoch, s.top_offset, $4 FROM s
    RETURNING id, "offset", epoch
)
SELECT p."offset", p.epoch, false AS duplicate, pg_notify(
    $5,
    CASE WHEN octet_length($4) <= $6
        THEN p."offset" || ' ' || p.epoch || ' ' || $2 || E'\\n' || $4
        ELSE '#' || p.id || ' ' || $2
    END
) FROM p
UNION ALL
SELECT k."offset", k.epoch, true, NULL FROM k WHERE k.epoch <> ''
"""

CLAIMED_SQL = """
UPDATE broker_idempotency SET epoch = $4, "offset" = $5
WHERE namespace = $1 AND channel = $2 AND key = $3
"""

# One statement, one snapshot: the stream's top and what follows `since` (never past the top).
HISTORY_SQL = """
WITH s AS (
    SELECT top_offset, epoch FROM broker_streams WHERE namespace = $1 AND channel = $2
)
SELECT s.top_offset, s.epoch, p."offset", p.payload
FROM s LEFT JOIN LATERAL (
    SELECT "offset", payload FROM broker_publications
    WHERE namespace = $1 AND channel = $2 AND epoch = s.epoch
      AND "offset" > GREATEST($3::bigint, s.top_offset - $4::bigint)
      AND "offset" <= s.top_offset
      AND created_at > now() - make_interval(secs => $5::float8)
    ORDER BY "offset"
    LIMIT $6
) p ON $7::bool AND ($8::text IS NULL OR $8::text = s.epoch)
ORDER BY p."offset"
"""

CREATE_STREAM_SQL = """
INSERT INTO broker_streams (namespace, channel, epoch) VALUES ($1, $2, $3)
ON CONFLICT (namespace, channel) DO NOTHING
"""

FETCH_SQL = """
SELECT "offset", epoch, payload FROM broker_publications WHERE id = $1
"""

# Each kind's retention comes as parallel arrays from the registry ($2 namespaces, $3 sizes,
# $4 TTLs; a singleton kind's channel is its namespace). A channel of a kind missing from them
# (one a newer node added, mid rolling upgrade) keeps the longest retention of all ($5 size,
# $6 TTL) rather than borrowing another kind's.
CLEANUP_SQL = f"""
WITH kinds AS (
    SELECT * FROM unnest($2::text[], $3::bigint[], $4::float8[]) AS k(namespace, size, ttl)
), expired AS (
    DELETE FROM broker_publications p
    USING broker_streams s LEFT JOIN kinds k ON k.namespace = split_part(s.channel, '/', 1)
    WHERE p.namespace = $1 AND s.namespace = $1 AND p.channel = s.channel
      AND p.created_at < now() - make_interval(secs => {FETCH_GRACE_SECONDS})
      AND (
        p.epoch <> s.epoch
        OR p."offset" <= s.top_offset - COALESCE(k.size, $5::bigint)
        OR p.created_at < now() - make_interval(secs => COALESCE(k.ttl, $6::float8))
      )
    RETURNING 1
), orphans AS (
    DELETE FROM broker_publications p
    WHERE p.namespace = $1
      AND p.created_at < now() - make_interval(secs => {FETCH_GRACE_SECONDS})
      AND NOT EXISTS (
        SELECT 1 FROM broker_streams s WHERE s.namespace = $1 AND s.channel = p.channel
      )
    RETURNING 1
), idle AS (
    DELETE FROM broker_streams s
    WHERE s.namespace = $1
      AND s.updated_at < now() - make_interval(secs => GREATEST({STREAM_MIN_TTL}, COALESCE(
            (SELECT k.ttl FROM kinds k WHERE k.namespace = split_part(s.channel, '/', 1)),
            $6::float8)))
    RETURNING 1
), keys AS (
    DELETE FROM broker_idempotency WHERE namespace = $1 AND expires_at < now()
    RETURNING 1
)
SELECT (SELECT count(*) FROM expired) + (SELECT count(*) FROM orphans)
     + (SELECT count(*) FROM idle) + (SELECT count(*) FROM keys)
"""

_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


def notify_channel(namespace: str) -> str:
    return f"cm_broker_{namespace}"


def encode_payload(publication: Publication) -> str:
    return orjson.dumps(
        [publication.event, publication.data, publication.timestamp, publication.origin]
    ).decode()


def decode_payload(channel: str, payload: str, offset: int, epoch: str) -> Publication:
    event, data, timestamp, origin = orjson.loads(payload)
    return Publication(channel, event, data, timestamp, offset, epoch, origin)


async def purge_namespace(database_url: str, namespace: str) -> None:
    """Delete every stream and publication of `namespace` (what losing the broker's data is)."""
    connection = await asyncpg.connect(asyncpg_dsn(database_url), timeout=CONNECT_TIMEOUT)
    try:
        async with connection.transaction():
            await connection.execute("DELETE FROM broker_streams WHERE namespace = $1", namespace)
            await connection.execute(
                "DELETE FROM broker_publications WHERE namespace = $1", namespace
            )
            await connection.execute(
                "DELETE FROM broker_idempotency WHERE namespace = $1", namespace
            )
    finally:
        await connection.close()


class PostgresBroker(StoredHistory):
    """Broker over PostgreSQL alone (see the module docstring)."""

    link_name = "PostgreSQL LISTEN"

    def __init__(
        self, node_id: str, policies: HistoryPolicies, database_url: str, namespace: str = "cm"
    ) -> None:
        self._node_id = node_id
        self._policies = policies
        self._dsn = asyncpg_dsn(database_url)
        self._namespace = namespace
        self._notify_channel = notify_channel(namespace)
        self._channels: set[str] = set()
        self._pool: asyncpg.Pool | None = None
        self._listen_connection: asyncpg.Connection | None = None
        self._listener: asyncio.Task[None] | None = None
        self._cleaner: asyncio.Task[None] | None = None
        self._lost: asyncio.Event = asyncio.Event()
        # Notifications waiting behind a fetch by id, so that delivery stays in order.
        self._queue: collections.deque[str] = collections.deque()
        self._drainer: asyncio.Task[None] | None = None
        # The LISTEN link, kept up (and caught up after an outage), and its delivery tracker.
        self._link = KeptPubSub(self, self._channels)
        self._tracker = self._link.tracker

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self, handler: BrokerHandler) -> None:
        self._tracker.bind(handler)
        self._pool = await asyncpg.create_pool(
            self._dsn, min_size=1, max_size=5, timeout=CONNECT_TIMEOUT, command_timeout=10
        )
        self._listener = asyncio.create_task(self._link.run(), name="postgres-broker-listener")
        self._cleaner = asyncio.create_task(self._cleanup_loop(), name="postgres-broker-cleanup")
        await wait_event(self._link.connected, CONNECT_TIMEOUT)
        if not self.healthy:
            logger.warning("PostgreSQL LISTEN is not established yet; retrying in the background")

    async def close(self) -> None:
        self._tracker.bind(None)
        for task in (self._listener, self._cleaner, self._drainer):
            await cancel_and_wait(task)
        self._listener = self._cleaner = self._drainer = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @property
    def healthy(self) -> bool:
        return self._link.healthy

    def link_state(self) -> LinkState:
        return self._link.state()

    def _require_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise BrokerUnavailable("the PostgreSQL broker is not started")
        return self._pool

    # --- the listener -----------------------------------------------------------------------

    def _on_notification(self, connection: Any, pid: int, channel: str, payload: str) -> None:
        if self._queue or payload.startswith("#"):
            # Behind (or itself) a fetch by id: keep the order, hand over to the drainer.
            self._queue.append(payload)
            if self._drainer is None or self._drainer.done():
                self._drainer = asyncio.create_task(self._drain(), name="postgres-broker-fetch")
            return
        self._deliver_inline(payload)

    def _deliver_inline(self, payload: str) -> None:
        header, _, body = payload.partition("\n")
        offset, epoch, channel = header.split(" ", 2)
        if channel not in self._channels:
            return
        try:
            publication = decode_payload(channel, body, int(offset), epoch)
        except Exception:  # noqa: BLE001 - not one of ours
            logger.warning("undecodable notification on %s", self._notify_channel)
            return
        self._tracker.deliver(publication)

    async def _drain(self) -> None:
        queue = self._queue
        while queue:
            payload = queue[0]
            try:
                if payload.startswith("#"):
                    ident, _, channel = payload[1:].partition(" ")
                    if channel in self._channels:
                        row = await self._require_pool().fetchrow(FETCH_SQL, int(ident))
                        if row is not None:
                            self._tracker.deliver(
                                decode_payload(channel, row["payload"], row["offset"], row["epoch"])
                            )
                else:
                    self._deliver_inline(payload)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the reconnect's catch-up fills the hole
                logger.exception("could not fetch a publication (%s)", payload[:40])
            queue.popleft()

    def _on_termination(self, connection: Any) -> None:
        self._lost.set()

    async def _connect_link(self) -> asyncpg.Connection:
        self._lost.clear()
        connection = await asyncpg.connect(self._dsn, timeout=CONNECT_TIMEOUT)
        connection.add_termination_listener(self._on_termination)
        return connection

    async def _subscribe_link(self, connection: asyncpg.Connection, channels: list[str]) -> None:
        # One LISTEN for every channel: notifications name theirs.
        await connection.add_listener(self._notify_channel, self._on_notification)
        self._listen_connection = connection

    def _drop_link(self, connection: asyncpg.Connection | None) -> None:
        self._listen_connection = None
        if connection is not None:
            connection.terminate()

    async def _watch(self, connection: asyncpg.Connection) -> None:
        while True:
            await wait_event(self._lost, PING_INTERVAL)
            if self._lost.is_set() or connection.is_closed():
                raise ConnectionError("LISTEN connection lost")
            await connection.fetchval("SELECT 1", timeout=PING_INTERVAL)

    # --- cleanup ----------------------------------------------------------------------------

    def _limits(self) -> list[Any]:
        """CLEANUP_SQL's parameters: namespace, each kind's retention, the longest retention."""
        by_kind = self._policies.by_kind
        return [
            self._namespace,
            [kind.value for kind in by_kind],
            [policy.size for policy in by_kind.values()],
            [float(policy.ttl) for policy in by_kind.values()],
            max(policy.size for policy in by_kind.values()),
            self._policies.max_ttl,
        ]

    async def cleanup(self) -> int:
        """Delete publications past their limits and idle streams; rows deleted (one node)."""
        pool = self._require_pool()
        async with pool.acquire() as connection, connection.transaction():
            if not await connection.fetchval("SELECT pg_try_advisory_xact_lock($1)", CLEANUP_LOCK):
                return 0
            deleted: int = await connection.fetchval(CLEANUP_SQL, *self._limits())
            return deleted

    async def _cleanup_loop(self) -> None:
        while True:
            await asyncio.sleep(CLEANUP_SECONDS * random.uniform(0.8, 1.2))
            try:
                await self.cleanup()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - try again next round
                logger.warning("broker history cleanup failed", exc_info=True)

    # --- the broker contract ----------------------------------------------------------------

    async def subscribe(self, channel: str) -> None:
        if not self.healthy:
            raise BrokerUnavailable(channel)
        self._channels.add(channel)
        await self._link.track_from_now(channel)

    async def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)
        self._tracker.forget(channel)

    async def publish(
        self, publication: Publication, idempotency_key: str | None = None
    ) -> Publication:
        channel = publication.channel
        publication.origin = self._node_id
        args = (
            self._namespace,
            channel,
            new_epoch(),
            encode_payload(publication),
            self._notify_channel,
            INLINE_LIMIT,
        )
        pool = self._require_pool()
        try:
            if idempotency_key is None:
                row = await pool.fetchrow(PUBLISH_SQL, *args)
            else:
                ttl = float(self._policies.by_kind[publication.kind].ttl)
                async with pool.acquire() as connection, connection.transaction():
                    row = await connection.fetchrow(PUBLISH_KEYED_SQL, *args, idempotency_key, ttl)
                    assert row is not None
                    if row["duplicate"]:
                        raise DuplicatePublication(
                            channel, StreamPosition(row["offset"], row["epoch"])
                        )
                    await connection.execute(
                        CLAIMED_SQL,
                        self._namespace,
                        channel,
                        idempotency_key,
                        row["epoch"],
                        row["offset"],
                    )
        except _ERRORS as exc:
            raise BrokerUnavailable(channel) from exc
        assert row is not None
        publication.offset = row["offset"]
        publication.epoch = row["epoch"]
        return publication

    async def _read(
        self, channel: str, since: StreamPosition | None, limit: int | None, entries: bool
    ) -> tuple[StreamPosition, list[Publication]]:
        policy = self._policies.for_channel(channel)
        pool = self._require_pool()
        args = (
            self._namespace,
            channel,
            since.offset if since is not None else -1,
            policy.size,
            float(policy.ttl),
            limit,
            entries and policy.size > 0,
            since.epoch if since is not None else None,
        )
        try:
            rows = await pool.fetch(HISTORY_SQL, *args)
            if not rows:
                await pool.execute(CREATE_STREAM_SQL, self._namespace, channel, new_epoch())
                rows = await pool.fetch(HISTORY_SQL, *args)
        except _ERRORS as exc:
            raise BrokerUnavailable(channel) from exc
        position = StreamPosition(rows[0]["top_offset"], rows[0]["epoch"])
        publications = [
            decode_payload(channel, row["payload"], row["offset"], position.epoch)
            for row in rows
            if row["offset"] is not None
        ]
        return position, publications
