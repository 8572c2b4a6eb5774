"""``GET /metrics``: Prometheus text format."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from tastebud.monitoring.metrics import CONTENT_TYPE_LATEST
from tastebud.serving.deps import MetricsDep

router = APIRouter(tags=["monitoring"])


@router.get("/metrics", response_class=Response)
async def metrics(metrics: MetricsDep) -> Response:
    """Every serving metric, for Prometheus to scrape."""
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)
