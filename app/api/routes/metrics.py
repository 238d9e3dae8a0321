"""GET /api/metrics: the current KPI snapshot (the object `metric.update` carries), and the
last ten minutes of them (GET /api/metrics/history) for charts that open with a past.
"""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from app.api.deps import MetricsDep
from app.db.types import utcnow
from app.metrics import SERIES_WINDOW
from app.schemas import MetricsSnapshot, iso_ms

router = APIRouter(prefix="/api/metrics", tags=["metrics"])


class MetricsHistory(BaseModel):
    """This node's recent snapshots, oldest first."""

    interval: float = Field(description="Seconds between snapshots (METRICS_INTERVAL).")
    window_seconds: float = Field(description="How far back the series reaches at most.")
    timestamp: str = Field(description="The server's clock now: charts align the series by it.")
    items: list[MetricsSnapshot]


@router.get("", response_model=MetricsSnapshot)
async def get_metrics(metrics: MetricsDep) -> MetricsSnapshot:
    """The latest snapshot (computed every METRICS_INTERVAL seconds, or now if none yet)."""
    return MetricsSnapshot.model_validate(await metrics.latest())


@router.get("/history", response_model=MetricsHistory)
async def get_metrics_history(metrics: MetricsDep) -> MetricsHistory:
    """The snapshots of the last ten minutes, as computed by this node."""
    return MetricsHistory(
        interval=metrics.interval,
        window_seconds=SERIES_WINDOW,
        timestamp=iso_ms(utcnow()),
        items=[MetricsSnapshot.model_validate(s) for s in metrics.series()],
    )
