"""Named dependencies of the routes: settings, holder, the served model, metrics and the request log.

All are ``async def`` so that FastAPI resolves them on the event loop (a plain ``def`` dependency would hop to
the thread pool on every request). The scoring routes call :func:`served_model` and :func:`max_k` directly
instead: every FastAPI dependency costs a full parameter-solving pass, which measured as much as the scoring
itself.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request

from tastebud.config import Settings
from tastebud.monitoring.metrics import ServingMetrics
from tastebud.serving.errors import NoModelError
from tastebud.serving.holder import ModelHolder, Served


async def get_settings(request: Request) -> Settings:
    """The app's settings."""
    return request.app.state.settings  # type: ignore[no-any-return]


async def get_holder(request: Request) -> ModelHolder:
    """The app's model holder."""
    return request.app.state.holder  # type: ignore[no-any-return]


def served_model(request: Request) -> Served:
    """The model served right now, read once for this request.

    Raises:
        NoModelError: no model is loaded (503): the API never serves made-up results.
    """
    served = request.app.state.holder.current
    if served is None:
        error = request.app.state.holder.last_error
        raise NoModelError("no model loaded" + (f" (last load failed: {error})" if error else ""))
    return served  # type: ignore[no-any-return]


async def get_served(request: Request) -> Served:
    """Dependency form of :func:`served_model`."""
    return served_model(request)


def max_k(request: Request) -> int:
    """The largest list length a request may ask for."""
    return request.app.state.settings.serving.max_k  # type: ignore[no-any-return]


async def get_metrics(request: Request) -> ServingMetrics:
    """The app's Prometheus metrics."""
    return request.app.state.metrics  # type: ignore[no-any-return]


async def get_request_log(request: Request) -> Any:
    """The background request-log writer (``None`` when the app runs without one)."""
    return request.app.state.request_log


SettingsDep = Annotated[Settings, Depends(get_settings)]
HolderDep = Annotated[ModelHolder, Depends(get_holder)]
ServedDep = Annotated[Served, Depends(get_served)]
MetricsDep = Annotated[ServingMetrics, Depends(get_metrics)]
RequestLogDep = Annotated[Any, Depends(get_request_log)]
