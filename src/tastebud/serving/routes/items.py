"""``GET /items/{item_id}`` and ``GET /users/{user_id}/history``: what the served bundle knows."""

from __future__ import annotations

from fastapi import APIRouter, Path, Query, Request
from starlette.responses import Response

from tastebud.serving.deps import ServedDep
from tastebud.serving.errors import InvalidRequestError
from tastebud.serving.routes._shared import json_response, valid_id
from tastebud.serving.schemas import ERRORS, HistoryResponse, ItemResponse

router = APIRouter(tags=["catalog"])

#: Largest history page.
MAX_HISTORY = 1000


@router.get("/items/{item_id}", response_model=ItemResponse, responses=ERRORS)
async def item(request: Request, served: ServedDep, item_id: str = Path(..., examples=["50"])) -> Response:
    """Metadata of one item (404 when no model of the bundle knows it)."""
    return json_response(served.engine.item(valid_id(request, item_id, "item_id")))


@router.get("/users/{user_id}/history", response_model=HistoryResponse, responses=ERRORS)
async def history(
    request: Request,
    served: ServedDep,
    user_id: str = Path(..., examples=["196"]),
    limit: int = Query(50, description=f"How many items (1..{MAX_HISTORY}).", examples=[20]),
) -> Response:
    """The user's training interactions, strongest first (404 for a user the model has not seen)."""
    if limit < 1 or limit > MAX_HISTORY:
        raise InvalidRequestError("limit", f"must be between 1 and {MAX_HISTORY} (got {limit})")
    user_id = valid_id(request, user_id, "user_id")
    total, items = served.engine.history(user_id, limit)
    return json_response({"user_id": user_id, "total": total, "items": items})
