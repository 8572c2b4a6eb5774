"""Request and response models of the HTTP API.

Requests are validated through these models (strict types, unknown fields refused). Responses are declared for
the OpenAPI documentation only: the routes return pre-serialised JSON, so no response validation runs on the
request path.
"""

from __future__ import annotations

from typing import Any

from fastapi.openapi.models import Example
from pydantic import BaseModel, ConfigDict, Field, model_validator

_STRICT = ConfigDict(extra="forbid", strict=True)


# ---------------------------------------------------------------------- requests
class Filters(BaseModel):
    """Restrictions applied before the top-k."""

    model_config = ConfigDict(
        extra="forbid", strict=True, json_schema_extra={"example": {"genres": ["Comedy"], "year_min": 1990}}
    )

    genres: list[str] | None = Field(None, description="Keep items with any of these genres.")
    year_min: int | None = Field(None, ge=0, description="Keep items released in or after this year.")
    year_max: int | None = Field(None, ge=0, description="Keep items released in or before this year.")


class RecommendRequest(BaseModel):
    """``POST /recommend``."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [{"user_id": "196", "k": 10, "exclude_seen": True, "filters": {"genres": ["Comedy", "Drama"]}}]
        },
    )

    user_id: str = Field(..., min_length=1, description="External user id.")
    k: int = Field(10, ge=1, description="How many items (at most the server's max_k).")
    exclude_seen: bool = Field(True, description="Leave out items the user interacted with in training.")
    filters: Filters | None = Field(None, description="Genre and year restrictions.")
    explain: bool = Field(True, description="Name the user's items that explain each recommendation.")


class SimilarRequest(BaseModel):
    """``POST /similar``."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [{"item_id": "50", "k": 5}]})

    item_id: str = Field(..., min_length=1, description="External item id.")
    k: int = Field(10, ge=1, description="How many items (at most the server's max_k).")


class SwitchRequest(BaseModel):
    """``POST /admin/models/switch``: exactly one of ``version`` and ``alias``."""

    model_config = ConfigDict(
        extra="forbid", strict=True, json_schema_extra={"examples": [{"version": 3}, {"alias": "champion"}]}
    )

    version: int | None = Field(None, ge=1, description="Registered version to serve.")
    alias: str | None = Field(None, min_length=1, description="Registry alias to resolve and serve.")

    @model_validator(mode="after")
    def _one_of(self) -> SwitchRequest:
        if (self.version is None) == (self.alias is None):
            raise ValueError("give exactly one of 'version' and 'alias'")
        return self


class PromoteRequest(BaseModel):
    """``POST /admin/models/promote``: the version to promote to champion through the gate."""

    model_config = ConfigDict(
        extra="forbid", strict=True, json_schema_extra={"examples": [{"version": 3}, {"version": 3, "force": True}]}
    )

    version: int = Field(..., ge=1, description="Registered version to promote.")
    force: bool = Field(False, description="Promote even if the gate refuses (recorded as forced).")
    actor: str | None = Field(
        None, min_length=1, max_length=100, description="Who asks, for the decision log (default: api)."
    )


class RollbackRequest(BaseModel):
    """``POST /admin/models/rollback``: ``champion`` back to the previous champion of the decision log."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [{}, {"version": 2}]})

    version: int | None = Field(
        None, ge=1, description="The previous champion the caller expects to return to (409 when it is another)."
    )
    actor: str | None = Field(
        None, min_length=1, max_length=100, description="Who asks, for the decision log (default: api)."
    )


# ---------------------------------------------------------------------- events
#: Examples of ``POST /events`` bodies (a list, or the ``{"events": [...]}`` form replay's HTTP sink posts).
EVENT_EXAMPLES: dict[str, Example] = {
    "ratings": {
        "summary": "A list of rating events",
        "value": [
            {"event_id": "e1", "user_id": "42", "item_id": "50", "rating": 5, "timestamp": 1700000000},
            {"event_id": "e2", "user_id": "42", "item_id": "181", "rating": 4, "timestamp": 1700000060},
        ],
    },
    "interactions": {
        "summary": "Interaction events (kind and value)",
        "value": [{"event_id": "e3", "user_id": "7", "item_id": "50", "kind": "play", "value": 3.0}],
    },
    "wrapped": {
        "summary": "The same, wrapped in an object",
        "value": {"events": [{"event_id": "e4", "user_id": "42", "item_id": "50", "kind": "view"}]},
    },
}


class EventBatch(BaseModel):
    """``POST /events`` in object form: ``{"events": [...]}``. Each event is validated by the event path."""

    model_config = ConfigDict(extra="forbid")

    events: list[Any] = Field(
        ...,
        description="Event objects: event_id, user_id, item_id, and rating (ratings) or kind/value "
        "(interactions), optional timestamp (epoch seconds or ISO-8601).",
    )


class RejectedEvent(BaseModel):
    index: int = Field(..., description="Position of the event in the request's list.")
    event_id: str | None
    reason: str = Field(..., description="What is wrong with the event, naming the field.")
    code: str = Field(..., description="Machine-readable reason.")


class EventsResponse(BaseModel):
    accepted: int = Field(..., description="Events newly stored.")
    duplicates: int = Field(
        ..., description="Events already stored with the same event_id and content: a retry is harmless."
    )
    conflicts: int = Field(
        0,
        description="Events whose event_id an earlier event of the request, or a stored event, has with other "
        "content: not stored (the first stays); listed in rejected with code 'conflict'.",
    )
    rejected: list[RejectedEvent] = Field(
        ...,
        description="Rejected events (invalid or conflicting), each with its reason; not stored. At most "
        "serving.max_reported_rejections (20) are listed.",
    )
    rejected_total: int = Field(0, description="How many events were rejected, listed or not.")
    users_updated: int = Field(..., description="Users whose next recommendations reflect these events.")


# ---------------------------------------------------------------------- responses (documentation)
class ItemOut(BaseModel):
    item_id: str
    title: str | None = None
    genres: list[str] = []
    year: int | None = None
    score: float
    because: list[str] = Field([], description="The user's items that explain this recommendation.")


class ModelOut(BaseModel):
    name: str = Field(..., description="Registered model name.")
    version: int | None
    alias: str | None
    type: str | None = Field(None, description="Model family (als, ease, ...).")


class Provenance(BaseModel):
    request_id: str
    model_name: str
    model_version: int | None
    model_type: str | None
    git_sha: str | None
    data_snapshot_id: str | None
    bundle_created_at: str | None
    container_image_digest: str | None
    signed: bool = Field(
        False, description="The bundle's manifest signature was verified against a configured key when it was loaded."
    )
    timestamp: str
    latency_ms: float


class ListResponse(BaseModel):
    recommendations: list[ItemOut]
    requested: int
    returned: int
    note: str | None = Field(None, description="Set when fewer items than requested pass the filters.")
    model: ModelOut
    is_fallback: bool
    fallback_reason: str | None = Field(None, description="unknown_user, sparse_history or cold_item.")
    variant: str | None = Field(
        None, description="The experiment variant that answered (interleaved: both variants' lists merged)."
    )
    experiment: str | None = Field(None, description="The experiment the user is in, if any.")
    provenance: Provenance


class RecommendResponse(ListResponse):
    user_id: str
    realtime_events: int | None = Field(
        None,
        description="Items of the user's events newer than the served model that went into this list (absent: "
        "the model's own list).",
    )


class SimilarResponse(ListResponse):
    item_id: str


class PopularResponse(ListResponse):
    genre: str | None = None


class ItemResponse(BaseModel):
    item_id: str
    title: str | None
    genres: list[str]
    year: int | None
    n_interactions: int


class HistoryItem(BaseModel):
    item_id: str
    title: str | None
    genres: list[str]
    year: int | None
    value: float


class HistoryResponse(BaseModel):
    user_id: str
    total: int
    items: list[HistoryItem]


class HealthResponse(BaseModel):
    status: str = Field(..., description="ok when a model is served, else starting or degraded.")
    model: ModelOut | None
    loaded_at: str | None
    uptime_s: float
    last_error: str | None = None


class ModelsResponse(BaseModel):
    name: str
    serving: ModelOut | None
    aliases: dict[str, int]
    versions: list[dict[str, Any]]


class ErrorBody(BaseModel):
    error: str = Field(..., description="Machine-readable error kind.")
    message: str = Field(..., description="What is wrong, for people.")


#: Error responses shared by the documented routes.
ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "Unknown id."},
    422: {"model": ErrorBody, "description": "Invalid parameter: names the field and the rule."},
    503: {"model": ErrorBody, "description": "No model loaded yet."},
}
