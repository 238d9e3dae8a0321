"""Delivery rows → signed POSTs: leased per endpoint, in order, retried on a schedule.

Any node delivers. A node takes an *endpoint* (not a single delivery) with a lease: it sets
`lease_token` and `lease_expires_at` where the lease is free or has run out (PostgreSQL picks
the candidates `FOR UPDATE SKIP LOCKED`, so nodes never queue behind each other; the UPDATE's
condition decides everywhere). While it holds the lease it sends that endpoint's lowest
pending delivery, records the attempt, renews the lease, and goes on with the next — one
attempt at a time per endpoint, so the endpoint gets its events in order, and a delivery in
backoff holds back the ones after it until it succeeds or is given up.

    attempt 1 at once; a failure waits WEBHOOK_RETRY_SCHEDULE[n-1] (±10 % jitter), or a
    429/503's Retry-After when longer; after the last delay's attempt: given up (failed)
    2xx: succeeded      410: failed, and the endpoint is disabled      3xx: a failure
    failing (no 2xx) for WEBHOOK_DISABLE_AFTER: the endpoint is disabled
    a disabled endpoint: `webhook.disabled` on `global`; its pending deliveries wait for it
    to be enabled again

A node killed mid-attempt leaves its lease to run out (2 × WEBHOOK_TIMEOUT + 1 s): then any
node takes the endpoint and sends the same delivery again, with the same `webhook-id` — at
least once; the receiver drops a repeat by that id. The lease token fences a node whose lease
ran out while it waited: its attempt is still recorded, but it no longer moves the delivery.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import delete, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.core.config import Settings
from app.core.tasks import cancel_and_wait, uninterrupted, wait_event
from app.db.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint, WebhookState
from app.db.types import utcnow
from app.webhooks import signing
from app.webhooks.sender import Outcome, Sender

logger = logging.getLogger("context_manager.webhooks")

JITTER = 0.1  # ± this fraction of each retry delay
MAX_RETRY_AFTER = 86400.0  # a receiver's Retry-After is honoured up to a day
STOP_GRACE = 2.0  # seconds attempts under way get to finish on stop
CLEAN_INTERVAL = 60.0  # seconds between retention sweeps
CLEAN_BATCH = 1000
FIRST_DELAY = 0.1
MAX_DELAY = 5.0

Publish = Callable[[str, str, dict[str, Any]], Awaitable[Any]]


def retry_delay(
    delays: tuple[float, ...], failed_attempts: int, rand: Callable[[], float] = random.random
) -> float | None:
    """Seconds before the next attempt after `failed_attempts` failures (None: give up)."""
    if failed_attempts > len(delays):
        return None
    base = delays[failed_attempts - 1]
    return base * (1 - JITTER + 2 * JITTER * rand())


def head_due() -> Any:
    """The next attempt time of an endpoint's first pending delivery (a correlated scalar)."""
    return (
        select(WebhookDelivery.next_attempt_at)
        .where(
            WebhookDelivery.endpoint_id == WebhookEndpoint.id,
            WebhookDelivery.state == WebhookState.PENDING.value,
        )
        .order_by(WebhookDelivery.id)
        .limit(1)
        .correlate(WebhookEndpoint)
        .scalar_subquery()
    )


def live_secrets(endpoint: Any, now: datetime) -> list[str]:
    """The secrets that sign now: the current one, and a rotated-out one in its overlap."""
    keys = [endpoint.secret]
    expires = endpoint.previous_secret_expires_at
    if endpoint.previous_secret and expires is not None and expires > now:
        keys.append(endpoint.previous_secret)
    return keys


class _Endpoint(NamedTuple):
    id: str
    url: str
    secret: str
    previous_secret: str | None
    previous_secret_expires_at: datetime | None
    failing_since: datetime | None


class _Delivery(NamedTuple):
    id: int
    event_id: str
    payload: str
    attempts: int
    attempt_limit: int | None
    next_attempt_at: datetime


_ENDPOINT_COLUMNS = [getattr(WebhookEndpoint, name) for name in _Endpoint._fields]
_DELIVERY_COLUMNS = [getattr(WebhookDelivery, name) for name in _Delivery._fields]


class Deliverer:
    """This node's share of the deliveries: up to WEBHOOK_CONCURRENCY endpoints at once."""

    def __init__(
        self,
        settings: Settings,
        engine: AsyncEngine,
        sender: Sender,
        node_id: str,
        publish: Publish,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.postgres = engine.dialect.name == "postgresql"
        self.sender = sender
        self.node_id = node_id
        self.publish = publish
        self.delays = settings.webhook_retry_delays
        self.lease = timedelta(seconds=2 * settings.webhook_timeout + 1)
        self.attempts = 0  # attempts this node made
        self.delivered = 0  # deliveries this node completed with a 2xx
        self._workers: dict[str, tuple[str, asyncio.Task[None]]] = {}  # endpoint → token, task
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._next_clean = 0.0

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="webhook-deliverer")

    async def stop(self) -> None:
        """Take no more; give attempts under way a moment; hand their endpoints back."""
        await cancel_and_wait(self._task)
        self._task = None
        leases = {endpoint_id: token for endpoint_id, (token, _) in self._workers.items()}
        tasks = [task for _, task in self._workers.values()]
        if tasks:
            await asyncio.wait(tasks, timeout=STOP_GRACE)
        for task in tasks:
            await cancel_and_wait(task)
        self._workers.clear()
        if leases:
            try:
                async with self.engine.begin() as connection:
                    for endpoint_id, token in leases.items():
                        await self._release(connection, endpoint_id, token)
            except Exception:  # noqa: BLE001 - the leases run out by themselves
                logger.warning("could not release webhook leases on stop", exc_info=True)

    def wake(self) -> None:
        """New delivery rows (or a retry asked for): look for work now."""
        self._wake.set()

    @property
    def busy(self) -> int:
        """Endpoints this node is delivering to now."""
        return len(self._workers)

    async def _run(self) -> None:
        delay = FIRST_DELAY
        while True:
            wait = self.settings.webhook_poll_interval
            try:
                due = await uninterrupted(self._round())
                if due is not None:
                    wait = min(wait, max(0.0, due))
                delay = FIRST_DELAY
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - database away: nothing was taken
                logger.exception("webhook delivery loop failed; retrying in %.1fs", delay)
                wait = delay
                delay = min(delay * 2, MAX_DELAY)
            await wait_event(self._wake, wait)
            self._wake.clear()

    async def _round(self) -> float | None:
        """Take and deliver what is due, clean up; seconds until the next delivery is due."""
        await self.claim()
        await self._clean()
        return await self._next_due()

    # --- taking endpoints -----------------------------------------------------------------

    def _free(self, now: datetime) -> Any:
        return or_(
            WebhookEndpoint.lease_expires_at.is_(None), WebhookEndpoint.lease_expires_at <= now
        )

    async def claim(self) -> int:
        """Lease endpoints whose first pending delivery is due; start a worker for each."""
        room = self.settings.webhook_concurrency - len(self._workers)
        if room <= 0:
            return 0
        now = utcnow()
        due = head_due()
        query = (
            select(WebhookEndpoint.id)
            .where(WebhookEndpoint.enabled.is_(True), self._free(now), due <= now)
            .order_by(due)
            .limit(room)
        )
        if self.postgres:
            query = query.with_for_update(of=WebhookEndpoint, skip_locked=True)
        taken: list[tuple[str, str]] = []
        async with self.engine.begin() as connection:
            candidates = [
                ident
                for ident in (await connection.scalars(query)).all()
                if ident not in self._workers
            ]
            for endpoint_id in candidates:
                token = secrets.token_hex(16)
                result = await connection.execute(
                    update(WebhookEndpoint)
                    .where(WebhookEndpoint.id == endpoint_id, self._free(now))
                    .values(lease_token=token, lease_expires_at=now + self.lease)
                )
                if result.rowcount == 1:
                    taken.append((endpoint_id, token))
        for endpoint_id, token in taken:
            task = asyncio.create_task(
                self._work(endpoint_id, token), name=f"webhook-endpoint-{endpoint_id}"
            )
            self._workers[endpoint_id] = (token, task)
        return len(taken)

    async def _next_due(self) -> float | None:
        """Seconds until some free endpoint's first delivery is due (None: nothing pending)."""
        now = utcnow()
        async with self.engine.connect() as connection:
            due = await connection.scalar(
                select(func.min(head_due())).where(
                    WebhookEndpoint.enabled.is_(True), self._free(now)
                )
            )
        if due is None:
            return None
        seconds: float = (due - now).total_seconds()
        return seconds

    async def _release(self, connection: AsyncConnection, endpoint_id: str, token: str) -> None:
        await connection.execute(
            update(WebhookEndpoint)
            .where(WebhookEndpoint.id == endpoint_id, WebhookEndpoint.lease_token == token)
            .values(lease_token=None, lease_expires_at=None)
        )

    # --- one endpoint ---------------------------------------------------------------------

    async def _work(self, endpoint_id: str, token: str) -> None:
        """Send this endpoint's due deliveries in order while the lease is ours."""
        try:
            while await self._attempt_next(endpoint_id, token):
                pass
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - the lease runs out; another round takes it up
            logger.exception("webhook delivery to %s failed", endpoint_id)
        finally:
            if self._workers.get(endpoint_id, ("", None))[0] == token:
                del self._workers[endpoint_id]
            self._wake.set()
        try:
            async with self.engine.begin() as connection:
                await self._release(connection, endpoint_id, token)
        except Exception:  # noqa: BLE001 - it runs out by itself
            logger.warning("could not release the lease of %s", endpoint_id, exc_info=True)

    async def _attempt_next(self, endpoint_id: str, token: str) -> bool:
        """Send the first pending delivery if it is due; whether to go on with the next."""
        now = utcnow()
        async with self.engine.connect() as connection:
            # The endpoint (still ours, still enabled) and its first pending delivery, at once.
            row = (
                await connection.execute(
                    select(*_ENDPOINT_COLUMNS, *_DELIVERY_COLUMNS)
                    .join(WebhookDelivery, WebhookDelivery.endpoint_id == WebhookEndpoint.id)
                    .where(
                        WebhookEndpoint.id == endpoint_id,
                        WebhookEndpoint.lease_token == token,
                        WebhookEndpoint.enabled.is_(True),
                        WebhookDelivery.state == WebhookState.PENDING.value,
                    )
                    .order_by(WebhookDelivery.id)
                    .limit(1)
                )
            ).first()
        if row is None:
            return False  # nothing pending, or the lease lost, the endpoint disabled or gone
        endpoint = _Endpoint(*row[: len(_ENDPOINT_COLUMNS)])
        delivery = _Delivery(*row[len(_ENDPOINT_COLUMNS) :])
        if delivery.next_attempt_at > now:
            return False
        payload = delivery.payload.encode()
        headers = signing.headers(
            delivery.event_id, int(time.time()), payload, live_secrets(endpoint, now)
        )
        outcome = await self.sender.post(endpoint.url, headers, payload)
        self.attempts += 1
        disabled = await self._record(endpoint, delivery, token, outcome)
        if disabled is not None:
            await self._announce_disabled(endpoint_id, disabled, endpoint.failing_since)
            return False
        return True

    async def _record(
        self, endpoint: _Endpoint, delivery: _Delivery, token: str, outcome: Outcome
    ) -> str | None:
        """Write the attempt and its consequences; the reason if the endpoint was disabled."""
        now = utcnow()
        number = delivery.attempts + 1
        endpoint_changes: dict[str, Any] = {"lease_expires_at": now + self.lease}
        disabled: str | None = None
        if outcome.succeeded:
            state = WebhookState.SUCCEEDED
            next_at = delivery.next_attempt_at
            endpoint_changes["failing_since"] = None
        else:
            failing_since = endpoint.failing_since or now
            endpoint_changes["failing_since"] = failing_since
            limit = delivery.attempt_limit or len(self.delays) + 1
            wait = retry_delay(self.delays, number) if number < limit else None
            if outcome.gone:
                disabled = "the receiver answered 410 Gone"
                wait = None
            elif (now - failing_since).total_seconds() >= self.settings.webhook_disable_after:
                disabled = (
                    f"failing since {failing_since.isoformat()} "
                    f"(WEBHOOK_DISABLE_AFTER={self.settings.webhook_disable_after:g} s)"
                )
            if wait is not None and outcome.retry_after is not None:
                wait = max(wait, min(outcome.retry_after, MAX_RETRY_AFTER))
            if wait is None:
                state, next_at = WebhookState.FAILED, delivery.next_attempt_at
            else:
                state, next_at = WebhookState.PENDING, now + timedelta(seconds=wait)
            if disabled is not None:
                endpoint_changes.update(enabled=False, disabled_reason=disabled, disabled_at=now)
        async with self.engine.begin() as connection:
            await connection.execute(
                insert(WebhookAttempt).values(
                    delivery_id=delivery.id,
                    endpoint_id=endpoint.id,
                    attempt=number,
                    attempted_at=now,
                    succeeded=outcome.succeeded,
                    status_code=outcome.status_code,
                    latency_ms=outcome.latency_ms,
                    response=outcome.response,
                    error=outcome.error,
                    node_id=self.node_id,
                )
            )
            owned = await connection.execute(
                update(WebhookEndpoint)
                .where(WebhookEndpoint.id == endpoint.id, WebhookEndpoint.lease_token == token)
                .values(**endpoint_changes)
            )
            if owned.rowcount != 1:
                return None  # the lease ran out meanwhile: its new holder moves the delivery
            await connection.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id == delivery.id)
                .values(state=state.value, attempts=number, next_attempt_at=next_at, updated_at=now)
            )
        if state is WebhookState.SUCCEEDED:
            self.delivered += 1
        return disabled

    async def _announce_disabled(
        self, endpoint_id: str, reason: str, failing_since: datetime | None
    ) -> None:
        logger.warning("webhook endpoint %s disabled: %s", endpoint_id, reason)
        data = {
            "webhook_id": endpoint_id,
            "reason": reason,
            "failing_since": failing_since.isoformat() if failing_since else None,
        }
        try:
            await self.publish("global", "webhook.disabled", data)
        except Exception:  # noqa: BLE001 - the endpoint is disabled either way
            logger.exception("could not publish webhook.disabled for %s", endpoint_id)

    # --- retention ------------------------------------------------------------------------

    async def _clean(self) -> int:
        """Delete finished deliveries (and their attempts) past WEBHOOK_RETENTION."""
        if time.monotonic() < self._next_clean:
            return 0
        self._next_clean = time.monotonic() + CLEAN_INTERVAL
        cutoff = utcnow() - timedelta(seconds=self.settings.webhook_retention)
        doomed = (
            select(WebhookDelivery.id)
            .where(
                WebhookDelivery.state.in_(
                    [WebhookState.SUCCEEDED.value, WebhookState.FAILED.value]
                ),
                WebhookDelivery.updated_at < cutoff,
            )
            .limit(CLEAN_BATCH)
        )
        async with self.engine.begin() as connection:
            ids = list((await connection.scalars(doomed)).all())
            if not ids:
                return 0
            await connection.execute(
                delete(WebhookAttempt).where(WebhookAttempt.delivery_id.in_(ids))
            )
            await connection.execute(delete(WebhookDelivery).where(WebhookDelivery.id.in_(ids)))
        return len(ids)
