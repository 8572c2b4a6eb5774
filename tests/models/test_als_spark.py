"""The Spark engine of ALS (pyspark MLlib, ``local[2]``): quality parity with implicit on ML-100K, factor
orientation, bundle compatibility with serving, clear errors, and ``tastebud train --engine spark``.

One Spark session serves the whole module (starting one costs 10-30 s); error tests never replace it.
"""

from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp

from tastebud.data.dataset import Dataset
from tastebud.data.split import make_split
from tastebud.evaluation.protocol import evaluate
from tastebud.models import create, spark_als
from tastebud.models.als import ALSRecommender
from tastebud.models.spark_als import SparkEngineError

pytest.importorskip("pyspark", reason="the spark extra is not installed (pip install -e '.[dev]' installs it)")
pytestmark = [pytest.mark.slow, pytest.mark.integration]

#: The session of these tests, given by environment so that the CLI (which reads the settings) reuses it.
SPARK_ENV = {"TASTEBUD_SPARK__MASTER": "local[2]", "TASTEBUD_SPARK__CONF": '{"spark.ui.enabled": "false"}'}
#: Small and fast hyperparameters for the tests that are not about quality.
FAST = {"factors": 8, "iterations": 5, "regularization": 1.0, "alpha": 10.0}


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    from tastebud.config import build_settings

    saved = {key: os.environ.get(key) for key in SPARK_ENV}
    os.environ.update(SPARK_ENV)
    spark_als.configure(build_settings().spark)
    yield spark_als.session()
    spark_als.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


# ---------------------------------------------------------------------------------------------------- quality
def test_ndcg_matches_implicit_on_ml100k(spark: Any, ml100k: Dataset) -> None:
    """Defaults (64 factors, 15 sweeps, alpha 10, regularization 50), per-user random 80/20, seed 42."""
    split = make_split(ml100k, "random", test_fraction=0.2, seed=42)
    ndcg = {
        engine: evaluate(create("als", engine=engine).fit(split.train), split, k=10, n_boot=10).metric("ndcg")
        for engine in ("implicit", "spark")
    }
    assert ndcg["spark"] >= 0.42, ndcg  # the ALS floor of test_quality_ml100k, less a little
    assert abs(ndcg["spark"] - ndcg["implicit"]) <= 0.01, ndcg


# ---------------------------------------------------------------------------------------------------- orientation
def test_user_factors_solve_sparks_last_half_step(spark: Any, toy_dataset: Dataset) -> None:
    """Spark's last half-step solves every user against the final item factors, so row ``u`` must satisfy user
    ``u``'s normal equations exactly: fails if rows were left in Spark's order or users and items were swapped."""
    model = create("als", engine="spark", **FAST).fit(toy_dataset)
    x, y = model.user_factors_, model.item_factors_
    assert x is not None and y is not None
    assert x.shape == (toy_dataset.n_users, 8) and y.shape == (toy_dataset.n_items, 8)
    matrix = sp.csr_matrix(model.seen_)
    alpha, lam = FAST["alpha"], spark_als.reg_param(FAST["regularization"], matrix)
    y64, gram = y.astype(np.float64), y.astype(np.float64).T @ y.astype(np.float64)
    for u in range(toy_dataset.n_users):
        lo, hi = matrix.indptr[u], matrix.indptr[u + 1]
        idx, conf = matrix.indices[lo:hi], alpha * matrix.data[lo:hi].astype(np.float64)
        a = gram + (y64[idx].T * (conf - 1.0)) @ y64[idx] + lam * (hi - lo) * np.eye(8)
        expected = np.linalg.solve(a, y64[idx].T @ conf)
        np.testing.assert_allclose(x[u], expected, rtol=1e-3, atol=1e-4, err_msg=f"user row {u}")


def test_clusters_stay_apart(spark: Any, cluster_dataset: Dataset) -> None:
    """Users only ever see items of their cluster: misordered item rows would recommend other clusters."""
    model = create("als", engine="spark", **FAST).fit(cluster_dataset)
    users = [str(u) for u in cluster_dataset.users.ids.tolist()]
    recs = model.recommend(users, k=5)
    for user, items in zip(users, recs.item_ids, strict=True):
        assert {item[:2] for item in items} == {user[:2]}, (user, items)
    for item, similar in zip(["c0i00", "c3i05"], model.similar_items(["c0i00", "c3i05"], k=5).item_ids, strict=True):
        assert {s[:2] for s in similar} == {item[:2]}


def test_factors_are_put_in_id_order() -> None:
    """Spark's rows come keyed by id in any order; they land on their id's row, and bad ids are refused."""
    import pandas as pd

    feats = np.arange(12, dtype=np.float32).reshape(4, 3)
    frame = pd.DataFrame({"id": [2, 0, 3, 1], "features": list(feats)})
    out = spark_als._ordered(frame, 5, 3, "user")
    np.testing.assert_array_equal(out[[2, 0, 3, 1]], feats)
    np.testing.assert_array_equal(out[4], 0)  # no positive cell: zero, as implicit leaves it
    with pytest.raises(SparkEngineError, match="ids outside"):
        spark_als._ordered(pd.DataFrame({"id": [0, 0], "features": list(feats[:2])}), 5, 3, "item")


def test_confidence_and_regularization_mapping() -> None:
    values = np.array([1.0, 2.0, 0.05])
    ratings = spark_als.spark_ratings(values, alpha=10.0)
    np.testing.assert_allclose((1 + 10.0 * ratings)[:2], 10.0 * values[:2], rtol=1e-6)  # same confidence
    assert ratings[2] == pytest.approx(spark_als.MIN_RATING)  # alpha * value <= 1: kept positive
    matrix = sp.csr_matrix(np.array([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]]))  # 2 users + 3 items, 3 cells
    assert spark_als.reg_param(6.0, matrix) == pytest.approx(6.0 * 5 / 6)


# ---------------------------------------------------------------------------------------------------- bundle
def test_spark_bundle_serves_like_an_implicit_one(spark: Any, toy_dataset: Dataset, tmp_path: Path) -> None:
    from tastebud.registry.bundle import load_bundle, write_bundle
    from tastebud.serving.engine import Engine
    from tastebud.serving.realtime import UserOverlays
    from tastebud.stream.handlers import normalise_events

    popular = create("popular").fit(toy_dataset)
    manifests = {}
    for engine in ("implicit", "spark"):
        model = create("als", engine=engine, **FAST).fit(toy_dataset)
        write_bundle(
            model, tmp_path / engine, train=toy_dataset, metrics={"ndcg_at_10": 0.1}, fallback={"popular": popular}
        )
        manifests[engine] = json.loads((tmp_path / engine / "manifest.json").read_text())
    assert _shape(manifests["spark"]) == _shape(manifests["implicit"])
    assert manifests["spark"]["model"]["params"]["engine"] == "spark"
    assert manifests["implicit"]["model"]["params"]["engine"] == "implicit"

    bundle = load_bundle(tmp_path / "spark")
    assert isinstance(bundle.model, ALSRecommender)
    engine = Engine(bundle.model, {"popular": popular}, toy_dataset.item_meta)
    user = str(toy_dataset.users.ids[0])
    result = engine.recommend(user, 5, explain=True)
    assert len(result.items) == 5 and not result.is_fallback
    seen = set(toy_dataset.items.ids[sp.csr_matrix(bundle.model.seen_)[0].indices].tolist())
    for row in result.items:
        assert row["item_id"] not in seen
        assert row["because"] and set(row["because"]) <= seen, row  # explained by the user's own items
    assert len(engine.similar(str(toy_dataset.items.ids[0]), 5).items) == 5

    engine.overlays = UserOverlays()
    fresh = [str(i) for i in toy_dataset.items.ids.tolist() if str(i) not in seen][:3]
    raw = [
        {"event_id": f"e{n}", "user_id": user, "item_id": item, "rating": 5, "timestamp": 1_700_000_000 + n}
        for n, item in enumerate(fresh)
    ]
    events, rejected = normalise_events(raw, source="test")
    assert not rejected
    engine.overlays.add(events)
    after = [row["item_id"] for row in engine.recommend(user, 5).items]
    assert not set(fresh) & set(after)  # folded in: the new items are now seen
    assert after != [row["item_id"] for row in result.items]


def _shape(manifest: dict[str, Any]) -> dict[str, Any]:
    """The structure of a manifest (keys, model class, parameter names, files), not its values."""
    return {
        "keys": sorted(manifest),
        "model": {k: v for k, v in manifest["model"].items() if k != "params"},
        "params": sorted(manifest["model"]["params"]),
        "files": sorted(manifest.get("files", {})),
    }


def test_warm_start_with_the_spark_engine_is_a_cold_spark_fit(spark: Any, toy_dataset: Dataset) -> None:
    previous = create("als", **FAST).fit(toy_dataset)
    model = create("als", engine="spark", **FAST)
    assert model._warm_start_refusal(previous) is not None
    model.fit_warm(toy_dataset, previous)
    assert model.engine_info_ is not None and model.engine_info_["name"] == "spark"


# ---------------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("master", ["bogus", "local[0]", "spark://nohost", "local[two]"])
def test_a_bad_master_is_named(master: str) -> None:
    with pytest.raises(SparkEngineError, match=r"spark\.master"):
        spark_als.check_master(master)


def test_an_unreachable_master_is_named_quickly() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        with pytest.raises(SparkEngineError, match=re.escape(f"127.0.0.1:{port} is not reachable")):
            spark_als.check_master(f"spark://127.0.0.1:{port}")


def test_missing_pyspark_or_java_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "pyspark", None)
    with pytest.raises(SparkEngineError, match=r"pip install 'tastebud\[spark\]'"):
        spark_als.check_available()
    monkeypatch.undo()
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(SparkEngineError, match="Java 17"):
        spark_als.check_available()
    monkeypatch.setenv("JAVA_HOME", "/nonexistent-jdk")
    with pytest.raises(SparkEngineError, match="JAVA_HOME=/nonexistent-jdk"):
        spark_als.check_available()


def test_fit_with_a_bad_master_fails_before_touching_the_session(spark: Any, toy_dataset: Dataset) -> None:
    from tastebud.config import SparkSettings

    good = spark_als.current_settings()
    spark_als.configure(SparkSettings(master="nonsense"))
    try:
        with pytest.raises(SparkEngineError, match="'nonsense' is not a Spark master URL"):
            create("als", engine="spark", **FAST).fit(toy_dataset)
    finally:
        spark_als.configure(good)
    assert spark_als.session() is spark  # still the running session


# ---------------------------------------------------------------------------------------------------- CLI
def test_cli_trains_with_the_spark_engine(
    spark: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tastebud.cli import main
    from tastebud.data.synthetic import synthetic_frames

    frame, _ = synthetic_frames(120, 60, 2000, seed=5)
    frame.write_csv(tmp_path / "ratings.csv")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("TASTEBUD_CONFIG", raising=False)
    home = tmp_path / "home"
    base = ["--home", str(home), "train", "--dataset", str(tmp_path / "ratings.csv"), "--model"]
    fast = [f"--param={k}={v}" for k, v in FAST.items()]

    assert main([*base, "ease", "--engine", "spark"]) != 0
    assert "--engine applies to --model als only" in capsys.readouterr().err
    assert main([*base, "als", "--engine", "hadoop"]) != 0
    assert "expected 'implicit' or 'spark'" in capsys.readouterr().err

    code = main([*base, "als", "--engine", "spark", "--no-register", *fast])
    out = capsys.readouterr()
    assert code == 0, out.out + out.err
    assert "Traceback" not in out.err
    (manifest_path,) = (home / "bundles").glob("*/*/manifest.json")
    manifest = json.loads(manifest_path.read_text())
    assert manifest["model"]["params"]["engine"] == "spark"
    assert manifest["extra"]["engine"]["master"] == "local[2]"
    assert spark_als.session() is spark  # the CLI's settings matched: the same session was reused

    monkeypatch.setenv("TASTEBUD_SPARK__MASTER", "spark://")
    code = main([*base, "als", "--engine", "spark", "--no-register", *fast])
    err = capsys.readouterr().err
    assert code != 0 and "spark.master" in err and "Traceback" not in err


# ---------------------------------------------------------------------------------------------------- driver death
def test_a_driver_that_dies_is_named_forgotten_and_replaced(
    spark: Any, toy_dataset: Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last test of the module: it kills the session's JVM.

    A driver JVM that dies during a fit (as a ``local`` driver does when a task overflows its stack) fails that fit
    with a clear error; the process keeps no reference to it, so MLflow clients (which look for an active session)
    still work, and the next fit starts a new session with its own checkpoint directory, removed at stop.
    The new session runs with a half-size thread stack, where 15 sweeps overflow unless ALS checkpoints.
    """
    from mlflow.tracking import MlflowClient
    from pyspark import SparkContext
    from pyspark.ml.recommendation import ALS
    from pyspark.sql import SparkSession

    from tastebud.config import build_settings

    good = build_settings().spark  # the module's session (a CLI test above leaves its own settings configured)
    spark_als.configure(good)

    def die(self: Any, dataset: Any) -> Any:
        proc = SparkContext._gateway.proc
        proc.kill()
        proc.wait()
        raise ConnectionRefusedError(111, "Connection refused")

    with monkeypatch.context() as patch:
        patch.setattr(ALS, "fit", die)
        with pytest.raises(SparkEngineError, match="the Spark driver stopped; the next fit starts a new session"):
            create("als", engine="spark", **FAST).fit(toy_dataset)
    assert SparkSession.getActiveSession() is None
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")  # resolves its registry URI
    assert client.search_experiments()[0].name == "Default"

    small_stack = good.model_copy(
        update={"conf": {"spark.ui.enabled": "false", "spark.driver.extraJavaOptions": "-Xss512k"}}
    )
    spark_als.configure(small_stack)
    try:
        model = create("als", engine="spark", **{**FAST, "iterations": 15}).fit(toy_dataset)
        assert np.abs(model.item_factors_).sum() > 0
        fresh = spark_als.session()
        assert fresh is not spark
        checkpoints = Path(fresh.sparkContext.getCheckpointDir().removeprefix("file:"))
        assert checkpoints.parent.is_dir() and checkpoints.parent.name.startswith("tastebud-spark-checkpoints-")
        spark_als.stop()
        assert not checkpoints.parent.exists()
    finally:
        spark_als.configure(good)
