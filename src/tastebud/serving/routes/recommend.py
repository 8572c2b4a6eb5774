"""``GET /recommend/{user_id}`` and ``POST /recommend``: personal top-k with filters and fallbacks."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from starlette.responses import Response

from tastebud.serving.deps import max_k, served_model
from tastebud.serving.routes._shared import (
    check_k,
    list_response,
    query_bool,
    query_int,
    query_parameter,
    split_genres,
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


@router.get(
    "/recommend/{user_id}",
    response_model=RecommendResponse,
    responses=ERRORS,
    openapi_extra={"parameters": _GET_PARAMETERS},
)
async def recommend_get(request: Request) -> Response:
    """Top-``k`` items for a user; unknown users get popular items, users with a short history content scores."""
    started = time.perf_counter()
    served = served_model(request)
    user_id: str = request.path_params["user_id"]
    q = request.query_params
    k = query_int(q, "k", 10)
    assert k is not None
    check_k(k, max_k(request))
    exclude_seen, explain = query_bool(q, "exclude_seen", True), query_bool(q, "explain", True)
    engine = served.engine
    filters = engine.parse_filters(split_genres(q.get("genres")), query_int(q, "year_min", None),
                                   query_int(q, "year_max", None))  # fmt: skip
    result = engine.recommend(user_id, k, exclude_seen=exclude_seen, filters=filters, explain=explain)
    return list_response(
        request, served, result, endpoint="recommend", started=started, query={"user_id": user_id}, user_id=user_id
    )


@router.post("/recommend", response_model=RecommendResponse, responses=ERRORS)
async def recommend_post(request: Request, body: RecommendRequest) -> Response:
    """Top-``k`` items for a user, parameters in a JSON body."""
    started = time.perf_counter()
    served = served_model(request)
    check_k(body.k, max_k(request))
    engine = served.engine
    f = body.filters
    filters = engine.parse_filters(f.genres if f else None, f.year_min if f else None, f.year_max if f else None)
    result = engine.recommend(
        body.user_id, body.k, exclude_seen=body.exclude_seen, filters=filters, explain=body.explain
    )
    return list_response(
        request, served, result, endpoint="recommend", started=started,
        query={"user_id": body.user_id}, user_id=body.user_id,
    )  # fmt: skip
