"""``Store.request_log_summary``: the one-query aggregate the studio's Operations page reads gives the same numbers
as the frame-based KPIs (:mod:`tastebud.monitoring.kpis`) on a seeded request log, on SQLite and on PostgreSQL.

The log mixes what the success rule looks at: 4xx and 5xx statuses, an error marker on a 2xx answer (and falsy
markers that are no error), a non-finite score, fewer scores than items, fallbacks, missing model versions, and
records just outside the window.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import polars as pl
import pytest

from contracts.store import log_record
from tastebud.errors import ParameterError
from tastebud.monitoring.kpis import availability, compute_kpis, request_frame, success
from tastebud.store import Store, create_store

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
SINCE, UNTIL = T0 + timedelta(minutes=5), T0 + timedelta(hours=3)
BUCKET_S = 1800


def seeded_log(n: int = 400, seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    records = []
    for i in range(n):
        fields: dict[str, Any] = {
            "timestamp": T0 + timedelta(seconds=rng.uniform(0, 3.5 * 3600)),  # some after UNTIL, some before SINCE
            "latency_ms": round(rng.lognormvariate(2, 0.8), 3),
            "model_version": rng.choice([1, 2, 2, None]),
            "model_name": rng.choice(["movielens-100k"] * 5 + [None]),
            "is_fallback": rng.random() < 0.2,
            "status_code": rng.choice([200] * 12 + [404, 422, 500, 503]),
        }
        kind = rng.random()
        if kind < 0.05:
            fields["provenance"] = {"error": "model raised"}  # a 2xx status on an error body
        elif kind < 0.1:
            fields["provenance"] = {"error": rng.choice([False, "", None, 0])}  # no error
        elif kind < 0.14:
            fields["scores"] = [0.9, float("nan"), 0.1]  # stored as null: garbage
        elif kind < 0.17:
            fields["scores"] = [0.9, 0.5]  # fewer scores than items
        elif kind < 0.2:
            fields["item_ids"], fields["scores"] = [], []  # an empty list is a success
        records.append(log_record(i, **fields))
    for when in (SINCE, UNTIL - timedelta(microseconds=1)):  # the edges: the first in, the last in
        records.append(log_record(len(records), timestamp=when))
    records.append(log_record(len(records), timestamp=UNTIL))  # out: the end is exclusive
    return records


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Store]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
    else:
        pytest.importorskip("psycopg", reason="psycopg (tastebud[postgres]) is needed for PostgreSQL")
        url = request.getfixturevalue("postgres_database")
    with create_store(url=url) as st:
        st.init_schema()
        st.write_request_logs(seeded_log())
        yield st


def by_level(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        out.setdefault(row["level"], {})[row["key"]] = row
    return out


def test_summary_matches_the_frame_based_kpis(store: Store) -> None:
    frame = request_frame(store.query_request_logs(since=SINCE, until=UNTIL))
    assert 300 < frame.height < 400  # the seeded window, edges included
    rows = by_level(store.request_log_summary(since=SINCE, until=UNTIL, bucket_s=BUCKET_S))
    kpis = compute_kpis(frame)

    def same(row: dict[str, Any], summary: dict[str, Any]) -> None:
        assert row["requests"] == summary["requests"]
        assert row["successful"] == summary["successful"]
        assert row["server_errors"] == summary["server_errors"]
        assert row["client_errors"] == summary["client_errors"]
        assert round(1 - row["successful"] / row["requests"], 6) == summary["error_ratio"]
        fallback = round(row["fallbacks"] / row["successful"], 6) if row["successful"] else None
        assert fallback == summary["fallback_rate"]
        for p in ("p50", "p95", "p99"):
            assert row[p] == pytest.approx(summary["latency_ms"][p], abs=1e-3)  # kpis rounds to 3 places

    same(rows["all"][""], kpis["overall"])
    assert set(rows["version"]) == set(kpis["by_model_version"]) == {
        "movielens-100k:1", "movielens-100k:2", "movielens-100k:3", "movielens-100k:-", "none:1", "none:2", "none:-",
    }  # fmt: skip
    for key, summary in kpis["by_model_version"].items():
        same(rows["version"][key], summary)
    # a mix of outcomes, so the comparison covers each part of the success rule
    overall = kpis["overall"]
    assert 0.1 < overall["error_ratio"] < 0.5 and overall["server_errors"] and overall["client_errors"]

    # time buckets: counts by outcome and linearly interpolated percentiles
    expected = (
        frame.with_columns(success().alias("ok"), pl.col("timestamp").dt.truncate(f"{BUCKET_S}s").alias("t"))
        .group_by("t")
        .agg(
            pl.len().alias("n"), pl.col("ok").sum().alias("ok"),
            (pl.col("ok") & pl.col("is_fallback")).sum().alias("fb"),
            *(pl.col("latency_ms").quantile(q, "linear").alias(f"p{round(q * 100)}") for q in (0.5, 0.95, 0.99)),
        )
        .sort("t")
    )  # fmt: skip
    assert len(rows["bucket"]) == expected.height == 6
    for row in expected.iter_rows(named=True):
        got = rows["bucket"][str(int(row["t"].timestamp()))]
        assert (got["requests"], got["successful"], got["fallbacks"]) == (row["n"], row["ok"], row["fb"])
        for p in ("p50", "p95", "p99"):
            assert got[p] == pytest.approx(row[p], rel=1e-9)

    # availability: the whole window's ratio, and every minute below the objective among the listed minutes
    avail = availability(frame, SINCE, UNTIL)
    assert (avail.total, avail.successful) == (rows["all"][""]["requests"], rows["all"][""]["successful"])
    breached = {
        datetime.fromtimestamp(int(key), UTC).isoformat(): row
        for key, row in rows["minute"].items()
        if row["successful"] / row["requests"] < avail.objective
    }
    assert breached.keys() == {m["minute"] for m in avail.breached_minutes}
    for minute in avail.breached_minutes:
        got = breached[minute["minute"]]
        assert (got["requests"], got["successful"]) == (minute["total"], minute["successful"])


def test_percentiles_interpolate_like_numpy(store: Store) -> None:
    frame = request_frame(store.query_request_logs(since=SINCE, until=UNTIL))
    row = by_level(store.request_log_summary(since=SINCE, until=UNTIL, bucket_s=60))["all"][""]
    lat = frame["latency_ms"].to_numpy()
    for p, q in (("p50", 50), ("p95", 95), ("p99", 99)):
        assert row[p] == pytest.approx(float(np.percentile(lat, q)), rel=1e-12)


def test_one_request_and_an_empty_window(store: Store) -> None:
    one = by_level(store.request_log_summary(since=SINCE, until=SINCE + timedelta(microseconds=1), bucket_s=60))
    assert one["all"][""]["requests"] == 1
    assert one["all"][""]["p50"] == one["all"][""]["p99"] == 1.25 + 400  # log_record(400)'s latency
    empty = store.request_log_summary(since=T0 - timedelta(days=2), until=T0 - timedelta(days=1), bucket_s=60)
    assert empty == []


def test_bad_window_and_bucket_are_refused(store: Store) -> None:
    with pytest.raises(ParameterError, match="not after"):
        store.request_log_summary(since=UNTIL, until=SINCE, bucket_s=60)
    with pytest.raises(ParameterError, match="bucket_s"):
        store.request_log_summary(since=SINCE, until=UNTIL, bucket_s=0)
