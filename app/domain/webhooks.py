"""Webhook endpoints: register, change, rotate the secret, test, and see or retry deliveries.

Admin only (access.require_admin): an endpoint's URL may carry a credential, its secret signs
what the server sends, and its deliveries hold the events' data and the receiver's answers.
Delivery itself is app/webhooks/ (fan-out, leases, retries); docs/webhooks.md is the guide.

    create   → 201 with the `whsec_…` secret, shown this once; the endpoint gets the events
               committed after it (`start_after` is the outbox head at registration)
    update   → url (checked again), events, channels, description, enabled
    rotate   → a new secret; the old one signs beside it for WEBHOOK_SECRET_OVERLAP
    test     → a `webhook.test` delivery to this endpoint only, whatever its filters
    retry    → the delivery goes (again) at once: one more attempt if it had finished
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, Protocol

import orjson
from sqlalchemy import delete, func, select, text

from app.core.config import Settings
from app.db.models import (
    Event,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookState,
)
from app.db.types import utcnow
from app.domain import access, pagination
from app.domain.context import Context
from app.domain.errors import Conflict, Invalid, NotFound
from app.domain.rows import new_id
from app.schemas import (
    Page,
    WebhookAttemptOut,
    WebhookCreate,
    WebhookCreated,
    WebhookDeliveryOut,
    WebhookOut,
    WebhookSecret,
    WebhookUpdate,
    iso_ms,
)
from app.webhooks import signing
from app.webhooks.addresses import UrlRefused
from app.webhooks.fanout import OUTBOX_LOCK
from app.webhooks.filters import TEST_EVENT, channel_pattern_problem, event_pattern_problem

_DELIVERY_ID = re.compile(r"dlv_([1-9][0-9]{0,18})")


class WebhookPort(Protocol):
    """What the rules need of the running webhook machinery (app/webhooks/service.py)."""

    @property
    def settings(self) -> Settings: ...

    async def check_url(self, url: str) -> None:
        """Raise UrlRefused when `url` is no place for a webhook."""

    def deliver_now(self) -> None:
        """Look for deliveries now (after a test, a retry, an enabling)."""

    def endpoints_changed(self) -> None:
        """An endpoint was registered or enabled, and committed."""


# --- rows → answers ----------------------------------------------------------------------------


def delivery_id(ident: int) -> str:
    return f"dlv_{ident}"


def _pending_count() -> Any:
    return (
        select(func.count())
        .where(
            WebhookDelivery.endpoint_id == WebhookEndpoint.id,
            WebhookDelivery.state == WebhookState.PENDING.value,
        )
        .correlate(WebhookEndpoint)
        .scalar_subquery()
    )


def endpoint_out(row: WebhookEndpoint, pending: int) -> WebhookOut:
    now = utcnow()
    overlap = row.previous_secret_expires_at
    return WebhookOut(
        id=row.id,
        url=row.url,
        description=row.description,
        events=list(row.events),
        channels=None if row.channels is None else list(row.channels),
        enabled=row.enabled,
        disabled_reason=row.disabled_reason,
        disabled_at=row.disabled_at,
        failing_since=row.failing_since,
        previous_secret_expires_at=overlap if overlap is not None and overlap > now else None,
        pending_deliveries=pending,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def delivery_out(row: WebhookDelivery) -> WebhookDeliveryOut:
    pending = row.state == WebhookState.PENDING.value
    return WebhookDeliveryOut(
        id=delivery_id(row.id),
        event_id=row.event_id,
        event_type=row.event_type,
        state=row.state,
        attempts=row.attempts,
        next_attempt_at=row.next_attempt_at if pending else None,
        created_at=row.created_at,
    )


# --- checks --------------------------------------------------------------------------------------


async def _check_url(port: WebhookPort, url: str) -> None:
    try:
        await port.check_url(url)
    except UrlRefused as exc:
        raise Invalid(exc.message, exc.code, ("body", "url")) from None


def _check_events(events: list[str]) -> list[str]:
    for index, pattern in enumerate(events):
        problem = event_pattern_problem(pattern)
        if problem is not None:
            raise Invalid(problem, "INVALID_EVENT_FILTER", ("body", "events", str(index)))
    return list(dict.fromkeys(events))


def _check_channels(channels: list[str] | None) -> list[str] | None:
    if channels is None:
        return None
    for index, pattern in enumerate(channels):
        problem = channel_pattern_problem(pattern)
        if problem is not None:
            raise Invalid(problem, "INVALID_CHANNEL_FILTER", ("body", "channels", str(index)))
    return list(dict.fromkeys(channels))


async def _endpoint(ctx: Context, webhook_id: str) -> WebhookEndpoint:
    row = await ctx.db.get(WebhookEndpoint, webhook_id)
    if row is None:
        raise NotFound("Webhook", webhook_id)
    return row


async def _pending(ctx: Context, webhook_id: str) -> int:
    count = await ctx.db.scalar(
        select(func.count()).where(
            WebhookDelivery.endpoint_id == webhook_id,
            WebhookDelivery.state == WebhookState.PENDING.value,
        )
    )
    return int(count or 0)


# --- endpoints -----------------------------------------------------------------------------------


async def create_endpoint(ctx: Context, port: WebhookPort, body: WebhookCreate) -> WebhookCreated:
    """Register an endpoint; its secret is in this answer only."""
    access.require_admin(ctx.actor, "manage webhooks")
    events = _check_events(body.events)
    channels = _check_channels(body.channels)
    await _check_url(port, body.url)
    limit = port.settings.webhook_max_endpoints
    count = int(await ctx.db.scalar(select(func.count()).select_from(WebhookEndpoint)) or 0)
    if count >= limit:
        raise Conflict(
            f"There are {count} webhook endpoints already (WEBHOOK_MAX_ENDPOINTS={limit})",
            "TOO_MANY_WEBHOOKS",
        )
    now = utcnow()
    row = WebhookEndpoint(
        id=new_id("wh"),
        url=body.url,
        description=body.description,
        events=events,
        channels=channels,
        enabled=True,
        secret=signing.new_secret(),
        start_after=0,
        created_at=now,
        updated_at=now,
    )
    ctx.db.add(row)
    await _start_at_the_head(ctx, row)
    await ctx.db.commit()
    port.endpoints_changed()
    out = endpoint_out(row, 0)
    return WebhookCreated(**out.model_dump(), secret=row.secret)


async def _start_at_the_head(ctx: Context, row: WebhookEndpoint) -> None:
    """From now on `row` gets the events after the outbox head (registered or enabled again).

    The head is read while no event can take an id (SQLite: the write lock the flushed
    insert or update holds; PostgreSQL: the outbox writers' lock), so an event either is at or
    below the head or commits after the endpoint is visible. Because of this the fan-out's
    cursor may lag (app/webhooks/fanout.py): nothing behind the head is owed to this endpoint.
    """
    if ctx.db.get_bind().dialect.name == "postgresql":
        await ctx.db.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": OUTBOX_LOCK})
    await ctx.db.flush()
    row.start_after = int(await ctx.db.scalar(select(func.coalesce(func.max(Event.id), 0))) or 0)


async def list_endpoints(
    ctx: Context,
    *,
    limit: int = 50,
    cursor: str | None = None,
    order: pagination.Order = pagination.Order.ASC,
) -> Page[WebhookOut]:
    """Endpoints by registration time."""
    access.require_admin(ctx.actor, "see webhooks")
    rows, next_cursor = await pagination.page(
        ctx.db,
        select(WebhookEndpoint),
        WebhookEndpoint.created_at,
        WebhookEndpoint.id,
        limit,
        cursor,
        order,
    )
    counts: dict[str, int] = {}
    if rows:
        found = await ctx.db.execute(
            select(WebhookDelivery.endpoint_id, func.count())
            .where(
                WebhookDelivery.endpoint_id.in_([r.id for r in rows]),
                WebhookDelivery.state == WebhookState.PENDING.value,
            )
            .group_by(WebhookDelivery.endpoint_id)
        )
        counts = {endpoint: int(count) for endpoint, count in found.all()}
    items = [endpoint_out(r, counts.get(r.id, 0)) for r in rows]
    return Page[WebhookOut](items=items, next_cursor=next_cursor)


async def get_endpoint(ctx: Context, webhook_id: str) -> WebhookOut:
    access.require_admin(ctx.actor, "see webhooks")
    row = await _endpoint(ctx, webhook_id)
    return endpoint_out(row, await _pending(ctx, webhook_id))


async def update_endpoint(
    ctx: Context, port: WebhookPort, webhook_id: str, body: WebhookUpdate
) -> WebhookOut:
    """Change the URL, the filters, the description; disable or enable again."""
    access.require_admin(ctx.actor, "manage webhooks")
    row = await _endpoint(ctx, webhook_id)
    given = body.model_dump(exclude_unset=True)
    changes: dict[str, Any] = {}
    if given.get("events") is not None:
        changes["events"] = _check_events(given["events"])
    if "channels" in given:
        changes["channels"] = _check_channels(given["channels"])
    if given.get("url") is not None and given["url"] != row.url:
        await _check_url(port, given["url"])
        changes["url"] = given["url"]
    if "description" in given:
        changes["description"] = given["description"]
    enabled = given.get("enabled")
    if enabled is True and not row.enabled:
        changes.update(enabled=True, disabled_reason=None, disabled_at=None, failing_since=None)
    elif enabled is False and row.enabled:
        changes.update(enabled=False, disabled_reason="disabled by an admin", disabled_at=utcnow())
    if changes:
        changes["updated_at"] = utcnow()
        for key, value in changes.items():
            setattr(row, key, value)
        if changes.get("enabled") is True:
            # A disabled endpoint gets no new events: enabled again, it starts at the head.
            await _start_at_the_head(ctx, row)
        await ctx.db.commit()
        if changes.get("enabled") is True:
            port.endpoints_changed()
            port.deliver_now()
    return endpoint_out(row, await _pending(ctx, webhook_id))


async def delete_endpoint(ctx: Context, webhook_id: str) -> None:
    """Remove the endpoint with its deliveries and attempts."""
    access.require_admin(ctx.actor, "manage webhooks")
    await _endpoint(ctx, webhook_id)
    await ctx.db.execute(delete(WebhookAttempt).where(WebhookAttempt.endpoint_id == webhook_id))
    await ctx.db.execute(delete(WebhookDelivery).where(WebhookDelivery.endpoint_id == webhook_id))
    await ctx.db.execute(delete(WebhookEndpoint).where(WebhookEndpoint.id == webhook_id))
    await ctx.db.commit()


async def rotate_secret(ctx: Context, port: WebhookPort, webhook_id: str) -> WebhookSecret:
    """A new secret; the current one keeps signing beside it for WEBHOOK_SECRET_OVERLAP.

    Two secrets at most: rotating again within the overlap drops the oldest."""
    access.require_admin(ctx.actor, "manage webhooks")
    row = await _endpoint(ctx, webhook_id)
    now = utcnow()
    expires = now + timedelta(seconds=port.settings.webhook_secret_overlap)
    row.previous_secret = row.secret
    row.previous_secret_expires_at = expires
    row.secret = signing.new_secret()
    row.updated_at = now
    await ctx.db.commit()
    return WebhookSecret(secret=row.secret, previous_secret_expires_at=expires)


# --- deliveries ----------------------------------------------------------------------------------


async def send_test(ctx: Context, port: WebhookPort, webhook_id: str) -> WebhookDeliveryOut:
    """Queue a `webhook.test` event for this endpoint (whatever its filters say)."""
    access.require_admin(ctx.actor, "test webhooks")
    row = await _endpoint(ctx, webhook_id)
    if not row.enabled:
        raise Conflict(f"Webhook {webhook_id} is disabled: enable it first", "WEBHOOK_DISABLED")
    now = utcnow()
    payload = {
        "type": TEST_EVENT,
        "timestamp": iso_ms(now),
        "data": {"webhook_id": webhook_id, "message": "a test event from context-manager"},
    }
    delivery = WebhookDelivery(
        endpoint_id=webhook_id,
        event_id=f"evt_{uuid.uuid4().hex}",
        event_type=TEST_EVENT,
        payload=orjson.dumps(payload).decode(),
        state=WebhookState.PENDING.value,
        attempts=0,
        next_attempt_at=now,
        created_at=now,
        updated_at=now,
    )
    ctx.db.add(delivery)
    await ctx.db.commit()
    port.deliver_now()
    return delivery_out(delivery)


async def list_attempts(
    ctx: Context, webhook_id: str, *, limit: int = 50, cursor: str | None = None
) -> Page[WebhookAttemptOut]:
    """The endpoint's attempts, newest first (one row per POST)."""
    access.require_admin(ctx.actor, "see webhook deliveries")
    await _endpoint(ctx, webhook_id)
    query = (
        select(WebhookAttempt, WebhookDelivery)
        .join(WebhookDelivery, WebhookDelivery.id == WebhookAttempt.delivery_id)
        .where(WebhookAttempt.endpoint_id == webhook_id)
        .order_by(WebhookAttempt.id.desc())
        .limit(limit + 1)
    )
    if cursor is not None:
        if not cursor.isdigit() or len(cursor) > 19:
            raise Invalid(
                "cursor is not one this API handed out", "INVALID_CURSOR", ("query", "cursor")
            )
        query = query.where(WebhookAttempt.id < int(cursor))
    rows: Sequence[Any] = (await ctx.db.execute(query)).all()
    next_cursor = str(rows[limit - 1][0].id) if len(rows) > limit else None
    items = [
        WebhookAttemptOut(
            delivery_id=delivery_id(delivery.id),
            event_id=delivery.event_id,
            event_type=delivery.event_type,
            attempt=attempt.attempt,
            attempted_at=attempt.attempted_at,
            succeeded=attempt.succeeded,
            status_code=attempt.status_code,
            latency_ms=attempt.latency_ms,
            response=attempt.response,
            error=attempt.error,
            node_id=attempt.node_id,
            delivery_state=delivery.state,
        )
        for attempt, delivery in rows[:limit]
    ]
    return Page[WebhookAttemptOut](items=items, next_cursor=next_cursor)


async def retry_delivery(
    ctx: Context, port: WebhookPort, webhook_id: str, delivery: str
) -> WebhookDeliveryOut:
    """Send a delivery again now: a pending one skips its backoff; a finished one (given up,
    or delivered: a replay) gets one more attempt, first in its endpoint's queue."""
    access.require_admin(ctx.actor, "retry webhook deliveries")
    endpoint = await _endpoint(ctx, webhook_id)
    match = _DELIVERY_ID.fullmatch(delivery)
    row = await ctx.db.get(WebhookDelivery, int(match.group(1))) if match else None
    if row is None or row.endpoint_id != webhook_id:
        raise NotFound("Delivery", delivery)
    if not endpoint.enabled:
        raise Conflict(f"Webhook {webhook_id} is disabled: enable it first", "WEBHOOK_DISABLED")
    now = utcnow()
    if row.state != WebhookState.PENDING.value:
        row.state = WebhookState.PENDING.value
        row.attempt_limit = row.attempts + 1
    row.next_attempt_at = now
    row.updated_at = now
    await ctx.db.commit()
    port.deliver_now()
    return delivery_out(row)
