"""Ranking, beyond-accuracy and rating metrics against hand-computed values and a per-user reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from tastebud.errors import ParameterError
from tastebud.evaluation import metrics as m

LOG2_3 = math.log2(3)


def _rel(rows: list[dict[int, float]], n_items: int) -> sp.csr_matrix:
    """Relevance CSR from one {item: grade} dict per user."""
    r = [u for u, row in enumerate(rows) for _ in row]
    c = [i for row in rows for i in row]
    d = [g for row in rows for g in row.values()]
    return sp.csr_matrix((d, (r, c)), shape=(len(rows), n_items), dtype=np.float64)


# Users: 0 two relevant (one graded 3), 1 none, 2 with a repeated item in its list, 3 misses, 4 padded list.
RECS = np.array(
    [
        [0, 1, 2],
        [3, -1, -1],
        [2, 2, 1],
        [0, 1, 2],
        [4, -1, -1],
    ]
)
REL = _rel([{0: 1, 2: 3}, {}, {1: 2, 2: 1}, {3: 5}, {4: 1, 0: 1, 1: 1, 2: 1}], n_items=5)


def test_precision_recall_f1_by_hand() -> None:
    p = m.precision_at_k(RECS, REL, 3)
    r = m.recall_at_k(RECS, REL, 3)
    f = m.f1_at_k(RECS, REL, 3)
    np.testing.assert_allclose(p, [2 / 3, np.nan, 2 / 3, 0, 1 / 3])
    np.testing.assert_allclose(r, [1, np.nan, 1, 0, 1 / 4])
    np.testing.assert_allclose(f, [0.8, np.nan, 0.8, 0, 2 * (1 / 3) * (1 / 4) / (1 / 3 + 1 / 4)])


def test_zero_relevant_users_are_nan_and_excluded_from_mean() -> None:
    r = m.recall_at_k(RECS, REL, 3)
    assert math.isnan(r[1])
    assert m.mean(r) == pytest.approx((1 + 1 + 0 + 0.25) / 4)


def test_map_normalises_by_min_of_relevant_and_k() -> None:
    ap = m.map_at_k(RECS, REL, 3)
    # user 0: hits at 1 and 3 -> (1 + 2/3) / 2; user 2: the repeat at rank 2 is a miss -> (1 + 2/3) / 2;
    # user 4: 4 relevant, k=3 -> one hit at rank 1 over min(4, 3).
    np.testing.assert_allclose(ap, [5 / 6, np.nan, 5 / 6, 0, 1 / 3])


def test_map_with_more_relevant_than_k_can_reach_one() -> None:
    rel = _rel([{0: 1, 1: 1, 2: 1, 3: 1}], 4)
    assert m.map_at_k(np.array([[2, 0]]), rel, 2)[0] == pytest.approx(1.0)


def test_ndcg_graded_and_binary_by_hand() -> None:
    graded = m.ndcg_at_k(RECS, REL, 3)
    binary = m.ndcg_at_k(RECS, REL, 3, graded=False)
    # user 0: DCG = 1 + 3/log2(4); IDCG = 3 + 1/log2(3)
    assert graded[0] == pytest.approx((1 + 3 / 2) / (3 + 1 / LOG2_3))
    assert binary[0] == pytest.approx((1 + 1 / 2) / (1 + 1 / LOG2_3))
    # user 2: item 2 (grade 1) at rank 1, repeat ignored, item 1 (grade 2) at rank 3
    assert graded[2] == pytest.approx((1 + 2 / 2) / (2 + 1 / LOG2_3))
    assert graded[3] == 0.0
    assert math.isnan(graded[1])
    # user 4: ideal list truncated at k=3 even though 4 items are relevant
    assert binary[4] == pytest.approx(1 / (1 + 1 / LOG2_3 + 1 / 2))


def test_ndcg_ties_in_grades_do_not_change_the_ideal() -> None:
    rel = _rel([{0: 2, 1: 2, 2: 1}], 3)
    a = m.ndcg_at_k(np.array([[0, 1, 2]]), rel, 3)
    b = m.ndcg_at_k(np.array([[1, 0, 2]]), rel, 3)
    assert a[0] == pytest.approx(1.0)
    assert b[0] == pytest.approx(1.0)


def test_fewer_relevant_than_k_perfect_list_scores_one() -> None:
    rel = _rel([{3: 1}], 10)
    recs = np.array([[3, 5, 6, 7, 8]])
    assert m.ndcg_at_k(recs, rel, 5)[0] == pytest.approx(1.0)
    assert m.recall_at_k(recs, rel, 5)[0] == 1.0
    assert m.precision_at_k(recs, rel, 5)[0] == pytest.approx(0.2)
    assert m.map_at_k(recs, rel, 5)[0] == 1.0


def test_mrr_and_hit_rate() -> None:
    np.testing.assert_allclose(m.mrr(RECS, REL, 3), [1, np.nan, 1, 0, 1])
    np.testing.assert_allclose(m.hit_rate_at_k(RECS, REL, 3), [1, np.nan, 1, 0, 1])
    late = np.array([[9, 8, 1]])
    assert m.mrr(late, _rel([{1: 1}], 10), 3)[0] == pytest.approx(1 / 3)
    assert m.mrr(late, _rel([{1: 1}], 10), 2)[0] == 0.0


def test_k_truncates_and_pads() -> None:
    rel = _rel([{2: 1}], 5)
    recs = np.array([[0, 1, 2]])
    assert m.hit_rate_at_k(recs, rel, 2)[0] == 0.0
    assert m.hit_rate_at_k(recs, rel, 3)[0] == 1.0
    # k beyond the list: missing slots are misses
    assert m.precision_at_k(recs, rel, 5)[0] == pytest.approx(1 / 5)


def test_padding_never_hits_item_zero() -> None:
    rel = _rel([{0: 1}], 3)
    assert m.hit_rate_at_k(np.array([[-1, -1]]), rel, 2)[0] == 0.0


def test_ranking_metrics_matches_individual_functions() -> None:
    allm = m.ranking_metrics(RECS, REL, 3)
    assert set(allm) == set(m.RANKING_METRICS)
    np.testing.assert_allclose(allm["ndcg"], m.ndcg_at_k(RECS, REL, 3))
    np.testing.assert_allclose(allm["map"], m.map_at_k(RECS, REL, 3))
    only = m.ranking_metrics(RECS, REL, 3, metrics=["recall"])
    assert list(only) == ["recall"]


def test_non_canonical_relevance_is_handled() -> None:
    # unsorted indices within a row must not break the sorted search
    rel = sp.csr_matrix((np.array([1.0, 1.0]), np.array([3, 1]), np.array([0, 2])), shape=(1, 4))
    assert m.recall_at_k(np.array([[1, 3]]), rel, 2)[0] == 1.0


@pytest.mark.parametrize(
    ("recs", "rel", "k"),
    [
        (np.array([1, 2]), REL, 3),  # 1-D recs
        (RECS, REL[:2], 3),  # misaligned rows
        (RECS, REL, 0),  # bad k
        (RECS.astype(float), REL, 3),  # not indices
    ],
)
def test_bad_inputs_raise(recs: np.ndarray, rel: sp.csr_matrix, k: int) -> None:
    with pytest.raises(ParameterError):
        m.ndcg_at_k(recs, rel, k)


def test_unknown_metric_name() -> None:
    with pytest.raises(ParameterError, match="unknown metric"):
        m.ranking_metrics(RECS, REL, 3, metrics=["ndgc"])


# ---------------------------------------------------------------------- beyond accuracy
def test_item_popularity_counts_distinct_users() -> None:
    train = sp.csr_matrix(np.array([[2, 0, 1], [1, 0, 0], [0, 0, 3]], dtype=float))
    np.testing.assert_array_equal(m.item_popularity(train), [2, 0, 2])


def test_coverage() -> None:
    recs = np.array([[0, 1, -1], [1, 2, -1]])
    assert m.catalog_coverage(recs, 10) == pytest.approx(0.3)
    with pytest.raises(ParameterError):
        m.catalog_coverage(recs, 0)


def test_novelty_and_popularity_bias_by_hand() -> None:
    pop = np.array([8, 4, 0, 2])
    recs = np.array([[0, 1], [2, -1], [-1, -1]])
    nov = m.novelty(recs, pop, n_users=8)
    # user 0: (-log2(1) - log2(1/2)) / 2; user 1: unseen item counts as popularity 1 -> log2(8)
    np.testing.assert_allclose(nov, [0.5, 3.0, np.nan])
    np.testing.assert_allclose(m.popularity_bias(recs, pop), [6.0, 0.0, np.nan])
    assert m.catalog_mean_popularity(pop) == pytest.approx(3.5)


def test_rating_errors() -> None:
    assert m.rmse([1, 2, 3], [1, 2, 5]) == pytest.approx(math.sqrt(4 / 3))
    assert m.mae([1, 2, 3], [2, 2, 5]) == pytest.approx(1.0)
    assert math.isnan(m.rmse([], []))
    with pytest.raises(ParameterError):
        m.mae([1, 2], [1])


# ---------------------------------------------------------------------- against a plain per-user reference
def _reference(recs: np.ndarray, rel: sp.csr_matrix, k: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {name: [] for name in m.RANKING_METRICS}
    for u in range(recs.shape[0]):
        grades = dict(zip(rel[u].indices.tolist(), rel[u].data.tolist(), strict=True))
        if not grades:
            for name in out:
                out[name].append(float("nan"))
            continue
        seen: set[int] = set()
        hits = []
        for i in recs[u, :k].tolist() + [-1] * max(0, k - recs.shape[1]):
            hits.append(i >= 0 and i in grades and i not in seen)
            seen.add(i)
        gains = [grades[i] if h else 0.0 for i, h in zip(recs[u, :k].tolist() + [-1] * k, hits, strict=False)]
        n_hit = sum(hits)
        p, r = n_hit / k, n_hit / len(grades)
        dcg = sum(g / math.log2(j + 2) for j, g in enumerate(gains))
        ideal = sorted(grades.values(), reverse=True)[:k]
        idcg = sum(g / math.log2(j + 2) for j, g in enumerate(ideal))
        ap = sum(sum(hits[: j + 1]) / (j + 1) for j in range(k) if hits[j]) / min(len(grades), k)
        first = next((j for j in range(k) if hits[j]), None)
        out["precision"].append(p)
        out["recall"].append(r)
        out["f1"].append(2 * p * r / (p + r) if p + r else 0.0)
        out["map"].append(ap)
        out["ndcg"].append(dcg / idcg if idcg else 0.0)
        out["mrr"].append(0.0 if first is None else 1 / (first + 1))
        out["hit_rate"].append(float(n_hit > 0))
    return out


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    n_users=st.integers(1, 12),
    n_items=st.integers(1, 15),
    width=st.integers(1, 8),
    k=st.integers(1, 10),
)
def test_vectorised_metrics_match_reference(seed: int, n_users: int, n_items: int, width: int, k: int) -> None:
    rng = np.random.default_rng(seed)
    recs = rng.integers(-1, n_items, size=(n_users, width))  # repeats and padding included
    dense = np.where(rng.random((n_users, n_items)) < 0.3, rng.integers(1, 6, (n_users, n_items)), 0)
    rel = sp.csr_matrix(dense.astype(float))
    got = m.ranking_metrics(recs, rel, k)
    want = _reference(recs, rel, k)
    for name in m.RANKING_METRICS:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-9, atol=1e-12, err_msg=name)
