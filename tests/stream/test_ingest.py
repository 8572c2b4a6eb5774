"""HTTP ingest path: validate event dicts and write them to the real SQLite store."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from tastebud.errors import StoreError
from tastebud.stream.ingest import IngestResult, ingest_events, payload_bytes
from tastebud.stream.metrics import StreamMetrics

NOW = 1_700_000_000.0


def events(n: int, start: int = 0) -> list[dict]:
    return [
        {
            "event_id": f"e{i}",
            "user_id": f"u{i % 3}",
            "item_id": f"i{i}",
            "kind": "view",
            "timestamp": 1_600_000_000 + i,
        }
        for i in range(start, start + n)
    ]


def sample(metrics: StreamMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_valid_events_are_stored(store):
    result = ingest_events(store, events(5), now=NOW)
    assert isinstance(result, IngestResult)
    assert (result.accepted, result.duplicates, result.rejected) == (5, 0, [])
    rows = store.query_events()
    assert [r["event_id"] for r in rows] == [f"e{i}" for i in range(5)]
    assert rows[0]["timestamp"] == datetime.fromtimestamp(1_600_000_000, tz=UTC)
    assert {r["source"] for r in rows} == {"http"}
    assert {r["value"] for r in rows} == {1.0}


def test_retry_is_idempotent(store):
    ingest_events(store, events(5), now=NOW)
    again = ingest_events(store, events(7), now=NOW)
    assert (again.accepted, again.duplicates) == (2, 5)
    assert len(store.query_events()) == 7


def test_duplicates_within_one_request(store):
    batch = events(3) + events(3)
    result = ingest_events(store, batch, now=NOW)
    assert (result.accepted, result.duplicates) == (3, 3)


def test_invalid_events_do_not_stop_valid_ones(store):
    batch = events(2)
    batch.insert(1, {"event_id": "bad", "user_id": "u", "item_id": "i", "rating": 11, "timestamp": 1})
    batch.append({"user_id": "u"})
    metrics = StreamMetrics()
    result = ingest_events(store, batch, now=NOW, metrics=metrics)
    assert result.accepted == 2
    assert [(r["index"], r["event_id"], r["code"]) for r in result.rejected] == [
        (1, "bad", "out_of_range"),
        (3, None, "missing_field"),
    ]
    assert "rating 11 is outside" in result.rejected[0]["reason"]
    letters = store.query_dead_letters()
    assert len(letters) == 2
    assert letters[0]["source"] == "http" and letters[0]["reason"].startswith("out_of_range: rating 11")
    assert json.loads(letters[0]["payload"])["event_id"] == "bad"
    assert sample(metrics, "tastebud_stream_dead_lettered_events_total", source="http", reason="out_of_range") == 1
    assert sample(metrics, "tastebud_stream_ingested_events_total", source="http", kind="view") == 2


def test_dead_letters_can_be_left_out(store):
    result = ingest_events(store, [{"user_id": "u"}], now=NOW, dead_letter=False)
    assert len(result.rejected) == 1
    assert store.query_dead_letters() == []


def test_metrics_count_duplicates(store):
    metrics = StreamMetrics()
    ingest_events(store, events(4), now=NOW, metrics=metrics)
    ingest_events(store, events(4), now=NOW, metrics=metrics, source="replay")
    assert sample(metrics, "tastebud_stream_duplicate_events_total", source="replay") == 4
    assert sample(metrics, "tastebud_stream_duplicate_events_total", source="http") == 0


def test_result_lists_valid_events_and_serialises(store):
    result = ingest_events(store, [*events(2), "junk"], now=NOW)
    assert [e.event_id for e in result.events] == ["e0", "e1"]
    body = json.loads(json.dumps(result.to_dict()))
    assert body["accepted"] == 2 and body["rejected"][0]["index"] == 2


def test_store_failure_propagates_and_writes_nothing(tmp_path):
    class Broken:
        def write_events(self, records):
            raise StoreError("store at sqlite:///x unavailable")

        def write_dead_letters(self, records):  # pragma: no cover - not reached
            raise AssertionError

    with pytest.raises(StoreError, match="unavailable"):
        ingest_events(Broken(), events(1), now=NOW)


def test_empty_request(store):
    result = ingest_events(store, [], now=NOW)
    assert (result.accepted, result.duplicates, result.rejected) == (0, 0, [])


def test_payload_bytes():
    assert payload_bytes(b"\x00\x01") == b"\x00\x01"
    assert json.loads(payload_bytes({"a": 1})) == {"a": 1}
    assert payload_bytes({"t": datetime(2020, 1, 1, tzinfo=UTC)}).startswith(b'{"t": "2020-01-01')
