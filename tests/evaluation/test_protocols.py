"""The named protocols (what each holds out) and the comparison of models across them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from tastebud.data.dataset import Dataset
from tastebud.data.split import make_split
from tastebud.errors import ParameterError, SplitError
from tastebud.evaluation.protocol_comparison import ProtocolComparison, run_protocols
from tastebud.evaluation.protocols import PROTOCOLS, parse_protocols, protocol_split, validation_split
from tastebud.evaluation.report import NOTE_BELOW_BASELINE


def _times(part: Dataset) -> pl.DataFrame:
    return part.interactions.group_by("user_idx").agg(
        pl.col("timestamp").min().alias("first"), pl.col("timestamp").max().alias("last"), pl.len().alias("n")
    )


def test_random_is_the_seeded_per_user_split(toy_dataset: Dataset) -> None:
    ours = protocol_split(toy_dataset, "random", seed=7)
    theirs = make_split(toy_dataset, "random", test_fraction=0.2, seed=7)
    assert ours.snapshot_id == theirs.snapshot_id
    assert protocol_split(toy_dataset, "random", seed=8).snapshot_id != ours.snapshot_id


def test_temporal_user_holds_out_each_users_newest_fifth(toy_dataset: Dataset) -> None:
    split = protocol_split(toy_dataset, "temporal-user")
    train, test = _times(split.train), _times(split.test)
    both = train.join(test, on="user_idx", suffix="_test")
    # every user's held-out interactions are not older than any of their training ones
    assert (both["first_test"] >= both["last"]).all()
    totals = both["n"] + both["n_test"]
    expected = np.maximum(1, np.floor(0.2 * totals.to_numpy() + 0.5))
    np.testing.assert_array_equal(both["n_test"].to_numpy(), expected)
    assert split.validation is None and split.meta["method"] == "temporal-user"


def test_leave_last_out_holds_out_one_latest_interaction(toy_dataset: Dataset) -> None:
    split = protocol_split(toy_dataset, "leave-last-out")
    test = _times(split.test)
    assert (test["n"] == 1).all() and test.height == toy_dataset.n_users
    latest = _times(toy_dataset).select("user_idx", pl.col("last").alias("latest"))
    assert (test.join(latest, on="user_idx").select(pl.col("last") == pl.col("latest"))).to_series().all()
    assert split.validation is None
    assert split.train.n_interactions + split.test.n_interactions == toy_dataset.n_interactions


def test_other_split_methods_pass_through(toy_dataset: Dataset) -> None:
    assert protocol_split(toy_dataset, "temporal-global").meta["method"] == "temporal-global"
    with pytest.raises(ParameterError, match="unknown split method"):
        protocol_split(toy_dataset, "sideways")


def test_temporal_protocols_need_timestamps(cluster_dataset: Dataset) -> None:
    for name in ("temporal-user", "leave-last-out"):
        with pytest.raises(SplitError, match="timestamps"):
            protocol_split(cluster_dataset, name)


def test_validation_is_carved_from_train_only(toy_dataset: Dataset) -> None:
    split = protocol_split(toy_dataset, "temporal-user")
    inner = validation_split(split, "temporal-user")

    def pairs(d: Dataset) -> set[tuple[int, int]]:
        return set(zip(d.interactions["user_idx"].to_list(), d.interactions["item_idx"].to_list(), strict=True))

    assert pairs(inner.train) | pairs(inner.test) == pairs(split.train)
    assert not pairs(inner.test) & pairs(split.test)


def test_parse_protocols() -> None:
    assert parse_protocols("all") == list(PROTOCOLS)
    assert parse_protocols("Temporal_User, random") == ["temporal-user", "random"]
    for bad, match in (("", "at least one"), ("random,random", "twice"), ("weekly", "unknown protocol")):
        with pytest.raises(ParameterError, match=match):
            parse_protocols(bad)


@pytest.fixture(scope="module")
def by_protocol(toy_dataset: Dataset, tmp_path_factory: pytest.TempPathFactory) -> tuple[ProtocolComparison, Path]:
    out = tmp_path_factory.mktemp("protocols")
    result = run_protocols(
        toy_dataset,
        ["popular", "ease", "seqtrans"],
        k=5,
        params={"ease": {"l2": 5.0}, "seqtrans": {"l2": 5.0}},
        out_dir=out,
        progress=False,
        n_boot=50,
    )
    return result, out


def test_every_model_on_every_protocol(by_protocol: tuple[ProtocolComparison, Path]) -> None:
    result, _ = by_protocol
    assert result.protocols == list(PROTOCOLS) and result.models() == ["popular", "ease", "seqtrans"]
    for protocol in result.protocols:
        for model in result.models():
            rep = result.report(model, protocol)
            assert rep is not None and rep.n_users > 0 and rep.fit_seconds is not None
            assert rep.split_meta["method"] == protocol
            low, high = rep.ci["ndcg"]
            assert low <= rep.metric("ndcg") <= high


def test_relative_gain_and_notes(by_protocol: tuple[ProtocolComparison, Path]) -> None:
    result, _ = by_protocol
    p = "temporal-user"
    best = max(result.metric("popular", p), result.metric("ease", p))
    assert result.relative_gain("seqtrans", ["popular", "ease"], p) == pytest.approx(
        result.metric("seqtrans", p) / best - 1
    )
    notes = result.notes()
    for model in ("ease", "seqtrans"):
        below = [q for q in result.protocols if not result.metric(model, q) > result.metric("popular", q)]
        assert notes[model] == below
    assert notes["popular"] == []


def test_outputs_are_written(by_protocol: tuple[ProtocolComparison, Path]) -> None:
    result, out = by_protocol
    for name in ("protocols.md", "protocols.json", "protocols.png"):
        assert (out / name).stat().st_size > 0
    for protocol in PROTOCOLS:
        assert (out / protocol / "comparison.json").is_file()
    md = (out / "protocols.md").read_text()
    assert "NDCG@5 temporal-user" in md and "seqtrans" in md and "[" in md
    data = json.loads((out / "protocols.json").read_text())
    cell = data["table"]["seqtrans"]["leave-last-out"]
    assert cell["mean"] == pytest.approx(result.metric("seqtrans", "leave-last-out"))
    assert len(cell["ci"]) == 2 and set(data["comparisons"]) == set(PROTOCOLS)
    if any(result.notes().values()):
        assert NOTE_BELOW_BASELINE in md


def test_run_protocols_refuses_bad_input(toy_dataset: Dataset) -> None:
    with pytest.raises(ParameterError, match="unknown protocol"):
        run_protocols(toy_dataset, ["popular"], protocols=["weekly"], progress=False)
    with pytest.raises(ParameterError, match="not being evaluated"):
        run_protocols(toy_dataset, ["popular"], params={"ease": {}}, progress=False)
    with pytest.raises(ParameterError, match="no models"):
        run_protocols(toy_dataset, [], progress=False)
