"""Team-draft interleaving: the merge, the credit, the sign test, and its sensitivity against an A/B test."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from tastebud.errors import ParameterError
from tastebud.experiments.analysis import compare, required_users
from tastebud.experiments.interleaving import (
    credit,
    interleaving_rng,
    preference_test,
    required_preference_users,
    team_draft,
)

ALPHA = 0.05


def _rankings(rng: np.random.Generator, n_items: int = 30, k: int = 15) -> tuple[list[str], list[str]]:
    items = [f"i{j}" for j in range(n_items)]
    return list(rng.permutation(items)[:k]), list(rng.permutation(items)[:k])


def test_team_draft_invariants() -> None:
    rng = np.random.default_rng(0)
    for trial in range(300):
        a, b = _rankings(rng)
        merged, teams = team_draft(a, b, 10, interleaving_rng("salt", f"u{trial}", "r"))
        assert len(merged) == 10 == len(set(merged)) == len(teams)
        for team, ranking in (("A", a), ("B", b)):
            picked = [m for m, t in zip(merged, teams, strict=True) if t == team]
            assert all(m in ranking for m in picked)
            # A team always takes its ranker's best item not yet shown, so its picks come in its ranker's order.
            assert picked == sorted(picked, key=ranking.index)
        for prefix in range(1, 11):  # the team with fewer picks picks next: sizes differ by at most one
            n_a = teams[:prefix].count("A")
            assert abs(2 * n_a - prefix) <= 1


def test_team_draft_is_fair_in_position() -> None:
    """Over many coins each team gets the first position about half of the time."""
    a, b = [f"a{j}" for j in range(10)], [f"b{j}" for j in range(10)]
    first_a = sum(team_draft(a, b, 10, interleaving_rng("s", f"u{u}", "r"))[1][0] == "A" for u in range(2000))
    assert stats.binomtest(first_a, 2000, 0.5).pvalue > 0.001


def test_team_draft_is_reproducible_per_user_and_request() -> None:
    a, b = [f"a{j}" for j in range(10)], [f"b{j}" for j in range(10)]
    one = team_draft(a, b, 10, interleaving_rng("exp-1", "user-7", "req-1"))
    assert team_draft(a, b, 10, interleaving_rng("exp-1", "user-7", "req-1")) == one
    others = {tuple(team_draft(a, b, 10, interleaving_rng("exp-1", "user-7", f"req-{r}"))[1]) for r in range(20)}
    assert len(others) > 1  # another request draws other coins


def test_team_draft_edge_cases() -> None:
    rng = np.random.default_rng(1)
    same = [f"i{j}" for j in range(8)]
    merged, _ = team_draft(same, same, 5, rng)
    assert merged == same[:5]
    merged, teams = team_draft(["x", "y"], ["p", "q", "r", "s", "t"], 6, rng)
    assert len(merged) == 6 and teams.count("A") == 2 and merged[-1] in "qrst"  # B fills once A runs out
    assert team_draft(["x"], ["x"], 5, rng)[0] == ["x"]
    assert team_draft([], [], 3, rng) == ([], [])
    with pytest.raises(ParameterError):
        team_draft(["x"], ["y"], -1, rng)


def test_credit_and_preference_test() -> None:
    assert credit([True, False, True, True], ["A", "B", "B", "A"]) == (2, 1)
    with pytest.raises(ParameterError):
        credit([True], ["A", "B"])
    wins_a = np.array([1, 0, 2, 0, 3, 1, 0])
    wins_b = np.array([0, 1, 2, 0, 4, 2, 5])
    result = preference_test(wins_a, wins_b)
    assert (result.prefer_a, result.prefer_b, result.ties) == (1, 4, 2)
    assert result.p_value == pytest.approx(stats.binomtest(4, 5, 0.5).pvalue)
    assert result.share_b == pytest.approx(0.8)
    assert result.ci[0] < 0.8 < result.ci[1]
    assert result.winner is None  # 4 of 5 is not significant
    assert preference_test([0, 0], [0, 0]).to_dict()["share_b"] is None


def test_preference_test_keeps_alpha_for_equal_rankers() -> None:
    """Two rankers drawn from the same distribution, position-biased clicks: the sign test rejects at about alpha."""
    rng = np.random.default_rng(5)
    n_exp, n_users, k = 400, 300, 8
    exam = 1 / np.log2(np.arange(k) + 2)
    teams_b = np.empty((n_users, k), dtype=bool)
    for u in range(n_users):  # coins vary by user; the rankings are exchangeable, so teams are all that matter
        _, teams = team_draft([f"a{j}" for j in range(k)], [f"b{j}" for j in range(k)], k, rng)
        teams_b[u] = np.array(teams) == "B"
    rejections = 0
    for _ in range(n_exp):
        clicks = rng.random((n_users, k)) < 0.3 * exam
        wins_a, wins_b = (clicks & ~teams_b).sum(1), (clicks & teams_b).sum(1)
        rejections += preference_test(wins_a, wins_b).p_value < ALPHA
    assert rejections / n_exp <= ALPHA + 0.025


def test_required_preference_users_agrees_with_simulation() -> None:
    q, decisive = 0.55, 0.4
    n = required_preference_users(q, decisive)
    z_sum = stats.norm.ppf(0.975) * 0.5 + stats.norm.ppf(0.8) * math.sqrt(q * (1 - q))
    assert n == math.ceil((z_sum / 0.05) ** 2 / decisive)
    rng = np.random.default_rng(6)
    hits = 0
    for _ in range(600):
        kind = rng.choice(3, size=n, p=[decisive * (1 - q), decisive * q, 1 - decisive])  # A, B, tie
        hits += preference_test((kind == 0).astype(int), (kind == 1).astype(int)).p_value < ALPHA
    assert abs(hits / 600 - 0.8) < 0.055
    with pytest.raises(ParameterError):
        required_preference_users(0.5)


# --------------------------------------------------------------------------------------------------------------
# Interleaving against an A/B test on one simulated population


N_POP, N_ITEMS, K, MAX_SESSIONS = 8000, 200, 10, 20
EXAMINE = 0.5 / np.log2(np.arange(K) + 2)  # position bias: the chance a user looks at position j


def _population(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Users with item relevance probabilities, two rankers (B slightly better), sessions per user, merged lists.

    - relevance r[u, i] ~ Beta(0.1, 6): a few items matter to each user (mean 1.6%);
    - each ranker ranks by logit(r) plus noise, sd 2.0 for A and 1.8 for B, and shows its top 10;
    - a user comes back for a geometric number of sessions (mean 4, at most 20), and clicks position j of a list
      with probability EXAMINE[j] * r; the A/B metric is a hit: any click in any session;
    - under interleaving each session shows its own team-draft list (coins seeded by salt, user and session).
    """
    rel = rng.beta(0.1, 6.0, size=(N_POP, N_ITEMS))
    logit = np.log(rel + 1e-12) - np.log1p(-rel)
    top_a = np.argsort(-(logit + rng.normal(0, 2.0, rel.shape)), axis=1)[:, :K]
    top_b = np.argsort(-(logit + rng.normal(0, 1.8, rel.shape)), axis=1)[:, :K]
    sessions = np.minimum(rng.geometric(0.25, N_POP), MAX_SESSIONS)
    # P(hit) for a user shown one ranker in every session.
    no_click_a = np.prod(1 - EXAMINE * np.take_along_axis(rel, top_a, 1), axis=1)
    no_click_b = np.prod(1 - EXAMINE * np.take_along_axis(rel, top_b, 1), axis=1)
    merged_rel = np.zeros((N_POP, MAX_SESSIONS, K))  # padded sessions keep relevance 0: no clicks
    merged_b = np.zeros((N_POP, MAX_SESSIONS, K), dtype=bool)
    for u in range(N_POP):
        a, b = [str(i) for i in top_a[u]], [str(i) for i in top_b[u]]
        for s in range(sessions[u]):
            merged, teams = team_draft(a, b, K, interleaving_rng("sim", str(u), str(s)))
            merged_rel[u, s] = rel[u, [int(i) for i in merged]]
            merged_b[u, s] = np.array(teams) == "B"
    return {
        "hit_a": 1 - no_click_a**sessions,
        "hit_b": 1 - no_click_b**sessions,
        "merged_rel": merged_rel,
        "merged_b": merged_b,
    }


def _interleaved_wins(
    pop: dict[str, np.ndarray], users: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    clicks = rng.random((users.size, MAX_SESSIONS, K)) < EXAMINE * pop["merged_rel"][users]
    team_b = pop["merged_b"][users]
    return (clicks & ~team_b).sum(axis=(1, 2)), (clicks & team_b).sum(axis=(1, 2))


def test_interleaving_needs_far_fewer_users_than_an_ab_test() -> None:
    rng = np.random.default_rng(2008)
    pop = _population(rng)
    p_a, p_b = float(pop["hit_a"].mean()), float(pop["hit_b"].mean())
    assert p_b > p_a  # B is better ...
    assert p_b / p_a - 1 < 0.06  # ... slightly

    # Population parameters of the interleaved comparison, precise enough to size the test (the sample size goes
    # with 1 / (share_b - 0.5)^2): every user with 60 independent click draws, 480,000 user-draws in all.
    draws = [_interleaved_wins(pop, np.arange(N_POP), rng) for _ in range(60)]
    census = preference_test(np.concatenate([d[0] for d in draws]), np.concatenate([d[1] for d in draws]))
    decisive = (census.prefer_a + census.prefer_b) / census.n_users
    assert census.winner == "B"

    n_ab = 2 * required_users(p_a, p_b / p_a - 1, alpha=ALPHA, power=0.8)  # both variants
    n_il = required_preference_users(census.share_b, decisive, alpha=ALPHA, power=0.8)

    # Check both sizes by simulating 300 experiments of each on users drawn from the population.
    found_ab = found_il = 0
    for _ in range(300):
        users = rng.integers(0, N_POP, size=n_ab)
        half = n_ab // 2
        hits_a = (rng.random(half) < pop["hit_a"][users[:half]]).astype(float)
        hits_b = (rng.random(n_ab - half) < pop["hit_b"][users[half:]]).astype(float)
        found_ab += compare(hits_a, hits_b, kind="proportion", bootstrap=0).p_value < ALPHA
        wa, wb = _interleaved_wins(pop, rng.integers(0, N_POP, size=n_il), rng)
        result = preference_test(wa, wb)
        found_il += result.p_value < ALPHA and result.winner == "B"
    ratio = n_ab / n_il
    print(
        f"\nhit rate A {p_a:.4f}, B {p_b:.4f} (+{100 * (p_b / p_a - 1):.1f}%); interleaving: {census.share_b:.3f} of "
        f"decisive users prefer B, {decisive:.3f} decisive\n"
        f"users for 80% power: A/B {n_ab} (found in {found_ab / 300:.3f}), interleaving {n_il} "
        f"(found in {found_il / 300:.3f}); the A/B test needs {ratio:.1f}x as many users"
    )
    assert abs(found_ab / 300 - 0.8) < 0.08
    assert abs(found_il / 300 - 0.8) < 0.08
    assert n_il < n_ab
    assert ratio > 2
