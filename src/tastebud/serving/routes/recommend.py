"""``GET /recommend/{user_id}`` and ``POST /recommend``: personal top-k with filters and fallbacks."""

from __future__ import annotations

import time

from fastapi import APIRouter, Path, Query, Request
from starlette.responses import Response

from tastebud.serving.deps import max_k, served_model
from tastebud.serving.routes._shared import check_k, list_response, split_genres
from tastebud.serving.schemas import ERRORS, RecommendRequest, RecommendResponse

router = APIRouter(tags=["recommend"])


@router.get("/recommend/{user_id}", response_model=RecommendResponse, responses=ERRORS)
async def recommend_get(
    request: Request,
    user_id: str = Path(..., description="External user id.", examples=["196"]),
    k: int = Query(10, description="How many items (1..max_k).", examples=[10]),
    exclude_seen: bool = Query(True, description="Leave out items the user interacted with in training."),
    genres: str | None = Query(None, description="Comma-separated genres, any of.", examples=["Comedy,Drama"]),
    year_min: int | None = Query(None, description="Earliest release year.", examples=[1990]),
    year_max: int | None = Query(None, description="Latest release year.", examples=[1999]),
    explain: bool = Query(True, description="Name the user's items that explain each recommendation."),
) -> Response:
    """Top-``k`` items for a user; unknown users get popular items, users with a short history content scores."""
    started = time.perf_counter()
    served = served_model(request)
    check_k(k, max_k(request))
    engine = served.engine
    filters = engine.parse_filters(split_genres(genres), year_min, year_max)
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
