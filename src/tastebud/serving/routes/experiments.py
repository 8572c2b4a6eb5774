"""``GET /experiments`` and ``GET /experiments/{name}``: what runs, and where each experiment stands.

The analysis reads the store's exposures and events (seconds at scale), so it runs in a worker thread, at most
one computation per experiment at a time, and its result is kept for :data:`ANALYSIS_TTL_S` seconds: asking
again, from any number of clients, costs a dictionary lookup until then.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from typing import Any

from fastapi import APIRouter, Path, Request
from starlette.responses import Response

from tastebud.serving.errors import NoStoreError, NotFoundError
from tastebud.serving.routes._shared import json_response
from tastebud.serving.schemas import ErrorBody

router = APIRouter(tags=["experiments"])

#: Seconds an analysis is reused before it is computed again.
ANALYSIS_TTL_S = 30.0
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_cache: dict[tuple[int, str], tuple[float, dict[str, Any]]] = {}
#: One computation per experiment at a time: names hash onto a fixed set of locks, so asking for any number of
#: names (existing or not) allocates nothing.
_locks = tuple(threading.Lock() for _ in range(16))


def _store(request: Request) -> Any:
    store = request.app.state.store
    if store is None or not hasattr(store, "list_experiments"):
        raise NoStoreError("no store configured: experiments are unavailable")
    return store


@router.get("/experiments", responses={503: {"model": ErrorBody}})
async def list_experiments(request: Request) -> Response:
    """Every experiment of the served model: status, kind, variants with their weights and pinned versions."""
    from tastebud.experiments import list_experiments as stored

    store = _store(request)
    model_name = request.app.state.holder.name
    experiments = await asyncio.to_thread(stored, store, model_name=model_name)
    router_ = request.app.state.holder.router
    routed = {e.name for e in router_.experiments()} if router_ is not None else set()
    return json_response({
        "model_name": model_name,
        "experiments": [
            {
                "name": e.name, "kind": e.kind, "status": e.status, "routed_here": e.name in routed,
                "variants": [
                    {"name": v.name, "ref": v.ref, "weight": w, "version": e.versions.get(v.name)}
                    for v, w in zip(e.variants, e.weights, strict=True)
                ],
                "primary_metric": e.primary_metric, "started_at": _iso(e.started_at), "stopped_at": _iso(e.stopped_at),
            }
            for e in experiments
        ],
    })  # fmt: skip


@router.get("/experiments/{name}", responses={404: {"model": ErrorBody}, 503: {"model": ErrorBody}})
async def experiment_analysis(request: Request, name: str = Path(..., examples=["ease-vs-als"])) -> Response:
    """The experiment's analysis: users per variant, lift with classical and always-valid intervals, SRM, guardrails,
    power, and the decision (ship, do not ship, keep running). Recomputed at most every 30 s."""
    if not _NAME.match(name):
        raise NotFoundError(f"no experiment named {name[:64]!r}")
    store = _store(request)
    key = (id(store), name)
    hit = _cache.get(key)
    if hit is not None and time.monotonic() - hit[0] < ANALYSIS_TTL_S:
        return json_response(hit[1])
    body = await asyncio.to_thread(_analyze, store, name, key)
    return json_response(body)


def _analyze(store: Any, name: str, key: tuple[int, str]) -> dict[str, Any]:
    from tastebud.errors import ExperimentError
    from tastebud.experiments import get_experiment
    from tastebud.experiments.report import analyze_experiment

    with _locks[hash(name) % len(_locks)]:  # one computation per experiment; the others wait for it and take its result
        hit = _cache.get(key)
        if hit is not None and time.monotonic() - hit[0] < ANALYSIS_TTL_S:
            return hit[1]
        try:
            experiment = get_experiment(store, name)
        except ExperimentError as err:
            raise NotFoundError(str(err)) from err
        if experiment.started_at is None:
            body: dict[str, Any] = {"experiment": name, "status": experiment.status, "decision": None,
                                    "reason": "not started: nothing to analyse"}  # fmt: skip
        else:
            body = {"status": experiment.status, **analyze_experiment(store, experiment).to_dict()}
        if len(_cache) > 256:
            _cache.clear()
        _cache[key] = (time.monotonic(), body)
        return body


def _iso(value: Any) -> str | None:
    return None if value is None else value.isoformat()
