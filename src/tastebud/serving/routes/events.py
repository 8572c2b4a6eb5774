"""``POST /events``: store interaction events and personalise their users' next recommendations at once."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from tastebud.serving.errors import InvalidRequestError, NoStoreError
from tastebud.serving.routes._shared import json_response
from tastebud.serving.schemas import ERRORS, EVENT_EXAMPLES, ErrorBody, EventBatch, EventsResponse
from tastebud.stream.handlers import EventRules
from tastebud.stream.ingest import IngestResult, ingest_events

router = APIRouter(tags=["events"])

_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    413: {"model": ErrorBody, "description": "The body is larger than serving.max_body_bytes."},
}


@router.post("/events", response_model=EventsResponse, responses=_RESPONSES)
async def post_events(
    request: Request,
    body: list[Any] | EventBatch = Body(
        ..., description='A list of events, or {"events": [...]}.', openapi_examples=EVENT_EXAMPLES
    ),
) -> Response:
    """Validate and store events; the valid ones update their users' recommendations right away.

    Every event goes through the validation the Kafka consumer uses (the same rules, ids under the one id rule of
    :mod:`tastebud.ids`). A batch with some invalid events stores the valid ones and lists the others under
    ``rejected`` (200); a batch in which every event is invalid is a 422 naming the reasons.

    - A repeated ``event_id`` with the same content counts as a duplicate and changes nothing.
    - A repeated ``event_id`` with other content (within the request, or against the stored event) is a
      *conflict*: not stored, the first one stays; it is listed in ``rejected`` with code ``conflict`` and counted
      in ``conflicts``.

    Limits (``serving`` settings): a body over ``max_body_bytes`` (1 MiB) is a 413 before it is parsed; more than
    ``max_events_per_request`` (1,000) events is a 422 before any is read; ids over ``max_id_chars`` (128) and other
    string fields over ``max_event_field_chars`` (64) reject their event. ``rejected`` lists the first
    ``max_reported_rejections`` (20) rejections and ``rejected_total`` counts all of them; no reason quotes more of
    a value than 64 characters. Rejected events are dead-lettered bounded (``dead_letter_max_bytes``) and once per
    payload.
    """
    events = body.events if isinstance(body, EventBatch) else body
    if not events:
        raise InvalidRequestError("events", "must hold at least one event")
    state = request.app.state
    settings = state.settings.serving
    metrics = state.metrics
    if len(events) > settings.max_events_per_request:
        metrics.rejected_requests.labels(reason="too_many_events").inc()
        raise InvalidRequestError(
            "events",
            f"{len(events)} events in one request, more than the limit of {settings.max_events_per_request}; "
            "split the batch (serving.max_events_per_request)",
        )
    store = state.store
    if store is None or not hasattr(store, "write_events"):
        raise NoStoreError("no event store configured: events cannot be stored")
    rules = getattr(state, "event_rules", None)
    if rules is None:
        rules = state.event_rules = EventRules.from_settings(state.settings)
    # Store writes take milliseconds: a worker thread keeps the event loop answering other requests.
    result: IngestResult = await run_in_threadpool(
        ingest_events, store, events, source="http", rules=rules, metrics=metrics.stream
    )
    received = metrics.events_received
    conflicts = result.conflicts
    for outcome, n in (
        ("accepted", result.accepted),
        ("duplicate", result.duplicates),
        ("conflict", conflicts),
        ("rejected", len(result.rejected) - conflicts),
    ):
        if n:
            received.labels(outcome=outcome).inc(n)
    shown = settings.max_reported_rejections
    summary = result.to_dict(shown)
    if not result.events:
        total = len(result.rejected)
        reasons = "; ".join(f"event {r['index']}: {r['reason']}" for r in result.rejected[:shown])
        more = f" (and {total - shown} more)" if total > shown else ""
        error = InvalidRequestError("events", f"every event was rejected: {reasons}{more}")
        return json_response({"error": error.code, "message": str(error), **summary}, status=422)
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
    return json_response({**summary, "users_updated": len(users)})
