"""API keys with scopes, rate limits per key and per client address, and the API's OpenAPI security scheme.

:class:`AuthMiddleware` is a pure ASGI middleware keyed by method and path: it decides before routing, so before
any body is read or validated, and a refused request costs a header lookup, a sha256 and (with limits on) a
counter, never the request's work. A key goes in ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``; the
settings hold only the sha256 hex digest of each key (``auth.keys``), and a presented key is hashed and looked up,
so no comparison depends on how much of a secret matches.

Scopes (:data:`ROUTE_SCOPES`): ``read`` (lists, items, models, experiments), ``read-private`` (one user's history,
one request's trace; implies ``read``), ``write-events`` (``POST /events``), ``admin`` (``/admin/...``; implies
every scope). Public whatever the keys: the health probes, ``/metrics`` (aggregates only, for Prometheus) and the
API docs. With no key configured and ``auth.required`` off the API is open as before, except ``/admin``, which
``serving.admin_token`` (an admin key in clear, kept for compatibility) guards.

Rate limits use the ``limits`` package (async API, so a shared storage such as Redis never blocks the event loop);
the default storage is in memory, per process: with N workers a limit is effectively N times the setting.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from tastebud.config import Settings
from tastebud.errors import ConfigError
from tastebud.serving.errors import error_response

logger = logging.getLogger(__name__)

READ, READ_PRIVATE, WRITE_EVENTS, ADMIN = "read", "read-private", "write-events", "admin"
SCOPES = (READ, READ_PRIVATE, WRITE_EVENTS, ADMIN)

#: What each scope grants: ``admin`` everything, ``read-private`` also ``read``.
IMPLIES: dict[str, frozenset[str]] = {
    READ: frozenset({READ}),
    READ_PRIVATE: frozenset({READ, READ_PRIVATE}),
    WRITE_EVENTS: frozenset({WRITE_EVENTS}),
    ADMIN: frozenset(SCOPES),
}

#: First path segment -> scope it needs (``None``: public). Any other path needs ``read`` (unknown paths too, so
#: a new route is never public by accident); ``POST /events`` needs ``write-events``.
ROUTE_SCOPES: dict[str, str | None] = {
    "health": None,
    "healthz": None,
    "metrics": None,
    "docs": None,
    "redoc": None,
    "openapi.json": None,
    "users": READ_PRIVATE,
    "trace": READ_PRIVATE,
    "events": READ_PRIVATE,  # reads; a write needs write-events (below)
    "admin": ADMIN,
}

#: Key prefix of keys made by :func:`new_key` (recognisable in a secret scanner).
KEY_PREFIX = "tb_"


def required_scope(method: str, path: str) -> str | None:
    """The scope a request needs (``None``: public), from its method and path (or path template)."""
    segment = path[1:].partition("/")[0] if path.startswith("/") else path
    if segment == "events" and method not in ("GET", "HEAD"):
        return WRITE_EVENTS
    return ROUTE_SCOPES.get(segment, READ)


def hash_key(key: str) -> str:
    """The sha256 hex digest of an API key: what the settings hold."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    """A new random API key (256 bits, URL-safe)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def expand(scopes: Iterable[str]) -> frozenset[str]:
    """The scopes granted by ``scopes`` (with those they imply)."""
    out: set[str] = set()
    for scope in scopes:
        out |= IMPLIES[scope]
    return frozenset(out)


@dataclass(frozen=True)
class AuthPolicy:
    """Who may call what: the table of key digests and whether keys are enforced on every non-public route.

    Attributes:
        keys: sha256 hex of each key -> the scopes it grants (expanded).
        enforced: every non-public route needs a key (some key configured, or ``auth.required``); when False only
            ``/admin`` routes need one.
    """

    keys: dict[str, frozenset[str]]
    enforced: bool

    @classmethod
    def from_settings(cls, settings: Settings) -> AuthPolicy:
        """The policy of ``settings``: ``auth.keys`` plus ``serving.admin_token`` as an admin key.

        Raises:
            ConfigError: ``auth.required`` is on and no key is configured.
        """
        auth = settings.auth
        keys = {digest: expand(scopes) for digest, scopes in auth.keys.items()}
        token = settings.serving.admin_token
        if token:
            keys[hash_key(token)] = expand([ADMIN])
        if auth.required and not keys:
            raise ConfigError(
                "auth.required is on but no API key is configured: set TASTEBUD_AUTH__KEYS (make one with "
                "`tastebud keys new --scope read`) or serving.admin_token"
            )
        return cls(keys, enforced=bool(auth.keys) or auth.required)

    @property
    def admin_configured(self) -> bool:
        """Some key grants ``admin`` (else ``/admin`` routes are disabled)."""
        return any(ADMIN in scopes for scopes in self.keys.values())

    def describe(self) -> str:
        """One line for the startup log."""
        if not self.enforced:
            admin = "guarded by serving.admin_token" if self.admin_configured else "disabled (no admin key)"
            return (
                "API keys: none configured, the API is OPEN to anyone who can reach it (admin routes "
                f"{admin}); set TASTEBUD_AUTH__KEYS (tastebud keys new) to require keys"
            )
        return f"API keys: required on every non-public route ({len(self.keys)} key(s) configured)"


def presented_key(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The key a request presents: ``Authorization: Bearer <key>``, else ``X-API-Key``; ``None`` when neither."""
    bearer = api_key = None
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                bearer = token.strip()
        elif name == b"x-api-key" and value.strip():
            api_key = value.decode("latin-1").strip()
    return bearer or api_key


def _parse(limits: str | None) -> list[Any]:
    if not limits:
        return []
    from limits import parse_many  # only with a limit set (its import costs ~0.15 s of start-up)

    return parse_many(limits)


class RateLimits:
    """Rate limits per key and per client address over a ``limits`` storage (async API).

    The storage and limiter are built on first use in each event loop (an in-memory async storage belongs to
    the loop that made it; tests run several loops in one process).
    """

    def __init__(
        self,
        per_key: str | None,
        per_client: str | None,
        storage_uri: str = "memory://",
        strategy: str = "fixed-window",
    ) -> None:
        self.per_key = _parse(per_key)
        self.per_client = _parse(per_client)
        self.storage_uri = storage_uri if storage_uri.startswith("async+") else "async+" + storage_uri
        self.strategy = strategy
        self._loop: asyncio.AbstractEventLoop | None = None
        self._limiter: Any = None
        self._warned_at = 0.0

    @classmethod
    def from_settings(cls, settings: Settings) -> RateLimits:
        auth = settings.auth
        return cls(
            auth.rate_limit_per_key, auth.rate_limit_per_client, auth.rate_limit_storage_uri, auth.rate_limit_strategy
        )

    @property
    def enabled(self) -> bool:
        return bool(self.per_key or self.per_client)

    def _get(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            from limits.aio.strategies import STRATEGIES
            from limits.storage import storage_from_string

            strategy: Any = STRATEGIES[self.strategy]  # a concrete limiter class, by name
            self._limiter = strategy(storage_from_string(self.storage_uri))
            self._loop = loop
        return self._limiter

    async def check(self, items: list[Any], *identifiers: str) -> float | None:
        """Count one hit of ``identifiers`` against each limit; the seconds to wait when one is spent, else None.

        A storage that fails (a shared one out of reach) lets the request through and logs a warning (at most
        once a minute): rate limits protect the service, they must not take it down.
        """
        try:
            limiter = self._get()
            for item in items:
                if not await limiter.hit(item, *identifiers):
                    stats = await limiter.get_window_stats(item, *identifiers)
                    return max(0.0, stats.reset_time - time.time())
        except Exception as err:
            now = time.monotonic()
            if now - self._warned_at > 60.0:
                self._warned_at = now
                logger.warning("rate limit storage %s failed (%s): requests pass unlimited", self.storage_uri, err)
        return None


class AuthMiddleware:
    """Authenticates, authorizes and rate-limits every request before routing (so before any body is parsed).

    A refused request gets a JSON error (401 no or unknown key, 403 a key without the scope or admin disabled,
    429 over a rate limit, with ``Retry-After``); its scope gets the matched route, so the metrics middleware
    (outside this one) counts it under its route template and status, and ``tastebud.rejected`` so that it
    does not write the request log. A request admitted with a key carries ``tastebud.auth``: (key id, scopes);
    one admitted without (open mode) carries none.
    """

    def __init__(self, app: ASGIApp, policy: AuthPolicy, limits: RateLimits, metrics: Any = None) -> None:
        self.app = app
        self.policy = policy
        self.limits = limits
        #: ``tastebud_serving_rejected_requests_total`` by reason (the error code), when the metrics have it
        self.rejected = getattr(metrics, "rejected_requests", None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        needed = required_scope(scope["method"], _route_path(scope))
        if needed is None:
            await self.app(scope, receive, send)
            return
        limits = self.limits
        if limits.per_client:
            client = scope.get("client")
            wait = await limits.check(limits.per_client, "client", client[0] if client else "unknown")
            if wait is not None:
                message = "too many requests from this address; retry later"
                await self._refuse(scope, receive, send, 429, "rate_limited", message, wait)
                return
        policy = self.policy
        if not (policy.enforced or needed == ADMIN):
            await self.app(scope, receive, send)
            return
        if needed == ADMIN and not policy.admin_configured:
            message = (
                "admin endpoints are disabled: set serving.admin_token (TASTEBUD_SERVING__ADMIN_TOKEN) or an API key "
                "with the admin scope (TASTEBUD_AUTH__KEYS)"
            )
            await self._refuse(scope, receive, send, 403, "admin_disabled", message)
            return
        key = presented_key(scope["headers"])
        if key is None:
            message = "missing API key: send Authorization: Bearer <key> or X-API-Key: <key>"
            await self._refuse(scope, receive, send, 401, "unauthorized", message)
            return
        digest = hash_key(key)
        scopes = policy.keys.get(digest)
        if scopes is None:
            await self._refuse(scope, receive, send, 401, "unauthorized", "missing or invalid API key")
            return
        if needed not in scopes:
            await self._refuse(scope, receive, send, 403, "forbidden", f"this API key lacks the {needed!r} scope")
            return
        key_id = digest[:16]
        if limits.per_key:
            wait = await limits.check(limits.per_key, "key", key_id)
            if wait is not None:
                message = "too many requests with this API key; retry later"
                await self._refuse(scope, receive, send, 429, "rate_limited", message, wait)
                return
        scope["tastebud.auth"] = (key_id, scopes)
        await self.app(scope, receive, send)

    async def _refuse(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        status: int,
        code: str,
        message: str,
        wait: float | None = None,
    ) -> None:
        if self.rejected is not None:
            self.rejected.labels(reason=code).inc()
        await _refuse(scope, receive, send, status, code, message, wait)


def _route_path(scope: Scope) -> str:
    """The path the router matches: without the ``root_path`` a proxy prefix adds (as Starlette's routing)."""
    path: str = scope["path"]
    root = scope.get("root_path", "")
    if root and path.startswith(root) and path != root:
        return path[len(root) :]
    return path


async def _refuse(
    scope: Scope, receive: Receive, send: Send, status: int, code: str, message: str, wait: float | None = None
) -> None:
    _label_route(scope)
    scope["tastebud.rejected"] = status
    if wait is None:
        response = error_response(status, code, message)
    else:
        seconds = max(1, math.ceil(wait))
        response = error_response(status, code, message, retry_after_s=seconds)
        response.headers["Retry-After"] = str(seconds)
    await response(scope, receive, send)


def _label_route(scope: Scope) -> None:
    """Put the route the router would match in ``scope`` (metrics labels by route template, not raw path)."""
    partial = None
    for route in _leaf_routes(scope.get("app")):
        match, _ = route.matches(scope)
        if match is Match.FULL:
            scope["route"] = route
            return
        if match is Match.PARTIAL and partial is None:
            partial = route
    if partial is not None:
        scope["route"] = partial


def _leaf_routes(app: Any) -> list[Any]:
    """The app's routes with a path template, mounted routers flattened (kept in its state after the first)."""
    state = getattr(app, "state", None)
    cached = getattr(state, "tastebud_leaf_routes", None)
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    out: list[Any] = []

    def walk(routes: Iterable[Any]) -> None:
        for route in routes:
            if hasattr(route, "path_regex"):  # a Route, an APIRoute, a Mount
                out.append(route)
            elif hasattr(route, "routes"):
                walk(route.routes)

    walk(getattr(getattr(app, "router", None), "routes", ()))
    if state is not None:
        state.tastebud_leaf_routes = out
    return out


def install_openapi_security(app: Any) -> None:
    """Describe the API keys in the app's OpenAPI document: two schemes, each operation's scope and errors."""
    original: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema  # type: ignore[no-any-return]
        schema = original()
        components = schema.setdefault("components", {})
        components.setdefault("securitySchemes", {}).update(
            {
                "bearerAuth": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer <API key>"},
                "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            }
        )
        has_error_body = "ErrorBody" in components.get("schemas", {})
        error = {"$ref": "#/components/schemas/ErrorBody"} if has_error_body else {"type": "object"}
        content = {"application/json": {"schema": error}}
        for path, operations in schema.get("paths", {}).items():
            for method, operation in operations.items():
                if not isinstance(operation, dict) or method.startswith("x-") or method == "parameters":
                    continue
                needed = required_scope(method.upper(), path)
                if needed is None:
                    operation["security"] = []
                    continue
                # OpenAPI 3.1: for non-OAuth2 schemes the list names the roles (here scopes) required.
                operation["security"] = [{"bearerAuth": [needed]}, {"apiKeyHeader": [needed]}]
                responses = operation.setdefault("responses", {})
                responses.setdefault("401", {"description": "No API key, or an unknown one", "content": content})
                responses.setdefault("403", {"description": f"The key lacks the {needed!r} scope", "content": content})
                responses.setdefault(
                    "429",
                    {
                        "description": "Over a rate limit (per key or per client address)",
                        "headers": {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}},
                        "content": content,
                    },
                )
        app.openapi_schema = schema
        return schema

    app.openapi = openapi


API_KEY_ENV = "TASTEBUD_API_KEY"


def client_headers(api_key: str | None = None) -> dict[str, str]:
    """Headers for Tastebud's own HTTP clients (event replay, experiment simulation): the key from the argument or
    the ``TASTEBUD_API_KEY`` environment variable as a bearer token, or none when neither is set."""
    import os

    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV, "")
    return {"Authorization": f"Bearer {key.strip()}"} if key.strip() else {}
