"""``GET /similar/{item_id}`` and ``POST /similar``: items like a given item."""

from __future__ import annotations

import time

from fastapi import APIRouter, Path, Query, Request
from starlette.responses import Response

from tastebud.serving.deps import max_k, served_model
from tastebud.serving.offload import is_slow, to_thread
from tastebud.serving.routes._shared import check_k, list_response, valid_id
from tastebud.serving.schemas import ERRORS, SimilarRequest, SimilarResponse

router = APIRouter(tags=["similar"])


@router.get("/similar/{item_id}", response_model=SimilarResponse, responses=ERRORS)
async def similar_get(
    request: Request,
    item_id: str = Path(..., description="External item id.", examples=["50"]),
    k: int = Query(10, description="How many items (1..max_k).", examples=[10]),
) -> Response:
    """The ``k`` items most similar to ``item_id`` (404 for an unknown item)."""
    started = time.perf_counter()
    served = served_model(request)
    check_k(k, max_k(request))
    item_id = valid_id(request, item_id, "item_id")
    engine = served.engine
    if is_slow(request, engine, "similar"):  # a large catalog: search in a thread, the loop stays free
        result = await to_thread(engine.similar, item_id, k)
    else:
        result = engine.similar(item_id, k)
    return list_response(
        request, served, result, endpoint="similar", started=started, query={"item_id": item_id}, item_id=item_id
    )


@router.post("/similar", response_model=SimilarResponse, responses=ERRORS)
async def similar_post(request: Request, body: SimilarRequest) -> Response:
    """The ``k`` items most similar to an item, parameters in a JSON body."""
    started = time.perf_counter()
    served = served_model(request)
    check_k(body.k, max_k(request))
    item_id = valid_id(request, body.item_id, "item_id")
    engine = served.engine
    if is_slow(request, engine, "similar"):
        result = await to_thread(engine.similar, item_id, body.k)
    else:
        result = engine.similar(item_id, body.k)
    return list_response(
        request, served, result, endpoint="similar", started=started,
        query={"item_id": item_id}, item_id=item_id,
    )  # fmt: skip
