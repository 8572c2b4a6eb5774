"""ASGI middleware: request metrics, and the request-body size limit.

:class:`MetricsMiddleware` counts every request by route template, method and status (no per-request objects). It
also writes the request log of failed recommendation requests (4xx and 5xx of ``/recommend``, ``/similar`` and
``/popular``): the routes log their successful lists themselves, and availability needs both.

:class:`BodyLimitMiddleware` refuses a request body larger than ``serving.max_body_bytes`` with a 413 before the
body is parsed: at once from its ``Content-Length``, or as soon as a chunked body streams past the limit.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tastebud.ids import InvalidIdError, normalise_id
from tastebud.monitoring.metrics import ServingMetrics
from tastebud.serving.errors import error_response
from tastebud.serving.provenance import new_request_id, utc_now
from tastebud.store.schema import RequestLogRecord

logger = logging.getLogger(__name__)

#: First path segment of the routes whose requests go to the request log.
LOGGED_ENDPOINTS = frozenset({"recommend", "similar", "popular"})


class BodyTooLarge(HTTPException):
    """A request body streamed past the limit (raised from ``receive``; the error handlers answer it with a 413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, _too_large(limit))


def _too_large(limit: int, size: int | None = None) -> str:
    got = f" ({size} bytes)" if size is not None else ""
    return (
        f"request body is larger than the limit of {limit} bytes{got}; send fewer events per request "
        "(serving.max_body_bytes)"
    )


class BodyLimitMiddleware:
    """Refuses request bodies over ``max_bytes`` with a 413 JSON error, before they are parsed.

    A ``Content-Length`` over the limit is answered without reading the body. A body without one (chunked) is
    counted as it streams in; the read that passes the limit raises :class:`BodyTooLarge`, so at most one chunk
    more than the limit is ever held. Each refusal counts in ``tastebud_serving_rejected_requests_total``.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, metrics: ServingMetrics | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > limit:
                    self._count()
                    response = error_response(413, "payload_too_large", _too_large(limit, declared))
                    response.headers["Connection"] = "close"
                    await response(scope, receive, send)
                    return
                break
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    self._count()
                    raise BodyTooLarge(limit)
            return message

        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited, watch)
        except BodyTooLarge as err:  # read outside the routes' error handlers (e.g. by another middleware)
            if started:
                raise
            await error_response(413, "payload_too_large", str(err.detail))(scope, receive, send)

    def _count(self) -> None:
        if self.metrics is not None:
            self.metrics.rejected_requests.labels(reason="body_too_large").inc()


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
            # Requests refused before routing (no key, wrong scope, rate limit: ``serving.auth``) are counted but
            # not logged: they asked for no list, and a flood of them must not fill the request log.
            if status >= 400 and "tastebud.rejected" not in scope:
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
            request_id, utc_now(), endpoint, _logged_id(params.get("user_id")), _logged_id(params.get("item_id")),
            served.name if served is not None else None, served.version if served is not None else None,
            served.alias if served is not None else None, [], [], elapsed * 1000.0, status, False, None, None,
            {"request_id": request_id, "error": error},
        )  # fmt: skip
        if writer.submit(record) is False:
            metrics.request_log_dropped.inc()
    except Exception:
        logger.exception("request log submit of a failed request failed")


def _logged_id(value: Any) -> str | None:
    """An id of a failed request as the request log keeps it: its normal form, or None when it breaks the id rule
    (a huge or control-character id is never stored)."""
    if value is None:
        return None
    try:
        return normalise_id(value)
    except InvalidIdError:
        return None
