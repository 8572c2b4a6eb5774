"""Behaviour every store backend must show: request log, events, dead letters, transactions, time zones.

A backend's test file subclasses :class:`StoreContract` and provides ``store_url``, a fixture giving the URL of a
fresh, empty database for each test::

    class TestSQLiteStore(StoreContract):
        @pytest.fixture
        def store_url(self, tmp_path):
            return f"sqlite:///{tmp_path / 'store.db'}"
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from tastebud.errors import DataValidationError, StoreError
from tastebud.store import RequestLogWriter, Store, create_store

T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
#: A zone east of UTC with a non-whole-hour offset, so a dropped or double-applied offset shows.
IST = timezone(timedelta(hours=5, minutes=30))


def log_record(n: int, **fields: Any) -> dict[str, Any]:
    """A complete request-log record number ``n``, ``n`` seconds after ``T0``."""
    record = {
        "request_id": f"req-{n:05d}",
        "timestamp": T0 + timedelta(seconds=n),
        "endpoint": "recommend",
        "user_id": f"u{n % 7}",
        "item_id": None,
        "model_name": "movielens-100k",
        "model_version": 3,
        "alias": "champion",
        "item_ids": [f"i{n}", f"i{n + 1}", f"i{n + 2}"],
        "scores": [0.9, 0.5 + n / 1000, 0.1],
        "latency_ms": 1.25 + n,
        "status_code": 200,
        "is_fallback": n % 2 == 1,
        "fallback_reason": "unknown_user" if n % 2 == 1 else None,
        "variant": "B",
        "provenance": {"git_sha": "abc123", "snapshot_id": f"snap-{n}", "nested": {"k": [1, 2]}},
        "experiment": "exp-1" if n % 2 == 0 else None,
        "exposure": {"teams": ["a", "b", "a"]} if n % 3 == 0 else None,
    }
    record.update(fields)
    return record


def event(n: int, **fields: Any) -> dict[str, Any]:
    """Interaction event number ``n``, ``n`` minutes after ``T0``."""
    record = {
        "event_id": f"ev-{n:05d}",
        "user_id": f"u{n % 3}",
        "item_id": f"i{n % 5}",
        "kind": "rating" if n % 2 == 0 else "view",
        "rating": float(1 + n % 5) if n % 2 == 0 else None,
        "value": 1.0,
        "timestamp": T0 + timedelta(minutes=n),
        "source": "http",
    }
    record.update(fields)
    return record


def row_count(store: Store, table: str) -> int:
    """Rows in ``table``."""
    with store.engine.connect() as conn:
        return int(conn.execute(sa.text(f"SELECT COUNT(*) FROM {table}")).scalar_one())


def experiment_row(name: str, **fields: Any) -> dict[str, Any]:
    """A draft experiment's row on model ``m``, layer ``default``, traffic 0-100 (override any column)."""
    row = {
        "name": name,
        "model_name": "m",
        "kind": "ab",
        "status": "draft",
        "layer": "default",
        "traffic_start": 0.0,
        "traffic_end": 100.0,
        "definition": {"variants": [{"name": "a", "ref": "champion"}, {"name": "b", "ref": "2"}], "weights": [50, 50]},
        "salt": "0123456789abcdef",
        "created_at": T0,
        "created_by": "ana",
    }
    row.update(fields)
    return row


def _index_names(store: Store, table: str = "request_logs") -> set[str]:
    return {ix["name"] for ix in sa.inspect(store.engine).get_indexes(table)}


def _before_migrations(conn: sa.Connection) -> None:
    """Make the database look as ``init_schema`` left it before migrations: no version, only the baseline's tables."""
    from tastebud.store import metadata
    from tastebud.store.migrations.baseline import TABLES

    for name in ["alembic_version", *sorted(set(metadata.tables) - set(TABLES))]:
        conn.execute(sa.text(f"DROP TABLE {name}"))


class StoreContract:
    """Every behaviour test of :class:`~tastebud.store.Store`, run against each backend."""

    @pytest.fixture
    def store(self, store_url: str) -> Iterator[Store]:
        store = create_store(url=store_url)
        store.init_schema()
        yield store
        store.close()

    # --- schema --------------------------------------------------------------------------------------------------

    def test_init_schema_creates_tables_and_is_idempotent(self, store: Store) -> None:
        assert {"request_logs", "events", "dead_letters"} <= set(store.table_names())
        store.write_request_logs([log_record(1)])
        store.init_schema()
        store.init_schema()
        assert store.get_request("req-00001") is not None
        assert row_count(store, "request_logs") == 1

    def test_request_log_indexes_only_time_ordered_keys(self, store: Store) -> None:
        """A per-user index (a random page write per logged request) is dropped from older databases too."""
        with store.engine.begin() as conn:  # a store made by init_schema before migrations
            conn.execute(sa.text("CREATE INDEX IF NOT EXISTS ix_request_logs_user_id ON request_logs (user_id)"))
            _before_migrations(conn)
        assert "ix_request_logs_user_id" in _index_names(store)
        store.init_schema()
        assert "ix_request_logs_user_id" not in _index_names(store)
        assert "ix_request_logs_timestamp" in _index_names(store)

    def test_store_is_usable_after_close(self, store: Store) -> None:
        store.write_request_logs([log_record(1)])
        store.close()
        assert store.write_request_logs([log_record(2)]) == 1
        assert row_count(store, "request_logs") == 2

    # --- request log ---------------------------------------------------------------------------------------------

    def test_request_log_round_trip_keeps_every_field(self, store: Store) -> None:
        records = [log_record(n) for n in range(4)]
        assert store.write_request_logs(records) == 4
        for record in records:
            assert store.get_request(record["request_id"]) == record

    def test_server_records_round_trip_with_experiment_and_exposure(self, store: Store) -> None:
        from tastebud.store.schema import RequestLogRecord

        records = [RequestLogRecord(**log_record(n)) for n in range(6)]
        old_shape = RequestLogRecord(*list(log_record(7).values())[:16])  # built without the two newer fields
        assert store.write_request_logs([*records, old_shape]) == 7
        for record in records:
            assert store.get_request(record.request_id) == record._asdict()
        stored = store.get_request(old_shape.request_id)
        assert stored is not None and stored["experiment"] is None and stored["exposure"] is None

    def test_columns_added_since_are_added_to_an_older_table(self, store: Store) -> None:
        with store.engine.begin() as conn:  # a store made by init_schema before migrations
            _before_migrations(conn)
            conn.execute(sa.text("DROP TABLE request_logs"))
            conn.execute(sa.text(
                "CREATE TABLE request_logs (request_id VARCHAR(64) PRIMARY KEY, timestamp TIMESTAMP NOT NULL, "
                "endpoint VARCHAR(64) NOT NULL, user_id VARCHAR(255), item_id VARCHAR(255), model_name VARCHAR(255), "
                "model_version INTEGER, alias VARCHAR(64), item_ids JSON NOT NULL, scores JSON NOT NULL, "
                "latency_ms FLOAT NOT NULL, status_code INTEGER NOT NULL, is_fallback BOOLEAN NOT NULL, "
                "fallback_reason VARCHAR(64), variant VARCHAR(64), provenance JSON NOT NULL)"
            ))  # fmt: skip
        store.init_schema()
        assert store.write_request_logs([log_record(0)]) == 1
        assert store.get_request("req-00000") == log_record(0)

    def test_get_request_of_unknown_id_is_none(self, store: Store) -> None:
        store.write_request_logs([log_record(1)])
        assert store.get_request("no-such-request") is None

    def test_timestamps_come_back_as_the_same_instant_in_utc(self, store: Store) -> None:
        local = datetime(2024, 5, 1, 23, 59, 59, 987654, tzinfo=IST)
        store.write_request_logs([log_record(1, timestamp=local)])
        stored = store.get_request("req-00001")
        assert stored is not None
        assert stored["timestamp"] == local
        assert stored["timestamp"].utcoffset() == timedelta(0)
        assert stored["timestamp"].hour == 18 and stored["timestamp"].microsecond == 987654

    def test_epoch_seconds_and_iso_strings_are_utc(self, store: Store) -> None:
        store.write_request_logs(
            [
                log_record(1, timestamp=T0.timestamp()),
                log_record(2, timestamp=T0.astimezone(IST).isoformat()),
            ]
        )
        assert store.get_request("req-00001")["timestamp"] == T0  # type: ignore[index]
        assert store.get_request("req-00002")["timestamp"] == T0  # type: ignore[index]

    def test_rewriting_a_request_id_is_a_no_op(self, store: Store) -> None:
        assert store.write_request_logs([log_record(1)]) == 1
        assert store.write_request_logs([log_record(1, endpoint="similar", status_code=500)]) == 0
        stored = store.get_request("req-00001")
        assert stored is not None and stored["endpoint"] == "recommend" and stored["status_code"] == 200
        assert row_count(store, "request_logs") == 1

    def test_write_counts_only_new_records_and_keeps_the_first_of_a_batch(self, store: Store) -> None:
        store.write_request_logs([log_record(0), log_record(1)])
        batch = [log_record(n) for n in range(5)] + [log_record(4, endpoint="similar")]
        assert store.write_request_logs(batch) == 3
        assert row_count(store, "request_logs") == 5
        assert store.get_request("req-00004")["endpoint"] == "recommend"  # type: ignore[index]

    def test_empty_batches_write_nothing(self, store: Store) -> None:
        assert store.write_request_logs([]) == 0
        assert store.write_events([]) == (0, 0)
        assert store.write_dead_letters([]) == 0

    def test_a_batch_is_one_transaction(self, store: Store) -> None:
        # The database fails on the third row: rows before it must be rolled back. Rows reach the database one
        # INSERT per row (SQLAlchemy's path, page size 1) or in one executemany (the SQLite fast path).
        store.engine.dialect.insertmanyvalues_page_size = 1
        calls = {"n": 0}

        def fail_third_insert(
            conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
        ) -> None:
            if statement.lstrip().upper().startswith("INSERT"):
                calls["n"] += len(parameters) if executemany else 1
                if calls["n"] >= 3:
                    calls["n"] = 3
                    raise RuntimeError("injected failure on the third row")

        sa.event.listen(store.engine, "before_cursor_execute", fail_third_insert)
        try:
            with pytest.raises((StoreError, RuntimeError)):
                store.write_request_logs([log_record(n) for n in range(5)])
        finally:
            sa.event.remove(store.engine, "before_cursor_execute", fail_third_insert)
        assert calls["n"] == 3
        assert row_count(store, "request_logs") == 0
        assert store.write_request_logs([log_record(n) for n in range(5)]) == 5

    def test_query_window_is_half_open_and_ordered(self, store: Store) -> None:
        order = np.random.default_rng(3).permutation(10)
        store.write_request_logs([log_record(int(n)) for n in order])
        since, until = (T0 + timedelta(seconds=3)).astimezone(IST), T0 + timedelta(seconds=7)
        rows = store.query_request_logs(since=since, until=until)
        assert [r["request_id"] for r in rows] == [f"req-{n:05d}" for n in range(3, 7)]
        assert [r["request_id"] for r in store.query_request_logs(limit=2)] == ["req-00000", "req-00001"]
        newest = store.query_request_logs(limit=3, newest_first=True)
        assert [r["request_id"] for r in newest] == ["req-00009", "req-00008", "req-00007"]
        assert {r["user_id"] for r in store.query_request_logs(user_id="u2")} == {"u2"}
        assert len(store.query_request_logs(user_id="u2")) == 2  # records 2 and 9
        assert store.query_request_logs(since=T0 + timedelta(days=1)) == []

    def test_json_columns_round_trip_portably(self, store: Store) -> None:
        provenance = {"title": "Amélie 🎬", "nested": {"list": [1, 2.5, None, True]}, "when": T0}
        record = log_record(
            1,
            item_ids=np.array(["a", "b", "c"]),
            scores=np.array([0.1 + 0.2, np.float32(0.5), np.nan], dtype=np.float64),
            provenance=provenance,
        )
        store.write_request_logs([record])
        stored = store.get_request("req-00001")
        assert stored is not None
        assert stored["item_ids"] == ["a", "b", "c"]
        assert stored["scores"] == [0.1 + 0.2, 0.5, None]  # float64 exact; NaN is not JSON
        assert stored["provenance"] == {**provenance, "when": T0.isoformat()}

    def test_nullable_fields_round_trip_as_none(self, store: Store) -> None:
        minimal = {
            "request_id": "bare",
            "timestamp": T0,
            "endpoint": "similar",
            "latency_ms": 0.5,
            "status_code": 404,
        }
        store.write_request_logs([minimal])
        stored = store.get_request("bare")
        assert stored is not None
        for key in ("user_id", "item_id", "model_name", "model_version", "alias", "fallback_reason", "variant"):
            assert stored[key] is None, key
        assert stored["item_ids"] == [] and stored["scores"] == [] and stored["provenance"] == {}
        assert stored["is_fallback"] is False

    @pytest.mark.parametrize(
        ("change", "field"),
        [
            ({"timestamp": datetime(2024, 5, 1, 12, 0)}, "timestamp"),  # naive: its zone is unknown
            ({"endpoint": None}, "endpoint"),
            ({"status_code": "OK"}, "status_code"),
            ({"latency_ms": float("inf")}, "latency_ms"),
            ({"provenance": ["not", "an", "object"]}, "provenance"),
            ({"colour": "blue"}, "colour"),
        ],
    )
    def test_invalid_record_is_rejected_naming_it_and_nothing_is_written(
        self, store: Store, change: dict[str, Any], field: str
    ) -> None:
        batch = [log_record(0), log_record(1, **change), log_record(2)]
        with pytest.raises(DataValidationError) as info:
            store.write_request_logs(batch)
        message = str(info.value)
        assert "record 1" in message and "req-00001" in message and field in message
        assert row_count(store, "request_logs") == 0

    def test_concurrent_writers_all_land(self, store: Store) -> None:
        errors: list[BaseException] = []

        def write(worker: int) -> None:
            try:
                for b in range(10):
                    base = worker * 1000 + b * 10
                    store.write_request_logs([log_record(base + n) for n in range(5)])
            except BaseException as err:  # collected: an assert in a thread would be lost
                errors.append(err)

        threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert row_count(store, "request_logs") == 4 * 10 * 5

    def test_background_writer_stores_each_request_once(self, store: Store) -> None:
        drops: list[int] = []
        writer = RequestLogWriter(store, batch_size=16, flush_interval=0.01, on_drop=drops.append)
        writer.start()
        for n in range(100):
            assert writer.submit(log_record(n % 60))  # 40 repeats of stored request ids
        writer.close(timeout=10)
        assert drops == []
        assert writer.pending == 0 and writer.written == 100
        assert row_count(store, "request_logs") == 60
        assert store.get_request("req-00059") == log_record(59)

    # --- events --------------------------------------------------------------------------------------------------

    def test_events_are_idempotent_on_event_id(self, store: Store) -> None:
        assert store.write_events([event(n) for n in range(3)]) == (3, 0)
        assert store.write_events([event(n) for n in range(3)]) == (0, 3)
        assert store.write_events([event(2), event(3), event(3, kind="click")]) == (1, 2)
        stored = store.query_events()
        assert [e["event_id"] for e in stored] == [f"ev-{n:05d}" for n in range(4)]
        assert stored[3]["kind"] == "view"  # the first of the repeated ids was kept
        assert row_count(store, "events") == 4

    def test_event_round_trip(self, store: Store) -> None:
        received = datetime(2024, 6, 1, tzinfo=IST)
        store.write_events(
            [event(0, received_at=received), event(1, timestamp=(T0 + timedelta(minutes=1)).timestamp())]
        )
        first, second = store.query_events()
        expected = {**event(0), "received_at": received}
        assert {k: first[k] for k in expected} == expected
        assert first["received_at"].utcoffset() == timedelta(0)
        assert second["rating"] is None and second["kind"] == "view"
        assert second["timestamp"] == T0 + timedelta(minutes=1)
        assert isinstance(first["id"], int) and second["id"] > first["id"]

    def test_received_at_defaults_to_now_in_utc(self, store: Store) -> None:
        before = datetime.now(UTC)
        store.write_events([event(0)])
        after = datetime.now(UTC)
        (stored,) = store.query_events()
        assert before - timedelta(seconds=1) <= stored["received_at"] <= after + timedelta(seconds=1)

    def test_query_events_filters_and_orders_by_time(self, store: Store) -> None:
        order = np.random.default_rng(5).permutation(12)
        store.write_events([event(int(n)) for n in order])
        all_events = store.query_events()
        assert [e["timestamp"] for e in all_events] == sorted(e["timestamp"] for e in all_events)
        assert [e["event_id"] for e in store.query_events(user_id="u1")] == [
            "ev-00001",
            "ev-00004",
            "ev-00007",
            "ev-00010",
        ]
        assert {e["item_id"] for e in store.query_events(item_id="i2")} == {"i2"}
        assert {e["kind"] for e in store.query_events(kind="rating")} == {"rating"}
        window = store.query_events(since=T0 + timedelta(minutes=2), until=(T0 + timedelta(minutes=5)).astimezone(IST))
        assert [e["event_id"] for e in window] == ["ev-00002", "ev-00003", "ev-00004"]
        assert len(store.query_events(limit=5)) == 5
        by_arrival = sorted(all_events, key=lambda e: e["id"])
        later = store.query_events(after_id=by_arrival[5]["id"])
        assert {e["event_id"] for e in later} == {e["event_id"] for e in by_arrival[6:]}

    def test_events_after_follow_arrival_order(self, store: Store) -> None:
        assert store.events_after(0) == [] and store.last_event_id() == 0
        # event time runs backwards while arrival runs forwards: the follower's order is arrival
        store.write_events([event(n, timestamp=T0 - timedelta(minutes=n)) for n in range(6)])
        store.write_events([event(n) for n in range(6, 9)])
        arrived = store.events_after(0)
        ids = [e["id"] for e in arrived]
        assert ids == sorted(ids) and len(ids) == 9
        assert [e["event_id"] for e in arrived[:3]] == ["ev-00000", "ev-00001", "ev-00002"]
        assert store.last_event_id() == ids[-1]
        assert [e["id"] for e in store.events_after(ids[2], limit=2)] == ids[3:5]
        assert [e["id"] for e in store.events_after(ids[2], through_id=ids[4])] == ids[3:5]
        # nothing was received an hour ago
        assert store.last_event_id(settled_s=3600) == 0

    def test_invalid_event_is_rejected_and_nothing_is_written(self, store: Store) -> None:
        with pytest.raises(DataValidationError, match=r"event 1 .*user_id"):
            store.write_events([event(0), event(1, user_id=None)])
        with pytest.raises(DataValidationError, match="timestamp"):
            store.write_events([event(0, timestamp=datetime(2024, 1, 1))])
        with pytest.raises(DataValidationError, match="rating"):
            store.write_events([event(0, rating="five")])
        assert row_count(store, "events") == 0

    # --- dead letters --------------------------------------------------------------------------------------------

    def test_dead_letters_keep_payload_bytes(self, store: Store) -> None:
        payload = bytes(range(256))
        stored_count = store.write_dead_letters(
            [
                {"source": "kafka:events", "reason": "schema mismatch: missing event_id", "payload": payload},
                {"source": "http", "reason": "not JSON", "payload": "{oops"},
            ]
        )
        assert stored_count == 2
        letters = store.query_dead_letters()
        assert [d["payload"] for d in letters] == [payload, b"{oops"]
        assert [d["reason"] for d in store.query_dead_letters(source="http")] == ["not JSON"]
        assert all(d["received_at"].utcoffset() == timedelta(0) for d in letters)

    def test_dead_letters_are_idempotent_per_source_and_payload_hash(self, store: Store) -> None:
        """A resent message or batch adds no second dead letter; another source or payload does."""
        batch = [
            {"source": "http", "reason": "out_of_range: rating 11", "payload": b'{"rating": 11}'},
            {"source": "http", "reason": "out_of_range: rating 11 (again)", "payload": b'{"rating": 11}'},
            {"source": "kafka", "reason": "decode_error", "payload": b'{"rating": 11}'},
        ]
        assert store.write_dead_letters(batch) == 2
        assert store.write_dead_letters(batch) == 0
        assert store.write_dead_letters([{"source": "http", "reason": "x", "payload": b"other"}]) == 1
        letters = store.query_dead_letters()
        assert len(letters) == 3
        first = letters[0]
        assert first["payload_size"] == 14
        assert first["payload_sha256"] == hashlib.sha256(b'{"rating": 11}').hexdigest()

    def test_dead_letters_keep_a_prefix_with_the_originals_size_and_hash(self, store: Store) -> None:
        original = b"x" * 100_000
        digest = hashlib.sha256(original).hexdigest()
        record = {"source": "http", "reason": "too_long", "payload": original[:64], "payload_size": len(original),
                  "payload_sha256": digest}  # fmt: skip
        assert store.write_dead_letters([record]) == 1
        assert store.write_dead_letters([{**record, "payload": original[:32]}]) == 0  # same original: same letter
        (letter,) = store.query_dead_letters()
        assert (letter["payload"], letter["payload_size"], letter["payload_sha256"]) == (original[:64], 100_000, digest)
        with pytest.raises(DataValidationError, match="payload_size"):
            store.write_dead_letters([{**record, "payload_size": 10}])
        with pytest.raises(DataValidationError, match="payload_sha256"):
            store.write_dead_letters([{**record, "payload_sha256": "not-a-hash"}])

    def test_an_older_dead_letter_table_gets_the_new_columns_and_key(self, store: Store) -> None:
        sqlite = store.backend == "sqlite"
        with store.engine.begin() as conn:  # a store made by init_schema before migrations
            _before_migrations(conn)
            conn.execute(sa.text("DROP TABLE dead_letters"))
            conn.execute(sa.text(
                f"CREATE TABLE dead_letters (id {'INTEGER' if sqlite else 'BIGSERIAL'} PRIMARY KEY, "
                f"source VARCHAR(64) NOT NULL, reason TEXT NOT NULL, payload {'BLOB' if sqlite else 'BYTEA'} NOT NULL, "
                "received_at TIMESTAMP NOT NULL)"
            ))  # fmt: skip
            conn.execute(sa.text(
                "INSERT INTO dead_letters (source, reason, payload, received_at) VALUES "
                "('http', 'old', :p, '2020-01-01 00:00:00'), ('http', 'old', :p, '2020-01-01 00:00:00')"
            ), {"p": b"old"})  # fmt: skip
        store.init_schema()
        store.init_schema()
        assert "uq_dead_letters_source_payload" in _index_names(store, "dead_letters")
        record = {"source": "http", "reason": "new", "payload": b"old"}
        assert store.write_dead_letters([record]) == 1  # old rows carry no hash: they never collide
        assert store.write_dead_letters([record]) == 0
        assert [d["payload_sha256"] is None for d in store.query_dead_letters()] == [True, True, False]

    def test_events_by_id_reads_stored_events(self, store: Store) -> None:
        store.write_events([event(i) for i in range(3)])
        found = store.events_by_id([event(1)["event_id"], "absent", event(2)["event_id"]])
        assert sorted(found) == sorted([event(1)["event_id"], event(2)["event_id"]])
        assert found[event(1)["event_id"]]["user_id"] == event(1)["user_id"]
        assert store.events_by_id([]) == {}

    # --- locks ---------------------------------------------------------------------------------------------------

    def test_a_lock_is_exclusive_until_released(self, store: Store) -> None:
        assert store.get_lock("retrain:m") is None
        assert store.acquire_lock("retrain:m", "a", 60)
        assert not store.acquire_lock("retrain:m", "b", 60)
        assert store.acquire_lock("retrain:other", "b", 60)  # another name is another lock
        held = store.get_lock("retrain:m")
        assert held is not None and held["owner"] == "a"
        assert held["expires_at"] - held["acquired_at"] == timedelta(seconds=60)
        assert held["expires_at"].utcoffset() == timedelta(0)
        assert store.acquire_lock("retrain:m", "a", 60)  # re-entry by its owner renews
        assert not store.release_lock("retrain:m", "b")  # not b's to release
        assert store.get_lock("retrain:m") is not None
        assert store.release_lock("retrain:m", "a")
        assert store.get_lock("retrain:m") is None
        assert store.acquire_lock("retrain:m", "b", 60)

    def test_an_expired_lease_can_be_taken_and_its_owner_cannot_renew(self, store: Store) -> None:
        assert store.acquire_lock("job", "a", 0.2)
        assert not store.acquire_lock("job", "b", 60)
        time.sleep(0.4)
        assert store.acquire_lock("job", "b", 60)
        assert not store.renew_lock("job", "a", 60)
        assert not store.release_lock("job", "a")
        held = store.get_lock("job")
        assert held is not None and held["owner"] == "b"

    def test_renewal_extends_the_lease(self, store: Store) -> None:
        assert store.acquire_lock("job", "a", 0.5)
        before = store.get_lock("job")
        assert before is not None
        time.sleep(0.05)
        assert store.renew_lock("job", "a", 60)
        after = store.get_lock("job")
        assert after is not None and after["expires_at"] > before["expires_at"] + timedelta(seconds=50)
        assert after["renewed_at"] > before["renewed_at"] and after["acquired_at"] == before["acquired_at"]
        time.sleep(0.6)
        assert not store.acquire_lock("job", "b", 60)  # the renewed lease still holds
        assert not store.renew_lock("nothing", "a", 60)

    def test_a_named_owner_can_be_taken_over(self, store: Store) -> None:
        assert store.acquire_lock("job", "dead", 3600)
        assert not store.acquire_lock("job", "b", 60, take_over="someone-else")
        assert store.acquire_lock("job", "b", 60, take_over="dead")
        assert not store.acquire_lock("job", "c", 60, take_over="dead")  # b holds it now, not dead
        held = store.get_lock("job")
        assert held is not None and held["owner"] == "b"

    def test_bad_lock_arguments_are_refused(self, store: Store) -> None:
        for ttl in (0, -1, float("nan"), float("inf")):
            with pytest.raises(DataValidationError, match="lease"):
                store.acquire_lock("job", "a", ttl)
        with pytest.raises(DataValidationError, match="empty"):
            store.acquire_lock("job", "", 10)

    def test_concurrent_takers_exactly_one_wins(self, store: Store) -> None:
        barrier = threading.Barrier(6)
        won: list[str] = []
        errors: list[BaseException] = []

        def take(owner: str) -> None:
            try:
                barrier.wait(timeout=10)
                if store.acquire_lock("race", owner, 60):
                    won.append(owner)
            except BaseException as err:  # collected: an assert in a thread would be lost
                errors.append(err)

        threads = [threading.Thread(target=take, args=(f"t{n}",)) for n in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        held = store.get_lock("race")
        assert len(won) == 1 and held is not None and held["owner"] == won[0]

    # --- retrain history -----------------------------------------------------------------------------------------

    def test_retrain_history_round_trip(self, store: Store) -> None:
        first = store.start_retrain(model_name="m", trigger="manual", owner="h:1:a", started_at=T0)
        second = store.start_retrain(model_name="m", trigger="schedule", owner="h:2:b", started_at=T0 + timedelta(1))
        other = store.start_retrain(model_name="n", trigger="drift", owner="h:3:c", started_at=T0)
        assert len({first, second, other}) == 3
        gate = {"candidate": {"ndcg_at_10": 0.31}, "champion": {"ndcg_at_10": 0.3}, "passed": False}
        assert store.update_retrain(first, version=4, champion_version=3)
        assert store.finish_retrain(
            first, outcome="refused", reason="not enough", duration_s=12.5, fit_s=3.25, n_interactions=1000,
            n_new_events=40, gate=gate,
        )  # fmt: skip
        assert not store.finish_retrain(99_999, outcome="failed")
        rows = store.retrain_history("m")
        assert [r["id"] for r in rows] == [second, first]  # newest first
        done = rows[1]
        assert done["outcome"] == "refused" and done["reason"] == "not enough" and done["gate"] == gate
        assert (done["version"], done["champion_version"], done["n_new_events"]) == (4, 3, 40)
        assert done["started_at"] == T0 and done["finished_at"].utcoffset() == timedelta(0)
        assert rows[0]["outcome"] == "running" and rows[0]["finished_at"] is None
        assert [r["id"] for r in store.retrain_history(outcome="running")] == [second, other]
        assert len(store.retrain_history(limit=1)) == 1 and len(store.retrain_history()) == 3
        with pytest.raises(DataValidationError, match="unknown field"):
            store.update_retrain(first, colour="red")
        with pytest.raises(DataValidationError):
            store.update_retrain(first, gate={"x": float("nan")})

    # --- experiments ---------------------------------------------------------------------------------------------

    def test_experiment_round_trip_and_unique_names(self, store: Store) -> None:
        assert store.insert_experiment(experiment_row("e1"), actor="ana")
        assert store.insert_experiment(experiment_row("e2", model_name="n", created_at=T0 + timedelta(1)), actor="bo")
        assert not store.insert_experiment(experiment_row("e1", created_by="eve"), actor="eve")  # name taken
        row = store.get_experiment("e1")
        assert row is not None and row["created_by"] == "ana" and row["status"] == "draft"
        assert row["definition"] == experiment_row("e1")["definition"]
        assert row["created_at"] == T0 == row["updated_at"] and row["started_at"] is None
        assert store.get_experiment("nope") is None
        assert [r["name"] for r in store.list_experiments()] == ["e1", "e2"]
        assert [r["name"] for r in store.list_experiments(model_name="n")] == ["e2"]
        assert store.list_experiments(status="running") == []
        changes = store.experiment_changes("e1")
        assert [(c["action"], c["actor"]) for c in changes] == [("created", "ana")]
        assert changes[0]["details"] == experiment_row("e1")["definition"] and changes[0]["time"] == T0
        with pytest.raises(DataValidationError, match="missing column"):
            store.insert_experiment({k: v for k, v in experiment_row("e3").items() if k != "salt"}, actor="ana")
        with pytest.raises(DataValidationError, match="unknown column"):
            store.insert_experiment(experiment_row("e3", colour="red"), actor="ana")
        with pytest.raises(DataValidationError):
            store.insert_experiment(experiment_row("e3", definition={"mde": float("nan")}), actor="ana")
        assert store.get_experiment("e3") is None

    def test_experiment_start_is_conditional_and_refuses_overlaps(self, store: Store) -> None:
        rows = [
            experiment_row("full"),
            experiment_row("half", traffic_start=50.0),  # overlaps "full"
            experiment_row("low", traffic_end=50.0),  # overlaps "full", not "high"
            experiment_row("high", traffic_start=50.0),
            experiment_row("other-layer", layer="l2"),
            experiment_row("other-model", model_name="n"),
        ]
        for row in rows:
            assert store.insert_experiment(row, actor="ana")
        pinned = {**rows[0]["definition"], "versions": {"a": 1, "b": 2}}
        assert store.mark_experiment_running("full", actor="bo", details={"versions": {"a": 1}}, definition=pinned)
        assert not store.mark_experiment_running("full", actor="bo")  # not a draft any more
        assert not store.mark_experiment_running("half", actor="bo")  # overlaps a running one
        assert not store.mark_experiment_running("nope", actor="bo")
        assert store.mark_experiment_running("other-layer", actor="bo")
        assert store.mark_experiment_running("other-model", actor="bo")
        full = store.get_experiment("full")
        assert full is not None and full["status"] == "running" and full["definition"] == pinned
        assert full["started_at"] is not None and full["started_at"] >= full["created_at"]
        assert store.mark_experiment_stopped("full", actor="cy", details={"reason": "done"})
        assert not store.mark_experiment_stopped("full", actor="cy")
        assert store.mark_experiment_running("low", actor="bo")
        assert store.mark_experiment_running("high", actor="bo")  # [0, 50) and [50, 100) do not overlap
        assert not store.mark_experiment_running("half", actor="bo")
        assert store.mark_experiment_stopped("half", actor="cy")  # a draft can be retired
        running = {r["name"] for r in store.list_experiments(model_name="m", status="running")}
        assert running == {"low", "high", "other-layer"}
        refusal = store.record_experiment_change("half", actor="bo", action="start_refused", details={"why": "x"})
        actions = [(c["action"], c["actor"]) for c in store.experiment_changes("full")]
        assert actions == [("created", "ana"), ("started", "bo"), ("stopped", "cy")]
        last = store.experiment_changes("half")[-1]
        assert last["id"] == refusal and last["details"] == {"why": "x"}
        assert len(store.experiment_changes(limit=2)) == 2

    def test_experiment_definition_update_only_while_running(self, store: Store) -> None:
        assert store.insert_experiment(experiment_row("c"), actor="ana")
        ramped = {**experiment_row("c")["definition"], "weights": [75, 25]}
        # a draft is not updated, and nothing is recorded
        assert not store.update_experiment_definition("c", ramped, actor="bo", action="ramped")
        assert not store.update_experiment_definition("nope", ramped, actor="bo", action="ramped")
        assert store.mark_experiment_running("c", actor="bo")
        at = T0 + timedelta(hours=1)
        details = {"weights": [75, 25], "guardrails": {"error_ratio": 0.0}}
        assert store.update_experiment_definition("c", ramped, actor="canary", action="ramped", details=details, at=at)
        row = store.get_experiment("c")
        assert row is not None and row["definition"] == ramped and row["status"] == "running"
        last = store.experiment_changes("c")[-1]
        assert (last["action"], last["actor"], last["details"], last["time"]) == ("ramped", "canary", details, at)
        with pytest.raises(DataValidationError):
            store.update_experiment_definition("c", {"mde": float("nan")}, actor="bo", action="ramped")
        assert store.get_experiment("c")["definition"] == ramped  # type: ignore[index]
        assert store.mark_experiment_stopped("c", actor="cy")
        assert not store.update_experiment_definition("c", experiment_row("c")["definition"], actor="bo", action="x")
        row = store.get_experiment("c")
        assert row is not None and row["definition"] == ramped
        assert [c["action"] for c in store.experiment_changes("c")] == ["created", "started", "ramped", "stopped"]

    def test_concurrent_experiment_starts_exactly_one_wins(self, store: Store) -> None:
        names = [f"e{n}" for n in range(6)]
        for name in names:  # all overlap: one model, one layer, every range contains 50
            assert store.insert_experiment(experiment_row(name, traffic_start=float(names.index(name))), actor="a")
        for targets in (["e0"] * 6, names):  # the same experiment six times; six overlapping ones
            barrier = threading.Barrier(6)
            won: list[str] = []
            errors: list[BaseException] = []

            def start(name: str, barrier: threading.Barrier = barrier, won: list[str] = won,
                      errors: list[BaseException] = errors) -> None:  # fmt: skip
                try:
                    barrier.wait(timeout=10)
                    if store.mark_experiment_running(name, actor=name):
                        won.append(name)
                except BaseException as err:  # collected: an assert in a thread would be lost
                    errors.append(err)

            threads = [threading.Thread(target=start, args=(name,)) for name in targets]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert errors == []
            assert len(won) == 1
            running = store.list_experiments(status="running")
            assert [r["name"] for r in running] == won
            assert store.mark_experiment_stopped(won[0], actor="reset")

    # --- frames (experiment analysis) ----------------------------------------------------------------------------

    def test_exposures_frame_reads_one_experiment_typed_and_in_time_order(self, store: Store) -> None:
        import polars as pl

        from tastebud.experiments.outcomes import EXPOSURE_SCHEMA

        records = [log_record(n, experiment="exp-1" if n % 4 else "exp-2", latency_ms=0.1 + 0.2 + n) for n in range(12)]
        records[5]["item_ids"] = ['say "hi"', "ü,ß", "back\\slash"]  # JSON escapes and non-ASCII survive
        records.append(log_record(12, experiment=None))
        late = T0 - timedelta(hours=1)  # logged last, happened first
        records.append(log_record(13, experiment="exp-1", timestamp=late, item_ids=[], scores=[], status_code=503))
        assert store.write_request_logs(records) == len(records)
        frame = store.exposures_frame(experiment="exp-1")
        assert frame.schema == EXPOSURE_SCHEMA
        stored = {r["request_id"]: r for r in store.query_request_logs()}
        wanted = sorted((r for r in records if r["experiment"] == "exp-1"), key=lambda r: r["timestamp"])
        assert frame["request_id"].to_list() == [r["request_id"] for r in wanted]
        for row in frame.iter_rows(named=True):
            record = stored[row["request_id"]]
            expected = {name: record[name] for name in EXPOSURE_SCHEMA.names() if name != "teams"}
            assert row == {**expected, "teams": (record["exposure"] or {}).get("teams")}
        assert frame.filter(pl.col("request_id") == "req-00003")["teams"].to_list() == [["a", "b", "a"]]
        assert frame["is_fallback"].to_list().count(True) == 7  # the odd request numbers
        since, until = T0 + timedelta(seconds=2), T0 + timedelta(seconds=7)
        window = store.exposures_frame(experiment="exp-1", since=since, until=until)
        assert window["request_id"].to_list() == ["req-00002", "req-00003", "req-00005", "req-00006"]
        empty = store.exposures_frame(experiment="nope")
        assert empty.height == 0 and empty.schema == EXPOSURE_SCHEMA

    def test_events_frame_reads_events_typed_with_window_and_kinds(self, store: Store) -> None:
        import polars as pl

        from tastebud.experiments.outcomes import EVENT_SCHEMA

        records = [event(n) for n in range(10)]
        records.append(event(10, kind="play", value=0.1 + 0.2, rating=None, user_id='u"ü', item_id="a,b"))
        store.write_events(records)
        frame = store.events_frame()
        assert frame.schema == EVENT_SCHEMA
        stored = [{name: r[name] for name in EVENT_SCHEMA.names()} for r in store.query_events()]
        assert frame.sort("timestamp").to_dicts() == stored
        assert frame.filter(pl.col("kind") == "play")["value"].to_list() == [0.1 + 0.2]
        since, until = T0 + timedelta(minutes=3), T0 + timedelta(minutes=8)
        views = store.events_frame(kinds=["view", "click"], since=since, until=until)
        assert sorted(views["timestamp"].to_list()) == [T0 + timedelta(minutes=n) for n in (3, 5, 7)]
        assert store.events_frame(kinds=[]).height == 0
        assert store.events_frame(since=T0 + timedelta(days=1)).schema == EVENT_SCHEMA

    def test_frames_read_in_chunks_line_up(self, store: Store) -> None:
        store.write_request_logs([log_record(n, experiment="exp-1") for n in range(25)])
        store.write_events([event(n) for n in range(25)])
        whole = store.exposures_frame(experiment="exp-1"), store.events_frame().sort("timestamp")
        store.frame_chunk_rows = 4  # several queries, some on empty rowid ranges once rows are filtered out
        chunked = store.exposures_frame(experiment="exp-1"), store.events_frame().sort("timestamp")
        assert chunked[0].equals(whole[0]) and chunked[1].equals(whole[1]) and whole[1].height == 25
        since, until = T0 + timedelta(seconds=9), T0 + timedelta(seconds=21)
        odd = store.exposures_frame(experiment="exp-1", since=since, until=until)
        assert odd["request_id"].to_list() == [f"req-{n:05d}" for n in range(9, 21)]

    # --- decision log and trigger state --------------------------------------------------------------------------

    def test_decisions_append_in_order_and_import_once(self, store: Store) -> None:
        row = {"time": T0, "model_name": "m", "action": "promoted", "version": 1, "previous": None, "actor": "a",
               "reason": "r", "numbers": {"x": [1.5, None]}, "trigger": None}  # fmt: skip
        first = store.append_decision(row)
        second = store.append_decision({**row, "model_name": "n", "time": T0 - timedelta(days=1)})
        assert second > first and store.decision_log_version() == (2, second)
        imported = [{**row, "version": v, "import_key": f"k{v}"} for v in (2, 3)]
        assert store.import_decisions(imported) == 2
        assert store.import_decisions([imported[1], {**row, "version": 4, "import_key": "k4"}]) == 1
        assert [(d["model_name"], d["version"]) for d in store.read_decisions()] == [
            ("m", 1), ("n", 1), ("m", 2), ("m", 3), ("m", 4)
        ]  # fmt: skip
        only = store.read_decisions("m")[0]
        assert only["time"] == T0 and only["numbers"] == {"x": [1.5, None]} and only["import_key"] is None

    def test_trigger_state_is_replaced_per_model(self, store: Store) -> None:
        assert store.get_trigger_state("m") is None
        store.put_trigger_state("m", champion_version=1, through_id=40, attempted_at=T0)
        store.put_trigger_state("m", champion_version=2, through_id=90, attempted_at=T0 + timedelta(hours=1))
        store.put_trigger_state("n", champion_version=7, through_id=5)
        assert store.get_trigger_state("m") == {
            "model_name": "m", "champion_version": 2, "through_id": 90, "attempted_at": T0 + timedelta(hours=1)
        }  # fmt: skip
        assert store.get_trigger_state("n")["through_id"] == 5  # type: ignore[index]
