"""The event path's limits, shared by HTTP and Kafka: bounded messages, fields and dead letters, and conflicts."""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import SimpleNamespace

import pytest

from tastebud.config import build_settings
from tastebud.stream.handlers import EventRules, Rejected, handle_message, normalise_event
from tastebud.stream.ingest import dead_letter_records, ingest_events
from tastebud.stream.schemas import default_schemas

NOW = 1_700_000_000.0
RATING = {"event_id": "e1", "user_id": "196", "item_id": "242", "rating": 3, "timestamp": 881250949}


def message(**fields):
    return default_schemas().encode("rating", {**RATING, "rating": 3.0, **fields}, check=False)


def test_rules_come_from_the_serving_limits(tmp_path: Path) -> None:
    settings = build_settings(
        home=tmp_path,
        serving={"max_id_chars": 40, "max_event_field_chars": 32, "max_body_bytes": 4096, "dead_letter_max_bytes": 9},
    )
    rules = EventRules.from_settings(settings)
    assert (rules.max_id_length, rules.max_field_chars, rules.max_message_bytes, rules.dead_letter_max_bytes) == (
        40, 32, 4096, 9,
    )  # fmt: skip
    # a section alone (older callers) keeps the defaults of the rest
    assert EventRules.from_settings(SimpleNamespace(rating_max=10.0)) == EventRules(rating_max=10.0)


def test_a_message_over_the_limit_is_rejected_unread() -> None:
    rules = EventRules(max_message_bytes=1024)
    data = message(user_id="u" * 5000)
    out = handle_message(data, rules=rules, now=NOW)
    assert isinstance(out, Rejected) and out.code == "too_large" and out.payload is data
    assert str(len(data)) in out.reason and len(out.reason) < 200


@pytest.mark.parametrize(
    ("fields", "code", "words"),
    [
        ({"user_id": "u" * 129}, "invalid_field", "user_id has 129 characters"),
        ({"user_id": "a\x00b"}, "invalid_field", "U+0000"),
        ({"item_id": "  "}, "missing_field", "item_id is empty"),
        ({"event_id": "e" * 10_000}, "invalid_field", "event_id has 10000 characters"),
    ],
)
def test_kafka_ids_follow_the_one_id_rule(fields, code, words) -> None:
    out = handle_message(message(**fields), now=NOW)
    assert isinstance(out, Rejected) and out.code == code and words in out.reason
    assert len(out.reason) < 300


def test_kafka_ids_are_stripped_like_http_ones() -> None:
    event = handle_message(message(user_id=" 196 "), now=NOW)
    assert not isinstance(event, Rejected) and event.user_id == "196"
    assert normalise_event({**RATING, "user_id": " 196 "}, now=NOW) == event.__class__(
        *[getattr(event, f) if f != "source" else "http" for f in event.__slots__]
    )


def test_long_interaction_kind_is_refused_before_parsing() -> None:
    data = default_schemas().encode(
        "interaction",
        {"event_id": "k", "user_id": "u", "item_id": "i", "kind": "x" * 100_000, "value": 1.0, "timestamp": 1},
        check=False,
    )
    out = handle_message(data, now=NOW)
    assert isinstance(out, Rejected) and out.code == "too_long" and len(out.reason) < 300


def test_http_reasons_never_echo_more_than_a_preview() -> None:
    for field, value in (("rating", "5" * 100_000), ("timestamp", "x" * 100_000), ("kind", "y" * 100_000),
                         ("rating", [1] * 100_000), ("value", {"a": "b" * 100_000})):  # fmt: skip
        out = normalise_event({**RATING, field: value}, now=NOW, rules=EventRules(max_field_chars=10**9))
        assert isinstance(out, Rejected), (field, value)
        assert len(out.reason) < 300, out.reason
    many = {**RATING, **{f"x{i}" * 50: 1 for i in range(1000)}}
    out = normalise_event(many, now=NOW)
    assert isinstance(out, Rejected) and out.code == "unknown_field" and len(out.reason) < 800


def test_dead_letter_records_are_bounded_with_size_and_hash() -> None:
    data = b"\xf5" + b"z" * 100_000
    (record,) = dead_letter_records([Rejected("too big", data, "too_large")], source="kafka", max_bytes=100)
    assert record["payload"] == data[:100] and record["payload_size"] == len(data)
    assert record["payload_sha256"] == hashlib.sha256(data).hexdigest()
    (long_reason,) = dead_letter_records([Rejected("r" * 10_000, b"x")], source="http")
    assert len(long_reason["reason"]) <= 1000


def test_kafka_consumer_dead_letters_a_huge_message_bounded_and_once(store) -> None:
    pytest.importorskip("confluent_kafka")
    from tastebud.stream.consumer import EventConsumer

    class Message:
        def __init__(self, value: bytes, offset: int) -> None:
            self._value, self._offset = value, offset

        def value(self) -> bytes:
            return self._value

        def key(self) -> None:
            return None

        def topic(self) -> str:
            return "events"

        def partition(self) -> int:
            return 0

        def offset(self) -> int:
            return self._offset

    rules = EventRules(max_message_bytes=10_000, dead_letter_max_bytes=128)
    # no broker is reached: the batch is handed to process() and the commit is stubbed
    consumer = EventConsumer(store, "127.0.0.1:9", topics=["events"], dead_letter_topic=None, rules=rules)
    try:
        consumer._commit = lambda messages: True  # type: ignore[method-assign]
        huge = message(user_id="u" * 50_000)
        good = message(event_id="ok")
        result = consumer.process([Message(huge, 0), Message(good, 1)])
        assert (result.inserted, result.dead_lettered) == (1, 1)
        consumer.process([Message(huge, 0)])  # redelivered
    finally:
        consumer._consumer.close()
    (letter,) = store.query_dead_letters()
    assert letter["reason"].startswith("too_large:") and len(letter["payload"]) == 128
    assert letter["payload_size"] == len(huge) and letter["payload_sha256"] == hashlib.sha256(huge).hexdigest()


# ---------------------------------------------------------------------------------------------------- conflicts
def test_conflicts_within_a_batch_and_against_the_store(store) -> None:
    a = {**RATING, "event_id": "x1", "rating": 4}
    result = ingest_events(store, [a, dict(a), {**a, "rating": 2}, {**a, "item_id": "9"}], now=NOW)
    assert (result.accepted, result.duplicates, result.conflicts) == (1, 1, 2)
    assert [(r["index"], r["code"]) for r in result.rejected] == [(2, "conflict"), (3, "conflict")]
    assert "rating 4.0 vs 2.0" in result.rejected[0]["reason"]
    again = ingest_events(store, [{**a, "rating": 1}, a], now=NOW)
    assert (again.accepted, again.duplicates, again.conflicts) == (0, 1, 1)
    assert "stored already" in again.rejected[0]["reason"] and again.rejected[0]["index"] == 0
    assert [e.event_id for e in again.events] == ["x1"]
    assert [e["rating"] for e in store.query_events()] == [4.0]
    body = again.to_dict(max_reported=0)
    assert body["rejected"] == [] and body["rejected_total"] == 1 and body["conflicts"] == 1


def test_dead_letters_of_a_resent_batch_are_not_doubled(store) -> None:
    batch = [{**RATING, "event_id": f"b{i}", "rating": 11} for i in range(5)] + ["junk", {"user_id": "u"}]
    first = ingest_events(store, batch, now=NOW)
    assert len(first.rejected) == 7 and len(store.query_dead_letters()) == 7
    ingest_events(store, batch, now=NOW)
    ingest_events(store, list(reversed(batch)), now=NOW)
    assert len(store.query_dead_letters()) == 7
