"""GET /api/metrics: the current KPI snapshot, the same object `metric.update` carries."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import MetricsDep
from app.schemas import MetricsSnapshot

router = APIRouter(prefix="/api/metrics", tags=["metrics"])


@router.get("", response_model=MetricsSnapshot)
async def get_metrics(metrics: MetricsDep) -> MetricsSnapshot:
    """The latest snapshot (computed every METRICS_INTERVAL seconds, or now if none yet)."""
    return MetricsSnapshot.model_validate(await metrics.latest())
