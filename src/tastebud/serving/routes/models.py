"""``GET /models`` (registered versions and aliases), and with an ``admin`` key ``POST /admin/models/switch`` (what
this server serves), ``POST /admin/models/promote`` and ``POST /admin/models/rollback`` (the registry's champion
alias, as ``tastebud models promote|rollback`` moves it, then this server switches to the new champion).

Responses name bundles (``models:/<name>/<version>``), never their paths on the server.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import TYPE_CHECKING, Any, cast

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from tastebud.errors import BundleError, RegistryError
from tastebud.serving.deps import HolderDep, SettingsDep
from tastebud.serving.errors import ConflictError, NoStoreError, UnauthorizedError
from tastebud.serving.holder import ModelHolder, Served
from tastebud.serving.redact import model_uri, redact_paths
from tastebud.serving.routes._shared import json_response
from tastebud.serving.schemas import ErrorBody, ModelsResponse, PromoteRequest, RollbackRequest, SwitchRequest

if TYPE_CHECKING:
    from tastebud.pipeline.promote import PromotionResult
    from tastebud.registry.aliases import ModelRegistry
    from tastebud.registry.decisions import Decision

#: Who a decision made through the API is recorded as when the request names nobody.
API_ACTOR = "api"
#: The registry alias promotions and rollbacks move.
CHAMPION = "champion"

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
    served, refused = await _load(holder, version=body.version, alias=body.alias)
    if served is None:
        return json_response(refused, status=409)
    return json_response(_switched(before, served))


async def _load(holder: ModelHolder, *, version: int | None, alias: str | None) -> tuple[Served | None, dict[str, Any]]:
    """Load a version (or alias) off the event loop and swap it in: ``(served, {})``, or ``(None, body)`` with the
    409 body of a refused bundle (the model served before keeps serving)."""
    try:
        served = await asyncio.to_thread(holder.load, version=version, alias=alias, trigger="admin")
    except BundleError as err:
        now = holder.current
        message = redact_paths(str(err))
        return None, {"error": "bundle_refused", "message": message, "serving": now.model_block if now else None}
    return served, {}


def _switched(before: Served | None, served: Served) -> dict[str, Any]:
    return {
        "switched": True,
        "previous": before.model_block if before else None,
        "serving": served.model_block,
        "loaded_at": served.loaded_at,
    }


def _registry(holder: ModelHolder) -> ModelRegistry:
    """The registry promotions move (a :class:`~tastebud.registry.aliases.ModelRegistry`).

    Raises:
        NoStoreError: the server has no registry, or one that cannot move aliases (503).
    """
    registry = holder.registry
    if registry is None:
        raise NoStoreError("no model registry configured")
    if not all(hasattr(registry, attr) for attr in ("manifest", "set_alias", "set_tag")):
        raise NoStoreError("this server's model registry cannot promote or roll back (read only)")
    return cast("ModelRegistry", registry)


def _decision_body(decision: Decision) -> dict[str, Any]:
    row = dataclasses.asdict(decision)
    row["reason"] = redact_paths(str(row.get("reason") or ""))
    return row


async def _serve_champion(holder: ModelHolder, decision: Decision, reasons: list[str]) -> Response:
    """Switch this server to the version a decision made champion; the answer carries the decision.

    The alias has moved either way: a refused bundle answers 409 (``bundle_refused``) and the model served before
    keeps serving (the alias watcher does not retry a refused version until the alias moves again).
    """
    before = holder.current
    served, refused = await _load(holder, version=decision.version, alias=CHAMPION)
    body = {"decision": _decision_body(decision), "reasons": reasons}
    if served is None:
        return json_response({**refused, **body}, status=409)
    return json_response({**body, **_switched(before, served)})


@router.post(
    "/admin/models/promote",
    dependencies=[Depends(require_admin)],
    responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}, 404: {"model": ErrorBody},
               409: {"model": ErrorBody}, 503: {"model": ErrorBody}},
)  # fmt: skip
async def promote(body: PromoteRequest, holder: HolderDep, settings: SettingsDep) -> Response:
    """Promote a version to champion through the gate (as ``tastebud models promote``), then serve it.

    The gate compares it with the champion (re-evaluating both when their validation snapshots differ: seconds,
    in a worker thread) and the decision goes to the decision log either way. A refusal answers 409 with the
    gate's reasons and leaves the alias where it was; ``force`` promotes anyway (recorded as ``forced``).
    """
    registry = _registry(holder)
    name, actor = holder.name, body.actor or API_ACTOR

    def run() -> PromotionResult:
        from tastebud.pipeline.promote import promote as promote_version

        if registry.get_alias(name, CHAMPION) == body.version:
            raise ConflictError(f"{name} version {body.version} is already the champion")
        return promote_version(registry, name, body.version, settings=settings, force=body.force, actor=actor)

    result = await run_in_threadpool(run)
    reasons = [redact_paths(r) or "" for r in result.gate.reasons]
    if not result.promoted:
        now = holder.current
        previous = result.decision.previous
        stays = f"stays version {previous}" if previous is not None else "stays unset"
        message = f"the gate refused {name} version {body.version}; champion {stays}: {result.gate.summary}"
        return json_response(
            {"error": "gate_refused", "message": message, "decision": _decision_body(result.decision),
             "reasons": reasons, "serving": now.model_block if now else None},
            status=409,
        )  # fmt: skip
    return await _serve_champion(holder, result.decision, reasons)


@router.post(
    "/admin/models/rollback",
    dependencies=[Depends(require_admin)],
    responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}, 404: {"model": ErrorBody},
               409: {"model": ErrorBody}, 503: {"model": ErrorBody}},
)  # fmt: skip
async def rollback(body: RollbackRequest, holder: HolderDep, settings: SettingsDep) -> Response:
    """Return champion to the previous champion of the decision log (as ``tastebud models rollback``), then
    serve it. With ``version``, the rollback happens only if that is where it returns (else 409)."""
    registry = _registry(holder)
    name, actor = holder.name, body.actor or API_ACTOR

    def run() -> Decision:
        from tastebud.pipeline.promote import previous_champion
        from tastebud.pipeline.promote import rollback as rollback_champion
        from tastebud.registry.decisions import champion_history, read_decisions

        if body.version is not None:
            current = registry.get_alias(name, CHAMPION)
            target = previous_champion(champion_history(read_decisions(settings, name)), current)
            if target != body.version:
                raise ConflictError(
                    f"{name}: a rollback returns to version {target}, not version {body.version}"
                    if target is not None
                    else f"{name}: no previous champion to roll back to"
                )
        try:
            return rollback_champion(registry, name, settings=settings, actor=actor)
        except RegistryError as err:  # no champion, or none before it: the registry's state, not a missing thing
            raise ConflictError(str(err)) from err

    decision = await run_in_threadpool(run)
    return await _serve_champion(holder, decision, [decision.reason])
