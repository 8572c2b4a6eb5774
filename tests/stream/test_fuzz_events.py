"""Property-based fuzzing of the event validators: any input gives an event or a bounded rejection, never an error.

``normalise_event(s)`` (HTTP), ``handle_message`` (Kafka) and ``ingest_events`` (validation, conflicts, bounded
dead letters) get arbitrary JSON values, event-shaped dicts with hostile field values, and arbitrary or corrupted
message bytes. The HTTP route is fuzzed in ``tests/serving/test_fuzz_events_http.py``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tastebud.ids import normalise_id
from tastebud.store import Store, create_store
from tastebud.stream.handlers import (
    EVENT_FIELDS,
    EVENT_KINDS,
    Event,
    EventRules,
    Rejected,
    handle_message,
    normalise_event,
    normalise_events,
)
from tastebud.stream.ingest import ingest_events
from tastebud.stream.schemas import default_schemas

NOW = 1_700_000_000.0
#: Longest reason any rejection may carry (a preview is 64 characters; a reason quotes at most two of them).
MAX_REASON = 700
#: Strings that once broke a parser: superscript digits, an offset before year 1, a float overflow, NUL.
TRICKY = ["rating", " Play ", "VIEW", "2023-11-14T22:13:20Z", "0001-01-01T00:00:00+01:00", "1e400", "²³", "-1",
          "1700000000", "\x00", " ", "", "9" * 500]  # fmt: skip
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**2000), max_value=2**2000),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec=None, categories=["Cc", "Zs", "Nd", "No", "Cs"]), max_size=20),
    st.sampled_from(TRICKY),
    st.text(min_size=100, max_size=400),
)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)  # fmt: skip
field_names = st.sampled_from(sorted(EVENT_FIELDS)) | st.text(max_size=12)
events_like = st.dictionaries(field_names, json_values, max_size=9) | st.fixed_dictionaries(
    {"user_id": scalars, "item_id": scalars},
    optional={"event_id": scalars, "kind": scalars, "rating": scalars, "value": scalars, "timestamp": scalars},
)
anything = events_like | json_values


def check(out: Event | Rejected, rules: EventRules = EventRules()) -> None:
    """An event in normal form, or a rejection with a short reason and a known code."""
    if isinstance(out, Rejected):
        assert isinstance(out.reason, str) and 0 < len(out.reason) <= MAX_REASON, out.reason[:200]
        assert isinstance(out.code, str) and out.code.replace("_", "").isalpha()
        assert out.event_id is None or len(out.event_id) <= rules.max_id_length + 16
        return
    assert isinstance(out, Event)
    for name in ("event_id", "user_id", "item_id"):
        value = getattr(out, name)
        assert normalise_id(value, name, max_length=rules.max_id_length) == value
    assert out.kind in EVENT_KINDS
    assert math.isfinite(out.value) and out.value >= 0
    if out.kind == "rating":
        assert out.rating is not None and rules.rating_min <= out.rating <= rules.rating_max
    assert isinstance(out.timestamp, int) and 0 <= out.timestamp <= NOW + rules.max_future_s


@FUZZ
@given(raw=anything)
def test_normalise_event_never_raises(raw: Any) -> None:
    check(normalise_event(raw, now=NOW))


@FUZZ
@given(raws=st.lists(anything, max_size=8))
def test_normalise_events_partitions_the_batch(raws: list[Any]) -> None:
    events, rejected = normalise_events(raws, now=NOW)
    assert len(events) + len(rejected) == len(raws)
    for e in events:
        check(e)
    for _, r in rejected:
        check(r)


def _valid_message() -> bytes:
    return default_schemas().encode(
        "rating", {"event_id": "e1", "user_id": "u", "item_id": "i", "rating": 4.0, "timestamp": 1_600_000_000}
    )


@FUZZ
@given(data=st.binary(max_size=200))
def test_handle_message_of_arbitrary_bytes(data: bytes) -> None:
    check(handle_message(data, now=NOW))


@FUZZ
@given(cut=st.integers(min_value=0, max_value=60), flips=st.lists(st.tuples(st.integers(0, 60), st.integers(0, 255))),
       tail=st.binary(max_size=20))  # fmt: skip
def test_handle_message_of_corrupted_messages(cut: int, flips: list[tuple[int, int]], tail: bytes) -> None:
    data = bytearray(_valid_message()[: max(cut, 3)] if cut < 50 else _valid_message())
    for position, byte in flips:
        if position < len(data):
            data[position] = byte
    check(handle_message(bytes(data) + tail, now=NOW))


@FUZZ
@given(
    record=st.fixed_dictionaries(
        {
            "event_id": st.text(max_size=300),
            "user_id": st.text(max_size=300),
            "item_id": st.text(max_size=300),
            "kind": st.text(max_size=300),
            "value": st.floats(),
            "timestamp": st.integers(min_value=-(2**63), max_value=2**63 - 1),
        }
    )
)
def test_handle_message_of_schema_valid_hostile_records(record: dict[str, Any]) -> None:
    try:
        data = default_schemas().encode("interaction", record, check=False)
    except Exception:  # a value Avro itself cannot write (e.g. a lone surrogate): no message to handle
        return
    check(handle_message(data, now=NOW))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    s = create_store(url=f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'events.db'}")
    s.init_schema()
    yield s
    s.close()


@FUZZ
@given(raws=st.lists(anything, max_size=8), ids=st.lists(st.sampled_from(["a", "b", " a "]), max_size=8))
def test_ingest_never_raises_and_keeps_dead_letters_bounded(store: Store, raws: list[Any], ids: list[str]) -> None:
    # repeated ids make duplicates and conflicts, within the call and against earlier calls
    raws = [{**r, "event_id": i} if isinstance(r, dict) else r for r, i in zip(raws, ids, strict=False)] + raws[
        len(ids) :
    ]
    rules = EventRules(dead_letter_max_bytes=128)
    result = ingest_events(store, raws, now=NOW, rules=rules)
    assert result.accepted + result.duplicates + len(result.rejected) == len(raws)
    assert result.conflicts == sum(1 for r in result.rejected if r["code"] == "conflict")
    for r in result.rejected:
        assert len(r["reason"]) <= MAX_REASON
    for letter in store.query_dead_letters(limit=50):
        assert len(letter["payload"]) <= 128 and letter["payload_size"] >= len(letter["payload"])
