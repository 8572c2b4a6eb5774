"""What every list-returning route shares: checking ``k``, shaping the body, provenance, log and metrics."""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, get_type_hints

import orjson
from fastapi import APIRouter, Request
from fastapi.routing import APIRoute
from starlette.responses import JSONResponse, Response

from tastebud.ids import MAX_ID_LENGTH, InvalidIdError, normalise_id
from tastebud.serving.engine import Result
from tastebud.serving.errors import InvalidRequestError
from tastebud.serving.holder import Served
from tastebud.serving.provenance import new_request_id, request_provenance, utc_now
from tastebud.serving.schemas import ERRORS
from tastebud.store.schema import RequestLogRecord

logger = logging.getLogger(__name__)

JSON = "application/json"


class OrjsonResponse(JSONResponse):
    """The app's default response class: JSON by orjson, numpy values and non-string keys included.

    What FastAPI's ``ORJSONResponse`` renders, without its deprecation: recent FastAPI releases deprecate that
    class and warn on every instance, a ``warnings.warn`` call per response.
    """

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY)


class RequestRoute(APIRoute):
    """A route whose endpoint takes the :class:`Request` alone and returns a :class:`Response`: called directly.

    FastAPI's handler around an endpoint solves its dependencies, validates its parameters and serialises what it
    returns, for every request, even when there is nothing to solve, validate or serialise: about 36 us of a
    ``GET /recommend`` (in process, 313 against 277 us; bench/RESULTS.md). The route stays an :class:`APIRoute`:
    matched, documented (``response_model``, ``responses``, ``openapi_extra``) and wrapped in the app's middleware
    and error handlers like any other. The endpoint is checked when the route is made, so nothing FastAPI would
    have injected or converted can be lost: one parameter, a ``Request``; a ``Response`` returned; no dependencies.
    """

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        name = getattr(endpoint, "__name__", repr(endpoint))
        try:
            hints = get_type_hints(endpoint)
        except NameError as err:  # an annotation naming something its module does not have
            raise TypeError(
                f"{type(self).__name__} {path}: endpoint {name}'s annotations do not resolve: {err}"
            ) from None
        params = list(inspect.signature(endpoint).parameters.values())
        problems = [
            why
            for bad, why in (
                (not inspect.iscoroutinefunction(endpoint), "is not an async def"),
                (len(params) != 1 or hints.get(params[0].name) is not Request, "does not take (request: Request)"),
                (not _is_response_type(hints.get("return")), "is not annotated to return a Response"),
                (bool(self.dependencies), "has dependencies"),
            )
            if bad
        ]
        if problems:
            raise TypeError(f"{type(self).__name__} {path}: endpoint {name} " + "; ".join(problems))

    def get_route_handler(self) -> Callable[[Request], Any]:
        return self.endpoint


def add_request_route(
    router: APIRouter, path: str, endpoint: Callable[..., Any], response_model: type, parameters: list[dict[str, Any]]
) -> None:
    """Add ``GET path`` to ``router`` as a :class:`RequestRoute` whose parameters the endpoint parses by hand;
    ``parameters`` documents them (OpenAPI parameter objects, see :func:`query_parameter`)."""
    router.add_api_route(
        path,
        endpoint,
        methods=["GET"],
        response_model=response_model,
        responses=ERRORS,
        openapi_extra={"parameters": parameters},
        route_class_override=RequestRoute,
    )


def _is_response_type(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, Response)


def check_k(k: int, max_k: int) -> int:
    """Validate a list length against the server's bound.

    Raises:
        InvalidRequestError: ``k`` is below 1 or above ``max_k``.
    """
    if k < 1 or k > max_k:
        raise InvalidRequestError("k", f"must be between 1 and {max_k} (got {k})")
    return k


def valid_id(request: Request, value: Any, field: str) -> str:
    """An id taken from a request (path or body) in its normal form: the one id rule of :mod:`tastebud.ids`
    (surrounding whitespace stripped, not empty, no control characters, at most ``serving.max_id_chars``).

    Raises:
        InvalidRequestError: naming the field and the rule (a 422).
    """
    settings = getattr(request.app.state, "settings", None)
    limit = settings.serving.max_id_chars if settings is not None else MAX_ID_LENGTH
    try:
        return normalise_id(value, field, max_length=limit)
    except InvalidIdError as err:
        raise InvalidRequestError(field, err.rule) from None


def split_genres(raw: str | None) -> list[str]:
    """``"Comedy,Drama"`` -> ``["Comedy", "Drama"]`` (empty parts dropped)."""
    return [g.strip() for g in raw.split(",") if g.strip()] if raw else []


#: The query of a request without one.
_NO_QUERY: Mapping[str, str] = MappingProxyType({})


def query_of(request: Request) -> Mapping[str, str]:
    """The request's query parameters, for the routes that parse them by hand (:func:`query_int`,
    :func:`query_bool`); a request without a query gets an empty mapping rather than Starlette's parse of ``""``."""
    return request.query_params if request.scope["query_string"] else _NO_QUERY


_TRUE = frozenset({"true", "1", "yes", "on", "t", "y"})
_FALSE = frozenset({"false", "0", "no", "off", "f", "n"})


def query_int(params: Mapping[str, str], name: str, default: int | None) -> int | None:
    """An optional integer query parameter (``default`` when absent).

    Raises:
        InvalidRequestError: the value is not an integer.
    """
    raw = params.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise InvalidRequestError(name, f"must be an integer (got {raw!r})") from None


def query_bool(params: Mapping[str, str], name: str, default: bool) -> bool:
    """An optional boolean query parameter: true/false, 1/0, yes/no, on/off (any case), as FastAPI accepts.

    Raises:
        InvalidRequestError: the value is none of those.
    """
    raw = params.get(name)
    if raw is None:
        return default
    value = raw.lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise InvalidRequestError(name, f"must be a boolean: true or false (got {raw!r})")


def query_parameter(name: str, schema: dict[str, Any], description: str, example: Any = None) -> dict[str, Any]:
    """The OpenAPI description of one optional query parameter (for routes that parse their query by hand)."""
    out: dict[str, Any] = {"name": name, "in": "query", "required": False, "schema": schema, "description": description}
    if example is not None:
        out["example"] = example
    return out


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """Pre-serialised JSON (orjson)."""
    return Response(orjson.dumps(body), status_code=status, media_type=JSON, headers=headers)


def list_response(
    request: Request,
    served: Served,
    result: Result,
    *,
    endpoint: str,
    started: float,
    query: dict[str, Any],
    user_id: str | None = None,
    item_id: str | None = None,
    request_id: str | None = None,
    variant: str | None = None,
    experiment: str | None = None,
    exposure: dict[str, Any] | None = None,
) -> Response:
    """The JSON response of a recommendation list; also submits the request log and counts the list.

    Args:
        request: the incoming request (its app holds metrics and the request log).
        served: the model that answered (read once at the start of the request).
        result: what the engine returned.
        endpoint: ``recommend``, ``similar`` or ``popular``.
        started: ``time.perf_counter()`` at the start of the request.
        query: the echo fields of the body (``user_id``, ``item_id`` or ``genre``).
        user_id: for the request log.
        item_id: for the request log.
        request_id: the request's id (a new one when ``None``).
        variant: the experiment variant that answered (``None``: no experiment).
        experiment: the experiment the request is part of.
        exposure: per-position detail of the exposure for the request log (interleaving teams).
    """
    request_id = request_id or new_request_id()
    now = utc_now()
    latency_ms = (time.perf_counter() - started) * 1000.0
    provenance = request_provenance(served.provenance, request_id=request_id, timestamp=now, latency_ms=latency_ms)
    body: dict[str, Any] = {
        **query,
        "recommendations": result.items_json(),
        "requested": result.requested,
        "returned": result.returned,
        "model": served.model_block,
        "is_fallback": result.is_fallback,
        "fallback_reason": result.fallback_reason,
        "variant": variant,
        "provenance": provenance,
    }
    if experiment is not None:
        body["experiment"] = experiment
    realtime = result.extra.get("realtime_items")
    if realtime is not None:
        body["realtime_events"] = realtime
    if result.returned < result.requested:
        body["note"] = (
            f"only {result.returned} of the {result.requested} requested items pass the filters and exclusions"
        )
    state = request.app.state
    state.metrics.count_list(endpoint, served.version, result.fallback_reason)
    if experiment is not None:
        state.metrics.count_exposure(experiment, variant)
    writer = state.request_log
    if writer is not None:
        record = RequestLogRecord(
            request_id, now, endpoint, user_id, item_id, served.name, served.version, served.alias,
            *result.logged(), latency_ms, 200,
            result.is_fallback, result.fallback_reason, variant, provenance, experiment, exposure,
        )  # fmt: skip
        try:
            accepted = writer.submit(record)
        except Exception:  # the log must never fail a request
            logger.exception("request log submit failed")
            accepted = False
        if accepted is False:
            state.metrics.request_log_dropped.inc()
    return JSONBytes(orjson.dumps(body), request_id)


class JSONBytes(Response):
    """A 200 JSON response of pre-serialised bytes with its ``X-Request-ID`` header, headers built directly.

    Starlette's ``Response.__init__`` renders headers through a generic path (a ``MutableHeaders`` and a
    content-type check per response) that costs as much as serialising the body of a recommendation list.
    """

    media_type = JSON

    def __init__(self, content: bytes, request_id: str) -> None:
        self.status_code = 200
        self.background = None
        self.body = content
        self.raw_headers = [
            (b"content-length", str(len(content)).encode()),
            (b"content-type", b"application/json"),
            (b"x-request-id", request_id.encode()),
        ]
