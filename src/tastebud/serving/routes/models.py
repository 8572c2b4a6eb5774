"""``GET /models`` (registered versions and aliases) and ``POST /admin/models/switch`` (bearer token)."""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from tastebud.errors import BundleError
from tastebud.serving.deps import HolderDep, SettingsDep
from tastebud.serving.errors import AdminDisabledError, NoStoreError, UnauthorizedError
from tastebud.serving.routes._shared import json_response
from tastebud.serving.schemas import ErrorBody, ModelsResponse, SwitchRequest

router = APIRouter(tags=["models"])


def _version_dict(mv: Any) -> dict[str, Any]:
    # ``is_dataclass`` is also true of a dataclass type; versions are instances.
    if dataclasses.is_dataclass(mv) and not isinstance(mv, type):
        return dataclasses.asdict(mv)
    return dict(vars(mv))


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


async def require_admin(request: Request, settings: SettingsDep) -> None:
    """Admit only requests with the configured bearer token.

    Raises:
        AdminDisabledError: no token is configured (403).
        UnauthorizedError: the token is missing or wrong (401).
    """
    expected = settings.serving.admin_token
    if not expected:
        raise AdminDisabledError(
            "admin endpoints are disabled: set serving.admin_token (TASTEBUD_SERVING__ADMIN_TOKEN)"
        )
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected.encode()):
        raise UnauthorizedError("missing or invalid bearer token")


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
        return json_response(
            {"error": "bundle_refused", "message": str(err), "serving": now.model_block if now else None}, status=409
        )
    return json_response(
        {
            "switched": True,
            "previous": before.model_block if before else None,
            "serving": served.model_block,
            "loaded_at": served.loaded_at,
        }
    )
