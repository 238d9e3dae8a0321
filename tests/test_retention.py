"""Each channel kind keeps its own history retention, on every broker and in the PostgreSQL
cleanup, for every kind of the registry (a kind added later is covered without a new test)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import asyncpg
import pytest

from app.core.config import Settings
from app.realtime.broker.base import Broker
from app.realtime.channels import ChannelKind
from app.realtime.history import HistoryPolicies, HistoryPolicy
from app.realtime.publication import Publication
from tests.conftest import SettingsFactory

pytestmark = pytest.mark.timeout(60)

EXTRA = 3  # publications past each kind's size


class _Sink:
    def handle_publication(self, publication: Publication) -> None:
        pass


def distinct_policies(settings: Settings) -> HistoryPolicies:
    """A size of its own for every kind (2, 3, 4, …), so that a borrowed one shows."""
    policies = HistoryPolicies(settings)
    policies.by_kind = {kind: HistoryPolicy(n + 2, 3600.0) for n, kind in enumerate(ChannelKind)}
    return policies


def channel_of(kind: ChannelKind) -> str:
    return kind.value if kind.singleton else f"{kind.value}/r1"


async def publish_past_every_size(broker: Broker, policies: HistoryPolicies) -> None:
    for kind, policy in policies.by_kind.items():
        for n in range(policy.size + EXTRA):
            await broker.publish(Publication(channel_of(kind), "note.added", {"n": n}, n))


@pytest.fixture(params=["memory", "redis", "postgres"])
async def broker(
    request: pytest.FixtureRequest, make_settings: SettingsFactory
) -> AsyncIterator[tuple[Broker, HistoryPolicies, str]]:
    """A started broker of each backend with `distinct_policies`, and its namespace."""
    namespace = f"t{secrets.token_hex(5)}"
    made: Broker
    if request.param == "memory":
        from app.realtime.broker.memory import MemoryBroker

        policies = distinct_policies(make_settings())
        made = MemoryBroker("n1", policies)
    elif request.param == "redis":
        from app.realtime.broker.redis import RedisBroker

        policies = distinct_policies(make_settings())
        made = RedisBroker("n1", policies, request.getfixturevalue("redis_url"), namespace)
    else:
        from app.realtime.broker.postgres import PostgresBroker

        url = request.getfixturevalue("migrated_postgres_url")
        settings = make_settings(database_url=url)
        policies = distinct_policies(settings)
        made = PostgresBroker("n1", policies, settings.database_url, namespace)
    await made.start(_Sink())
    try:
        yield made, policies, namespace
    finally:
        await made.close()
        if request.param == "redis":
            import redis.asyncio as aioredis

            client = aioredis.Redis.from_url(request.getfixturevalue("redis_url"))
            keys = [key async for key in client.scan_iter(match=f"{namespace}:*", count=500)]
            if keys:
                await client.delete(*keys)
            await client.aclose()
        elif request.param == "postgres":
            from app.realtime.broker.postgres import purge_namespace

            await purge_namespace(request.getfixturevalue("migrated_postgres_url"), namespace)


async def test_each_kind_keeps_its_own_history_size(
    broker: tuple[Broker, HistoryPolicies, str],
) -> None:
    made, policies, _ = broker
    await publish_past_every_size(made, policies)
    for kind, policy in policies.by_kind.items():
        page = await made.history(channel_of(kind))
        assert page.position.offset == policy.size + EXTRA, kind
        assert [p.data["n"] for p in page.publications] == list(
            range(EXTRA, policy.size + EXTRA)
        ), kind


async def test_postgres_cleanup_applies_each_kinds_retention(
    migrated_postgres_url: str, make_settings: SettingsFactory
) -> None:
    """Rows past each kind's size go (once past the fetch grace); a channel of a kind this node
    does not know (added by a newer node) keeps the longest retention, not another kind's."""
    from app.realtime.broker.postgres import PostgresBroker, asyncpg_dsn, purge_namespace

    namespace = f"t{secrets.token_hex(5)}"
    settings = make_settings(database_url=migrated_postgres_url)
    policies = distinct_policies(settings)
    longest = max(policy.size for policy in policies.by_kind.values())
    broker = PostgresBroker("n1", policies, settings.database_url, namespace)
    await broker.start(_Sink())
    connection = await asyncpg.connect(asyncpg_dsn(settings.database_url))
    try:
        await publish_past_every_size(broker, policies)
        # The PostgreSQL broker's publish needs no policy: a newer node's kind is stored as is.
        for n in range(longest + EXTRA):
            await broker.publish(Publication("newkind/r1", "note.added", {"n": n}, n))
        await connection.execute(
            "UPDATE broker_publications SET created_at = now() - interval '5 minutes' "
            "WHERE namespace = $1",
            namespace,
        )
        assert await broker.cleanup() > 0
        rows = await connection.fetch(
            'SELECT channel, min("offset") AS first, count(*) AS kept FROM broker_publications '
            "WHERE namespace = $1 GROUP BY channel",
            namespace,
        )
        kept = {row["channel"]: (row["first"], row["kept"]) for row in rows}
        expected = {
            channel_of(kind): (EXTRA + 1, policy.size) for kind, policy in policies.by_kind.items()
        }
        expected["newkind/r1"] = (EXTRA + 1, longest)
        assert kept == expected
    finally:
        await connection.close()
        await broker.close()
        await purge_namespace(migrated_postgres_url, namespace)
