"""``GET /popular``: the most popular items, overall or of one genre (also the cold-start list)."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from starlette.responses import Response

from tastebud.serving.deps import max_k, served_model
from tastebud.serving.offload import is_slow, to_thread
from tastebud.serving.routes._shared import (
    add_request_route,
    check_k,
    list_response,
    query_int,
    query_of,
    query_parameter,
)
from tastebud.serving.schemas import PopularResponse

router = APIRouter(tags=["popular"])


#: The parameters of ``GET /popular``: documented here, parsed by hand in the route (as ``GET /recommend``'s: FastAPI's
#: validation of these two parameters was about a quarter of the request).
_PARAMETERS = [
    query_parameter("k", {"type": "integer", "default": 10}, "How many items (1..max_k).", 10),
    query_parameter("genre", {"type": "string"}, "Only items of this genre.", "Comedy"),
]


async def popular(request: Request) -> Response:
    """The ``k`` most popular items (of ``genre`` when given)."""
    started = time.perf_counter()
    served = served_model(request)
    q = query_of(request)
    k = query_int(q, "k", 10)
    assert k is not None
    check_k(k, max_k(request))
    genre = q.get("genre") or None
    engine = served.engine
    filters = engine.parse_filters([genre] if genre else None)
    if is_slow(request, engine, "popular"):  # a large catalog: rank in a thread, the loop stays free
        result = await to_thread(engine.popular, k, filters)
    else:
        result = engine.popular(k, filters)
    return list_response(request, served, result, endpoint="popular", started=started, query={"genre": genre})


add_request_route(router, "/popular", popular, PopularResponse, _PARAMETERS)
