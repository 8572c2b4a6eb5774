"""Comparison of evaluation reports: Markdown and JSON tables, a bar chart with confidence intervals, runners.

A collaborative model whose primary metric does not beat the ``popular`` baseline is flagged in every output:
a model that fails is reported, never hidden.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from rich.console import Console
from rich.table import Table

from tastebud.data.dataset import Dataset
from tastebud.data.split import Split
from tastebud.errors import DatasetNotFoundError, DataValidationError, DataWarning, ParameterError
from tastebud.evaluation.protocol import Report, fit_and_evaluate
from tastebud.evaluation.protocols import protocol_split
from tastebud.models.base import Recommender

logger = logging.getLogger(__name__)

#: The baseline other models are measured against.
BASELINE = "popular"
#: Models that do not learn from other users' behaviour, so they are not expected to beat the baseline.
NON_COLLABORATIVE = frozenset({"popular", "content"})
#: Metrics drawn in the chart and shown in the tables, in order.
PLOT_METRICS: tuple[str, ...] = ("ndcg", "recall", "precision", "map", "mrr", "hit_rate")
_LABELS = {
    "ndcg": "NDCG",
    "recall": "Recall",
    "precision": "Precision",
    "map": "MAP",
    "mrr": "MRR",
    "hit_rate": "HitRate",
    "f1": "F1",
}
NOTE_BELOW_BASELINE = f"does not beat {BASELINE}"


@dataclass
class Comparison:
    """Reports of several models evaluated on the same split and ``k``.

    Attributes:
        reports: one per model, in the order they were run.
        primary: the metric that ranks models and decides the baseline note.
        meta: context written with the outputs (dataset, split method, seed ...).
    """

    reports: list[Report]
    primary: str = "ndcg"
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.reports:
            raise ParameterError("a comparison needs at least one report")
        ks = {r.k for r in self.reports}
        if len(ks) > 1:
            raise ParameterError(f"reports were made at different k ({sorted(ks)}); compare at one k")

    @property
    def k(self) -> int:
        return self.reports[0].k

    def baseline(self) -> Report | None:
        """The ``popular`` report, when it is part of the comparison."""
        return next((r for r in self.reports if r.model == BASELINE), None)

    def notes(self) -> dict[int, list[str]]:
        """Report position -> notes (such as "does not beat popular")."""
        base = self.baseline()
        out: dict[int, list[str]] = {i: [] for i in range(len(self.reports))}
        for i, rep in enumerate(self.reports):
            if rep.n_users == 0:
                out[i].append("no users evaluated")
            if base is None or rep.model in NON_COLLABORATIVE:
                continue
            value, floor = rep.metric(self.primary), base.metric(self.primary)
            # nan compares False, so a model with no value is flagged too.
            if not value > floor:
                out[i].append(NOTE_BELOW_BASELINE)
        return out

    def best(self) -> Report:
        """The report with the highest primary metric."""
        return max(self.reports, key=lambda r: _nan_low(r.metric(self.primary)))

    # ------------------------------------------------------------------ outputs
    def _columns(self) -> list[tuple[str, str]]:
        k = self.k
        cols = [(m, f"{_LABELS[m]}@{k}") for m in PLOT_METRICS]
        cols += [
            ("coverage", "Coverage"),
            ("novelty", "Novelty"),
            ("popularity_ratio", "PopRatio"),
            ("rmse", "RMSE"),
            ("mae", "MAE"),
            ("fit_seconds", "Fit s"),
            ("eval_seconds", "Eval s"),
            ("n_users", "Users"),
        ]
        return cols

    def _cell(self, rep: Report, key: str, *, compact: bool = False) -> str:
        if key in PLOT_METRICS:
            mean = rep.metric(key)
            low, high = rep.ci.get(key, (float("nan"), float("nan")))
            if math.isnan(mean):
                return "-"
            if math.isnan(low):
                return f"{mean:.4f}"
            # Terminals are narrow: show the interval as a half-width there, in full in files.
            return f"{mean:.4f} ±{(high - low) / 2:.4f}" if compact else f"{mean:.4f} [{low:.4f}, {high:.4f}]"
        value = getattr(rep, key)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        if key == "n_users":
            return str(value)
        if key.endswith("_seconds"):
            return f"{value:.2f}"
        return f"{value:.4f}" if key != "novelty" else f"{value:.2f}"

    def rows(self, *, compact: bool = False) -> list[dict[str, str]]:
        """Table rows as strings: model, each column, notes (intervals as ± half-widths when ``compact``)."""
        notes = self.notes()
        out = []
        for i, rep in enumerate(self.reports):
            row = {"Model": rep.model}
            row.update({label: self._cell(rep, key, compact=compact) for key, label in self._columns()})
            row["Notes"] = "; ".join(notes[i])
            out.append(row)
        return out

    def to_markdown(self) -> str:
        """A Markdown table (means with 95% bootstrap intervals), then the notes explained."""
        rows = self.rows()
        header = list(rows[0])
        lines = [
            f"## Offline evaluation at k={self.k}",
            "",
            _describe(self.meta),
            "",
            "| " + " | ".join(header) + " |",
            "| " + " | ".join("---" for _ in header) + " |",
        ]
        lines += ["| " + " | ".join(row[h] for h in header) + " |" for row in rows]
        lines += [
            "",
            f"Ranking metrics are means over users with held-out items, with 95% bootstrap intervals. "
            f"Best by {_LABELS.get(self.primary, self.primary)}@{self.k}: **{self.best().model}**.",
        ]
        if any(NOTE_BELOW_BASELINE in n for n in self.notes().values()):
            lines.append(
                f'"{NOTE_BELOW_BASELINE}": a collaborative model whose {self.primary} is not above the '
                f"{BASELINE} baseline's."
            )
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able content: context, primary metric, best model and every report with its notes."""
        notes = self.notes()
        return {
            "k": self.k,
            "primary": self.primary,
            "baseline": BASELINE if self.baseline() is not None else None,
            "best": self.best().model,
            "meta": self.meta,
            "models": [{**rep.to_dict(), "notes": notes[i]} for i, rep in enumerate(self.reports)],
        }

    def to_json(self) -> str:
        """:meth:`to_dict` as indented JSON (strict: no NaN literals)."""
        return json.dumps(self.to_dict(), indent=2, allow_nan=False, default=str)

    def print_table(self, console: Console | None = None) -> None:
        """Print the comparison as a rich table that fits an 80-column terminal.

        NDCG and Recall show their 95% interval as a half-width; the other columns show means only. The
        Markdown and JSON outputs carry every column with full intervals.
        """
        from rich import box

        console = console or Console()
        table = Table(title=f"Offline evaluation at k={self.k}", box=box.SIMPLE_HEAD, padding=(0, 0))
        k = self.k
        table.add_column("Model", no_wrap=True)
        for label, width in (
            (f"NDCG@{k}", 11),
            (f"Recall@{k}", 11),
            ("Prec", 5),
            ("MAP", 5),
            ("MRR", 5),
            ("Hit", 5),
            ("Cov", 4),
            ("RMSE", 5),
            ("Fit s", 5),
        ):
            table.add_column(label, justify="right", no_wrap=True, min_width=width)
        notes = self.notes()
        for i, rep in enumerate(self.reports):
            cells = [rep.model, self._short(rep, "ndcg", ci=True), self._short(rep, "recall", ci=True)]
            cells += [self._short(rep, m) for m in ("precision", "map", "mrr", "hit_rate")]
            cells += [
                "-" if rep.coverage is None else f"{rep.coverage:.2f}".lstrip("0"),
                "-" if rep.rmse is None else f"{rep.rmse:.3f}",
                f"{rep.fit_seconds:.1f}" if rep.fit_seconds is not None else "-",
            ]
            style = "yellow" if NOTE_BELOW_BASELINE in notes[i] else None
            if rep is self.best():
                style = "bold green"
            table.add_row(*cells, style=style)
        console.print(table)
        for i, rep in enumerate(self.reports):
            if notes[i]:
                console.print(f"[yellow]{rep.model}: {'; '.join(notes[i])}[/yellow]")
        console.print(f"best by {_LABELS.get(self.primary, self.primary)}@{k}: [bold]{self.best().model}[/bold]")

    @staticmethod
    def _short(rep: Report, key: str, *, ci: bool = False) -> str:
        mean = rep.metric(key)
        if math.isnan(mean):
            return "-"
        low, high = rep.ci.get(key, (float("nan"), float("nan")))
        if not ci or math.isnan(low):
            return f"{mean:.3f}"
        return f"{mean:.3f}±{(high - low) / 2:.3f}"

    def plot(self, path: Path | str) -> Path:
        """Draw a PNG bar chart of the ranking metrics per model with 95% CI error bars; returns ``path``."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        path = Path(path)
        n_models, n_metrics = len(self.reports), len(PLOT_METRICS)
        means = np.array([[r.metric(m) for m in PLOT_METRICS] for r in self.reports], dtype=float)
        lows = np.array([[r.ci.get(m, (np.nan, np.nan))[0] for m in PLOT_METRICS] for r in self.reports])
        highs = np.array([[r.ci.get(m, (np.nan, np.nan))[1] for m in PLOT_METRICS] for r in self.reports])
        err = np.nan_to_num(np.stack([means - lows, highs - means]), nan=0.0).clip(min=0.0)

        # The Figure API with an explicit Agg canvas needs no global pyplot state or display.
        fig = Figure(figsize=(max(7.0, 1.2 * n_metrics * max(1, n_models) / 2), 4.5), dpi=110)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        width = 0.8 / max(n_models, 1)
        x = np.arange(n_metrics)
        notes = self.notes()
        for i, rep in enumerate(self.reports):
            label = rep.model + (" (below popular)" if NOTE_BELOW_BASELINE in notes[i] else "")
            ax.bar(
                x + (i - (n_models - 1) / 2) * width,
                np.nan_to_num(means[i]),
                width,
                yerr=err[:, i, :],
                capsize=3,
                label=label,
            )
        ax.set_xticks(x, [f"{_LABELS[m]}@{self.k}" for m in PLOT_METRICS])
        ax.set_ylabel("mean over users (95% CI)")
        ax.set_title(_describe(self.meta) or f"Offline evaluation at k={self.k}", fontsize=9)
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, format="png")
        return path


def _nan_low(value: float) -> float:
    return -math.inf if math.isnan(value) else value


def _describe(meta: dict[str, Any]) -> str:
    parts = [f"{key}: {meta[key]}" for key in ("dataset", "split", "seed", "snapshot_id") if key in meta]
    return ", ".join(parts)


def compare(reports: Sequence[Report], *, primary: str = "ndcg", meta: dict[str, Any] | None = None) -> Comparison:
    """Put reports side by side (same ``k``) for tables, JSON and a chart."""
    return Comparison(list(reports), primary=primary, meta=dict(meta or {}))


# ---------------------------------------------------------------------- writing
def write_text_atomic(path: Path, text: str | bytes) -> Path:
    """Write a file so readers never see it half-written: a temporary file in its folder, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode("utf-8") if isinstance(text, str) else text
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_comparison(comparison: Comparison, directory: Path) -> dict[str, Path]:
    """Write ``comparison.md``, ``.json`` and ``.png`` into ``directory`` atomically; returns the paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {
        "markdown": write_text_atomic(directory / "comparison.md", comparison.to_markdown()),
        "json": write_text_atomic(directory / "comparison.json", comparison.to_json()),
    }
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".comparison.png.", suffix=".tmp")
    os.close(fd)
    try:
        comparison.plot(tmp)
        os.replace(tmp, directory / "comparison.png")
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    paths["plot"] = directory / "comparison.png"
    return paths


# ---------------------------------------------------------------------- runners
def _evaluate_models(
    split: Split,
    models: Sequence[str | Recommender],
    *,
    k: int,
    params: dict[str, dict[str, Any]] | None,
    progress: bool,
) -> list[Report]:
    params = dict(params or {})
    names = [m if isinstance(m, str) else m.name for m in models]
    unused = sorted(set(params) - set(names))
    if unused:
        raise ParameterError(f"params given for models not being evaluated: {unused} (evaluating {names})")
    if not models:
        raise ParameterError("no models to evaluate")
    reports = []
    for model in models:
        if isinstance(model, str):
            report = fit_and_evaluate(model, split, params.get(model), k=k, progress=progress)
        else:
            report = fit_and_evaluate(model, split, None, k=k, progress=progress)
        logger.info(
            "evaluated",
            extra={"model": report.model, "ndcg": report.metric("ndcg"), "users": report.n_users},
        )
        reports.append(report)
    return reports


def run_evaluation(
    dataset: Dataset,
    models: Sequence[str | Recommender],
    *,
    split: str = "random",
    k: int = 10,
    seed: int = 42,
    params: dict[str, dict[str, Any]] | None = None,
    out_dir: Path,
    progress: bool = True,
) -> Comparison:
    """Split ``dataset``, fit and evaluate each model on the same split, and write the comparison files.

    Args:
        dataset: the data to split.
        models: ``--model`` names (or unfitted recommenders).
        split: a protocol of :data:`~tastebud.evaluation.protocols.PROTOCOLS` (``random``, ``temporal-user``,
            ``leave-last-out``) or another split method (``temporal-global``), see :func:`protocol_split`.
        k: list length.
        seed: seed of the split.
        params: model name -> hyperparameters.
        out_dir: where ``comparison.md``, ``.json`` and ``.png`` go.
        progress: show progress bars.

    Raises:
        ParameterError: ``params`` for a model not in ``models``, or invalid parameters.
        SplitError: the split cannot be made.
    """
    the_split = protocol_split(dataset, split, seed=seed)
    reports = _evaluate_models(the_split, models, k=k, params=params, progress=progress)
    meta = {
        "dataset": dataset.name,
        "split": split,
        "seed": seed,
        "snapshot_id": dataset.snapshot_id,
    }
    comparison = compare(reports, meta=meta)
    write_comparison(comparison, out_dir)
    return comparison


def read_interactions(path: Path | str) -> pl.DataFrame:
    """Read a CSV or Parquet interaction file: user_id, item_id, optional rating and timestamp.

    Raises:
        DatasetNotFoundError: the file does not exist.
        DataValidationError: the file cannot be parsed, has an unknown extension or lacks required columns.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            frame = pl.read_parquet(path)
        elif suffix in (".csv", ".tsv"):
            frame = pl.read_csv(path, separator="\t" if suffix == ".tsv" else ",", infer_schema_length=10_000)
        else:
            raise DataValidationError(f"{path}: unknown file type {suffix!r}; expected .csv, .tsv or .parquet")
    except (pl.exceptions.PolarsError, OSError) as err:
        raise DataValidationError(f"{path}: cannot be read as {suffix.lstrip('.')}: {err}") from err
    missing = [c for c in ("user_id", "item_id") if c not in frame.columns]
    if missing:
        raise DataValidationError(
            f"{path}: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)}; "
            f"found {frame.columns} (expected user_id, item_id, optional rating, timestamp)"
        )
    if frame.height == 0:
        raise DataValidationError(f"{path}: no interactions (the file has a header but no rows)")
    keep = [c for c in ("user_id", "item_id", "rating", "timestamp") if c in frame.columns]
    return frame.select(keep)


def split_from_files(train: Path | str | pl.DataFrame, test: Path | str | pl.DataFrame) -> Split:
    """A :class:`Split` from separate train and test data sharing ONE vocabulary.

    Both parts are read, validated together as one dataset (so ids map to the same indices), then separated.

    Raises:
        DataValidationError: a file is unreadable or malformed (the message names the file).
    """
    frames, sources = [], []
    for part, src in (("train", train), ("test", test)):
        frame = src if isinstance(src, pl.DataFrame) else read_interactions(src)
        source = str(src) if not isinstance(src, pl.DataFrame) else f"<{part} frame>"
        # Validate each part on its own first, so an error names the right file and row.
        Dataset.from_frame(frame, source=source)
        sources.append(source)
        frames.append(frame)
    if ("timestamp" in frames[0].columns) != ("timestamp" in frames[1].columns):
        warnings.warn(
            f"only one of {sources[0]} and {sources[1]} has timestamps; timestamps are dropped",
            DataWarning,
            stacklevel=2,
        )
        frames = [f.drop("timestamp", strict=False) for f in frames]
    frames = [f.with_columns(pl.lit(part).alias("__part")) for f, part in zip(frames, ("train", "test"), strict=True)]
    try:
        combined = pl.concat(frames, how="diagonal_relaxed")
    except pl.exceptions.PolarsError as err:
        raise DataValidationError(f"{sources[0]} and {sources[1]}: columns have incompatible types ({err})") from err
    full = Dataset.from_frame(
        combined.drop("__part"),
        name=Path(sources[0]).stem,
        meta={"train_source": sources[0], "test_source": sources[1]},
        source=f"{sources[0]} + {sources[1]}",
    )
    # from_frame keeps row order, so the part column lines up with the interactions.
    is_train = (combined["__part"] == "train").to_numpy()
    inter = full.interactions
    train_ds = full.with_interactions(inter.filter(pl.Series(is_train)), part="train")
    test_ds = full.with_interactions(inter.filter(pl.Series(~is_train)), part="test")
    meta = {
        "method": "files",
        "train": sources[0],
        "test": sources[1],
        "n_train": train_ds.n_interactions,
        "n_test": test_ds.n_interactions,
    }
    return Split(train=train_ds, test=test_ds, validation=None, meta=meta)


def run_evaluation_files(
    train: Path | str | pl.DataFrame,
    test: Path | str | pl.DataFrame,
    models: Sequence[str | Recommender],
    *,
    k: int = 10,
    params: dict[str, dict[str, Any]] | None = None,
    out_dir: Path,
    progress: bool = True,
) -> Comparison:
    """Evaluate models on a given train/test pair of files (``--train FILE --test FILE``); write outputs."""
    the_split = split_from_files(train, test)
    reports = _evaluate_models(the_split, models, k=k, params=params, progress=progress)
    meta = {
        "dataset": the_split.train.name,
        "split": "files",
        "snapshot_id": the_split.train.snapshot_id,
        "train": the_split.meta["train"],
        "test": the_split.meta["test"],
    }
    comparison = compare(reports, meta=meta)
    write_comparison(comparison, out_dir)
    return comparison
