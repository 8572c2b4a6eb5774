"""``GET /popular``: the most popular items, overall or of one genre (also the cold-start list)."""

from __future__ import annotations

import time

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from tastebud.serving.deps import max_k, served_model
from tastebud.serving.offload import is_slow, to_thread
from tastebud.serving.routes._shared import check_k, list_response
from tastebud.serving.schemas import ERRORS, PopularResponse

router = APIRouter(tags=["popular"])


@router.get("/popular", response_model=PopularResponse, responses=ERRORS)
async def popular(
    request: Request,
    k: int = Query(10, description="How many items (1..max_k).", examples=[10]),
    genre: str | None = Query(None, description="Only items of this genre.", examples=["Comedy"]),
) -> Response:
    """The ``k`` most popular items (of ``genre`` when given)."""
    started = time.perf_counter()
    served = served_model(request)
    check_k(k, max_k(request))
    engine = served.engine
    filters = engine.parse_filters([genre] if genre else None)
    if is_slow(request, engine, "popular"):  # a large catalog: rank in a thread, the loop stays free
        result = await to_thread(engine.popular, k, filters)
    else:
        result = engine.popular(k, filters)
    return list_response(request, served, result, endpoint="popular", started=started, query={"genre": genre})
