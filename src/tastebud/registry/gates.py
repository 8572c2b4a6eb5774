"""The promotion gate: a candidate replaces the champion only if it ranks better and breaks no guard.

Pure comparison of two metric dicts measured on the same validation snapshot; re-evaluating bundles that were
validated on different snapshots is the pipeline's job (:mod:`tastebud.pipeline.promote`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from tastebud.config import RegistrySettings


@dataclass
class GateResult:
    """Outcome of the gate.

    Attributes:
        passed: whether the candidate may be promoted.
        reasons: one line per check, each with both numbers.
        candidate: the candidate's metrics used.
        champion: the champion's metrics used (``None`` without a champion).
        thresholds: margin and tolerances applied.
        reevaluated: both were re-evaluated on the candidate's validation snapshot.
    """

    passed: bool
    reasons: list[str]
    candidate: dict[str, float | None]
    champion: dict[str, float | None] | None
    thresholds: dict[str, float] = field(default_factory=dict)
    reevaluated: bool = False

    @property
    def summary(self) -> str:
        """The reasons joined into one line."""
        return "; ".join(self.reasons)

    def numbers(self) -> dict[str, Any]:
        """What the decision log records."""
        return {
            "candidate": self.candidate,
            "champion": self.champion,
            "thresholds": self.thresholds,
            "reevaluated": self.reevaluated,
        }


def _value(metrics: dict[str, Any] | None, key: str) -> float | None:
    if not metrics:
        return None
    v = metrics.get(key)
    if v is None:
        return None
    v = float(v)
    return None if math.isnan(v) else v


def check_gate(
    candidate: dict[str, Any],
    champion: dict[str, Any] | None,
    config: RegistrySettings,
    *,
    primary: str = "ndcg_at_10",
) -> GateResult:
    """Compare candidate and champion metrics (same validation snapshot).

    Passes when there is no champion, or when ``primary`` improves by at least ``config.promotion_margin``
    (relative), coverage drops by no more than ``config.coverage_tolerance`` (relative) and, where both have
    RMSE, it rises by no more than ``config.rmse_tolerance`` (relative).
    """
    thresholds = {
        "promotion_margin": config.promotion_margin,
        "coverage_tolerance": config.coverage_tolerance,
        "rmse_tolerance": config.rmse_tolerance,
    }
    keys = (primary, "coverage", "rmse")
    cand = {k: _value(candidate, k) for k in keys}
    if champion is None:
        return GateResult(True, ["no champion yet: the first promotion passes"], cand, None, thresholds)
    champ = {k: _value(champion, k) for k in keys}
    reasons: list[str] = []
    passed = True

    c, b = cand[primary], champ[primary]
    if c is None:
        passed = False
        reasons.append(f"candidate has no {primary}")
    elif b is None:
        reasons.append(f"{primary} {c:.4f}; champion has none")
    else:
        needed = b * (1 + config.promotion_margin)
        gain = (c - b) / b if b > 0 else math.inf if c > b else 0.0
        ok = c >= needed and c > b
        passed &= ok
        reasons.append(
            f"{primary} {c:.4f} vs champion {b:.4f} ({gain:+.2%}; needs >= {needed:.4f}, "
            f"+{config.promotion_margin:.0%}): {'ok' if ok else 'not enough'}"
        )

    c, b = cand["coverage"], champ["coverage"]
    if c is not None and b is not None:
        floor = b * (1 - config.coverage_tolerance)
        ok = c >= floor
        passed &= ok
        reasons.append(
            f"coverage {c:.4f} vs champion {b:.4f} (floor {floor:.4f}): {'ok' if ok else 'degrades too much'}"
        )

    c, b = cand["rmse"], champ["rmse"]
    if c is not None and b is not None:
        ceiling = b * (1 + config.rmse_tolerance)
        ok = c <= ceiling
        passed &= ok
        reasons.append(
            f"rmse {c:.4f} vs champion {b:.4f} (ceiling {ceiling:.4f}): {'ok' if ok else 'degrades too much'}"
        )
    return GateResult(passed, reasons, cand, champ, thresholds)


__all__ = ["GateResult", "check_gate"]
