"""Event validation and normalisation, shared by the HTTP and Kafka paths (pure functions, no broker)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from types import SimpleNamespace

import pytest

from tastebud.stream.handlers import (
    INTERACTION_KINDS,
    Event,
    EventRules,
    Rejected,
    derive_event_id,
    encode_event,
    handle_message,
    handle_messages,
    normalise_event,
    normalise_events,
)
from tastebud.stream.schemas import default_schemas

NOW = 1_700_000_000.0
RATING = {"event_id": "e1", "user_id": 196, "item_id": "242", "rating": 3, "timestamp": 881250949}


def ok(raw, **kwargs) -> Event:
    out = normalise_event(raw, now=NOW, **kwargs)
    assert isinstance(out, Event), out
    return out


def rejected(raw, **kwargs) -> Rejected:
    out = normalise_event(raw, now=NOW, **kwargs)
    assert isinstance(out, Rejected), out
    return out


def test_rating_is_normalised():
    event = ok(RATING)
    assert event == Event("e1", "196", "242", "rating", 3.0, 3.0, 881250949, "http")
    assert isinstance(event.user_id, str) and isinstance(event.rating, float)


def test_kind_is_rating_when_a_rating_is_given_without_kind():
    assert ok({k: v for k, v in RATING.items()}).kind == "rating"
    assert ok({**RATING, "kind": " Rating "}).kind == "rating"


@pytest.mark.parametrize("kind", INTERACTION_KINDS)
def test_interactions(kind):
    event = ok({"event_id": "e", "user_id": "u", "item_id": "i", "kind": kind.upper(), "timestamp": 10})
    assert (event.kind, event.value, event.rating) == (kind, 1.0, None)


def test_ids_are_stripped_and_value_kept():
    event = ok({"event_id": " e ", "user_id": " u1 ", "item_id": "i", "kind": "play", "value": 7, "timestamp": 1})
    assert (event.event_id, event.user_id, event.value) == ("e", "u1", 7.0)


@pytest.mark.parametrize(
    ("stamp", "expected"),
    [
        (881250949, 881250949),
        (881250949.9, 881250949),
        ("881250949", 881250949),
        ("2023-11-14T22:13:20Z", 1_700_000_000),
        ("2023-11-14T23:13:20+01:00", 1_700_000_000),
        (datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC), 1_700_000_000),
        (datetime(2023, 11, 14, 17, 13, 20, tzinfo=timezone(timedelta(hours=-5))), 1_700_000_000),
        (None, int(NOW)),
    ],
)
def test_timestamps_become_utc_seconds(stamp, expected):
    assert ok({**RATING, "timestamp": stamp}).timestamp == expected


@pytest.mark.parametrize(
    ("change", "code", "words"),
    [
        ({"user_id": None}, "missing_field", "user_id is required"),
        ({"user_id": "  "}, "missing_field", "user_id is empty"),
        ({"item_id": 4.5}, "invalid_field", "item_id must be a string or an integer"),
        ({"item_id": True}, "invalid_field", "item_id must be a string"),
        ({"user_id": "x" * 200}, "invalid_field", "200 characters"),
        ({"rating": 7}, "out_of_range", r"rating 7 is outside \[0.5, 5\]"),
        ({"rating": 0}, "out_of_range", "outside"),
        ({"rating": float("nan")}, "out_of_range", "finite"),
        ({"rating": "4"}, "invalid_field", "rating must be a number"),
        ({"kind": "share"}, "invalid_kind", "kind 'share' is not one of"),
        ({"kind": "view"}, "invalid_field", "a view event carries no rating"),
        ({"kind": 3}, "invalid_kind", "kind must be a string"),
        ({"value": -1}, "out_of_range", "value -1 is negative"),
        ({"timestamp": 1_700_000_000_000}, "out_of_range", "looks like milliseconds"),
        ({"timestamp": NOW + 3 * 86_400}, "out_of_range", "in the future"),
        ({"timestamp": -5}, "out_of_range", "before 1970"),
        ({"timestamp": "2023-11-14T22:13:20"}, "invalid_field", "has no timezone"),
        ({"timestamp": "yesterday"}, "invalid_field", "neither epoch seconds nor ISO-8601"),
        ({"ratng": 4}, "unknown_field", "unknown field"),
    ],
)
def test_invalid_events_are_rejected_with_a_reason(change, code, words):
    raw = {**RATING, **change}
    out = rejected(raw)
    assert out.code == code
    assert re.search(words, out.reason), out.reason
    assert out.payload is raw
    assert out.event_id == "e1"


def test_rating_event_without_rating_and_interaction_without_kind():
    assert rejected({"event_id": "e", "user_id": "u", "item_id": "i", "kind": "rating"}).code == "missing_field"
    assert "kind is required" in rejected({"event_id": "e", "user_id": "u", "item_id": "i"}).reason


def test_not_an_object():
    assert rejected([1, 2]).code == "not_an_object"


def test_rules_change_the_limits():
    rules = EventRules(rating_min=1, rating_max=10, max_id_length=4, max_future_s=0)
    assert ok({**RATING, "rating": 9}, rules=rules).rating == 9.0
    assert rejected({**RATING, "user_id": "12345"}, rules=rules).code == "invalid_field"
    assert rejected({**RATING, "timestamp": NOW + 10}, rules=rules).code == "out_of_range"
    settings = SimpleNamespace(rating_min=1.0, rating_max=10.0)
    assert EventRules.from_settings(settings) == EventRules(rating_min=1.0, rating_max=10.0)


def test_missing_event_id_is_derived_from_content():
    raw = {k: v for k, v in RATING.items() if k != "event_id"}
    first, again = ok(raw), ok(dict(raw))
    assert first.event_id == again.event_id and first.event_id.startswith("h-")
    assert ok({**raw, "rating": 4}).event_id != first.event_id
    assert first.event_id == derive_event_id("196", "242", "rating", 881250949, 3.0, 3.0)


def test_batch_keeps_indices_of_rejections():
    raws = [RATING, {**RATING, "rating": 9}, {**RATING, "event_id": "e3"}, "junk"]
    events, bad = normalise_events(raws, now=NOW, source="replay")
    assert [e.event_id for e in events] == ["e1", "e3"]
    assert all(e.source == "replay" for e in events)
    assert [i for i, _ in bad] == [1, 3]


# ------------------------------------------------------------------------------------------------ messages
def test_message_round_trip_equals_the_event():
    for event in (
        Event("e1", "u", "i", "rating", 4.5, 4.5, 100, "kafka"),
        Event("e2", "u", "i", "like", None, 2.0, 100, "kafka"),
    ):
        name, data = encode_event(event)
        assert name == ("rating" if event.kind == "rating" else "interaction")
        assert handle_message(data, now=NOW) == event


def test_bad_message_keeps_the_original_bytes():
    data = default_schemas().encode("rating", {**RATING, "user_id": "196", "rating": 9.0})
    out = handle_message(data, now=NOW)
    assert isinstance(out, Rejected) and out.code == "out_of_range"
    assert out.payload == data and out.event_id == "e1"
    assert out.reason.startswith("rating v1: rating 9 is outside")


def test_undecodable_message():
    out = handle_message(b'{"user_id": 1}', now=NOW)
    assert isinstance(out, Rejected) and out.code == "bad_header" and out.payload == b'{"user_id": 1}'


def test_served_messages_are_not_events():
    served = {"request_id": "r", "item_ids": [], "scores": [], "model_name": "m", "timestamp": 1.0}
    out = handle_message(default_schemas().encode("recommendation_served", served), now=NOW)
    assert isinstance(out, Rejected) and out.code == "not_an_event"


def test_interaction_message_may_not_claim_kind_rating():
    record = {"event_id": "e", "user_id": "u", "item_id": "i", "kind": "rating", "value": 1.0, "timestamp": 1}
    out = handle_message(default_schemas().encode("interaction", record), now=NOW)
    assert isinstance(out, Rejected) and out.code == "invalid_kind"


def test_avro_empty_ids_and_nan_are_rejected():
    schemas = default_schemas()
    empty = schemas.encode(
        "interaction", {"event_id": "e", "user_id": "", "item_id": "i", "kind": "view", "timestamp": 1}
    )
    nan = schemas.encode(
        "interaction",
        {"event_id": "e", "user_id": "u", "item_id": "i", "kind": "view", "value": float("nan"), "timestamp": 1},
    )
    events, bad = handle_messages(
        [empty, nan, encode_event(Event("x", "u", "i", "view", None, 1.0, 1, "k"))[1]], now=NOW
    )
    assert [e.event_id for e in events] == ["x"]
    assert [(i, r.code) for i, r in bad] == [(0, "missing_field"), (1, "out_of_range")]


def test_store_record_has_the_store_fields():
    record = Event("e", "u", "i", "view", None, 1.0, 5, "http").to_record()
    assert set(record) == {"event_id", "user_id", "item_id", "kind", "rating", "value", "timestamp", "source"}
