"""``POST /events``: store interaction events and personalise their users' next recommendations at once."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from tastebud.serving.errors import InvalidRequestError, NoStoreError
from tastebud.serving.routes._shared import json_response
from tastebud.serving.schemas import ERRORS, EVENT_EXAMPLES, EventBatch, EventsResponse
from tastebud.stream.ingest import IngestResult, ingest_events

router = APIRouter(tags=["events"])


@router.post("/events", response_model=EventsResponse, responses=ERRORS)
async def post_events(
    request: Request,
    body: list[Any] | EventBatch = Body(
        ..., description='A list of events, or {"events": [...]}.', openapi_examples=EVENT_EXAMPLES
    ),
) -> Response:
    """Validate and store events; the valid ones update their users' recommendations right away.

    Every event goes through the validation the Kafka consumer uses. A batch with some invalid events stores the
    valid ones and lists the others under ``rejected`` (200); a batch in which every event is invalid is a 422
    naming the reasons. A repeated ``event_id`` counts as a duplicate and changes nothing.
    """
    events = body.events if isinstance(body, EventBatch) else body
    if not events:
        raise InvalidRequestError("events", "must hold at least one event")
    state = request.app.state
    store = state.store
    if store is None or not hasattr(store, "write_events"):
        raise NoStoreError("no event store configured: events cannot be stored")
    metrics = state.metrics
    # Store writes take milliseconds: a worker thread keeps the event loop answering other requests.
    result: IngestResult = await run_in_threadpool(ingest_events, store, events, source="http", metrics=metrics.stream)
    received = metrics.events_received
    for outcome, n in (
        ("accepted", result.accepted),
        ("duplicate", result.duplicates),
        ("rejected", len(result.rejected)),
    ):
        if n:
            received.labels(outcome=outcome).inc(n)
    if not result.events:
        reasons = "; ".join(f"event {r['index']}: {r['reason']}" for r in result.rejected[:20])
        more = f" (and {len(result.rejected) - 20} more)" if len(result.rejected) > 20 else ""
        error = InvalidRequestError("events", f"every event was rejected: {reasons}{more}")
        return json_response(
            {"error": error.code, "message": str(error), "rejected": result.rejected, "accepted": 0,
             "duplicates": 0},
            status=422,
        )  # fmt: skip
    holder = state.holder
    users: set[str] = set()
    if holder is not None:
        if holder.follower is not None:
            # Read the store back: this worker applies the events now, in the store's order, exactly as every other
            # process does on its next poll (the store is the one source of the live state).
            await run_in_threadpool(holder.follower.poll)
            overlays = holder.overlays
            users = {e.user_id for e in result.events if e.user_id in overlays}
        else:
            users = holder.overlays.add(result.events)
    return json_response({**result.to_dict(), "users_updated": len(users)})
