"""Errors of the HTTP API and the handlers that turn every error into a JSON body ``{"error", "message"}``.

Deeper code raises :class:`~tastebud.errors.TastebudError` subclasses; only here do they become status codes.
No response ever carries a traceback: anything unexpected is logged and answered with a plain 500 body.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from tastebud.errors import TastebudError
from tastebud.serving.redact import redact_paths

logger = logging.getLogger(__name__)


class InvalidRequestError(TastebudError):
    """A request parameter breaks a rule (range, vocabulary): names the field and the rule."""

    status_code = 422
    code = "invalid_request"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.rule = message


class NoModelError(TastebudError):
    """No model is loaded yet (or none could be loaded): the API refuses rather than serve made-up results."""

    status_code = 503
    code = "no_model"


class UnauthorizedError(TastebudError):
    """The request needs an API key and has none, or an unknown one (see :mod:`tastebud.serving.auth`)."""

    status_code = 401
    code = "unauthorized"


class AdminDisabledError(TastebudError):
    """Admin endpoints are off because no admin token is configured."""

    status_code = 403
    code = "admin_disabled"


class NotFoundError(TastebudError):
    """A resource the request names (a logged request, a route) does not exist."""

    status_code = 404
    code = "not_found"


class ConflictError(TastebudError):
    """The request conflicts with the registry's state (promoting the champion, nothing to roll back to)."""

    status_code = 409
    code = "conflict"


class NoStoreError(TastebudError):
    """A backing service the endpoint needs (request store, registry) is not configured."""

    status_code = 503
    code = "unavailable"


def error_response(status: int, code: str, message: str, **extra: Any) -> Response:
    """A JSON error body with ``error`` and ``message`` (and any extra fields)."""
    body = {"error": code, "message": message, **extra}
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


def _field_of(loc: tuple[Any, ...] | list[Any]) -> str:
    # ("query", "k") -> "k"; ("body", "filters", "year_min") -> "filters.year_min"
    parts = [str(p) for p in loc]
    if parts and parts[0] in {"query", "path", "body", "header"}:
        parts = parts[1:]
    return ".".join(parts) or "body"


async def _tastebud_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, TastebudError)
    extra: dict[str, Any] = {}
    if isinstance(exc, InvalidRequestError):
        extra["details"] = [{"field": exc.field, "rule": exc.rule}]
    if exc.status_code >= 500:
        logger.warning("request failed: %s", exc, extra={"path": request.url.path, "code": exc.code})
    # Deeper errors name files (bundles, stores): the answer keeps their names, not the server's paths. A 422
    # echoes the request's own values, kept as they are.
    message = str(exc) if isinstance(exc, InvalidRequestError) else redact_paths(str(exc)) or ""
    return error_response(exc.status_code, exc.code, message, **extra)


#: Validation errors listed in a 422 body (a body with many bad fields must not get a larger answer than itself).
MAX_DETAILS = 20


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    details = []
    errors = exc.errors()
    for e in errors[:MAX_DETAILS]:
        field = _field_of(e.get("loc", ()))[:200]
        if e.get("type") == "json_invalid":
            field = "body"
        details.append({"field": field, "rule": str(e.get("msg", "invalid"))[:500], "type": e.get("type")})
    message = "; ".join(f"{d['field']}: {d['rule']}" for d in details) or "invalid request"
    extra: dict[str, Any] = {"details": details}
    if len(errors) > MAX_DETAILS:
        message += f" (and {len(errors) - MAX_DETAILS} more)"
        extra["details_total"] = len(errors)
    return error_response(422, "invalid_request", message, **extra)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, str(exc.detail))


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    logger.exception("unexpected error on %s %s", request.method, request.url.path)
    return error_response(500, "internal_error", "internal server error; the incident is logged")


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that give every error a JSON body and the right status code."""
    app.add_exception_handler(TastebudError, _tastebud_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
