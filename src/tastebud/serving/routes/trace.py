"""``GET /trace/{request_id}``: a logged request with its full provenance and items."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Path, Request
from starlette.responses import Response

from tastebud.serving.errors import NoStoreError, NotFoundError
from tastebud.serving.routes._shared import json_response, valid_id
from tastebud.serving.schemas import ErrorBody

router = APIRouter(tags=["monitoring"])

#: Seconds to wait for pending request-log records before looking one up.
FLUSH_TIMEOUT_S = 2.0


@router.get(
    "/trace/{request_id}", responses={404: {"model": ErrorBody}, 422: {"model": ErrorBody}, 503: {"model": ErrorBody}}
)
async def trace(
    request: Request, request_id: str = Path(..., examples=["3f2a9c0e8b7d4e1f9a6b5c4d3e2f1a0b"])
) -> Response:
    """The request-log record of ``request_id`` (pending records are flushed first)."""
    request_id = valid_id(request, request_id, "request_id")
    state = request.app.state
    store = state.store
    if store is None:
        raise NoStoreError("no request store configured: traces are unavailable")
    writer = state.request_log
    if writer is not None:
        await asyncio.to_thread(writer.flush, FLUSH_TIMEOUT_S)
    record = await asyncio.to_thread(store.get_request, request_id)
    if record is None:
        raise NotFoundError(f"no logged request with id {request_id!r}")
    # Column names may come back as str subclasses (SQLAlchemy's quoted_name), which orjson refuses as keys.
    return json_response({str(key): value for key, value in record.items()})
