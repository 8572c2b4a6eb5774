"""Avro schemas: round trips, the message header, corrupt input and schema evolution between versions."""

from __future__ import annotations

import copy
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tastebud.stream.handlers import Event, handle_message
from tastebud.stream.schemas import (
    HEADER_SIZE,
    MAGIC,
    SCHEMA_DIR,
    SCHEMA_IDS,
    MessageError,
    SchemaSet,
    check_evolution,
    default_schemas,
    load_schema_dir,
    schema_version,
)

RATING = {"event_id": "e1", "user_id": "196", "item_id": "242", "rating": 3.5, "timestamp": 881250949}
INTERACTION = {"event_id": "e2", "user_id": "u", "item_id": "i", "kind": "play", "value": 2.0, "timestamp": 1}
SERVED = {
    "request_id": "r1",
    "user_id": "196",
    "item_ids": ["1", "2"],
    "scores": [0.5, 0.25],
    "model_name": "movielens-100k",
    "model_version": 3,
    "is_fallback": False,
    "variant": None,
    "timestamp": 1_700_000_000.5,
}


def rating_v2() -> dict:
    """Version 2 of the rating schema: appends an optional ``session_id``."""
    schema = copy.deepcopy(default_schemas().latest("rating").schema)
    schema["fields"].append({"name": "session_id", "type": ["null", "string"], "default": None})
    return schema


def test_shipped_schemas_cover_every_schema_id():
    files = load_schema_dir(SCHEMA_DIR)
    assert {sv.name for sv in files} == set(SCHEMA_IDS)
    assert default_schemas().names == sorted(SCHEMA_IDS)


@pytest.mark.parametrize(("name", "record"), [("rating", RATING), ("interaction", INTERACTION), ("served", SERVED)])
def test_round_trip(name, record):
    name = "recommendation_served" if name == "served" else name
    data = default_schemas().encode(name, record)
    decoded = default_schemas().decode(data)
    assert (decoded.name, decoded.version, decoded.newer) == (name, default_schemas().latest(name).version, False)
    assert {key: decoded.record[key] for key in record} == record  # appended fields take their defaults


def test_header_is_magic_schema_id_and_version():
    data = default_schemas().encode("interaction", INTERACTION)
    assert data[:HEADER_SIZE] == bytes((MAGIC, SCHEMA_IDS["interaction"], 1))


def test_interaction_value_defaults_to_one():
    record = {k: v for k, v in INTERACTION.items() if k != "value"}
    assert default_schemas().decode(default_schemas().encode("interaction", record)).record["value"] == 1.0


@pytest.mark.parametrize(
    ("data", "code", "words"),
    [
        (b"", "bad_header", "shorter than"),
        (json.dumps(RATING).encode(), "bad_header", "magic"),
        (bytes((MAGIC, 99, 1)) + b"x", "unknown_schema", "unknown schema id 99"),
        (bytes((MAGIC, 1, 0)) + b"x", "bad_header", "version 0"),
        (bytes((MAGIC, 1, 1)) + b"\x04e1\x06", "decode_error", "truncated"),
    ],
)
def test_bad_messages_are_named(data, code, words):
    with pytest.raises(MessageError, match=words) as info:
        default_schemas().decode(data)
    assert info.value.code == code


def test_trailing_bytes_of_a_known_version_are_an_error():
    data = default_schemas().encode("rating", RATING) + b"\x00\x01"
    with pytest.raises(MessageError, match="2 trailing bytes") as info:
        default_schemas().decode(data)
    assert info.value.code == "decode_error"


def test_not_bytes_is_an_error():
    with pytest.raises(MessageError, match="expected bytes"):
        default_schemas().decode("hello")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("record", "words"),
    [
        ({k: v for k, v in RATING.items() if k != "item_id"}, "'item_id' is missing"),
        ({**RATING, "rating": "five"}, "rating"),
        ({**RATING, "ratng": 4.0}, "unknown fields"),
        ({**RATING, "timestamp": 1.5}, "timestamp"),
    ],
)
def test_encode_rejects_records_that_do_not_match(record, words):
    with pytest.raises(MessageError, match=words):
        default_schemas().encode("rating", record)


def test_unknown_schema_name():
    with pytest.raises(MessageError, match="unknown schema 'clicks'"):
        default_schemas().encode("clicks", {})


# ------------------------------------------------------------------------------------------------ evolution
@pytest.fixture
def old_and_new() -> tuple[SchemaSet, SchemaSet]:
    """An older process (rating v1 only) and a newer one (rating v1 and v2)."""
    shipped = load_schema_dir(SCHEMA_DIR)
    old = SchemaSet(shipped)
    new = SchemaSet([*shipped, schema_version("rating", 2, rating_v2())])
    return old, new


def test_newer_producer_older_consumer(old_and_new):
    old, new = old_and_new
    data = new.encode("rating", {**RATING, "session_id": "s-9"})
    assert data[2] == 2
    decoded = old.decode(data)
    assert decoded.newer and decoded.version == 2
    assert decoded.record == RATING  # the appended field is skipped
    event = handle_message(data, schemas=old, now=2e9)
    assert isinstance(event, Event) and event.rating == 3.5 and event.event_id == "e1"


def test_older_producer_newer_consumer(old_and_new):
    old, new = old_and_new
    decoded = new.decode(old.encode("rating", RATING))
    assert (decoded.version, decoded.newer) == (1, False)
    assert decoded.record == {**RATING, "session_id": None}  # the default fills in


def test_newer_consumer_reads_its_own_version(old_and_new):
    _, new = old_and_new
    record = {**RATING, "session_id": "s-1"}
    assert new.decode(new.encode("rating", record)).record == record


def test_newer_message_with_corrupt_known_part_still_fails(old_and_new):
    old, new = old_and_new
    data = new.encode("rating", {**RATING, "session_id": "s"})
    with pytest.raises(MessageError):
        old.decode(data[:8])


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda s: s["fields"].pop(), "drops fields"),
        (lambda s: s["fields"][1].update(name="uid"), "never renamed"),
        (lambda s: s["fields"][3].update(type="double"), "never renamed, reordered or retyped"),
        (lambda s: s["fields"].append({"name": "x", "type": "string"}), "needs a default"),
    ],
)
def test_breaking_changes_are_refused(change, words):
    v1 = default_schemas().latest("rating")
    schema = copy.deepcopy(v1.schema)
    change(schema)
    with pytest.raises(MessageError, match=words):
        check_evolution(v1, schema_version("rating", 2, schema))


def test_version_gaps_are_refused():
    shipped = load_schema_dir(SCHEMA_DIR)
    with pytest.raises(MessageError, match="without gaps"):
        SchemaSet([*shipped, schema_version("rating", 3, rating_v2())])


# ------------------------------------------------------------------------------------------------ property
ids = st.text(min_size=1, max_size=40)
float32s = st.floats(min_value=0.5, max_value=5.0, width=32)


@settings(max_examples=200, deadline=None)
@given(event_id=ids, user_id=ids, item_id=ids, rating=float32s, ts=st.integers(0, 2**62))
def test_any_rating_record_round_trips(event_id, user_id, item_id, rating, ts):
    record = {"event_id": event_id, "user_id": user_id, "item_id": item_id, "rating": rating, "timestamp": ts}
    assert default_schemas().decode(default_schemas().encode("rating", record)).record == record


@settings(max_examples=300, deadline=None)
@given(schema_id=st.sampled_from(sorted(SCHEMA_IDS.values())), version=st.integers(0, 3), body=st.binary(max_size=64))
def test_random_bodies_never_crash_the_decoder(schema_id, version, body):
    data = bytes((MAGIC, schema_id, version)) + body
    try:
        default_schemas().decode(data)
    except MessageError as err:
        assert err.code in {"bad_header", "unknown_schema", "decode_error"}
