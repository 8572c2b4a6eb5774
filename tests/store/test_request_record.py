"""The server's own request-log records (RequestLogRecord): one SQLite statement per batch, same rows as dicts."""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

import tastebud.store.sql as store_sql
from contracts.store import IST, T0, log_record, row_count
from tastebud.errors import DataValidationError, StoreError
from tastebud.store import RequestLogRecord, Store, create_store
from tastebud.store.schema import REQUEST_LOG_COLUMNS


def record(n: int, **fields: Any) -> RequestLogRecord:
    """Request-log record number ``n`` (the contract suite's ``log_record``) as a RequestLogRecord."""
    return RequestLogRecord(**log_record(n, **fields))


def varied_records() -> list[RequestLogRecord]:
    """Records covering every field's shapes: None fields, empty lists, both fallback values, odd strings, zones."""
    return [
        record(0),  # microseconds, fallback False
        record(1, timestamp=datetime(2024, 5, 1, 12, 0, 1, tzinfo=UTC)),  # whole second, fallback True
        record(
            2,
            user_id=None,
            item_id="i-7",
            model_name=None,
            model_version=None,
            alias=None,
            item_ids=[],
            scores=[],
            fallback_reason=None,
            variant=None,
            provenance={},
            endpoint="similar",
            status_code=404,
            latency_ms=0.0,
        ),
        record(
            3,
            user_id='Zoë "the" \\ 用户 🎬\n\t\x01',
            item_ids=["Amélie", "ß", "🎬", "", 'a"b'],
            scores=[0.1 + 0.2, 1e-300, -0.0, 5e-324, 1.7976931348623157e308, 3, -2],
            provenance={"a": None, "nested": {"b": None, "list": [1, 2.5, None, True, False, "é"]}, "e": {}},
            is_fallback=True,
            fallback_reason="unknown_user",
        ),
        record(4, timestamp=datetime(2024, 5, 1, 23, 59, 59, 987654, tzinfo=IST), latency_ms=7),
        record(5, timestamp=datetime(1969, 12, 31, 23, 59, 59, 1, tzinfo=UTC), model_version=2**40),
        record(6, timestamp=datetime(2024, 5, 1, 12, 0, 0, 999999, tzinfo=UTC), latency_ms=123.45678901234567),
    ]


def as_dicts(records: list[RequestLogRecord]) -> list[dict[str, Any]]:
    return [r._asdict() for r in records]


def expected(r: RequestLogRecord) -> dict[str, Any]:
    """What reading ``r`` back must give: the same fields, the timestamp in UTC, the latency as a float."""
    return {**r._asdict(), "timestamp": r.timestamp.astimezone(UTC), "latency_ms": float(r.latency_ms)}


def raw_rows(store: Store) -> list[tuple[Any, ...]]:
    """Stored rows as SQLite holds them (text, typeof), bypassing SQLAlchemy's conversions."""
    columns = ", ".join(f"{c}, typeof({c})" for c in REQUEST_LOG_COLUMNS)
    with store.engine.connect() as conn:
        return [tuple(row) for row in conn.exec_driver_sql(f"SELECT {columns} FROM request_logs ORDER BY request_id")]


@pytest.fixture
def new_store(tmp_path: Path) -> Iterator[Any]:
    """A factory of fresh SQLite file stores in ``tmp_path``, closed at the end."""
    opened: list[Store] = []

    def make(name: str = "store") -> Store:
        store = create_store(url=f"sqlite:///{tmp_path / f'{name}.db'}")
        store.init_schema()
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


def _refuse(*_: Any, **__: Any) -> Any:
    raise AssertionError("a RequestLogRecord batch left the single-statement path")


@pytest.fixture
def only_batch_statement(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if a write takes the dict paths (field checks or validation) instead of the batch statement."""
    monkeypatch.setattr(store_sql, "_sqlite_request_rows", _refuse)
    monkeypatch.setattr(store_sql, "request_log_row", _refuse)


def test_record_fields_are_the_request_log_columns_in_order() -> None:
    assert RequestLogRecord._fields == REQUEST_LOG_COLUMNS


def test_records_read_back_equal_to_dicts_written_through_the_validating_path(
    new_store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = varied_records()
    validated = new_store("validated")
    with monkeypatch.context() as patch:  # dicts through request_log_row, not the dict fast path
        patch.setattr(store_sql, "_sqlite_request_rows", lambda _records: None)
        assert validated.write_request_logs(as_dicts(records)) == len(records)
    fast = new_store("records")
    with monkeypatch.context() as patch:
        patch.setattr(store_sql, "_sqlite_request_rows", _refuse)
        patch.setattr(store_sql, "request_log_row", _refuse)
        assert fast.write_request_logs(records) == len(records)

    for r in records:
        got = fast.get_request(r.request_id)
        assert got == validated.get_request(r.request_id)
        assert got == expected(r)
    assert fast.query_request_logs() == validated.query_request_logs()
    assert [r["request_id"] for r in fast.query_request_logs()] == [f"req-{n:05d}" for n in (5, 0, 6, 1, 2, 3, 4)]
    assert fast.query_request_logs(user_id=records[3].user_id) == [expected(records[3])]
    since, until = datetime(2024, 5, 1, 12, 0, 0, 500000, tzinfo=UTC), T0 + timedelta(seconds=3)
    window = [expected(records[n]) for n in (6, 1, 2)]
    assert fast.query_request_logs(since=since, until=until) == window
    assert validated.query_request_logs(since=since, until=until) == window


def test_records_are_stored_byte_for_byte_like_the_dict_fast_path(new_store: Any) -> None:
    """Same text, types and JSON as the existing dict path: timestamps naive UTC with 6 fraction digits, 1/0."""
    records = varied_records()
    dicts = new_store("dicts")
    assert dicts.write_request_logs(as_dicts(records)) == len(records)
    fast = new_store("records")
    assert fast.write_request_logs(records) == len(records)
    rows = raw_rows(fast)
    assert rows == raw_rows(dicts)
    by_id = {row[0]: dict(zip(REQUEST_LOG_COLUMNS, row[::2], strict=True)) for row in rows}
    types = {row[0]: dict(zip(REQUEST_LOG_COLUMNS, row[1::2], strict=True)) for row in rows}
    assert by_id["req-00000"]["timestamp"] == "2024-05-01 12:00:00.123456"
    assert by_id["req-00001"]["timestamp"] == "2024-05-01 12:00:01.000000"
    assert by_id["req-00004"]["timestamp"] == "2024-05-01 18:29:59.987654"  # IST converted to UTC
    assert by_id["req-00005"]["timestamp"] == "1969-12-31 23:59:59.000001"
    assert by_id["req-00006"]["timestamp"] == "2024-05-01 12:00:00.999999"
    assert (by_id["req-00000"]["is_fallback"], by_id["req-00001"]["is_fallback"]) == (0, 1)
    assert types["req-00000"]["is_fallback"] == "integer" and types["req-00004"]["latency_ms"] == "real"
    assert by_id["req-00002"]["item_ids"] == "[]" and by_id["req-00002"]["provenance"] == "{}"
    assert types["req-00002"]["user_id"] == "null" and types["req-00002"]["model_version"] == "null"
    assert by_id["req-00005"]["model_version"] == 2**40


def test_duplicates_keep_the_first_row_and_are_not_counted(new_store: Any, only_batch_statement: None) -> None:
    store = new_store()
    first = [record(0), record(1), record(0, endpoint="similar", status_code=500), record(2)]
    assert store.write_request_logs(first) == 3
    again = [record(1, endpoint="similar"), record(3), record(3, status_code=503), record(2, latency_ms=99.0)]
    assert store.write_request_logs(again) == 1
    assert store.write_request_logs([record(0), record(1)]) == 0
    assert row_count(store, "request_logs") == 4
    for n in range(4):
        assert store.get_request(f"req-{n:05d}") == expected(record(n))


def test_a_full_batch_is_written_in_one_statement(new_store: Any, only_batch_statement: None) -> None:
    store = new_store()
    statements: list[str] = []

    def spy(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if "request_logs" in statement:
            statements.append(("many " if executemany else "one ") + statement.split()[0])

    sa.event.listen(store.engine, "before_cursor_execute", spy)
    batch = [record(n, timestamp=T0 + timedelta(microseconds=n * 7919)) for n in range(500)]
    assert store.write_request_logs(batch) == 500
    sa.event.remove(store.engine, "before_cursor_execute", spy)
    assert statements == ["one WITH"]
    stored = store.query_request_logs()
    assert stored == [expected(r) for r in sorted(batch, key=lambda r: (r.timestamp, r.request_id))]


def test_a_string_sqlite_cannot_bind_is_a_validation_error(new_store: Any) -> None:
    """A lone surrogate cannot be encoded as UTF-8: nothing is written, and the error says a value cannot be stored."""
    store = new_store()
    for batch in ([record(0), record(1, user_id="bad \ud800 id")], [log_record(0), log_record(1, user_id="\udfff")]):
        with pytest.raises(DataValidationError, match=r"request log write .*a value cannot be stored.*surrogate"):
            store.write_request_logs(batch)
        assert row_count(store, "request_logs") == 0
    assert store.write_request_logs([record(0)]) == 1


def test_an_integer_beyond_64_bits_is_a_validation_error(new_store: Any) -> None:
    store = new_store()
    for batch in ([record(0), record(1, model_version=2**70)], [log_record(0), log_record(1, model_version=-(2**70))]):
        with pytest.raises(DataValidationError, match="a value cannot be stored"):
            store.write_request_logs(batch)
        assert row_count(store, "request_logs") == 0


@pytest.mark.parametrize("latency", [math.nan, math.inf, -math.inf])
def test_non_finite_latency_is_rejected_and_nothing_is_written(new_store: Any, latency: float) -> None:
    store = new_store()
    batch = [record(0), record(1, latency_ms=latency), record(2)]
    with pytest.raises(DataValidationError) as info:
        store.write_request_logs(batch)
    message = str(info.value)
    assert "record 1" in message and "req-00001" in message and "latency_ms" in message
    assert row_count(store, "request_logs") == 0


@pytest.mark.parametrize(
    "scores", [[0.5, math.nan], [math.inf, 0.1], [-math.inf], [math.inf, -math.inf], [1e308, 1e308, -1e308]]
)
def test_non_finite_scores_never_reach_the_batch_statement(
    new_store: Any, monkeypatch: pytest.MonkeyPatch, scores: list[float]
) -> None:
    """Such a batch takes the validating path, which stores what a dict record gets (NaN/inf as JSON null)."""
    dicts = new_store("dicts")
    dicts.write_request_logs([log_record(0), log_record(1, scores=scores)])
    store = new_store("records")
    batch_statements: list[str] = []
    real_execute = Store._execute_sqlite

    def spy(self: Store, sql: str, params: Any, what: str) -> int:
        batch_statements.append(sql)
        return real_execute(self, sql, params, what)

    monkeypatch.setattr(Store, "_execute_sqlite", spy)
    assert store.write_request_logs([record(0), record(1, scores=scores)]) == 2
    assert store_sql._SQLITE_REQUEST_INSERT_BATCH not in batch_statements
    stored = store.get_request("req-00001")
    assert stored is not None and stored == dicts.get_request("req-00001")
    assert stored["scores"] == [s if math.isfinite(s) else None for s in scores]
    assert store.get_request("req-00000") == expected(record(0))


def test_a_naive_timestamp_is_rejected_naming_the_record(new_store: Any) -> None:
    store = new_store()
    batch = [record(0), record(1), record(2, timestamp=datetime(2024, 5, 1, 12, 0))]
    with pytest.raises(DataValidationError) as info:
        store.write_request_logs(batch)
    assert "record 2" in str(info.value) and "timestamp" in str(info.value)
    assert row_count(store, "request_logs") == 0


def test_values_orjson_cannot_encode_take_the_validating_path(new_store: Any) -> None:
    store = new_store()
    provenance = {"when": T0, "score": np.float32(0.5), "ids": np.array([1, 2])}
    assert store.write_request_logs([record(0), record(1, provenance=provenance)]) == 2
    stored = store.get_request("req-00001")
    assert stored is not None
    assert stored["provenance"] == {"when": T0.isoformat(), "score": 0.5, "ids": [1, 2]}
    assert store.get_request("req-00000") == expected(record(0))


def test_a_mixed_batch_of_dicts_and_records_is_written(new_store: Any) -> None:
    store = new_store()
    batch: list[Any] = [log_record(0), record(1), log_record(2, is_fallback=True), record(3), record(0)]
    assert store.write_request_logs(batch) == 4
    assert store.write_request_logs([record(3), log_record(4)]) == 1
    assert store.get_request("req-00002") == log_record(2, is_fallback=True)
    for n in (0, 1, 3, 4):
        assert store.get_request(f"req-{n:05d}") == expected(record(n))
    # A mixed batch still validates its dicts, naming the record.
    with pytest.raises(DataValidationError, match="record 1"):
        store.write_request_logs([record(5), log_record(6, status_code="OK")])
    assert store.get_request("req-00005") is None


def test_a_failing_batch_statement_writes_nothing(new_store: Any) -> None:
    store = new_store()
    with store.engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TRIGGER fail_third BEFORE INSERT ON request_logs WHEN NEW.request_id = 'req-00002' "
            "BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
        )
    with pytest.raises(StoreError, match=r"request log write refused .*injected failure"):
        store.write_request_logs([record(n) for n in range(5)])
    assert row_count(store, "request_logs") == 0
    assert store.write_request_logs([record(0), record(1)]) == 2
