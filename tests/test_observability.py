"""GET /metrics (app/observability.py): node counters read at scrape time, REST timings."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from app.server import Service
from tests.conftest import ClientFactory, ServiceFactory


async def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Samples of /metrics as {(name, sorted labels): value}."""
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.get(f"http://127.0.0.1:{port}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


async def test_metrics_follow_what_the_node_does(
    start_service: ServiceFactory, ws_client: ClientFactory
) -> None:
    service: Service = await start_service(surfaces=("api", "ws", "dashboard"))
    ports = (service.settings.api_port, service.settings.ws_port, service.settings.dashboard_port)
    before = await scrape(service.settings.ws_port)
    assert before[("cm_connections", ())] == 0
    assert before[("cm_broker_healthy", (("kind", "memory"),))] == 1

    client = await ws_client(service, agent_id="agent-m")
    await client.subscribe("topics/m")
    await client.subscribe("global")
    reply = await client.request(
        {"type": "publish", "channel": "topics/m", "event": "note.added", "data": {}, "id": "p"}
    )
    assert reply.get("success") is True, reply
    await client.send({"type": "nope"})
    await client.recv()

    for port in ports:
        samples = await scrape(port)
        assert samples[("cm_connections", ())] == 1
        assert samples[("cm_connections_opened_total", ())] == 1
        assert samples[("cm_subscriptions", ())] == 2
        assert samples[("cm_channels", ())] == 2
        assert samples[("cm_messages_in_total", (("type", "subscribe"),))] == 2
        assert samples[("cm_messages_in_total", (("type", "publish"),))] == 1
        assert samples[("cm_messages_out_total", (("type", "event"),))] >= 1
        assert samples[("cm_errors_total", (("code", "UNKNOWN_TYPE"),))] == 1
        assert samples[("cm_publications_total", ())] >= 2  # the note and agent.connected
        assert samples[("cm_deliveries_total", ())] >= 1
        assert samples[("cm_agents_online", (("scope", "node"),))] == 1
        assert samples[("cm_slow_consumer_disconnects_total", ())] == 0

    await client.close()
    # The close is seen by the server a moment later.
    for _ in range(100):
        samples = await scrape(service.settings.ws_port)
        if samples[("cm_connections", ())] == 0:
            break
    assert samples[("cm_connections_closed_total", ())] == 1
    assert sum(v for (name, _), v in samples.items() if name == "cm_connection_close_codes_total")


async def test_rest_requests_are_counted_and_timed(start_service: ServiceFactory) -> None:
    service = await start_service(surfaces=("api", "ws"))
    api = service.settings.api_port
    async with httpx.AsyncClient(timeout=5) as client:
        for _ in range(3):
            assert (await client.get(f"http://127.0.0.1:{api}/health")).status_code == 200
        missing = await client.get(f"http://127.0.0.1:{api}/no/such/route")
        assert missing.status_code == 404
        # The WebSocket port's HTTP routes are not timed (kept off its hot path).
        await client.get(f"http://127.0.0.1:{service.settings.ws_port}/health")
    samples = await scrape(api)
    ok = (("method", "GET"), ("route", "/health"), ("status", "200"))
    assert samples[("cm_http_requests_total", ok)] == 3
    assert samples[("cm_http_request_duration_seconds_count", ok[:2])] == 3
    assert samples[("cm_http_request_duration_seconds_sum", ok[:2])] > 0
    unmatched = (("method", "GET"), ("route", "unmatched"), ("status", "404"))
    assert samples[("cm_http_requests_total", unmatched)] == 1
    # Probes and scrapes are answered before the timing wrapper: they do not count.
    assert not any(
        dict(labels).get("route") in ("/metrics", "/readyz")
        for (name, labels) in samples
        if name == "cm_http_requests_total"
    )
