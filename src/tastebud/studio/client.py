"""The studio's client of the Tastebud HTTP API: short timeouts, and failures as one readable :class:`ApiError`."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from tastebud.studio.launch import API_ENV, API_KEY_ENV, DEFAULT_API

#: Seconds to connect, and to wait for an answer (an analysis of an experiment may take a few seconds).
CONNECT_TIMEOUT_S, READ_TIMEOUT_S = 2.0, 10.0
#: Seconds to wait for a promotion's answer (the gate may re-evaluate both versions first).
PROMOTE_TIMEOUT_S = 120.0


class ApiError(Exception):
    """A request the API did not answer as hoped, with a message for people.

    Attributes:
        status: the HTTP status (``None``: the API could not be reached).
        code: the API's machine-readable error kind (``unknown_user``, ``not_ready``, ...) or ``unreachable``.
        body: the API's JSON error body (a refused promotion's ``decision`` and ``reasons``); ``{}`` without one.
    """

    def __init__(
        self, message: str, *, status: int | None = None, code: str | None = None, body: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code = status, code
        self.body: dict[str, Any] = body or {}

    @property
    def unreachable(self) -> bool:
        return self.status is None

    @property
    def no_model(self) -> bool:
        """The API answers but serves no model yet (503)."""
        return self.status == 503

    @property
    def refused(self) -> bool:
        """The API refused the credentials (401/403)."""
        return self.status in (401, 403)


@dataclass
class ApiClient:
    """Calls the API at ``base_url``; ``api_key`` (when set) goes as ``Authorization: Bearer <key>``."""

    base_url: str = DEFAULT_API
    api_key: str | None = None
    connect_timeout_s: float = CONNECT_TIMEOUT_S
    read_timeout_s: float = READ_TIMEOUT_S

    def __post_init__(self) -> None:
        self.base_url = self.base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        timeout = httpx.Timeout(self.read_timeout_s, connect=self.connect_timeout_s)
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ApiClient:
        """A client for ``TASTEBUD_STUDIO_API`` (default ``http://127.0.0.1:8000``) with ``TASTEBUD_API_KEY``."""
        env = os.environ if environ is None else environ
        return cls(env.get(API_ENV) or DEFAULT_API, env.get(API_KEY_ENV) or None)

    def close(self) -> None:
        self._http.close()

    # ------------------------------------------------------------------ transport
    def request(
        self, method: str, path: str, *, params: Mapping[str, Any] | None = None, json: Any = None,
        token: str | None = None, read_timeout_s: float | None = None,
    ) -> Any:  # fmt: skip
        """The JSON body of a 2xx answer.

        Args:
            token: a bearer token for this request only (the admin token), instead of the client's key.
            read_timeout_s: seconds to wait for the answer to this request (default: the client's).

        Raises:
            ApiError: the API cannot be reached, or answered with an error (its message, or the status).
        """
        headers = {"Authorization": f"Bearer {token}"} if token is not None else None
        clean = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            timeout = (
                httpx.Timeout(read_timeout_s, connect=self.connect_timeout_s)
                if read_timeout_s is not None
                else httpx.USE_CLIENT_DEFAULT
            )
            response = self._http.request(method, path, params=clean, json=json, headers=headers, timeout=timeout)
        except httpx.TimeoutException as err:
            raise ApiError(f"the API at {self.base_url} did not answer {path} in time ({type(err).__name__})") from err
        except httpx.HTTPError as err:
            raise ApiError(f"cannot reach the API at {self.base_url}: {err}") from err
        if response.is_success:
            return response.json()
        try:
            body = response.json()
        except ValueError:
            body = {}
        body = body if isinstance(body, dict) else {}
        message = body.get("message") or body.get("detail") or response.reason_phrase or "error"
        raise ApiError(
            f"{method} {path}: {response.status_code} {message}",
            status=response.status_code,
            code=body.get("error"),
            body=body,
        )

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params)

    # ------------------------------------------------------------------ routes
    def health(self) -> dict[str, Any]:
        return dict(self.get("/health"))

    def recommend(
        self, user_id: str, k: int = 10, *, genres: Iterable[str] = (), year_min: int | None = None,
        year_max: int | None = None, exclude_seen: bool = True,
    ) -> dict[str, Any]:  # fmt: skip
        filters: dict[str, Any] = {}
        if genres:
            filters["genres"] = list(genres)
        if year_min is not None:
            filters["year_min"] = int(year_min)
        if year_max is not None:
            filters["year_max"] = int(year_max)
        body = {"user_id": user_id, "k": int(k), "exclude_seen": exclude_seen, "filters": filters or None}
        return dict(self.request("POST", "/recommend", json=body))

    def popular(self, k: int = 10, genre: str | None = None) -> dict[str, Any]:
        return dict(self.get("/popular", k=k, genre=genre))

    def similar(self, item_id: str, k: int = 10) -> dict[str, Any]:
        return dict(self.request("POST", "/similar", json={"item_id": item_id, "k": int(k)}))

    def item(self, item_id: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/items/{_quote(item_id)}"))

    def history(self, user_id: str, limit: int = 50) -> dict[str, Any]:
        return dict(self.get(f"/users/{_quote(user_id)}/history", limit=limit))

    def post_events(self, events: list[dict[str, Any]]) -> dict[str, Any]:
        return dict(self.request("POST", "/events", json=events))

    def models(self) -> dict[str, Any]:
        return dict(self.get("/models"))

    def experiments(self) -> dict[str, Any]:
        return dict(self.get("/experiments"))

    def experiment(self, name: str) -> dict[str, Any]:
        return dict(self.get(f"/experiments/{_quote(name)}"))

    def switch(self, token: str, *, version: int | None = None, alias: str | None = None) -> dict[str, Any]:
        """``POST /admin/models/switch`` with ``token`` as the bearer (the server decides whether it is admin)."""
        body = {"version": version} if version is not None else {"alias": alias}
        return dict(self.request("POST", "/admin/models/switch", json=body, token=token))

    def promote(self, token: str, version: int, *, force: bool = False, actor: str = "studio") -> dict[str, Any]:
        """``POST /admin/models/promote``: the gate, the champion alias, the decision log, then the switch.

        Raises:
            ApiError: refused (409 ``gate_refused`` carries the reasons in :attr:`ApiError.body`), or any error.
        """
        body = {"version": int(version), "force": force, "actor": actor}
        return dict(
            self.request("POST", "/admin/models/promote", json=body, token=token, read_timeout_s=PROMOTE_TIMEOUT_S)
        )

    def rollback(self, token: str, version: int | None = None, *, actor: str = "studio") -> dict[str, Any]:
        """``POST /admin/models/rollback``: champion back to the previous champion (``version``: the one expected)."""
        body: dict[str, Any] = {"actor": actor}
        if version is not None:
            body["version"] = int(version)
        return dict(self.request("POST", "/admin/models/rollback", json=body, token=token))


def like_events(user_id: str, item_ids: Iterable[str], *, rating: int = 5) -> list[dict[str, Any]]:
    """Rating events saying ``user_id`` liked ``item_ids`` (fresh event ids, the current time)."""
    now = int(time.time())
    return [
        {"event_id": f"studio-{uuid.uuid4().hex}", "user_id": user_id, "item_id": str(item), "rating": rating,
         "timestamp": now}
        for item in item_ids
    ]  # fmt: skip


def _quote(value: str) -> str:
    return quote(str(value), safe="")


__all__ = ["ApiClient", "ApiError", "like_events"]
