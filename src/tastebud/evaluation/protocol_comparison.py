"""Every model on every protocol: one table of NDCG with bootstrap intervals, JSON, a chart, per-protocol reports.

:func:`run_protocols` splits one dataset by each protocol of :mod:`tastebud.evaluation.protocols`, fits and
evaluates every model on each split (the per-protocol runs are ordinary :class:`Comparison` objects, written as
usual under ``<out>/<protocol>/``), and puts the primary metric side by side in a :class:`ProtocolComparison`:
``protocols.md``, ``protocols.json`` and ``protocols.png``.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from tastebud.data.dataset import Dataset
from tastebud.errors import ParameterError
from tastebud.evaluation.protocol import Report, fit_and_evaluate, json_safe
from tastebud.evaluation.protocols import PROTOCOLS, protocol_name, protocol_split
from tastebud.evaluation.report import (
    _LABELS,
    NOTE_BELOW_BASELINE,
    Comparison,
    compare,
    write_comparison,
    write_text_atomic,
)


@dataclass
class ProtocolComparison:
    """The same models evaluated on several protocols of one dataset, at one ``k``.

    Attributes:
        comparisons: protocol name -> the comparison of every model on that protocol's split.
        primary: the metric put side by side.
        meta: context written with the outputs (dataset, seed, snapshot id ...).
    """

    comparisons: dict[str, Comparison]
    primary: str = "ndcg"
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.comparisons:
            raise ParameterError("a protocol comparison needs at least one protocol")
        ks = {c.k for c in self.comparisons.values()}
        if len(ks) > 1:
            raise ParameterError(f"protocols were evaluated at different k ({sorted(ks)}); compare at one k")

    @property
    def k(self) -> int:
        return next(iter(self.comparisons.values())).k

    @property
    def protocols(self) -> list[str]:
        return list(self.comparisons)

    def models(self) -> list[str]:
        """Model names in the order they were first run."""
        seen: dict[str, None] = {}
        for comp in self.comparisons.values():
            seen.update(dict.fromkeys(r.model for r in comp.reports))
        return list(seen)

    def report(self, model: str, protocol: str) -> Report | None:
        """``model``'s report on ``protocol`` (``None`` when it was not run there)."""
        comp = self.comparisons.get(protocol)
        return None if comp is None else next((r for r in comp.reports if r.model == model), None)

    def metric(self, model: str, protocol: str, name: str | None = None) -> float:
        """Mean of a metric (the primary one by default) of ``model`` on ``protocol``; ``nan`` when absent."""
        rep = self.report(model, protocol)
        return float("nan") if rep is None else rep.metric(name or self.primary)

    def relative_gain(self, model: str, references: Sequence[str], protocol: str) -> float:
        """``model``'s primary metric over the best of ``references`` on ``protocol``, minus 1 (0.1 = 10% better)."""
        best = max((self.metric(r, protocol) for r in references), key=lambda v: -math.inf if math.isnan(v) else v)
        value = self.metric(model, protocol)
        return value / best - 1.0 if best > 0 else float("nan")

    def notes(self) -> dict[str, list[str]]:
        """Model -> the protocols where it does not beat the ``popular`` baseline (collaborative models only)."""
        out: dict[str, list[str]] = {m: [] for m in self.models()}
        for protocol, comp in self.comparisons.items():
            for i, labels in comp.notes().items():
                if NOTE_BELOW_BASELINE in labels:
                    out[comp.reports[i].model].append(protocol)
        return out

    # ------------------------------------------------------------------ outputs
    def _cell(self, model: str, protocol: str, *, compact: bool = False) -> str:
        rep = self.report(model, protocol)
        if rep is None:
            return "-"
        mean = rep.metric(self.primary)
        low, high = rep.ci.get(self.primary, (float("nan"), float("nan")))
        if math.isnan(mean):
            return "-"
        if math.isnan(low):
            return f"{mean:.4f}"
        return f"{mean:.3f}±{(high - low) / 2:.3f}" if compact else f"{mean:.4f} [{low:.4f}, {high:.4f}]"

    def _label(self) -> str:
        return f"{_LABELS.get(self.primary, self.primary)}@{self.k}"

    def to_markdown(self) -> str:
        """The side-by-side table (means with 95% bootstrap intervals), fit times, best model per protocol."""
        label = self._label()
        notes = self.notes()
        header = ["Model", *(f"{label} {p}" for p in self.protocols), "Fit s (per protocol)", "Notes"]
        lines = [
            f"## {label} by protocol",
            "",
            ", ".join(f"{key}: {self.meta[key]}" for key in ("dataset", "seed", "snapshot_id") if key in self.meta),
            "",
            "| " + " | ".join(header) + " |",
            "| " + " | ".join("---" for _ in header) + " |",
        ]
        for model in self.models():
            fits = []
            for p in self.protocols:
                rep = self.report(model, p)
                fits.append("-" if rep is None or rep.fit_seconds is None else f"{rep.fit_seconds:.2f}")
            note = f"{NOTE_BELOW_BASELINE} on {', '.join(notes[model])}" if notes[model] else ""
            cells = [model, *(self._cell(model, p) for p in self.protocols), " / ".join(fits), note]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", "Protocols:"]
        lines += [f"- `{p}`: {PROTOCOLS.get(p, p)}" for p in self.protocols]
        lines += ["", f"Best by {label} per protocol:"]
        for p, comp in self.comparisons.items():
            best = comp.best().model
            others = [m for m in self.models() if m != best and self.report(m, p) is not None]
            gain = f" ({self.relative_gain(best, others, p):+.1%} over the next best)" if others else ""
            lines.append(f"- `{p}`: **{best}**{gain}")
        lines += ["", "Means over evaluated users with 95% bootstrap intervals; per-protocol reports in `<protocol>/`."]
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able content: context, the side-by-side table and every protocol's full comparison."""
        table = {
            model: {
                p: None
                if (rep := self.report(model, p)) is None
                else {
                    "mean": rep.metric(self.primary),
                    "ci": list(rep.ci.get(self.primary, (float("nan"), float("nan")))),
                    "fit_seconds": rep.fit_seconds,
                    "n_users": rep.n_users,
                }
                for p in self.protocols
            }
            for model in self.models()
        }
        out = {
            "k": self.k,
            "primary": self.primary,
            "meta": self.meta,
            "protocols": {p: PROTOCOLS.get(p, p) for p in self.protocols},
            "best": {p: comp.best().model for p, comp in self.comparisons.items()},
            "below_baseline": self.notes(),
            "table": table,
            "comparisons": {p: comp.to_dict() for p, comp in self.comparisons.items()},
        }
        return json_safe(out)  # type: ignore[no-any-return]

    def to_json(self) -> str:
        """:meth:`to_dict` as indented JSON (strict: no NaN literals)."""
        return json.dumps(self.to_dict(), indent=2, allow_nan=False, default=str)

    def print_table(self, console: Console | None = None) -> None:
        """Print the side-by-side table (intervals as half-widths) and the best model per protocol."""
        from rich import box
        from rich.table import Table

        console = console or Console()
        table = Table(title=f"{self._label()} by protocol", box=box.SIMPLE_HEAD, padding=(0, 1))
        table.add_column("Model", no_wrap=True)
        for p in self.protocols:
            table.add_column(p, justify="right", no_wrap=True)
        notes = self.notes()
        for model in self.models():
            style = "yellow" if notes[model] else None
            table.add_row(model, *(self._cell(model, p, compact=True) for p in self.protocols), style=style)
        console.print(table)
        for model, where in notes.items():
            if where:
                console.print(f"[yellow]{model}: {NOTE_BELOW_BASELINE} on {', '.join(where)}[/yellow]")
        for p, comp in self.comparisons.items():
            console.print(f"best on {p}: [bold]{comp.best().model}[/bold]")

    def plot(self, path: Path | str) -> Path:
        """A PNG of grouped bars: the primary metric per protocol and model, with 95% interval error bars."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        path = Path(path)
        models, protocols = self.models(), self.protocols
        nan = float("nan")
        means = np.array([[self.metric(m, p) for p in protocols] for m in models], dtype=float)
        bounds = [
            [(rep.ci.get(self.primary, (nan, nan)) if (rep := self.report(m, p)) else (nan, nan)) for p in protocols]
            for m in models
        ]
        lows = np.array([[b[0] for b in row] for row in bounds], dtype=float)
        highs = np.array([[b[1] for b in row] for row in bounds], dtype=float)
        err = np.nan_to_num(np.stack([means - lows, highs - means]), nan=0.0).clip(min=0.0)
        fig = Figure(figsize=(max(7.0, 1.1 * len(protocols) * max(1, len(models)) / 2), 4.5), dpi=110)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        width = 0.8 / max(len(models), 1)
        x = np.arange(len(protocols))
        for i, model in enumerate(models):
            ax.bar(
                x + (i - (len(models) - 1) / 2) * width,
                np.nan_to_num(means[i]),
                width,
                yerr=err[:, i, :],
                capsize=3,
                label=model,
            )
        ax.set_xticks(x, protocols)
        ax.set_ylabel(f"{self._label()}, mean over users (95% CI)")
        ax.set_title(str(self.meta.get("dataset", "")) + f": {self._label()} by protocol", fontsize=9)
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, format="png")
        return path


def write_protocol_comparison(comparison: ProtocolComparison, directory: Path) -> dict[str, Path]:
    """Write ``protocols.md``, ``.json`` and ``.png``, and each protocol's comparison under ``<protocol>/``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for protocol, comp in comparison.comparisons.items():
        write_comparison(comp, directory / protocol)
    paths = {
        "markdown": write_text_atomic(directory / "protocols.md", comparison.to_markdown()),
        "json": write_text_atomic(directory / "protocols.json", comparison.to_json()),
    }
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".protocols.png.", suffix=".tmp")
    os.close(fd)
    try:
        comparison.plot(tmp)
        os.replace(tmp, directory / "protocols.png")
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    paths["plot"] = directory / "protocols.png"
    return paths


def run_protocols(
    dataset: Dataset,
    models: Sequence[str],
    *,
    protocols: Sequence[str] = tuple(PROTOCOLS),
    k: int = 10,
    seed: int = 42,
    params: dict[str, dict[str, Any]] | None = None,
    out_dir: Path | None = None,
    progress: bool = True,
    n_boot: int = 1000,
) -> ProtocolComparison:
    """Evaluate every model (by name, freshly built per protocol) on every protocol's split of ``dataset``.

    Args:
        dataset: the data to split.
        models: ``--model`` names; each is built and fitted anew on each protocol's training part.
        protocols: names from :data:`PROTOCOLS`.
        k: list length.
        seed: seed of the ``random`` protocol.
        params: model name -> hyperparameters (the same on every protocol).
        out_dir: where to write the outputs (nothing is written when ``None``).
        progress: show progress bars.
        n_boot: bootstrap resamples per interval.

    Raises:
        ParameterError: an unknown protocol or model, ``params`` for a model not evaluated, or no models.
        SplitError: a protocol needs timestamps the dataset lacks.
    """
    names = [protocol_name(p) for p in protocols]
    if not models:
        raise ParameterError("no models to evaluate")
    if any(not isinstance(m, str) for m in models):
        raise ParameterError("run_protocols takes model names: each protocol fits a fresh model")
    params = dict(params or {})
    unused = sorted(set(params) - set(models))
    if unused:
        raise ParameterError(f"params given for models not being evaluated: {unused} (evaluating {list(models)})")
    comparisons: dict[str, Comparison] = {}
    for protocol in names:
        split = protocol_split(dataset, protocol, seed=seed)
        reports = [
            fit_and_evaluate(name, split, params.get(name), k=k, progress=progress, n_boot=n_boot) for name in models
        ]
        meta = {"dataset": dataset.name, "split": protocol, "seed": seed, "snapshot_id": dataset.snapshot_id}
        comparisons[protocol] = compare(reports, meta=meta)
    result = ProtocolComparison(
        comparisons, meta={"dataset": dataset.name, "seed": seed, "snapshot_id": dataset.snapshot_id}
    )
    if out_dir is not None:
        write_protocol_comparison(result, out_dir)
    return result


__all__ = ["ProtocolComparison", "run_protocols", "write_protocol_comparison"]
