"""/api/webhooks: endpoints, secret rotation, test events, deliveries and retries (admin only)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request, Response

from app.api.deps import ContextDep, Cursor, Limit, OrderQuery, PathId
from app.api.errors import responses
from app.domain import webhooks
from app.domain.pagination import Order
from app.schemas import (
    Page,
    WebhookAttemptOut,
    WebhookCreate,
    WebhookCreated,
    WebhookDeliveryOut,
    WebhookOut,
    WebhookSecret,
    WebhookUpdate,
)

router = APIRouter(prefix="/api/webhooks", tags=["webhooks"])


def get_port(request: Request) -> webhooks.WebhookPort:
    port: webhooks.WebhookPort = request.app.state.runtime.webhooks
    return port


PortDep = Annotated[webhooks.WebhookPort, Depends(get_port)]
DeliveryId = Annotated[str, Path(pattern=r"^dlv_[0-9]{1,19}$", examples=["dlv_42"])]


@router.post("", status_code=201, response_model=WebhookCreated, responses=responses(403, 409))
async def create_webhook(body: WebhookCreate, ctx: ContextDep, port: PortDep) -> WebhookCreated:
    """Register an endpoint. The answer holds its `secret` (`whsec_…`), shown this once. A URL
    whose host is not public (loopback, private, link-local, metadata) is a 422."""
    return await webhooks.create_endpoint(ctx, port, body)


@router.get("", response_model=Page[WebhookOut], responses=responses(403))
async def list_webhooks(
    ctx: ContextDep, limit: Limit = 50, cursor: Cursor = None, order: OrderQuery = Order.ASC
) -> Page[WebhookOut]:
    """Endpoints by registration time (secrets are never shown again)."""
    return await webhooks.list_endpoints(ctx, limit=limit, cursor=cursor, order=order)


@router.get("/{webhook_id}", response_model=WebhookOut, responses=responses(403, 404))
async def get_webhook(webhook_id: PathId, ctx: ContextDep) -> WebhookOut:
    """One endpoint."""
    return await webhooks.get_endpoint(ctx, webhook_id)


@router.patch("/{webhook_id}", response_model=WebhookOut, responses=responses(403, 404))
async def update_webhook(
    webhook_id: PathId, body: WebhookUpdate, ctx: ContextDep, port: PortDep
) -> WebhookOut:
    """Change the URL, filters or description; `enabled: false` pauses deliveries, `true`
    resumes them (and clears a disabled endpoint's reason)."""
    return await webhooks.update_endpoint(ctx, port, webhook_id, body)


@router.delete("/{webhook_id}", status_code=204, responses=responses(403, 404))
async def delete_webhook(webhook_id: PathId, ctx: ContextDep) -> Response:
    """Remove the endpoint, its deliveries and their attempts."""
    await webhooks.delete_endpoint(ctx, webhook_id)
    return Response(status_code=204)


@router.post(
    "/{webhook_id}/rotate-secret", response_model=WebhookSecret, responses=responses(403, 404)
)
async def rotate_webhook_secret(
    webhook_id: PathId, ctx: ContextDep, port: PortDep
) -> WebhookSecret:
    """A new secret; the old one keeps signing beside it (two `v1,` signatures) for
    WEBHOOK_SECRET_OVERLAP (24 h)."""
    return await webhooks.rotate_secret(ctx, port, webhook_id)


@router.post(
    "/{webhook_id}/test",
    status_code=202,
    response_model=WebhookDeliveryOut,
    responses=responses(403, 404, 409),
)
async def test_webhook(webhook_id: PathId, ctx: ContextDep, port: PortDep) -> WebhookDeliveryOut:
    """Queue a `webhook.test` event for this endpoint, whatever its filters."""
    return await webhooks.send_test(ctx, port, webhook_id)


@router.get(
    "/{webhook_id}/deliveries",
    response_model=Page[WebhookAttemptOut],
    responses=responses(403, 404),
)
async def list_webhook_deliveries(
    webhook_id: PathId, ctx: ContextDep, limit: Limit = 50, cursor: Cursor = None
) -> Page[WebhookAttemptOut]:
    """One row per attempt, newest first: delivery and event ids, attempt number, time,
    status, latency, the first 1 KiB of the answer, the error."""
    return await webhooks.list_attempts(ctx, webhook_id, limit=limit, cursor=cursor)


@router.post(
    "/{webhook_id}/deliveries/{delivery_id}/retry",
    status_code=202,
    response_model=WebhookDeliveryOut,
    responses=responses(403, 404, 409),
)
async def retry_webhook_delivery(
    webhook_id: PathId, delivery_id: DeliveryId, ctx: ContextDep, port: PortDep
) -> WebhookDeliveryOut:
    """Send a delivery again now (one more attempt if it had finished: a replay)."""
    return await webhooks.retry_delivery(ctx, port, webhook_id, delivery_id)
