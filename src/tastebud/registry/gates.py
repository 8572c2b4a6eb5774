"""The promotion gate: a candidate replaces the champion only if it ranks better and breaks no guard.

Pure comparison of metric dicts measured on the same validation snapshot; re-evaluating bundles that were
validated on different snapshots is the pipeline's job (:mod:`tastebud.pipeline.promote`).

The rules, in order (every one is a line of :attr:`GateResult.reasons`, which the decision log records):

1. **The candidate's primary metric** (``ndcg_at_<k>``) must be present and finite; a missing or NaN/inf value
   is a refusal, never "no number, so nothing to compare".
2. **Absolute floors**, first version or not: the primary metric must exceed ``registry.min_primary_metric``
   (default 0: a model that ranks nothing relevant is refused) and, where the popularity baseline measured on the
   same validation data is known (``baseline``) and ``registry.beat_baseline`` is on, it must beat that baseline.
3. **No champion**: a candidate that passed 1-2 is promoted.
4. **A champion without the primary metric** (missing or not finite): refused. Passing silently would let any
   candidate replace it unexamined; the pipeline first tries to recompute both on the candidate's validation split
   (:func:`tastebud.pipeline.promote.compare_versions`), and ``--force`` overrides a refusal (recorded).
5. **Against the champion**: primary up by ``registry.promotion_margin`` (relative), coverage down by at most
   ``registry.coverage_tolerance`` and, where both have RMSE, RMSE up by at most ``registry.rmse_tolerance``.
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
        thresholds: margin, tolerances and floors applied.
        reevaluated: both were re-evaluated on the candidate's validation snapshot.
        baseline: the popularity baseline's metrics used as a floor (``None`` when unknown or not applied).
    """

    passed: bool
    reasons: list[str]
    candidate: dict[str, float | None]
    champion: dict[str, float | None] | None
    thresholds: dict[str, float] = field(default_factory=dict)
    reevaluated: bool = False
    baseline: dict[str, float | None] | None = None

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
            "baseline": self.baseline,
        }


def _raw(metrics: dict[str, Any] | None, key: str) -> tuple[float | None, str | None]:
    """(value, problem): the finite value, or ``None`` with ``missing`` or ``not finite (nan)``."""
    if not metrics or metrics.get(key) is None:
        return None, "missing"
    try:
        v = float(metrics[key])
    except (TypeError, ValueError):
        return None, f"not a number ({metrics[key]!r})"
    return (v, None) if math.isfinite(v) else (None, f"not finite ({v})")


def _value(metrics: dict[str, Any] | None, key: str) -> float | None:
    return _raw(metrics, key)[0]


def check_gate(
    candidate: dict[str, Any],
    champion: dict[str, Any] | None,
    config: RegistrySettings,
    *,
    primary: str = "ndcg_at_10",
    baseline: dict[str, Any] | None = None,
) -> GateResult:
    """Compare candidate and champion metrics (same validation snapshot) under the rules of the module docstring.

    Args:
        candidate: the candidate's metrics.
        champion: the champion's metrics on the same data (``None`` when there is no champion).
        config: margin, tolerances and floors.
        primary: the ranking metric compared (``ndcg_at_<k>``).
        baseline: the popularity baseline's metrics on the same validation data, when known; a floor.
    """
    thresholds = {
        "promotion_margin": config.promotion_margin,
        "coverage_tolerance": config.coverage_tolerance,
        "rmse_tolerance": config.rmse_tolerance,
        "min_primary_metric": config.min_primary_metric,
    }
    keys = (primary, "coverage", "rmse")
    cand = {k: _value(candidate, k) for k in keys}
    reasons: list[str] = []
    passed = True

    # 1-2: the candidate on its own (whether or not there is a champion).
    c, problem = _raw(candidate, primary)
    base_used: dict[str, float | None] | None = None
    if c is None:
        passed = False
        reasons.append(f"candidate's {primary} is {problem}: a model without a finite {primary} is never promoted")
    else:
        floor = config.min_primary_metric
        ok = c > floor
        passed &= ok
        reasons.append(
            f"{primary} {c:.4f} vs absolute floor {floor:.4f} (registry.min_primary_metric): "
            f"{'ok' if ok else 'not above it'}"
        )
        base = _value(baseline, primary) if config.beat_baseline else None
        if base is not None:
            base_used = {k: _value(baseline, k) for k in keys}
            ok = c > base
            passed &= ok
            reasons.append(f"{primary} {c:.4f} vs popularity baseline {base:.4f}: {'ok' if ok else 'does not beat it'}")
    if champion is None:
        if passed:
            reasons.append("no champion yet: a first version that passes the absolute floors is promoted")
        return GateResult(passed, reasons, cand, None, thresholds, baseline=base_used)

    champ = {k: _value(champion, k) for k in keys}
    b, champ_problem = _raw(champion, primary)
    if c is None:
        pass
    elif b is None:
        passed = False
        reasons.append(
            f"{primary} {c:.4f}; the champion's {primary} is {champ_problem}: cannot compare, refused "
            "(re-evaluate both on one validation split, or --force)"
        )
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
    return GateResult(passed, reasons, cand, champ, thresholds, baseline=base_used)


__all__ = ["GateResult", "check_gate"]
