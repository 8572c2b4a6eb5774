"""``GET /models`` (registered versions and aliases) and ``POST /admin/models/switch`` (an ``admin`` key).

Responses name bundles (``models:/<name>/<version>``), never their paths on the server.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from tastebud.errors import BundleError
from tastebud.serving.deps import HolderDep
from tastebud.serving.errors import NoStoreError, UnauthorizedError
from tastebud.serving.redact import model_uri, redact_paths
from tastebud.serving.routes._shared import json_response
from tastebud.serving.schemas import ErrorBody, ModelsResponse, SwitchRequest

router = APIRouter(tags=["models"])


def _version_dict(mv: Any) -> dict[str, Any]:
    # ``is_dataclass`` is also true of a dataclass type; versions are instances.
    is_instance = dataclasses.is_dataclass(mv) and not isinstance(mv, type)
    row = dataclasses.asdict(mv) if is_instance else dict(vars(mv))
    # ``source`` is where the artifact store keeps the bundle (an absolute path or a URI): a name instead.
    if "source" in row:
        row["source"] = model_uri(row.get("name"), row.get("version"))
    return row


@router.get("/models", response_model=ModelsResponse, responses={503: {"model": ErrorBody}})
async def models(holder: HolderDep) -> Response:
    """Registered versions of the served model name, its aliases, and what this server serves."""
    registry = holder.registry
    if registry is None:
        raise NoStoreError("no model registry configured")
    versions = await asyncio.to_thread(registry.list_versions, holder.name)
    rows = [_version_dict(mv) for mv in versions]
    aliases = {a: int(row["version"]) for row in rows for a in row.get("aliases") or []}
    served = holder.current
    return json_response(
        {"name": holder.name, "serving": served.model_block if served else None, "aliases": aliases, "versions": rows}
    )


async def require_admin(request: Request) -> None:
    """A second lock on admin routes: the request must carry an admin key, as the auth middleware records it.

    :class:`tastebud.serving.auth.AuthMiddleware` refuses requests without one before their body is read (401
    or 403); this guards the route if it is ever mounted without that middleware.

    Raises:
        UnauthorizedError: no admin key was checked for this request (401).
    """
    auth = request.scope.get("tastebud.auth")
    if auth is None or "admin" not in auth[1]:
        raise UnauthorizedError("missing or invalid API key")


@router.post(
    "/admin/models/switch",
    dependencies=[Depends(require_admin)],
    responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}, 404: {"model": ErrorBody},
               409: {"model": ErrorBody}},
)  # fmt: skip
async def switch(body: SwitchRequest, holder: HolderDep) -> Response:
    """Load a version (or the version an alias points to) off the request path and swap it in.

    A refused bundle (corrupt, incompatible) answers 409 and the model served before keeps serving.
    """
    before = holder.current
    try:
        served = await asyncio.to_thread(holder.load, version=body.version, alias=body.alias, trigger="admin")
    except BundleError as err:
        now = holder.current
        message = redact_paths(str(err))
        return json_response(
            {"error": "bundle_refused", "message": message, "serving": now.model_block if now else None}, status=409
        )
    return json_response(
        {
            "switched": True,
            "previous": before.model_block if before else None,
            "serving": served.model_block,
            "loaded_at": served.loaded_at,
        }
    )
