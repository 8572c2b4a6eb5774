"""Outcomes from behaviour: attribution of events to exposures, per-user metrics, guardrails, interleaving credit.

Hand-made exposures and events where the answer is known, plus a brute-force reference on random data.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import polars as pl
import pytest

from tastebud.errors import DataValidationError, ParameterError
from tastebud.experiments import outcomes
from tastebud.experiments.outcomes import (
    ATTRIBUTED_SCHEMA,
    EVENT_SCHEMA,
    EXPOSURE_SCHEMA,
    GUARDRAIL_SCHEMA,
    PER_USER_SCHEMA,
    TIME_SERIES_SCHEMA,
    attribute,
    guardrails,
    interleaving_credit,
    per_user_metrics,
    time_series,
)

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
HOUR = 3600.0
END = T0 + timedelta(days=1)


def exposures(*rows: dict[str, Any]) -> pl.DataFrame:
    """An exposures frame; ``at`` is seconds after :data:`T0`."""
    base = {"user_id": "u1", "variant": "control", "item_ids": ["a", "b", "c"], "teams": None, "latency_ms": 10.0,
            "status_code": 200, "is_fallback": False}  # fmt: skip
    records = []
    for n, row in enumerate(rows):
        record = {**base, "request_id": f"r{n}", **row}
        record["timestamp"] = T0 + timedelta(seconds=record.pop("at", 0.0))
        records.append(record)
    return pl.DataFrame(records, schema=EXPOSURE_SCHEMA)


def events(*rows: dict[str, Any]) -> pl.DataFrame:
    """An events frame; ``at`` is seconds after :data:`T0`."""
    base = {"user_id": "u1", "item_id": "a", "kind": "click", "rating": None, "value": 1.0}
    records = []
    for row in rows:
        record = {**base, **row}
        record["timestamp"] = T0 + timedelta(seconds=record.pop("at"))
        records.append(record)
    return pl.DataFrame(records, schema=EVENT_SCHEMA)


def metrics(ex: pl.DataFrame, ev: pl.DataFrame, **kw: Any) -> dict[str, dict[str, Any]]:
    kw.setdefault("horizon_s", HOUR)
    frame = per_user_metrics(ex, ev, start=T0 - timedelta(days=1), end=END, **kw)
    assert frame.schema == PER_USER_SCHEMA
    return {row["user_id"]: row for row in frame.iter_rows(named=True)}


# --- attribution ---------------------------------------------------------------------------------------------------


def test_an_event_within_the_horizon_is_attributed_to_the_exposure_and_one_beyond_it_is_not() -> None:
    ex = exposures({"at": 0, "item_ids": ["a", "b", "c"]})
    ev = events({"item_id": "b", "at": 60}, {"item_id": "c", "at": HOUR}, {"item_id": "a", "at": HOUR + 1})
    out = attribute(ex, ev, horizon_s=HOUR)
    assert out.schema == ATTRIBUTED_SCHEMA
    assert out.select("item_id", "request_id", "variant", "position").rows() == [
        ("b", "r0", "control", 1),
        ("c", "r0", "control", 2),  # exactly at the horizon still counts
    ]
    assert out["exposed_at"].to_list() == [T0, T0]


def test_an_event_before_the_exposure_or_at_its_instant_is_not_attributed() -> None:
    ex = exposures({"at": 100})
    ev = events({"item_id": "a", "at": 50}, {"item_id": "b", "at": 100})
    assert attribute(ex, ev, horizon_s=HOUR).height == 0


def test_an_event_on_an_item_not_shown_or_by_another_user_is_not_attributed() -> None:
    ex = exposures({"at": 0, "user_id": "u1", "item_ids": ["a", "b"]})
    ev = events({"item_id": "z", "at": 10}, {"user_id": "u2", "item_id": "a", "at": 10})
    assert attribute(ex, ev, horizon_s=HOUR).height == 0


def test_the_latest_earlier_exposure_wins() -> None:
    ex = exposures(
        {"at": 0, "item_ids": ["a", "b"]},
        {"at": 100, "item_ids": ["x", "a"]},  # shows a again, at position 1
        {"at": 300, "item_ids": ["a"]},  # after the event: not a candidate
    )
    ev = events({"item_id": "a", "at": 200})
    out = attribute(ex, ev, horizon_s=HOUR)
    assert out.select("request_id", "position").rows() == [("r1", 1)]


def test_attribution_ignores_the_order_of_its_inputs() -> None:
    ex = exposures({"at": 0, "item_ids": ["a"]}, {"at": 100, "item_ids": ["a"]})
    ev = events({"item_id": "a", "at": 150}, {"item_id": "a", "at": 50})
    out = attribute(ex.reverse(), ev, horizon_s=HOUR)
    assert out.select("request_id").to_series().to_list() == ["r0", "r1"]  # by event time: 50 s, then 150 s


def _reference(ex: pl.DataFrame, ev: pl.DataFrame, horizon_s: float) -> list[tuple[int, str]]:
    """Brute force: for each event, the latest exposure of its user and item strictly before it, within horizon."""
    shown = [(r["user_id"], item, r["timestamp"], r["request_id"]) for r in ex.iter_rows(named=True)
             for item in r["item_ids"]]  # fmt: skip
    found = []
    for n, e in enumerate(ev.iter_rows(named=True)):
        best = None
        for user, item, at, request in shown:
            lag = (e["timestamp"] - at).total_seconds()
            same = user == e["user_id"] and item == e["item_id"]
            if same and 0 < lag <= horizon_s and (best is None or at > best[0]):
                best = (at, request)
        if best is not None:
            found.append((n, best[1]))
    return found


def _random_log(seed: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """60 lists and 300 events of 4 users on 8 items within an hour; each event's ``value`` is its number."""
    rng = np.random.default_rng(seed)
    ex = exposures(*(
        {"at": float(rng.integers(0, 3000)), "user_id": f"u{rng.integers(0, 4)}",
         "item_ids": [f"i{j}" for j in rng.choice(8, size=int(rng.integers(0, 4)), replace=False)]}
        for _ in range(60)
    ))  # fmt: skip
    ev = events(*(
        {"at": float(rng.integers(0, 4000)), "user_id": f"u{rng.integers(0, 4)}", "item_id": f"i{rng.integers(0, 8)}",
         "value": float(n)}
        for n in range(300)
    ))  # fmt: skip
    return ex, ev


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_attribution_agrees_with_a_brute_force_reference(seed: int) -> None:
    ex, ev = _random_log(seed)
    out = attribute(ex, ev, horizon_s=600)
    got = sorted(zip(out["value"].cast(pl.Int64).to_list(), out["request_id"].to_list(), strict=True))
    want = _reference(ex, ev, 600)
    assert len(want) > 20 and got == sorted(want)
    assert out["timestamp"].is_sorted()


def test_pairs_sharing_a_hash_are_matched_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every pair's first key collides here, so every match is redone on the strings: the answer must not move."""
    ex, ev = _random_log(3)
    expected = attribute(ex, ev, horizon_s=600)
    real_key = outcomes._pair_key
    monkeypatch.setattr(outcomes, "_pair_key", lambda seed: pl.lit(7, pl.UInt64) if seed == 1 else real_key(seed))
    collided = attribute(ex, ev, horizon_s=600)
    assert expected.height > 20 and collided.equals(expected)


def test_a_horizon_must_be_positive_and_frames_need_their_columns() -> None:
    ex, ev = exposures({"at": 0}), events({"at": 1})
    with pytest.raises(ParameterError, match="horizon"):
        attribute(ex, ev, horizon_s=0)
    with pytest.raises(DataValidationError, match="item_ids"):
        attribute(ex.drop("item_ids"), ev, horizon_s=HOUR)
    with pytest.raises(DataValidationError, match="kind"):
        attribute(ex, ev.drop("kind"), horizon_s=HOUR)


# --- per-user metrics ----------------------------------------------------------------------------------------------


def test_a_200_response_without_a_later_event_on_a_shown_item_is_no_success() -> None:
    """The trap: every list was served fine (200, fast, no fallback), but nobody touched a shown item."""
    ex = exposures({"at": 0, "user_id": "u1"}, {"at": 10, "user_id": "u1"}, {"at": 0, "user_id": "u2"})
    ev = events(
        {"user_id": "u1", "item_id": "z", "at": 20},  # an item that was not shown
        {"user_id": "u2", "item_id": "a", "at": 2 * HOUR},  # a shown item, but beyond the horizon
        {"user_id": "u2", "item_id": "b", "kind": "skip", "at": 30},  # a skip is not engagement
    )
    got = metrics(ex, ev)
    assert set(got) == {"u1", "u2"}
    for user in got.values():
        assert (user["hit_rate"], user["click_rate"], user["rating_rate"], user["plays"]) == (0.0, 0.0, 0.0, 0.0)
        assert user["mean_rating"] is None


def test_per_user_metrics_per_variant() -> None:
    ex = exposures(
        {"at": 0, "user_id": "u1", "variant": "control", "item_ids": ["a", "b"]},
        {"at": 100, "user_id": "u1", "variant": "control", "item_ids": ["c", "d"]},
        {"at": 0, "user_id": "u2", "variant": "treatment", "item_ids": ["a", "b"]},
        {"at": 0, "user_id": "u3", "variant": "treatment", "item_ids": ["a"], "status_code": 500},
    )
    ev = events(
        {"user_id": "u1", "item_id": "a", "kind": "view", "at": 10},
        {"user_id": "u1", "item_id": "c", "kind": "play", "value": 7.0, "at": 200},
        {"user_id": "u1", "item_id": "c", "kind": "play", "value": None, "at": 210},  # a play without a value: 1
        {"user_id": "u1", "item_id": "d", "kind": "rating", "rating": 3.0, "value": 3.0, "at": 220},
        {"user_id": "u2", "item_id": "b", "kind": "rating", "rating": 5.0, "value": 5.0, "at": 10},
        {"user_id": "u2", "item_id": "a", "kind": "rating", "rating": 4.0, "value": 4.0, "at": 20},
    )
    got = metrics(ex, ev)
    u1, u2, u3 = got["u1"], got["u2"], got["u3"]
    assert (u1["variant"], u1["exposures"], u1["first_exposure"]) == ("control", 2, T0)
    assert u1["hit_rate"] == 1.0 and u1["click_rate"] == pytest.approx(3 / 2)  # view + 2 plays over 2 lists
    assert (u1["rating_rate"], u1["plays"], u1["mean_rating"]) == (0.0, 8.0, 3.0)
    assert (u2["variant"], u2["hit_rate"], u2["click_rate"], u2["rating_rate"]) == ("treatment", 1.0, 0.0, 1.0)
    assert (u2["plays"], u2["mean_rating"]) == (0.0, 4.5)
    # a failed request is still an exposure: the user stays in the analysis, without a success
    assert (u3["variant"], u3["exposures"], u3["hit_rate"]) == ("treatment", 1, 0.0)
    frame = per_user_metrics(ex, ev, horizon_s=HOUR, start=T0 - timedelta(days=1), end=END)
    assert frame["user_id"].to_list() == ["u1", "u2", "u3"]  # by variant, then user


def test_only_exposures_in_the_window_count() -> None:
    ex = exposures({"at": 0, "user_id": "u1"}, {"at": 100, "user_id": "u2"}, {"at": 200, "user_id": "u1"})
    frame = per_user_metrics(
        ex, events(), horizon_s=HOUR, start=T0 + timedelta(seconds=50), end=T0 + timedelta(seconds=200)
    )
    assert frame["user_id"].to_list() == ["u2"]
    empty = per_user_metrics(ex, events(), horizon_s=HOUR, start=END, end=END + timedelta(1))
    assert empty.height == 0 and empty.schema == PER_USER_SCHEMA
    with pytest.raises(ParameterError, match="not after"):
        per_user_metrics(ex, events(), horizon_s=HOUR, start=END, end=END)


def test_pre_period_metrics_count_any_item_before_the_first_exposure() -> None:
    ex = exposures({"at": 1000, "user_id": "u1", "item_ids": ["a"]}, {"at": 5000, "user_id": "u1"})
    ev = events(
        {"item_id": "q", "kind": "click", "at": 900},  # any item counts before exposure
        {"item_id": "q", "kind": "play", "value": 3.0, "at": 500},
        {"item_id": "r", "kind": "rating", "rating": 4.0, "value": 4.0, "at": 800},
        {"item_id": "s", "kind": "rating", "rating": 2.0, "value": 2.0, "at": 200},
        {"item_id": "t", "kind": "click", "at": 50},  # before the pre-period (1000 - 900 s)
        {"item_id": "u", "kind": "click", "at": 1000},  # at the first exposure: not before it
        {"item_id": "v", "kind": "click", "at": 2000},  # after: never pre-period
    )
    u1 = metrics(ex, ev, pre_period_s=900)["u1"]
    assert (u1["pre_hit_rate"], u1["pre_click_rate"], u1["pre_rating_rate"]) == (1.0, 2.0, 1.0)  # click + play
    assert (u1["pre_plays"], u1["pre_mean_rating"]) == (3.0, 3.0)
    assert u1["hit_rate"] == 0.0  # nothing was done with the shown item "a"
    default = metrics(ex, ev, horizon_s=100)["u1"]  # the pre-period defaults to the horizon: [900 s, 1000 s)
    assert (default["pre_click_rate"], default["pre_plays"], default["pre_mean_rating"]) == (1.0, 0.0, None)


def test_a_user_seen_under_two_variants_is_flagged_and_keeps_the_first() -> None:
    ex = exposures(
        {"at": 0, "user_id": "u1", "variant": "treatment", "item_ids": ["a"]},
        {"at": 100, "user_id": "u1", "variant": "control", "item_ids": ["b"]},
        {"at": 200, "user_id": "u1", "variant": "control", "item_ids": ["c"]},
        {"at": 0, "user_id": "u2", "variant": "control"},
    )
    ev = events({"user_id": "u1", "item_id": "b", "at": 150})  # on the list of the wrong variant
    got = metrics(ex, ev)
    assert (got["u1"]["variant"], got["u1"]["variant_errors"], got["u1"]["exposures"]) == ("treatment", 2, 1)
    assert got["u1"]["hit_rate"] == 0.0  # the other variant's list earns the user nothing
    assert got["u2"]["variant_errors"] == 0


# --- guardrails ----------------------------------------------------------------------------------------------------


def test_guardrails_per_variant() -> None:
    latencies = [float(v) for v in range(1, 21)]
    control = [
        {"variant": "control", "latency_ms": lat, "item_ids": [f"i{n % 4}"], "status_code": 200,
         "is_fallback": n < 4}
        for n, lat in enumerate(latencies)
    ]  # fmt: skip
    control[0].update(status_code=503, item_ids=[], is_fallback=False)  # a server error
    control[1].update(status_code=404, item_ids=[])  # a client error: not the variant's fault
    control[2].update(status_code=422, item_ids=[])
    treatment = [{"variant": "treatment", "latency_ms": 5.0, "item_ids": ["i9", "i8"]}]
    out = guardrails(exposures(*control, *treatment), catalog_size=10)
    assert out.schema == GUARDRAIL_SCHEMA
    c, t = out.rows(named=True)
    assert (c["variant"], c["requests"], t["variant"], t["requests"]) == ("control", 20, "treatment", 1)
    assert c["p95_latency"] == pytest.approx(float(np.percentile(latencies, 95)))
    assert c["error_ratio"] == pytest.approx(1 / 20)  # the 503 only, not the 404 nor the 422
    assert c["fallback_rate"] == pytest.approx(1 / 17)  # 1 of the 17 answered 2xx (n = 3) fell back
    assert (c["items_shown"], c["coverage"]) == (4, 0.4)
    assert (t["items_shown"], t["coverage"], t["error_ratio"], t["fallback_rate"]) == (2, 0.2, 0.0, 0.0)
    assert guardrails(exposures(*treatment), catalog_size=None)["coverage"].to_list() == [None]


# --- interleaving --------------------------------------------------------------------------------------------------


def test_interleaving_credits_the_team_at_the_position() -> None:
    teams = ["control", "treatment", "control"]
    ex = exposures(
        {"at": 0, "user_id": "u1", "variant": "interleaved", "item_ids": ["a", "b", "c"], "teams": teams},
        {"at": 0, "user_id": "u2", "variant": "interleaved", "item_ids": ["a", "b", "c"], "teams": teams},
        {"at": 0, "user_id": "u3", "variant": "control", "item_ids": ["a"]},  # not interleaved: no credit
    )
    ev = events(
        {"user_id": "u1", "item_id": "b", "kind": "click", "at": 10},
        {"user_id": "u1", "item_id": "b", "kind": "play", "at": 20},  # the same item again: still one credit
        {"user_id": "u1", "item_id": "c", "kind": "rating", "rating": 5.0, "at": 30},
        {"user_id": "u1", "item_id": "a", "kind": "rating", "rating": 2.0, "at": 40},  # a low rating earns nothing
        {"user_id": "u2", "item_id": "a", "kind": "skip", "at": 10},
        {"user_id": "u3", "item_id": "a", "kind": "click", "at": 10},
    )
    out = interleaving_credit(ex, ev, horizon_s=HOUR)
    assert out.rows() == [("u1", "control", 1), ("u1", "treatment", 1), ("u2", "control", 0), ("u2", "treatment", 0)]


# --- time series ---------------------------------------------------------------------------------------------------


def test_time_series_accumulates_per_variant_over_first_exposure() -> None:
    per_user = pl.DataFrame(
        {
            "user_id": ["a", "b", "c", "d"],
            "variant": ["control", "treatment", "control", "treatment"],
            "first_exposure": [T0, T0, T0 + timedelta(hours=1), T0 + timedelta(hours=2)],
            "mean_rating": [4.0, None, 2.0, 5.0],
        }
    )
    out = time_series(per_user, "mean_rating", points=3)
    assert out.schema == TIME_SERIES_SCHEMA
    rows = {(r["time"], r["variant"]): r for r in out.iter_rows(named=True)}
    assert sorted({t for t, _ in rows}) == [T0, T0 + timedelta(hours=1), T0 + timedelta(hours=2)]
    first_c, first_t = rows[(T0, "control")], rows[(T0, "treatment")]
    assert (first_c["users"], first_c["n"], first_c["sum"], first_c["mean"]) == (1, 1, 4.0, 4.0)
    assert (first_t["users"], first_t["n"], first_t["sum"], first_t["mean"]) == (1, 0, 0.0, None)
    mid = rows[(T0 + timedelta(hours=1), "control")]
    assert (mid["users"], mid["n"], mid["sum"], mid["sum_sq"], mid["mean"]) == (2, 2, 6.0, 20.0, 3.0)
    last = rows[(T0 + timedelta(hours=2), "treatment")]
    assert (last["users"], last["n"], last["sum"], last["sum_sq"]) == (2, 1, 5.0, 25.0)
    assert time_series(per_user, "mean_rating", points=1)["time"].to_list() == [T0 + timedelta(hours=2)] * 2
    with pytest.raises(ParameterError, match="unknown metric"):
        time_series(per_user, "revenue")
    assert time_series(per_user.clear(), "mean_rating").height == 0


# --- from the store ------------------------------------------------------------------------------------------------


def test_metrics_from_a_stores_frames() -> None:
    """End to end through the store's frame readers (in memory: one shared connection, read chunk by chunk)."""
    from tastebud.store import create_store

    def log(n: int, user: str, variant: str, items: list[str], **kw: Any) -> dict[str, Any]:
        return {"request_id": f"r{n}", "timestamp": T0 + timedelta(seconds=n), "endpoint": "recommend",
                "user_id": user, "item_ids": items, "scores": [1.0] * len(items), "latency_ms": 5.0 + n,
                "status_code": 200, "is_fallback": False, "variant": variant, "experiment": "exp", **kw}  # fmt: skip

    def event(n: int, user: str, item: str, kind: str, at: float, **kw: Any) -> dict[str, Any]:
        return {"event_id": f"e{n}", "user_id": user, "item_id": item, "kind": kind,
                "timestamp": T0 + timedelta(seconds=at), **kw}  # fmt: skip

    with create_store(url="sqlite://") as store:
        store.init_schema()
        store.frame_chunk_rows = 2
        store.write_request_logs([
            log(0, "u1", "control", ["a", "b"]), log(1, "u2", "treatment", ["a", "b"]),
            log(2, "u3", "treatment", [], status_code=500), log(3, "u4", "control", ["c"], experiment="other"),
        ])  # fmt: skip
        store.write_events([
            event(0, "u1", "b", "play", 30, value=12.0), event(1, "u2", "a", "rating", 40, rating=5.0),
            event(2, "u1", "z", "click", -30), event(3, "u2", "b", "view", 2 * HOUR),
        ])  # fmt: skip
        ex = store.exposures_frame(experiment="exp")
        ev = store.events_frame(since=T0 - timedelta(hours=1), until=END)
    got = metrics(ex, ev)
    assert sorted(got) == ["u1", "u2", "u3"]
    assert (got["u1"]["hit_rate"], got["u1"]["plays"], got["u1"]["pre_click_rate"]) == (1.0, 12.0, 1.0)
    assert (got["u2"]["rating_rate"], got["u2"]["mean_rating"], got["u2"]["click_rate"]) == (1.0, 5.0, 0.0)
    assert (got["u3"]["exposures"], got["u3"]["hit_rate"]) == (1, 0.0)
    guard = {r["variant"]: r for r in guardrails(ex, 10).iter_rows(named=True)}
    assert (guard["treatment"]["error_ratio"], guard["treatment"]["items_shown"]) == (0.5, 2)
