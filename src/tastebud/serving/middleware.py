"""ASGI middleware counting every request by route template, method and status (no per-request objects).

It also writes the request log of failed recommendation requests (4xx and 5xx of ``/recommend``, ``/similar`` and
``/popular``): the routes log their successful lists themselves, and availability needs both.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tastebud.monitoring.metrics import ServingMetrics
from tastebud.serving.provenance import new_request_id, utc_now
from tastebud.store.schema import RequestLogRecord

logger = logging.getLogger(__name__)

#: First path segment of the routes whose requests go to the request log.
LOGGED_ENDPOINTS = frozenset({"recommend", "similar", "popular"})


class MetricsMiddleware:
    """Observes request count and latency; labels use the matched route's path template, never raw paths."""

    def __init__(self, app: ASGIApp, metrics: ServingMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        error_body = bytearray()

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and status >= 400 and len(error_body) < 4096:
                error_body.extend(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            # The router stores the matched route in the (shared) scope; unmatched paths share one label.
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            elapsed = time.perf_counter() - start
            self.metrics.observe_request(route, scope["method"], status, elapsed)
            if status >= 400:
                endpoint = route.split("/")[1] if route.startswith("/") else ""
                if endpoint in LOGGED_ENDPOINTS:
                    _log_failure(scope, endpoint, status, elapsed, bytes(error_body), self.metrics)


def _log_failure(
    scope: Scope, endpoint: str, status: int, elapsed: float, body: bytes, metrics: ServingMetrics
) -> None:
    """Submit the request-log record of a failed list request (never raises: the log must not fail a request)."""
    try:
        state = scope["app"].state
        writer = getattr(state, "request_log", None)
        if writer is None:
            return
        served = state.holder.current if getattr(state, "holder", None) is not None else None
        params = scope.get("path_params") or {}
        error: dict[str, Any] = {"status": status}
        try:
            parsed = orjson.loads(body) if body else {}
            if isinstance(parsed, dict):
                error["code"] = str(parsed.get("error", ""))[:64] or None
        except orjson.JSONDecodeError:
            error["code"] = None
        request_id = new_request_id()
        record = RequestLogRecord(
            request_id, utc_now(), endpoint, params.get("user_id"), params.get("item_id"),
            served.name if served is not None else None, served.version if served is not None else None,
            served.alias if served is not None else None, [], [], elapsed * 1000.0, status, False, None, None,
            {"request_id": request_id, "error": error},
        )  # fmt: skip
        if writer.submit(record) is False:
            metrics.request_log_dropped.inc()
    except Exception:
        logger.exception("request log submit of a failed request failed")
