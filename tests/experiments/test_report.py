"""The analysis's guardrails: a rate guardrail is breached only by a worsening that is not chance."""

from __future__ import annotations

import pytest

from tastebud.experiments.analysis import check_guardrails
from tastebud.experiments.report import _significant


@pytest.mark.parametrize(
    ("control", "treatment", "requests", "breached"),
    [
        (0.48, 0.53, 300, False),  # +10% relative and +5 points, but within what assignment alone does at n=300
        (0.48, 0.53, 30_000, True),  # the same rates on a hundred times the traffic: real
        (0.10, 0.50, 300, True),  # a fallback rate five times as high: real at any size here
        (0.50, 0.40, 30_000, False),  # better is never a breach
    ],
)
def test_a_rate_guardrail_needs_significance(control: float, treatment: float, requests: int, breached: bool) -> None:
    values = {"control": {"fallback_rate": control, "requests": requests},
              "treatment": {"fallback_rate": treatment, "requests": requests}}  # fmt: skip
    (raw,) = check_guardrails({"fallback_rate": control}, {"fallback_rate": treatment})
    judged = _significant(raw, values["control"], values["treatment"], 0.05)
    assert judged.breached is breached
    assert judged.treatment_value == treatment and judged.control_value == control
