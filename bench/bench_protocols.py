"""Benchmark of the evaluation protocols: every model on random, temporal-user and leave-last-out, in one run.

Sections (each printed as Markdown; ``--record`` appends them to ``bench/RESULTS.md`` in one write):

1. **Tuning of ``seqtrans``** (``--tune``): one-at-a-time sweeps of its hyperparameters around the defaults,
   scored on validation holdouts carved from the *training* part of ML-100K (``validation_split``: each user's
   newest 20% of their training interactions for temporal-user, a seeded random 20% for random); test is never
   looked at. The defaults of :class:`tastebud.models.sequential.SeqTransConfig` come from this table.
2. **Protocols**: NDCG@10 with 95% bootstrap intervals of every model (popular, itemknn, als, ease, seqtrans and
   the newer ones when registered: rp3beta, slim, ensemble) on each protocol, fit seconds, and the relative gain
   of ``seqtrans`` over the best of ``ease`` and ``als`` on temporal-user with a paired bootstrap interval of the
   per-user NDCG difference against each. Writes ``protocols.md``/``.json``/``.png`` under ``--out``.

    .venv/bin/python bench/bench_protocols.py --home .tastebud-test            # section 2
    .venv/bin/python bench/bench_protocols.py --home .tastebud-test --tune     # sections 1 and 2
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import _common as common
from tastebud.config import build_settings
from tastebud.data.dataset import Dataset
from tastebud.data.fetch import fetch_dataset, is_fetched
from tastebud.data.readers import read_dataset
from tastebud.evaluation.protocol import bootstrap_ci, fit_and_evaluate
from tastebud.evaluation.protocol_comparison import ProtocolComparison, run_protocols
from tastebud.evaluation.protocols import PROTOCOLS, protocol_split, validation_split
from tastebud.models import MODELS, model_class

#: Models compared, in table order; names not registered (or not importable) are skipped.
CANDIDATES = ("popular", "itemknn", "als", "ease", "rp3beta", "slim", "multvae", "ensemble", "seqtrans")
#: The sequence model and the order-free models it is measured against on temporal-user.
SEQUENCE_MODEL, REFERENCES = "seqtrans", ("ease", "als")
#: One-at-a-time sweeps of the tuning section (the default of each parameter is among its values).
SWEEPS: dict[str, tuple[Any, ...]] = {
    "recency_tau": (0.0, 5.0, 10.0, 20.0),
    "recency_floor": (0.0, 0.05, 0.2),
    "transition_weight": (0.0, 0.75, 1.5, 3.0),
    "window": (5, 20, 50, 100),
    "gap_decay": (0.8, 0.9, 0.95, 1.0),
    "n_last": (5, 20, 50),
    "last_decay": (0.7, 0.85, 0.95),
    "l2": (200.0, 500.0, 1000.0),
}


def available_models(names: Sequence[str] = CANDIDATES) -> list[str]:
    """The names of ``names`` registered in ``MODELS`` whose class imports (the others are reported, skipped)."""
    out = []
    for name in names:
        if name not in MODELS:
            print(f"  {name}: not registered, skipped", file=sys.stderr)
            continue
        try:
            model_class(name)
        except (ImportError, AttributeError) as err:
            print(f"  {name}: does not import ({err}), skipped", file=sys.stderr)
            continue
        out.append(name)
    return out


def load_movielens(home: Path | None) -> Dataset:
    """ML-100K from the home, fetched first when missing (the offline route works without network)."""
    settings = build_settings(home=home) if home else build_settings()
    if not is_fetched("ml-100k", settings):
        fetch_dataset("ml-100k", settings, progress=False)
    return read_dataset("ml-100k", settings=settings)


# ---------------------------------------------------------------------- section 1: tuning
def bench_tuning(ds: Dataset) -> str:
    """Validation NDCG@10 of ``seqtrans`` per one-at-a-time change of a hyperparameter (test untouched)."""
    valid = {p: validation_split(protocol_split(ds, p), p) for p in ("temporal-user", "random")}
    defaults = model_class(SEQUENCE_MODEL).config_class().model_dump()

    def score(params: dict[str, Any]) -> list[float]:
        return [
            fit_and_evaluate(SEQUENCE_MODEL, split, params, k=10, n_boot=1, progress=False).metric("ndcg")
            for split in valid.values()
        ]

    base = score({})
    rows: list[list[Any]] = [["(defaults)", "", f"{base[0]:.4f}", f"{base[1]:.4f}"]]
    for param, values in SWEEPS.items():
        for value in values:
            if value == defaults[param]:
                continue
            got = score({param: value})
            rows.append([param, value, f"{got[0]:.4f} ({got[0] - base[0]:+.4f})", f"{got[1]:.4f}"])
            print(f"  {param}={value}: {got}", file=sys.stderr, flush=True)
    shown = ", ".join(f"{k}={v}" for k, v in defaults.items())
    text = common.table(
        "seqtrans: validation NDCG@10, one parameter changed at a time",
        ["parameter", "value", "temporal-user validation (Δ vs defaults)", "random validation"],
        rows,
    )
    return f"Defaults: {shown}.\n\n{text}"


# ---------------------------------------------------------------------- section 2: protocols
def paired_difference(result: ProtocolComparison, model: str, reference: str, protocol: str) -> tuple[float, float]:
    """95% bootstrap interval of the mean per-user NDCG difference ``model - reference`` (same users)."""
    a, b = result.report(model, protocol), result.report(reference, protocol)
    if a is None or b is None or a.user_ids != b.user_ids:
        return (float("nan"), float("nan"))
    return bootstrap_ci(a.per_user["ndcg"] - b.per_user["ndcg"], n_boot=2000, seed=1)


def bench_protocols(ds: Dataset, models: list[str], out_dir: Path, seed: int) -> tuple[str, ProtocolComparison]:
    """Every model on every protocol: the Markdown of ``protocols.md`` plus the gain of the sequence model."""
    t0 = time.perf_counter()
    result = run_protocols(ds, models, k=10, seed=seed, out_dir=out_dir, progress=False)
    wall = time.perf_counter() - t0
    lines = [result.to_markdown().split("\n", 2)[2].strip(), ""]
    proto = "temporal-user"
    if SEQUENCE_MODEL in models and all(r in models for r in REFERENCES):
        best_ref = max(REFERENCES, key=lambda r: result.metric(r, proto))
        gain = result.relative_gain(SEQUENCE_MODEL, REFERENCES, proto)
        lines.append(
            f"**{SEQUENCE_MODEL} on {proto}**: NDCG@10 {result.metric(SEQUENCE_MODEL, proto):.4f} against "
            f"{best_ref} {result.metric(best_ref, proto):.4f}, the better of {' and '.join(REFERENCES)}: "
            f"**{gain:+.1%}** (target +10%)."
        )
        for ref in REFERENCES:
            low, high = paired_difference(result, SEQUENCE_MODEL, ref, proto)
            lines.append(
                f"- paired per-user NDCG@10 difference {SEQUENCE_MODEL} - {ref} on {proto}: "
                f"{result.metric(SEQUENCE_MODEL, proto) - result.metric(ref, proto):+.4f} "
                f"(95% bootstrap interval [{low:+.4f}, {high:+.4f}])"
            )
        beats = (
            all(result.metric(SEQUENCE_MODEL, p) > result.metric("popular", p) for p in result.protocols)
            if "popular" in models
            else None
        )
        if beats is not None:
            lines.append(f"- {SEQUENCE_MODEL} beats popular on every protocol: {'yes' if beats else 'NO'}")
    lines += ["", f"Wall time of the whole run (3 protocols x {len(models)} models, fit and evaluate): {wall:.0f} s."]
    return "\n".join(lines) + "\n", result


# ---------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> None:
    """Run the sections, print them and (with ``--record``) append them to ``bench/RESULTS.md``."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--home", type=Path, default=None, help="Tastebud home (ML-100K is fetched there)")
    parser.add_argument("--models", default=",".join(CANDIDATES), help="comma-separated models (missing: skipped)")
    parser.add_argument("--seed", type=int, default=42, help="seed of the random protocol")
    parser.add_argument("--out", type=Path, default=Path("/tmp/tastebud-bench-protocols"), help="report directory")
    parser.add_argument("--tune", action="store_true", help="also run the seqtrans tuning sweeps (validation only)")
    parser.add_argument("--record", action="store_true", help="append the tables to bench/RESULTS.md")
    args = parser.parse_args(argv)

    command = ".venv/bin/python bench/bench_protocols.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    header = f"Command: `{command}`. Machine: {common.machine_note()} at start.\n"
    ds = load_movielens(args.home)
    sections: list[tuple[str, str]] = []
    if args.tune:
        text = bench_tuning(ds)
        sections.append(("Evaluation protocols: tuning seqtrans on validation", text))
        print(text, flush=True)
    models = available_models([m.strip() for m in args.models.split(",") if m.strip()])
    text, _ = bench_protocols(ds, models, args.out, args.seed)
    protocols = "; ".join(f"`{name}`: {what}" for name, what in PROTOCOLS.items())
    sections.append(("Evaluation protocols: every model on every protocol", f"Protocols: {protocols}.\n\n{text}"))
    print(text, flush=True)
    print(f"report written to {args.out}", file=sys.stderr)
    if args.record:
        body = "\n".join(f"## {title}\n\n{header}\n{text}" for title, text in sections)
        common.append_results(body)


if __name__ == "__main__":
    main()
