"""Prometheus metrics: GET /metrics on every port (ops.py serves it).

Nothing on the WebSocket path increments a Prometheus object. The node's counters already
live in `manager.stats` (cheap attribute increments, app/realtime/stats.py); `NodeCollector`
reads them at scrape time and turns them into metric families, so each is counted once.
HTTP requests of the REST API are counted and timed by `HttpMetrics`, a pure ASGI wrapper
that ops.py puts in front of the API port only.

Each application gets its own `CollectorRegistry` (tests run many in one process).

    cm_connections / _opened_total / _closed_total / _rejected_total{reason}
    cm_connection_close_codes_total{code}      cm_slow_consumer_disconnects_total
    cm_subscriptions / _total                  cm_channels
    cm_messages_in_total{type}                 cm_messages_out_total{type}
    cm_publications_total                      cm_deliveries_total
    cm_errors_total{code}
    cm_broker_healthy{kind}                    cm_broker_reconnects_total
    cm_broker_recovered_publications_total     cm_broker_stream_resets_total
    cm_agents_online{scope=node|cluster}
    cm_cluster_nodes                           cm_cluster_swept_agents_total
    cm_bridge_leader  cm_bridge_last_id  cm_bridge_lag  cm_bridge_delivered_total
    cm_bridge_reconnects_total
    cm_http_requests_total{method,route,status}
    cm_http_request_duration_seconds{method,route}   (histogram)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import text

from app.core import gc_policy
from app.realtime.endpoint import Receive, Send

if TYPE_CHECKING:
    from app.bridge import Bridge
    from app.realtime.manager import ConnectionManager
    from app.runtime import Runtime

BRIDGE_LAG_TIMEOUT = 1.0


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _labelled_counter(
    name: str, doc: str, label: str, values: dict[Any, int]
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=[label])
    for key, value in sorted(values.items(), key=lambda item: str(item[0])):
        family.add_metric([str(key)], value)
    return family


class NodeCollector(Collector):
    """Reads the node's live counters when Prometheus scrapes (see the module docstring)."""

    def __init__(self, root: FastAPI) -> None:
        self.root = root
        # Set by `render_metrics` just before a scrape (it needs a database query).
        self.bridge_newest_id: int | None = None

    def collect(self) -> Iterator[Metric]:
        # Before the lifespan has built the node (a scrape during start-up) there is nothing.
        runtime: Runtime | None = getattr(self.root.state, "runtime", None)
        if runtime is None:
            return
        manager = runtime.manager
        stats = manager.stats
        channel_stats = manager.hub.channel_stats()
        yield GaugeMetricFamily(
            "cm_connections", "Open WebSocket connections.", len(manager.connections)
        )
        yield _counter(
            "cm_connections_opened", "WebSocket connections accepted.", stats.connections_opened
        )
        yield _counter(
            "cm_connections_closed", "WebSocket connections closed.", stats.connections_closed
        )
        yield _labelled_counter(
            "cm_connections_rejected",
            "WebSocket handshakes refused, by reason.",
            "reason",
            stats.connections_rejected,
        )
        yield _labelled_counter(
            "cm_connection_close_codes",
            "Closed connections by close code.",
            "code",
            stats.close_codes,
        )
        yield _counter(
            "cm_slow_consumer_disconnects",
            "Connections closed because their outbound queue overflowed.",
            stats.slow_consumers,
        )
        yield GaugeMetricFamily(
            "cm_subscriptions", "Current subscriptions on this node.", sum(channel_stats.values())
        )
        yield _counter(
            "cm_subscriptions_made", "Subscriptions made since start.", stats.subscriptions_total
        )
        yield GaugeMetricFamily(
            "cm_channels", "Channels with a subscriber on this node.", len(channel_stats)
        )
        yield _labelled_counter(
            "cm_messages_in", "Client messages received, by type.", "type", stats.messages_in
        )
        yield _labelled_counter(
            "cm_messages_out", "Frames queued to clients, by type.", "type", stats.messages_out
        )
        yield _counter(
            "cm_publications", "Publications made through this node.", stats.publications
        )
        yield _counter(
            "cm_deliveries", "Events queued to subscribers on this node.", stats.deliveries
        )
        yield _labelled_counter(
            "cm_errors", "Error frames sent, by error code.", "code", stats.errors
        )
        yield from self._broker(manager)
        yield from self._presence(manager)
        yield from self._bridge(runtime.bridge)
        yield _counter(
            "cm_group_commit_transactions",
            "Transactions the group commit wrote (app/db/group_commit.py).",
            runtime.writes.batches,
        )
        yield _counter(
            "cm_group_commit_writes",
            "Requests' writes those transactions held: writes ÷ transactions is the batch size.",
            runtime.writes.writes,
        )
        yield _counter(
            "cm_shared_transactions",
            "Transactions of read-check-write calls (PATCH) committed together "
            "(app/db/shared_transaction.py).",
            runtime.shared.batches,
        )
        yield _counter(
            "cm_shared_transaction_calls",
            "Calls those transactions held: calls ÷ transactions is the batch size.",
            runtime.shared.calls,
        )
        yield _counter(
            "cm_shared_transaction_splits",
            "Batches that failed and were run again call by call.",
            runtime.shared.split,
        )
        yield from self._collector()

    def _broker(self, manager: ConnectionManager) -> Iterator[Metric]:
        broker = manager.broker
        link = broker.link_state()
        healthy = GaugeMetricFamily(
            "cm_broker_healthy",
            "1 when the broker delivers, 0 while reconnecting.",
            labels=["kind"],
        )
        healthy.add_metric([manager.settings.broker_kind], 1 if broker.healthy else 0)
        yield healthy
        yield _counter(
            "cm_broker_reconnects",
            "Times the broker connection was lost and re-established.",
            link.reconnects,
        )
        yield _counter(
            "cm_broker_recovered_publications",
            "Publications won back from history after a broker reconnect.",
            link.recovered_after_reconnect,
        )
        yield _counter(
            "cm_broker_stream_resets",
            "Channels whose subscribers were told of publications the history could not cover.",
            link.stream_resets,
        )

    def _presence(self, manager: ConnectionManager) -> Iterator[Metric]:
        online = GaugeMetricFamily(
            "cm_agents_online", "Agents with an open connection.", labels=["scope"]
        )
        online.add_metric(["node"], len(manager.presence.online()))
        cluster = manager.cluster
        if cluster is not None:
            online.add_metric(["cluster"], cluster.agents_online)
            yield GaugeMetricFamily("cm_cluster_nodes", "Live nodes.", len(cluster.nodes))
            yield _counter(
                "cm_cluster_swept_agents",
                "Agents reported gone because their node died.",
                cluster.swept_agents,
            )
        yield online

    def _bridge(self, bridge: Bridge) -> Iterator[Metric]:
        leader = bridge.leader
        last_id = bridge.last_id
        yield GaugeMetricFamily(
            "cm_bridge_leader", "1 when this node's bridge publishes the outbox.", int(leader)
        )
        yield GaugeMetricFamily("cm_bridge_last_id", "Last outbox id delivered.", last_id)
        if leader and self.bridge_newest_id is not None:
            yield GaugeMetricFamily(
                "cm_bridge_lag",
                "Outbox rows not yet delivered (newest id minus last delivered).",
                max(0, self.bridge_newest_id - last_id),
            )
        yield _counter("cm_bridge_delivered", "Outbox events published.", bridge.delivered)
        yield _counter(
            "cm_bridge_reconnects",
            "Bridge LISTEN connections re-established.",
            bridge.reconnects,
        )

    def _collector(self) -> Iterator[Metric]:
        """The cyclic GC's pauses, when the serving process runs app/core/gc_policy.py."""
        policy = gc_policy.installed()
        if policy is None:
            return
        stats = policy.stats
        collections = CounterMetricFamily(
            "cm_gc_collections", "Cyclic GC collections, by generation.", labels=["generation"]
        )
        paused = CounterMetricFamily(
            "cm_gc_pause_seconds",
            "Time the process spent in cyclic GC collections, by generation.",
            labels=["generation"],
        )
        longest = GaugeMetricFamily(
            "cm_gc_max_pause_seconds",
            "Longest cyclic GC collection since start, by generation.",
            labels=["generation"],
        )
        for generation in range(3):
            label = [str(generation)]
            collections.add_metric(label, stats.collections[generation])
            paused.add_metric(label, stats.pause_seconds[generation])
            longest.add_metric(label, stats.max_pause_seconds[generation])
        yield collections
        yield paused
        yield longest
        yield _counter(
            "cm_gc_sweeps",
            "Full collections that also walked the frozen long-lived objects.",
            stats.sweeps,
        )
        yield GaugeMetricFamily(
            "cm_gc_frozen_objects",
            "Objects frozen (kept out of full collections) since the last sweep, counted as "
            "they were frozen.",
            stats.frozen,
        )


class HttpMetrics:
    """Counts and times the REST API's HTTP requests (a pure ASGI wrapper)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "cm_http_requests",
            "HTTP requests served by the REST API.",
            ["method", "route", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "cm_http_request_duration_seconds",
            "Time to serve a REST API request.",
            ["method", "route"],
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )

    @staticmethod
    def of(root: FastAPI) -> HttpMetrics:
        metrics: HttpMetrics = _state(root).http
        return metrics

    async def observe(self, app: Any, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        status = 500
        started = time.perf_counter()

        async def send_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await app(scope, receive, send_status)
        finally:
            # The route template, not the path: ids in paths would explode the label set.
            route = scope.get("route")
            label = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "GET")
            self.latency.labels(method, label).observe(time.perf_counter() - started)
            self.requests.labels(method, label, str(status)).inc()


class _Observability:
    def __init__(self, root: FastAPI) -> None:
        self.registry = CollectorRegistry()
        self.node = NodeCollector(root)
        self.registry.register(self.node)
        self.http = HttpMetrics(self.registry)


def _state(root: FastAPI) -> _Observability:
    observability: _Observability | None = getattr(root.state, "observability", None)
    if observability is None:
        observability = root.state.observability = _Observability(root)
    return observability


async def _newest_outbox_id(root: FastAPI) -> int | None:
    runtime: Runtime | None = getattr(root.state, "runtime", None)
    if runtime is None:
        return None
    engine = runtime.engine

    async def query() -> int | None:
        async with engine.connect() as connection:
            value = (await connection.execute(text("SELECT max(id) FROM events"))).scalar()
            return int(value) if value is not None else 0

    try:
        async with asyncio.timeout(BRIDGE_LAG_TIMEOUT):
            return await query()
    except Exception:  # noqa: BLE001 - no lag figure this scrape, the rest still renders
        return None


async def render_metrics(root: FastAPI) -> tuple[bytes, str]:
    """The Prometheus exposition of this process, and its content type."""
    from prometheus_client import generate_latest

    observability = _state(root)
    observability.node.bridge_newest_id = await _newest_outbox_id(root)
    return generate_latest(observability.registry), CONTENT_TYPE_LATEST
