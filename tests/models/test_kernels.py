"""The compiled serving loop of history-scored models (``history_top_k``) against NumPy and scipy, bit for bit."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp

from tastebud.models import _kernels
from tastebud.models._kernels import history_top_k


def reference(
    history: sp.csr_matrix, weights: np.ndarray, u: int, k: int, exclude: bool, n: int = 3
) -> tuple[np.ndarray, np.ndarray, list[list[int]]]:
    """scipy's CSR x dense product (float32, as EASE's batch path computed it), ranked best first, the lower index
    first on ties, seen items and -inf left out; each item explained by the largest positive contributions, the
    earlier item on ties."""
    scores = np.asarray(history[[u]] @ weights)[0]
    lo, hi = history.indptr[u], history.indptr[u + 1]
    hist, values = history.indices[lo:hi], history.data[lo:hi]
    if exclude:
        scores[hist] = -np.inf
    order = np.lexsort((np.arange(len(scores)), -scores.astype(np.float64)))
    order = order[scores[order] > -np.inf][:k]
    because = []
    for i in order.tolist():
        contrib = weights[hist, i].astype(np.float64) * values.astype(np.float64)
        because.append([int(hist[j]) for j in np.argsort(-contrib, kind="stable")[:n] if contrib[j] > 0])
    return order, scores[order], because


@pytest.fixture(scope="module")
def problem() -> tuple[sp.csr_matrix, np.ndarray]:
    rng = np.random.default_rng(3)
    n_users, n_items = 60, 200
    history = sp.random(n_users, n_items, density=0.08, random_state=4, format="csr", dtype=np.float32)
    history.data[:] = rng.uniform(0.1, 1.0, history.nnz).astype(np.float32)  # recency-like weights, not only 1
    history.data[history.indptr[5] : history.indptr[6]] = 0  # one user without history
    history.eliminate_zeros()
    history.sort_indices()
    weights = rng.normal(size=(n_items, n_items)).astype(np.float32)
    weights[:, 150:] = weights[:, 100:150]  # 50 pairs of items whose scores tie exactly
    weights[:, 40] = -np.abs(weights[:, 40])
    weights[::3, 40] = 0.0  # item 40: no positive contribution, some exactly zero (neither explains it)
    return history, weights


@pytest.mark.parametrize("k", [1, 10, 500])
@pytest.mark.parametrize("exclude", [True, False])
def test_lists_scores_and_explanations_equal_the_numpy_path(
    problem: tuple[sp.csr_matrix, np.ndarray], k: int, exclude: bool
) -> None:
    history, weights = problem
    rows = np.arange(history.shape[0])
    got = history_top_k(history, weights, rows, [k] * len(rows), [exclude] * len(rows), [True] * len(rows), 3)
    ties = 0
    for u, row in zip(rows.tolist(), got, strict=True):
        assert row is not None
        items, scores, because = row
        want_items, want_scores, want_because = reference(history, weights, u, k, exclude)
        np.testing.assert_array_equal(items, want_items)
        np.testing.assert_array_equal(scores, want_scores)  # the same float32 arithmetic: equal, not close
        assert because == want_because
        ties += int(np.any(np.diff(scores) == 0))
    if k > 1:
        assert ties > 0  # the tied columns did reach the lists: the tie rule was exercised


def test_per_row_arguments_and_an_empty_history(problem: tuple[sp.csr_matrix, np.ndarray]) -> None:
    history, weights = problem
    rows, ks = [5, 0, 0, 7], [4, 2, 7, 3]
    excls, expls = [True, False, True, True], [True, False, True, False]
    got = history_top_k(history, weights, rows, ks, excls, expls, 2)
    for u, k, excl, expl, row in zip(rows, ks, excls, expls, got, strict=True):
        assert row is not None
        items, scores, because = row
        want_items, want_scores, want_because = reference(history, weights, u, k, excl, n=2)
        np.testing.assert_array_equal(items, want_items)
        np.testing.assert_array_equal(scores, want_scores)
        assert because == (want_because if expl else None)
    assert got[0] is not None and got[0][2] == [[], [], [], []]  # no history: zero scores, nothing explains them


def test_a_nan_score_hands_the_row_back(problem: tuple[sp.csr_matrix, np.ndarray]) -> None:
    history, weights = problem
    broken = weights.copy()
    u = 0
    j = int(history.indices[history.indptr[u]])  # an item of user 0 and only of the users who have it
    broken[j, 17] = np.nan
    have = set(np.flatnonzero(np.asarray(history[:, j].todense()).ravel()).tolist())
    got = history_top_k(history, broken, range(history.shape[0]), [10] * 60, [True] * 60, [True] * 60, 3)
    assert {r for r, row in enumerate(got) if row is None} == have


def test_ease_falls_back_to_one_user_for_nan_rows() -> None:
    import polars as pl

    from tastebud.data.dataset import Dataset
    from tastebud.models.ease import EASERecommender

    rng = np.random.default_rng(1)
    frame = pl.DataFrame({"user_id": rng.integers(0, 40, 800), "item_id": rng.integers(0, 90, 800)}).unique()
    model = EASERecommender().fit(Dataset.from_frame(frame))
    assert model.weights_ is not None
    j = int(model.seen_.indices[model.seen_.indptr[3]])
    model.weights_[j, 4] = np.nan
    rows = list(range(12))
    batched = model.recommend_rows(rows, 5, explain=True)
    for u, got in zip(rows, batched, strict=True):
        lo, hi = model.seen_.indptr[u], model.seen_.indptr[u + 1]
        if j in model.seen_.indices[lo:hi]:  # answered by recommend_row, as one request would be
            alone = model.recommend_row(u, 5, explain=True)
            np.testing.assert_array_equal(got.items, alone.items)
            assert got.because == alone.because
        else:
            assert got.because is not None and len(got.items) == 5


def test_compiled_without_a_cache_when_no_cache_directory_is_writable(monkeypatch: pytest.MonkeyPatch) -> None:
    import numba

    real = numba.njit
    asked: list[bool] = []

    def njit(**options: Any) -> Any:
        asked.append(bool(options.get("cache")))
        if options.get("cache"):
            raise RuntimeError("cannot cache function 'f': no locator available for file 'x.py'")
        return real(**options)

    monkeypatch.setattr(numba, "njit", njit)

    def add(a: int, b: int) -> int:
        return a + b

    compiled = _kernels._compile(add)
    assert compiled(2, 3) == 5 and asked == [True, False]


def test_loading_a_model_into_the_engine_runs_the_loop_before_any_request(monkeypatch: pytest.MonkeyPatch) -> None:
    """``Engine.calibrate`` (run by the serving holder on every load) scores one batch: the loop is compiled there."""
    import polars as pl

    from tastebud.data.dataset import Dataset
    from tastebud.models.ease import EASERecommender
    from tastebud.serving.engine import Engine

    rng = np.random.default_rng(2)
    frame = pl.DataFrame({"user_id": rng.integers(0, 30, 500), "item_id": rng.integers(0, 50, 500)}).unique()
    data = Dataset.from_frame(frame)
    model = EASERecommender().fit(data)
    calls: list[int] = []
    real = _kernels.history_top_k

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(len(args[2]))
        return real(*args, **kwargs)

    monkeypatch.setattr(_kernels, "history_top_k", spy)
    Engine(model, {}, data.item_meta).calibrate()
    assert calls and calls[0] >= 4  # a batch, not one user (one user takes recommend_row)
    assert _kernels._history_top_k.signatures  # type: ignore[attr-defined]  # compiled
