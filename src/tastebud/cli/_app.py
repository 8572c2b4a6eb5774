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
from rich.markup import escape
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
    typer.Option(
        "--home",
        help="Home directory for everything Tastebud writes (overrides TASTEBUD_HOME).",
        show_default=False,
    ),
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


def settings_of(ctx: typer.Context) -> Settings:
    obj = ctx.find_root().obj
    return obj if isinstance(obj, Settings) else build_settings()


def print_summary(summary: dict[str, Any], title: str | None = None) -> None:
    table = Table(title=title or f"Dataset {summary['name']}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    table.add_row("users", f"{summary['users']:,}")
    items = f"{summary['items']:,}"
    if summary["items_with_interactions"] != summary["items"]:
        items += f" ({summary['items_with_interactions']:,} with interactions)"
    table.add_row("items", items)
    table.add_row("interactions", f"{summary['interactions']:,}")
    if summary.get("duplicate_rows"):
        table.add_row(
            "duplicates",
            f"[yellow]{summary['duplicate_rows']:,} rows ({summary['duplicate_share']:.2%}) repeat "
            f"{summary['duplicated_pairs']:,} (user, item) pairs[/yellow]; "
            f"{summary['distinct_pairs']:,} distinct pairs "
            "(tastebud data prepare --dedupe merges them)",
        )
    table.add_row("density", f"{summary['density']:.4%} (distinct pairs)")
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


def read(ctx: typer.Context, source: str, fmt: str | None) -> Dataset:
    from tastebud.data.readers import read_dataset

    return read_dataset(source, format=fmt, settings=settings_of(ctx))


def print_split(split: Any, describe: Any) -> None:
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


def parse_params(values: list[str] | None) -> dict[str, Any]:
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


def model_params(models: list[str], raw: list[str] | None) -> dict[str, dict[str, Any]]:
    """``--param als.factors=64`` goes to als only; ``--param factors=64`` with one model goes to that model."""
    out: dict[str, dict[str, Any]] = {m: {} for m in models}
    for key, value in parse_params(raw).items():
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


# ---------------------------------------------------------------------------------------------------- entry point
def main(argv: list[str] | None = None) -> int:
    """Run the command line; Tastebud errors become one line on stderr and exit code 1."""
    try:
        app(args=argv, standalone_mode=True)
    except SystemExit as exit_:
        code = exit_.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except TastebudError as err:
        # escaped: messages quote user input and names such as local[*] or tastebud[spark], never markup
        err_console.print(f"[red]error:[/red] {escape(str(err))}", highlight=False, soft_wrap=True, markup=True)
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
