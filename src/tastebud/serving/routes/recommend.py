"""``GET /recommend/{user_id}`` and ``POST /recommend``: personal top-k with filters and fallbacks."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from tastebud.serving.batching import Batcher
from tastebud.serving.deps import max_k, served_model
from tastebud.serving.engine import Result
from tastebud.serving.holder import Served
from tastebud.serving.offload import is_slow, to_thread
from tastebud.serving.provenance import new_request_id
from tastebud.serving.routes._shared import (
    add_request_route,
    check_k,
    list_response,
    query_bool,
    query_int,
    query_of,
    query_parameter,
    split_genres,
    valid_id,
)
from tastebud.serving.schemas import ERRORS, RecommendRequest, RecommendResponse

router = APIRouter(tags=["recommend"])


#: The parameters of ``GET /recommend/{user_id}``: documented here, parsed by hand in the route. FastAPI's
#: per-parameter validation of these seven parameters measured more than the whole request of a trivial route (see
#: the Serving section of bench/RESULTS.md); this is the hot endpoint.
_GET_PARAMETERS = [
    {"name": "user_id", "in": "path", "required": True, "schema": {"type": "string"},
     "description": "External user id.", "example": "196"},
    query_parameter("k", {"type": "integer", "default": 10}, "How many items (1..max_k).", 10),
    query_parameter("exclude_seen", {"type": "boolean", "default": True},
                    "Leave out items the user interacted with in training."),
    query_parameter("genres", {"type": "string"}, "Comma-separated genres, any of.", "Comedy,Drama"),
    query_parameter("year_min", {"type": "integer"}, "Earliest release year.", 1990),
    query_parameter("year_max", {"type": "integer"}, "Latest release year.", 1999),
    query_parameter("explain", {"type": "boolean", "default": True},
                    "Name the user's items that explain each recommendation."),
]  # fmt: skip


async def recommend_get(request: Request) -> Response:
    """Top-``k`` items for a user; unknown users get popular items, users with a short history content scores.

    A user in a running experiment is answered by their variant's model (``variant``, ``experiment``).
    """
    started = time.perf_counter()
    served = served_model(request)
    user_id = valid_id(request, request.path_params["user_id"], "user_id")
    q = query_of(request)
    k = query_int(q, "k", 10)
    assert k is not None
    check_k(k, max_k(request))
    exclude_seen, explain = query_bool(q, "exclude_seen", True), query_bool(q, "explain", True)
    genres, year_min, year_max = (
        split_genres(q.get("genres")),
        query_int(q, "year_min", None),
        query_int(q, "year_max", None),
    )
    return await _answer(request, served, started, user_id, k, exclude_seen, explain, (genres, year_min, year_max))


# The hot endpoint: FastAPI's per-request handler (nothing to solve or serialise here) is skipped.
add_request_route(router, "/recommend/{user_id}", recommend_get, RecommendResponse, _GET_PARAMETERS)


@router.post("/recommend", response_model=RecommendResponse, responses=ERRORS)
async def recommend_post(request: Request, body: RecommendRequest) -> Response:
    """Top-``k`` items for a user, parameters in a JSON body."""
    started = time.perf_counter()
    served = served_model(request)
    check_k(body.k, max_k(request))
    user_id = valid_id(request, body.user_id, "user_id")
    f = body.filters
    raw = (f.genres if f else None, f.year_min if f else None, f.year_max if f else None)
    return await _answer(request, served, started, user_id, body.k, body.exclude_seen, body.explain, raw)


async def _answer(
    request: Request,
    served: Served,
    started: float,
    user_id: str,
    k: int,
    exclude_seen: bool,
    explain: bool,
    raw_filters: tuple[Any, Any, Any],
) -> Response:
    router = request.app.state.holder.router
    route = router.route(user_id) if router is not None else None
    if route is None:
        engine = served.engine
        filters = engine.parse_filters(*raw_filters)
        slow = is_slow(request, engine, "recommend")
        batcher: Batcher | None = getattr(request.app.state, "batcher", None)
        plain = engine.plain_request(user_id, k, exclude_seen, filters, explain) if batcher is not None else None
        if isinstance(plain, Result):  # answered by the result cache
            result = plain
        elif plain is not None and batcher is not None:  # plain personal path: scored with the requests waiting
            result = await batcher.submit(engine, plain, threaded=slow)
        elif slow:  # a large catalog: score in a thread, the loop stays free
            result = await to_thread(
                engine.recommend, user_id, k, exclude_seen=exclude_seen, filters=filters, explain=explain
            )
        else:
            result = engine.recommend(user_id, k, exclude_seen=exclude_seen, filters=filters, explain=explain)
        return list_response(
            request, served, result, endpoint="recommend", started=started, query={"user_id": user_id},
            user_id=user_id,
        )  # fmt: skip
    served = route.served
    engine = served.engine
    filters = engine.parse_filters(*raw_filters)
    other_engine = route.other.engine if route.other is not None else None
    other_filters = other_engine.parse_filters(*raw_filters) if other_engine is not None else None

    def score() -> tuple[Result, Result | None]:
        mine = engine.recommend(user_id, k, exclude_seen=exclude_seen, filters=filters, explain=explain)
        if other_engine is None:
            return mine, None
        return mine, other_engine.recommend(user_id, k, exclude_seen=exclude_seen, filters=other_filters,
                                            explain=explain)  # fmt: skip

    slow = is_slow(request, engine, "recommend") or (
        other_engine is not None and is_slow(request, other_engine, "recommend")
    )
    result, other = await to_thread(score) if slow else score()
    request_id = new_request_id()
    exposure = None
    if other is not None:  # interleaving: both rankers' lists merged by team draft
        from tastebud.experiments.interleaving import interleaving_rng

        result, teams = interleave(result, other, k, interleaving_rng(route.salt, user_id, request_id))
        exposure = {"teams": [route.names[0] if t == "A" else route.names[1] for t in teams]}
    return list_response(
        request, served, result, endpoint="recommend", started=started, query={"user_id": user_id},
        user_id=user_id, request_id=request_id, variant=route.variant, experiment=route.experiment,
        exposure=exposure,
    )  # fmt: skip


def interleave(a: Result, b: Result, k: int, rng: Any) -> tuple[Result, list[str]]:
    """The team-draft merge of two answers: a result whose items come from ``a`` and ``b``, and each one's team."""
    from tastebud.experiments.interleaving import team_draft

    records = {it["item_id"]: it for it in b.items}
    records.update({it["item_id"]: it for it in a.items})
    ids, teams = team_draft([it["item_id"] for it in a.items], [it["item_id"] for it in b.items], k, rng)
    merged = Result(
        [records[i] for i in ids], k, is_fallback=a.is_fallback and b.is_fallback,
        fallback_reason=a.fallback_reason if a.is_fallback and b.is_fallback else None, source=a.source,
    )  # fmt: skip
    return merged, list(teams)
