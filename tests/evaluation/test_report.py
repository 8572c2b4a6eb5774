"""Comparison tables, JSON, the PNG chart, atomic writing and the evaluation runners."""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np
import polars as pl
import pytest
from rich.console import Console

from fakes import ItemScoreModel
from tastebud.data.dataset import Dataset
from tastebud.data.split import Split
from tastebud.errors import DatasetNotFoundError, DataValidationError, DataWarning, ParameterError
from tastebud.evaluation import report as rp
from tastebud.evaluation.protocol import Report, bootstrap_ci
from tastebud.models.base import ModelConfig

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class RankConfig(ModelConfig):
    reverse: bool = False


class PopularModel(ItemScoreModel):
    """Most popular unseen items first (or least popular with ``reverse``)."""

    name = "popular"
    config_class = RankConfig

    def fit(self, dataset: Dataset) -> Self:
        pop = np.asarray(dataset.user_item.sum(axis=0)).ravel() + np.arange(dataset.n_items)[::-1] * 1e-3
        self.users_, self.items_, self.seen_ = dataset.users, dataset.items, dataset.user_item
        self.scores_ = -pop if self.config.reverse else pop
        return self


class AntiPopularModel(PopularModel):
    """A collaborative-looking model that is worse than the baseline."""

    name = "badknn"

    def __init__(self, config: ModelConfig | None = None, **params: Any) -> None:
        super().__init__(config, **({"reverse": True} | params))


def fake_report(model: str, ndcg: Sequence[float], k: int = 10, **fields: Any) -> Report:
    values = np.asarray(ndcg, dtype=float)
    per_user = {name: values for name in rp.PLOT_METRICS}
    return Report(
        model=model,
        params={},
        k=k,
        part="test",
        user_ids=[f"u{i}" for i in range(len(values))],
        per_user=per_user,
        means={name: float(np.nanmean(values)) for name in per_user},
        ci={name: bootstrap_ci(values) for name in per_user},
        coverage=0.5,
        novelty=3.0,
        popularity_mean=10.0,
        popularity_ratio=2.0,
        n_users=len(values),
        **fields,
    )


def toy_data() -> tuple[Dataset, Split]:
    rng = np.random.default_rng(7)
    n = 600
    pop = 1 / np.arange(1, 41)
    frame = pl.DataFrame({"user_id": rng.integers(0, 30, n), "item_id": rng.choice(40, n, p=pop / pop.sum())}).unique(
        ["user_id", "item_id"], maintain_order=True
    )
    full = Dataset.from_frame(frame, name="toy")
    test = rng.random(full.n_interactions) < 0.25
    inter = full.interactions
    split = Split(
        full.with_interactions(inter.filter(pl.Series(~test))),
        full.with_interactions(inter.filter(pl.Series(test))),
        meta={"method": "random", "seed": 7},
    )
    return full, split


# ---------------------------------------------------------------------- notes and tables
def test_models_below_popular_are_flagged_not_hidden() -> None:
    comp = rp.compare(
        [
            fake_report("popular", [0.2, 0.4]),
            fake_report("als", [0.1, 0.2]),
            fake_report("ease", [0.5, 0.5]),
            fake_report("content", [0.0, 0.1]),
        ]
    )
    notes = comp.notes()
    assert notes == {0: [], 1: [rp.NOTE_BELOW_BASELINE], 2: [], 3: []}
    assert comp.best().model == "ease"
    md = comp.to_markdown()
    als_row = next(line for line in md.splitlines() if line.startswith("| als "))
    assert "does not beat popular" in als_row
    assert "| content " in md  # reported even though it is weakest


def test_no_popular_means_no_flags() -> None:
    comp = rp.compare([fake_report("als", [0.1]), fake_report("ease", [0.3])])
    assert all(not n for n in comp.notes().values())
    assert rp.NOTE_BELOW_BASELINE not in comp.to_markdown()


def test_compare_refuses_mixed_k_and_empty() -> None:
    with pytest.raises(ParameterError, match="different k"):
        rp.compare([fake_report("a", [0.1], k=5), fake_report("b", [0.1], k=10)])
    with pytest.raises(ParameterError):
        rp.compare([])


def test_markdown_shows_means_and_intervals() -> None:
    rep = fake_report("ease", [0.2, 0.4, 0.6], fit_seconds=1.234, rmse=0.9)
    md = rp.compare([rep], meta={"dataset": "toy", "split": "random"}).to_markdown()
    low, high = rep.ci["ndcg"]
    assert f"0.4000 [{low:.4f}, {high:.4f}]" in md
    assert "NDCG@10" in md and "dataset: toy" in md
    assert "1.23" in md and "0.9000" in md


def test_json_is_strict_and_carries_notes() -> None:
    comp = rp.compare([fake_report("popular", [0.3]), fake_report("als", [0.1, np.nan])])
    data = json.loads(comp.to_json())
    assert [m["model"] for m in data["models"]] == ["popular", "als"]
    assert data["models"][1]["notes"] == [rp.NOTE_BELOW_BASELINE]
    assert data["baseline"] == "popular"
    assert data["models"][0]["rmse"] is None


def test_print_table() -> None:
    buf = io.StringIO()
    comp = rp.compare([fake_report("popular", [0.3]), fake_report("als", [0.1])])
    comp.print_table(Console(file=buf, width=250, color_system=None))
    out = buf.getvalue()
    assert "popular" in out and "als" in out and "does not beat popular" in out


def test_plot_writes_png(tmp_path: Path) -> None:
    import matplotlib.image as mpimg

    comp = rp.compare([fake_report("popular", [0.3, 0.1]), fake_report("als", [0.4, np.nan])])
    path = comp.plot(tmp_path / "chart.png")
    assert path.read_bytes()[:8] == PNG_MAGIC
    img = mpimg.imread(path)
    assert img.shape[0] > 100 and img.shape[1] > 100


# ---------------------------------------------------------------------- writing
def test_write_comparison_writes_three_files_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    comp = rp.compare([fake_report("popular", [0.3]), fake_report("als", [0.1])])
    paths = rp.write_comparison(comp, tmp_path / "out")
    assert set(paths) == {"markdown", "json", "plot"}
    assert paths["markdown"].read_text() == comp.to_markdown()
    assert json.loads(paths["json"].read_text())["k"] == 10
    assert paths["plot"].read_bytes()[:8] == PNG_MAGIC
    old_png = paths["plot"].read_bytes()

    def broken(self: rp.Comparison, path: Path) -> Path:
        Path(path).write_bytes(b"half a png")
        raise RuntimeError("disk full")

    monkeypatch.setattr(rp.Comparison, "plot", broken)
    with pytest.raises(RuntimeError):
        rp.write_comparison(comp, tmp_path / "out")
    assert paths["plot"].read_bytes() == old_png  # the previous chart survives intact
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "comparison.json",
        "comparison.md",
        "comparison.png",
    ]


# ---------------------------------------------------------------------- runners
def test_run_evaluation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    full, split = toy_data()
    calls: list[tuple[Any, ...]] = []

    def fake_make_split(ds: Dataset, method: str, **params: Any) -> Split:
        calls.append((ds, method, params))
        return split

    monkeypatch.setattr(rp, "protocol_split", fake_make_split)
    comp = rp.run_evaluation(
        full,
        [PopularModel(), AntiPopularModel()],
        split="random",
        k=5,
        seed=3,
        out_dir=tmp_path,
        progress=False,
    )
    assert calls == [(full, "random", {"seed": 3})]
    assert [r.model for r in comp.reports] == ["popular", "badknn"]
    assert comp.reports[0].metric("ndcg") > comp.reports[1].metric("ndcg")
    assert comp.notes()[1] == [rp.NOTE_BELOW_BASELINE]
    assert comp.meta["snapshot_id"] == full.snapshot_id
    assert {p.name for p in tmp_path.iterdir()} == {"comparison.md", "comparison.json", "comparison.png"}
    with pytest.raises(ParameterError, match="not being evaluated"):
        rp.run_evaluation(full, [PopularModel()], params={"als": {}}, out_dir=tmp_path, progress=False)


def _write(frame: pl.DataFrame, path: Path) -> Path:
    if path.suffix == ".parquet":
        frame.write_parquet(path)
    else:
        frame.write_csv(path)
    return path


def test_files_share_one_vocabulary(tmp_path: Path) -> None:
    train = _write(
        pl.DataFrame({"user_id": ["a", "a", "b", "c"], "item_id": [1, 2, 1, 3], "rating": [4, 5, 3, 2]}),
        tmp_path / "train.csv",
    )
    test = _write(
        pl.DataFrame({"user_id": ["a", "b", "d"], "item_id": [3, 9, 1], "rating": [5.0, 1.0, 2.0]}),
        tmp_path / "test.parquet",
    )
    split = rp.split_from_files(train, test)
    assert split.train.items == split.test.items
    assert split.train.users.to_list() == ["a", "b", "c", "d"]
    assert split.train.items.to_list() == ["1", "2", "3", "9"]
    assert split.train.n_interactions == 4 and split.test.n_interactions == 3
    assert sorted(split.test.to_frame()["item_id"].to_list()) == ["1", "3", "9"]
    comp = rp.run_evaluation_files(train, test, [PopularModel()], k=2, out_dir=tmp_path / "o", progress=False)
    assert comp.reports[0].n_users == 3
    assert (tmp_path / "o" / "comparison.png").exists()


def test_files_with_timestamps_in_one_part_only_warn(tmp_path: Path) -> None:
    train = _write(pl.DataFrame({"user_id": [1, 2], "item_id": [1, 2], "timestamp": [10, 20]}), tmp_path / "a.csv")
    test = _write(pl.DataFrame({"user_id": [1], "item_id": [2]}), tmp_path / "b.csv")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        split = rp.split_from_files(train, test)
    assert any(issubclass(w.category, DataWarning) for w in caught)
    assert split.train.interactions["timestamp"].null_count() == 2


@pytest.mark.parametrize(
    ("content", "name", "error", "match"),
    [
        ("user_id,rating\n1,3\n", "bad.csv", DataValidationError, "missing column item_id"),
        ("user_id,item_id,rating\n1,2,x\n", "bad.csv", DataValidationError, "row 1: rating 'x'"),
        ("user_id,item_id\n", "empty.csv", DataValidationError, "no interactions"),
        ("whatever", "data.xlsx", DataValidationError, "unknown file type"),
        ("not parquet", "data.parquet", DataValidationError, "cannot be read"),
    ],
)
def test_bad_files_raise_clear_errors(
    tmp_path: Path, content: str, name: str, error: type[Exception], match: str
) -> None:
    bad = tmp_path / name
    bad.write_text(content)
    good = _write(pl.DataFrame({"user_id": [1], "item_id": [2]}), tmp_path / "good.csv")
    with pytest.raises(error, match=match) as info:
        rp.split_from_files(good, bad)
    assert name in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="no such file"):
        rp.read_interactions(tmp_path / "nope.csv")
