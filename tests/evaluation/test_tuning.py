"""Hyperparameter search on a test-local model and search space (registered through monkeypatch)."""

from __future__ import annotations

import io
import json
import sqlite3
from pathlib import Path
from typing import Any, Literal, Self

import numpy as np
import polars as pl
import pytest
from rich.console import Console

import tastebud.data.split as split_module
import tastebud.models as models
from fakes import ItemScoreModel
from tastebud.data.dataset import Dataset
from tastebud.data.split import Split
from tastebud.errors import ParameterError, SplitError
from tastebud.evaluation import tuning
from tastebud.evaluation.tuning import CategoricalParam, FloatParam, IntParam
from tastebud.models.base import ModelConfig


class ToyConfig(ModelConfig):
    mix: float = 0.5  # weight of popularity against seeded noise: higher is better on skewed data
    depth: int = 1
    kind: Literal["a", "b", "broken"] = "a"
    seed: int = 0


class ToyModel(ItemScoreModel):
    """Scores items by ``mix`` * popularity + (1 - ``mix``) * noise; ``kind="broken"`` fails to fit."""

    name = "toy"
    config_class = ToyConfig

    def fit(self, dataset: Dataset) -> Self:
        if self.config.kind == "broken":
            raise ParameterError("toy: kind 'broken' cannot be fitted")
        pop = np.asarray(dataset.user_item.sum(axis=0)).ravel()
        noise = np.random.default_rng(self.config.seed).random(dataset.n_items)
        self.scores_ = self.config.mix * pop / max(pop.max(), 1) + (1 - self.config.mix) * noise
        self.users_, self.items_, self.seen_ = dataset.users, dataset.items, dataset.user_item
        return self


SPACE = {
    "mix": FloatParam(0.0, 1.0),
    "depth": IntParam(1, 8, log=True),
    "kind": CategoricalParam(("a", "b")),
}


@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(models.MODELS, "toy", f"{__name__}:ToyModel")
    monkeypatch.setitem(tuning.SEARCH_SPACES, "toy", dict(SPACE))


def toy_split(validation: bool = True) -> Split:
    rng = np.random.default_rng(11)
    pop = 1 / np.arange(1, 41)
    frame = pl.DataFrame(
        {"user_id": rng.integers(0, 40, 900), "item_id": rng.choice(40, 900, p=pop / pop.sum())}
    ).unique(["user_id", "item_id"], maintain_order=True)
    full = Dataset.from_frame(frame, name="toy")
    u = rng.random(full.n_interactions)
    inter = full.interactions

    def part(mask: np.ndarray) -> Dataset:
        return full.with_interactions(inter.filter(pl.Series(mask)))

    if not validation:
        return Split(part(u >= 0.2), part(u < 0.2))
    return Split(part(u >= 0.35), part(u < 0.2), part((u >= 0.2) & (u < 0.35)), meta={"method": "hand"})


@pytest.mark.usefixtures("toy")
def test_tune_finds_best_on_validation_and_stores_study(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parts: list[str] = []
    real = tuning.fit_and_evaluate

    def spy(*args: Any, **kwargs: Any) -> Any:
        parts.append(kwargs["part"])
        return real(*args, **kwargs)

    monkeypatch.setattr(tuning, "fit_and_evaluate", spy)
    result = tuning.tune(toy_split(), "toy", trials=8, k=5, seed=1, storage_dir=tmp_path, progress=False)

    assert parts == ["validation"] * 8  # the test part is never evaluated
    values = [t["value"] for t in result.trials if t["state"] == "COMPLETE"]
    assert len(values) == 8 and result.n_trials == 8
    assert result.best_value == pytest.approx(max(values))
    assert 0 <= result.best_params["mix"] <= 1 and 1 <= result.best_params["depth"] <= 8
    assert result.best_params["seed"] == 1  # the model's own seed follows tune's seed
    assert result.best_params["kind"] in ("a", "b")

    best = json.loads((tmp_path / "best.json").read_text())
    assert best["best_params"] == result.best_params
    assert best["best_value"] == pytest.approx(result.best_value)
    assert best["metric"] == "ndcg" and best["k"] == 5
    with sqlite3.connect(tmp_path / "study.db") as db:
        (n,) = db.execute("select count(*) from trials").fetchone()
    assert n == 8


@pytest.mark.usefixtures("toy")
def test_tune_is_deterministic_and_resumes(tmp_path: Path) -> None:
    split = toy_split()
    a = tuning.tune(split, "toy", trials=4, k=5, seed=3, storage_dir=tmp_path / "a", progress=False)
    b = tuning.tune(split, "toy", trials=4, k=5, seed=3, storage_dir=tmp_path / "b", progress=False)
    assert [t["params"] for t in a.trials] == [t["params"] for t in b.trials]
    assert [t["value"] for t in a.trials] == [t["value"] for t in b.trials]
    again = tuning.tune(split, "toy", trials=2, k=5, seed=3, storage_dir=tmp_path / "a", progress=False)
    assert again.n_trials == 6
    assert again.study_name == a.study_name
    assert again.best_value >= a.best_value


@pytest.mark.usefixtures("toy")
def test_failed_trials_are_recorded_and_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(tuning.SEARCH_SPACES, "toy", {"kind": CategoricalParam(("a", "broken"))})
    result = tuning.tune(toy_split(), "toy", trials=6, k=5, storage_dir=tmp_path, progress=False)
    states = {t["state"] for t in result.trials}
    assert states == {"COMPLETE", "FAIL"}
    failed = [t for t in result.trials if t["state"] == "FAIL"]
    assert all("broken" in t["error"] for t in failed)
    assert result.best_params["kind"] == "a"


@pytest.mark.usefixtures("toy")
def test_every_trial_failing_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(tuning.SEARCH_SPACES, "toy", {"kind": CategoricalParam(("broken",))})
    with pytest.raises(ParameterError, match=r"every trial .*broken"):
        tuning.tune(toy_split(), "toy", trials=2, storage_dir=tmp_path, progress=False)


@pytest.mark.usefixtures("toy")
def test_nothing_to_tune_runs_one_trial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(tuning.SEARCH_SPACES, "toy", {})
    result = tuning.tune(toy_split(), "toy", trials=5, k=5, storage_dir=tmp_path, progress=False)
    assert result.n_trials == 1
    assert result.best_params == {"seed": 42}


@pytest.mark.usefixtures("toy")
def test_dataset_input_makes_a_random_split_with_validation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    split = toy_split()
    calls: list[tuple[str, dict[str, Any]]] = []

    def fake_make_split(ds: Dataset, method: str, **params: Any) -> Split:
        calls.append((method, params))
        return split

    monkeypatch.setattr(split_module, "make_split", fake_make_split, raising=False)
    tuning.tune(split.train, "toy", trials=1, seed=9, storage_dir=tmp_path, progress=False, validation_fraction=0.2)
    assert calls == [("random", {"seed": 9, "validation_fraction": 0.2})]


@pytest.mark.usefixtures("toy")
def test_progress_prints_each_trial(tmp_path: Path) -> None:
    buf = io.StringIO()
    console = Console(file=buf, width=200, force_terminal=False, color_system=None)
    tuning.tune(toy_split(), "toy", trials=3, k=5, storage_dir=tmp_path, progress=True, console=console)
    out = buf.getvalue()
    assert out.count("trial ") >= 3 and "ndcg@5=" in out


@pytest.mark.usefixtures("toy")
def test_bad_requests_fail_before_any_trial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    split = toy_split()
    with pytest.raises(ParameterError, match="no search space"):
        tuning.tune(split, "nosuch", storage_dir=tmp_path, progress=False)
    with pytest.raises(ParameterError, match="unknown metric"):
        tuning.tune(split, "toy", metric="auc", storage_dir=tmp_path, progress=False)
    with pytest.raises(SplitError, match="validation"):
        tuning.tune(toy_split(validation=False), "toy", storage_dir=tmp_path, progress=False)
    monkeypatch.setitem(tuning.SEARCH_SPACES, "toy", {"alpha": FloatParam(0.1, 1.0)})
    with pytest.raises(ParameterError, match="'alpha' is not a parameter"):
        tuning.tune(split, "toy", storage_dir=tmp_path, progress=False)
    monkeypatch.setitem(tuning.SEARCH_SPACES, "toy", {"kind": CategoricalParam(("a", "zzz"))})
    with pytest.raises(ParameterError, match="kind='zzz' is refused"):
        tuning.tune(split, "toy", storage_dir=tmp_path, progress=False)
    assert not (tmp_path / "study.db").exists()


def test_declared_spaces_match_the_brief() -> None:
    als = tuning.SEARCH_SPACES["als"]
    assert als["factors"] == IntParam(16, 256, log=True)
    assert als["regularization"] == FloatParam(1e-3, 1000.0, log=True)  # wide enough for play counts' 100
    assert als["alpha"] == FloatParam(0.1, 100.0, log=True)
    assert als["iterations"] == IntParam(5, 30)
    assert tuning.SEARCH_SPACES["ease"] == {"l2": FloatParam(10.0, 2000.0, log=True)}
    assert tuning.SEARCH_SPACES["content"] == {}


@pytest.mark.parametrize("name", sorted(tuning.SEARCH_SPACES))
def test_declared_spaces_fit_the_registered_models(name: str) -> None:
    try:
        models.model_class(name)
    except ImportError as err:  # the model module is not there yet
        pytest.skip(f"{name}: {err}")
    tuning._check_space(name, tuning.SEARCH_SPACES[name], {})
