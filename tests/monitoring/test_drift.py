"""Drift on synthetic data: planted drift is found, none is reported without it, ids are never numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tastebud.data.synthetic import generate_synthetic
from tastebud.errors import ParameterError
from tastebud.monitoring.drift import Thresholds, compute_drift, kl_divergence, psi, write_gauges
from tastebud.monitoring.report import write_drift_report


@pytest.fixture(scope="module")
def data() -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """A reference (75 %) and a current (25 %) sample of the same synthetic interactions, plus item metadata."""
    ds = generate_synthetic(300, 200, 12000, seed=11)
    frame = ds.to_frame()
    order = np.random.default_rng(0).permutation(frame.height)
    cut = int(frame.height * 0.75)
    return frame[order[:cut]], frame[order[cut:]], ds.item_meta


def drifted(reference: pl.DataFrame, current: pl.DataFrame) -> pl.DataFrame:
    """Recent traffic moved to the reference's tail items, with low ratings."""
    counts = reference.group_by("item_id").len()
    tail = counts.filter(pl.col("len") <= counts["len"].median()).select("item_id")
    moved = current.join(tail, on="item_id", how="inner")
    return pl.concat([moved, moved]).with_columns(pl.lit(1.0, dtype=pl.Float32).alias("rating"))


def test_no_drift_without_a_plant(data: tuple[pl.DataFrame, ...]) -> None:
    reference, current, meta = data
    rng = np.random.default_rng(1)
    scores = rng.normal(size=4000)
    report = compute_drift(
        reference, current, item_meta=meta, reference_scores=scores[:2000], current_scores=scores[2000:]
    )
    assert {s.signal for s in report.signals} == {"rating", "item_popularity", "user_activity", "genre_mix", "score"}
    assert report.level == "ok", [(s.signal, s.psi) for s in report.signals]
    assert all(s.psi < 0.1 and s.kl >= 0 for s in report.signals)


def test_planted_drift_is_found(data: tuple[pl.DataFrame, ...]) -> None:
    reference, current, meta = data
    rng = np.random.default_rng(2)
    report = compute_drift(
        reference, drifted(reference, current), item_meta=meta,
        reference_scores=rng.normal(size=2000), current_scores=rng.normal(1.0, 1.0, size=2000),
    )  # fmt: skip
    levels = {s.signal: s.level for s in report.signals}
    assert levels["rating"] == levels["item_popularity"] == levels["score"] == "alert"
    assert report.level == "alert"
    assert report.get("item_popularity").psi > 0.25  # type: ignore[union-attr]


def test_relabelling_ids_does_not_change_drift(data: tuple[pl.DataFrame, ...]) -> None:
    reference, current, meta = data
    cur = drifted(reference, current)
    # A different, order-scrambling labelling of users and items, applied the same way on both sides.
    items = sorted(set(reference["item_id"]) | set(cur["item_id"]))
    users = sorted(set(reference["user_id"]) | set(cur["user_id"]))
    rng = np.random.default_rng(3)
    item_map = dict(zip(items, (f"i{v}" for v in rng.permutation(len(items)) * 7919), strict=True))
    user_map = dict(zip(users, (str(v) for v in rng.permutation(len(users)) * 104729), strict=True))

    def relabel(frame: pl.DataFrame) -> pl.DataFrame:
        return frame.with_columns(
            pl.col("item_id").replace_strict(item_map), pl.col("user_id").replace_strict(user_map)
        )

    meta2 = meta.with_columns(pl.col("item_id").replace_strict(item_map, default=None)).drop_nulls("item_id")
    a = compute_drift(reference, cur, item_meta=meta)
    b = compute_drift(relabel(reference), relabel(cur), item_meta=meta2)
    assert [(s.signal, s.bins) for s in a.signals] == [(s.signal, s.bins) for s in b.signals]
    for x, y in zip(a.signals, b.signals, strict=True):
        assert x.psi == pytest.approx(y.psi, rel=1e-12) and x.kl == pytest.approx(y.kl, rel=1e-12)


def test_psi_and_kl_known_values() -> None:
    assert psi([10, 10], [10, 10]) == pytest.approx(0.0)
    p, q = np.array([50.5, 50.5]) / 101, np.array([20.5, 80.5]) / 101
    assert psi([50, 50], [20, 80]) == pytest.approx(np.sum((q - p) * np.log(q / p)))
    assert kl_divergence([50, 50], [20, 80]) == pytest.approx(np.sum(q * np.log(q / p)))
    with pytest.raises(ParameterError):
        psi([1, 2], [1, 2, 3])
    with pytest.raises(ParameterError):
        Thresholds(warn=0.3, alert=0.2)
    assert (
        Thresholds().level(0.1) == "warn" and Thresholds().level(0.25) == "alert" and Thresholds().level(0.05) == "ok"
    )


def test_report_and_gauges_are_written(data: tuple[pl.DataFrame, ...], tmp_path: Path) -> None:
    reference, current, meta = data
    report = compute_drift(reference, drifted(reference, current), item_meta=meta)
    markdown = write_drift_report(report, tmp_path / "report")
    text = markdown.read_text()
    assert "| rating |" in text and "alert" in text and "score | | | skipped" in text
    assert (tmp_path / "report" / "rating.png").stat().st_size > 1000
    prom = write_gauges(report, tmp_path / "drift.prom").read_text()
    levels = {
        s.labels["signal"]: s.value
        for f in text_string_to_metric_families(prom)
        for s in f.samples
        if s.name == "tastebud_monitor_drift_level"
    }
    assert levels["rating"] == 2 and set(levels) == {s.signal for s in report.signals}
