"""Team-draft interleaving: show one list merged from two rankers and credit each click to the ranker that put it there.

Every user sees both rankers at once, so each user compares them directly and the between-user variance that an A/B
test must average away disappears; interleaving typically needs one to two orders of magnitude fewer users to find
which ranker is better (Chapelle, Joachims, Radlinski and Yue, "Large-scale validation and analysis of interleaved
search evaluation", ACM TOIS 2012). It says *which* ranker users prefer, not by how much a business metric moves.

References: Radlinski, Kurup and Joachims, "How does clickthrough data reflect retrieval quality?" (CIKM 2008), for
team-draft interleaving.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

from tastebud.errors import ParameterError

Team = Literal["A", "B"]


def interleaving_rng(salt: str, user_id: str, request_id: str) -> np.random.Generator:
    """A generator seeded by sha256(salt, user, request): the same merged list on every replica and on replay."""
    digest = hashlib.sha256(f"{salt}\x1f{user_id}\x1f{request_id}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "big"))


def team_draft(a: Sequence[str], b: Sequence[str], k: int, rng: np.random.Generator) -> tuple[list[str], list[Team]]:
    """Merge rankings ``a`` and ``b`` into ``k`` items by team draft (Radlinski et al. 2008).

    Like picking teams in a playground: the team with fewer picks so far picks next, a coin decides ties, and a
    team picks its ranker's highest item not yet in the list. So each ranker's items appear in its own order, the
    teams differ in size by at most one, and neither ranker is favoured in position. When one ranking runs out the
    other fills the list on its own (the original stops there; a recommender must still show ``k`` items).

    Args:
        a, b: rankings of item ids, best first (duplicates within one ranking are ignored).
        k: length of the merged list (shorter when the two rankings hold fewer distinct items).
        rng: draws the coins; use :func:`interleaving_rng` so that a user's request always gets the same list.

    Returns:
        (merged item ids, the team ``"A"`` or ``"B"`` that contributed each position).
    """
    if k < 0:
        raise ParameterError(f"k must be ≥ 0, got {k}")
    merged: list[str] = []
    teams: list[Team] = []
    seen: set[str] = set()
    ia = ib = 0
    size_a = size_b = 0

    def next_from(ranking: Sequence[str], i: int) -> int:
        while i < len(ranking) and ranking[i] in seen:
            i += 1
        return i

    while len(merged) < k:
        ia, ib = next_from(a, ia), next_from(b, ib)
        a_left, b_left = ia < len(a), ib < len(b)
        if not (a_left or b_left):
            break
        # The smaller team picks; a coin breaks a tie; once a ranking is exhausted the other one fills the list.
        coin = size_a == size_b and bool(rng.integers(2))
        pick_a = (size_a < size_b or coin) if (a_left and b_left) else a_left
        item = a[ia] if pick_a else b[ib]
        merged.append(item)
        seen.add(item)
        teams.append("A" if pick_a else "B")
        if pick_a:
            size_a += 1
        else:
            size_b += 1
    return merged, teams


def credit(clicks: Sequence[bool] | ArrayLike, teams: Sequence[Team]) -> tuple[int, int]:
    """Clicks credited to ranker A and to ranker B on one merged list.

    Args:
        clicks: per position of the merged list, whether the user clicked (or rated ≥ 4, played …) the item.
        teams: the team of each position, from :func:`team_draft`.

    Add the pairs up over a user's requests; the ranker with more credited clicks is the one that user preferred.
    """
    c = np.asarray(clicks, dtype=bool)
    if c.shape != (len(teams),):
        raise ParameterError(f"clicks ({c.size}) and teams ({len(teams)}) must have one entry per position")
    is_a = np.fromiter((t == "A" for t in teams), dtype=bool, count=len(teams))
    return int(np.sum(c & is_a)), int(np.sum(c & ~is_a))


@dataclass(frozen=True)
class PreferenceResult:
    """Which ranker users preferred: a two-sided sign test on users who preferred one of them."""

    n_users: int
    prefer_a: int
    prefer_b: int
    ties: int  #: users with as many credited clicks for A as for B (no clicks included); left out of the test
    share_b: float  #: prefer_b / (prefer_a + prefer_b); 0.5 means no preference
    ci: tuple[float, float]  #: Clopper–Pearson interval of share_b
    p_value: float
    alpha: float

    @property
    def winner(self) -> Team | None:
        """The ranker preferred significantly at level ``alpha``, or None."""
        if self.p_value >= self.alpha:
            return None
        return "B" if self.share_b > 0.5 else "A"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dictionary (an undefined share becomes None)."""
        out = asdict(self)
        out["share_b"] = self.share_b if math.isfinite(self.share_b) else None
        out["ci"] = [v if math.isfinite(v) else None for v in self.ci]
        out["winner"] = self.winner
        return out


def preference_test(
    per_user_wins_a: Sequence[int] | ArrayLike, per_user_wins_b: Sequence[int] | ArrayLike, *, alpha: float = 0.05
) -> PreferenceResult:
    """Two-sided binomial sign test (``scipy.stats.binomtest``, p = 1/2) of users preferring B over A.

    A user prefers the ranker credited with more of their clicks (summed over their requests); users with a tie
    carry no information about the direction and are left out. Under the null hypothesis of no preference each
    remaining user prefers B with probability 1/2.
    """
    wa = np.asarray(per_user_wins_a, dtype=np.int64)
    wb = np.asarray(per_user_wins_b, dtype=np.int64)
    if wa.shape != wb.shape or wa.ndim != 1:
        raise ParameterError("per-user wins of A and B must be 1-D arrays of the same length")
    if not 0.0 < alpha < 1.0:
        raise ParameterError(f"alpha must lie in (0, 1), got {alpha}")
    prefer_a, prefer_b = int(np.sum(wa > wb)), int(np.sum(wb > wa))
    n = prefer_a + prefer_b
    if n == 0:
        return PreferenceResult(int(wa.size), 0, 0, int(wa.size), math.nan, (math.nan, math.nan), 1.0, alpha)
    res = stats.binomtest(prefer_b, n, 0.5, alternative="two-sided")
    ci = res.proportion_ci(confidence_level=1 - alpha, method="exact")
    return PreferenceResult(
        n_users=int(wa.size),
        prefer_a=prefer_a,
        prefer_b=prefer_b,
        ties=int(wa.size) - n,
        share_b=prefer_b / n,
        ci=(float(ci.low), float(ci.high)),
        p_value=float(res.pvalue),
        alpha=alpha,
    )


def required_preference_users(
    share_b: float, decisive_share: float = 1.0, alpha: float = 0.05, power: float = 0.8
) -> int:
    """Users needed for :func:`preference_test` to detect a preference ``share_b`` with probability ``power``.

    Normal approximation of the two-sided sign test: with q = share_b, the users who prefer one ranker must number

        n_decisive = ( (z_{1-alpha/2} * 0.5 + z_{power} * sqrt(q (1 - q))) / (q - 0.5) )^2,

    and the experiment needs n_decisive / ``decisive_share`` users in all, ``decisive_share`` being the share of
    users who are not tied (who clicked, and more for one team than the other).
    """
    if not 0.0 < share_b < 1.0 or share_b == 0.5:
        raise ParameterError(f"share_b must lie in (0, 1) and differ from 0.5, got {share_b}")
    if not 0.0 < decisive_share <= 1.0:
        raise ParameterError(f"decisive_share must lie in (0, 1], got {decisive_share}")
    z_a, z_b = stats.norm.ppf(1 - alpha / 2), stats.norm.ppf(power)
    n_decisive = ((z_a * 0.5 + z_b * math.sqrt(share_b * (1 - share_b))) / (share_b - 0.5)) ** 2
    return math.ceil(n_decisive / decisive_share)
