"""``GET /health``, ``/healthz`` (liveness, with what is served) and ``/health/ready`` (503 until a model loads)."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from tastebud.serving.deps import HolderDep
from tastebud.serving.holder import ModelHolder
from tastebud.serving.redact import redact_paths
from tastebud.serving.routes._shared import json_response
from tastebud.serving.schemas import ErrorBody, HealthResponse

router = APIRouter(tags=["health"])


def _health(holder: ModelHolder) -> dict[str, object]:
    served = holder.current
    status = "ok" if served is not None else ("degraded" if holder.last_error else "starting")
    return {
        "status": status,
        "model": served.model_block if served else None,
        "loaded_at": served.loaded_at if served else None,
        "uptime_s": round(holder.uptime_s(), 3),
        "last_error": redact_paths(holder.last_error),  # names, never paths on this server
    }


@router.get("/health", response_model=HealthResponse)
async def health(holder: HolderDep) -> Response:
    """Liveness: always 200 while the process answers; says what model is served."""
    return json_response(_health(holder))


@router.get("/healthz", response_model=HealthResponse, include_in_schema=False)
async def healthz(holder: HolderDep) -> Response:
    """Same as ``/health``."""
    return json_response(_health(holder))


@router.get("/health/ready", response_model=HealthResponse, responses={503: {"model": ErrorBody}})
async def ready(holder: HolderDep) -> Response:
    """Readiness: 200 once a model is served, 503 before."""
    body = _health(holder)
    if holder.current is None:
        return json_response({"error": "not_ready", "message": "no model loaded yet", **body}, status=503)
    return json_response(body)
