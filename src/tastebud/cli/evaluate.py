"""`tastebud evaluate`, `tastebud tune` and `tastebud models-available`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tastebud.cli._app import (
    FormatOption,
    app,
    console,
    model_params,
    read,
    settings_of,
)
from tastebud.errors import ParameterError


# ---------------------------------------------------------------------------------------------------- evaluation
@app.command("evaluate")
def evaluate_cmd(
    ctx: typer.Context,
    dataset: Annotated[
        str | None,
        typer.Option("--dataset", "-d", help="A fetched dataset's name or a path.", show_default=False),
    ] = None,
    models: Annotated[
        str,
        typer.Option("--models", "-m", help="Comma-separated model names (see `tastebud models-available`)."),
    ] = "popular,itemknn,als,ease",
    split: Annotated[str, typer.Option(help="random, temporal-user, temporal-global or leave-last-out.")] = "random",
    protocol: Annotated[
        str | None,
        typer.Option(
            help="Evaluation protocol: random (per-user random 80/20), temporal-user (each user's newest 20% held "
            "out), leave-last-out (each user's last interaction held out), a comma-separated list, or all "
            "(every model on every protocol, side by side). Overrides --split.",
            show_default=False,
        ),
    ] = None,
    k: Annotated[int, typer.Option(help="List length K of the metrics.", min=1)] = 10,
    seed: Annotated[int | None, typer.Option(help="Split seed (default: the settings' seed).")] = None,
    param: Annotated[
        list[str] | None,
        typer.Option("--param", "-p", help="Hyperparameter model.key=value (repeatable)."),
    ] = None,
    train: Annotated[Path | None, typer.Option(help="Your own train file (CSV/Parquet).", show_default=False)] = None,
    test: Annotated[Path | None, typer.Option(help="Your own test file (CSV/Parquet).", show_default=False)] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output directory for the report.")] = None,
    fmt: FormatOption = None,
) -> None:
    """Train each model on the train split and compare them on the test split.

    Prints a table of Precision/Recall/F1/MAP/NDCG/MRR/HitRate@K with 95% bootstrap intervals, coverage, novelty
    and (for rating models) RMSE/MAE; writes comparison.md, comparison.json and comparison.png. With several
    protocols (--protocol all) it fits every model on each protocol's split and writes protocols.md,
    protocols.json and protocols.png (NDCG@K with intervals, model by protocol) plus each protocol's comparison
    under <out>/<protocol>/.
    """
    from tastebud.evaluation.protocols import parse_protocols
    from tastebud.evaluation.report import run_evaluation, run_evaluation_files

    settings = settings_of(ctx)
    names = [m.strip() for m in models.split(",") if m.strip()]
    if not names:
        raise ParameterError("--models: give at least one model name")
    params = model_params(names, param)
    out_dir = out or settings.runs_dir / "evaluate"
    if (train is None) != (test is None):
        raise ParameterError("--train and --test go together")
    if protocol is not None and train is not None:
        raise ParameterError("--protocol splits a --dataset; with --train/--test files the split is given")
    if train is not None and test is not None:
        comparison = run_evaluation_files(train, test, names, k=k, params=params, out_dir=out_dir)
    else:
        if dataset is None:
            raise ParameterError("give --dataset NAME_OR_PATH, or --train FILE --test FILE")
        ds = read(ctx, dataset, fmt)
        the_seed = seed if seed is not None else settings.seed
        protocols = parse_protocols(protocol) if protocol is not None else [split]
        if len(protocols) > 1:
            from tastebud.evaluation.protocol_comparison import run_protocols

            by_protocol = run_protocols(
                ds, names, protocols=protocols, k=k, seed=the_seed, params=params, out_dir=out_dir
            )
            by_protocol.print_table(console)
            console.print(f"report written to {out_dir}")
            return
        comparison = run_evaluation(
            ds,
            names,
            split=protocols[0],
            k=k,
            seed=the_seed,
            params=params,
            out_dir=out_dir,
        )
    comparison.print_table(console)
    console.print(f"report written to {out_dir}")


@app.command("tune")
def tune_cmd(
    ctx: typer.Context,
    model: Annotated[str, typer.Option("--model", "-m", help="Model to tune.")] = "als",
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="A fetched dataset's name or a path.")] = "ml-100k",
    trials: Annotated[int, typer.Option(help="Number of Optuna trials.", min=1)] = 20,
    k: Annotated[int, typer.Option(help="List length K of the objective.", min=1)] = 10,
    metric: Annotated[str, typer.Option(help="Objective metric at K (ndcg, recall, map ...).")] = "ndcg",
    timeout: Annotated[float | None, typer.Option(help="Stop after this many seconds.", show_default=False)] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Directory for the study.")] = None,
    fmt: FormatOption = None,
) -> None:
    """Search hyperparameters on a validation split carved from train (never the test set) with Optuna."""
    from tastebud.evaluation.tuning import tune

    settings = settings_of(ctx)
    ds = read(ctx, dataset, fmt)
    storage = out or settings.runs_dir / "tune" / f"{ds.name}-{model}"
    result = tune(
        ds, model, trials=trials, k=k, metric=metric, seed=settings.seed, storage_dir=storage, timeout=timeout
    )
    console.print(f"best {metric}@{k} = {result.best_value:.4f} with {json.dumps(result.best_params)}")
    console.print(f"study saved under {storage}")


@app.command("models-available")
def models_available() -> None:
    """List the model names usable with --model/--models, with their hyperparameters."""
    from tastebud.models import MODELS, model_class

    table = Table(title="Models")
    table.add_column("name")
    table.add_column("hyperparameters (defaults)")
    for name in MODELS:
        try:
            cls = model_class(name)
            fields = ", ".join(f"{f}={info.default!r}" for f, info in cls.config_class.model_fields.items())
        except (
            ImportError,
            AttributeError,
        ) as err:  # a model module that fails to import is shown, not hidden
            fields = f"[red]unavailable: {err}[/red]"
        table.add_row(name, fields)
    console.print(table)
