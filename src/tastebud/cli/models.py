"""`tastebud train`, `tastebud ui` and `tastebud models list|show|promote|rollback|decisions|reproduce|keygen`."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tastebud.cli._app import FormatOption, app, console, parse_params, settings_of
from tastebud.errors import ParameterError, TastebudError

models_app = typer.Typer(help="Registered models: versions, aliases, promotion, rollback.", no_args_is_help=True)
app.add_typer(models_app, name="models")

ActorOption = Annotated[
    str | None, typer.Option("--actor", help="Who asks (recorded in the decision log; default the OS user).")
]


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def print_versions(versions: list, title: str) -> None:  # type: ignore[type-arg]
    """Rich table of model versions with key metrics and aliases.

    Family and snapshot come from each version's manifest (``ModelVersion.family``/``snapshot_id``), the one
    source of provenance, never from the MLflow tags (copies anyone with access to MLflow can edit).
    """
    from rich import box

    # Compact enough for an 80-column terminal; `models show` prints everything.
    table = Table(title=title, box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0))
    has_rmse = any(mv.metrics.get("rmse") is not None for mv in versions)
    columns = [
        "ver",
        "aliases",
        "family",
        "ndcg@10",
        "rec@10",
        "cov",
        *(["rmse"] if has_rmse else []),
        "snapshot",
        "created",
    ]
    for col in columns:
        table.add_column(col, no_wrap=True)
    for mv in versions:
        cells = [
            str(mv.version),
            ",".join(mv.aliases) or "-",
            getattr(mv, "family", "") or "?",
            _fmt(mv.metrics.get("ndcg_at_10")),
            _fmt(mv.metrics.get("recall_at_10")),
            _fmt(mv.metrics.get("coverage")),
            *([_fmt(mv.metrics.get("rmse"))] if has_rmse else []),
            (getattr(mv, "snapshot_id", "") or "")[:8],
            str(mv.created_at)[:10],
        ]
        table.add_row(*cells)
    console.print(table)


@app.command("train")
def train_cmd(
    ctx: typer.Context,
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="A fetched dataset's name or a path.")] = "ml-100k",
    model: Annotated[str, typer.Option("--model", "-m", help="Model to train.")] = "als",
    param: Annotated[
        list[str] | None, typer.Option("--param", "-p", help="Hyperparameter key=value (repeatable).")
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="Registered model name (default from the dataset).")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Split and model seed (default: the settings' seed).")] = None,
    k: Annotated[int, typer.Option(help="List length of the validation metrics.", min=1)] = 10,
    register: Annotated[bool, typer.Option(help="Register the bundle as a new version.")] = True,
    fmt: FormatOption = None,
    tune: Annotated[
        int,
        typer.Option(
            "--tune",
            min=0,
            help="Optuna trials on the validation split before the final fit (0: the given or default parameters).",
        ),
    ] = 0,
    members: Annotated[
        str | None,
        typer.Option(
            "--members",
            help="With --model ensemble: the member models, comma-separated (e.g. ease,als,itemknn); "
            "--param <member>.<name>=value sets a member's parameter.",
        ),
    ] = None,
    engine: Annotated[
        str | None,
        typer.Option(
            "--engine",
            help="With --model als: who fits the factors, 'implicit' (in this process; the default) or 'spark' "
            "(pyspark MLlib ALS on the master of spark.master, default local[*], e.g. TASTEBUD_SPARK__MASTER="
            "spark://host:7077; needs pip install 'tastebud\\[spark]' and Java 17+). Both write the same bundle.",
        ),
    ] = None,
    from_registry: Annotated[
        str | None,
        typer.Option(
            "--from-registry",
            help="With --model ensemble: blend registered versions (name:version,...; one training part) instead "
            "of training members; only the weights are learned, on half of their split's validation part (the other "
            "half gives the recorded metrics).",
        ),
    ] = None,
) -> None:
    """Train a model, evaluate it on the validation split, log an MLflow run and register the bundle."""
    from tastebud.pipeline.train import train

    settings = settings_of(ctx)
    params = parse_params(param)
    if engine is not None:
        if model != "als":
            raise ParameterError(f"--engine applies to --model als only, not {model!r}")
        if engine not in ("implicit", "spark"):
            raise ParameterError(f"--engine {engine!r}: expected 'implicit' or 'spark'")
        params["engine"] = engine
    if model == "ensemble":
        from tastebud.models.ensemble import member_params_from_flat

        params = member_params_from_flat(params)
        if members is not None:
            params["members"] = members
    elif members is not None or from_registry is not None:
        raise ParameterError("--members and --from-registry apply to --model ensemble only")
    if from_registry is not None:
        from tastebud.pipeline.ensemble import train_ensemble_from_registry

        if members is not None:
            raise ParameterError("give either --members or --from-registry, not both")
        result = train_ensemble_from_registry(
            from_registry, settings=settings, params=params, name=name, k=k, register=register
        )
    else:
        result = train(
            dataset,
            model,
            params,
            settings=settings,
            seed=seed,
            k=k,
            fmt=fmt,
            name=name,
            register=register,
            tune=tune,
        )
    table = Table(title=f"{model} on {result.manifest['data']['name']} (validation)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in result.metrics.items():
        table.add_row(key, _fmt(value))
    table.add_row("fit seconds", f"{result.timings['fit_s']:.2f}")
    if "tune_s" in result.timings:
        tuned = result.manifest.get("extra", {}).get("tuning", {})
        table.add_row(f"tuning ({tuned.get('trials')} trials) seconds", f"{result.timings['tune_s']:.2f}")
        table.add_row(f"best validation {tuned.get('metric')}", _fmt(tuned.get("best_value")))
    console.print(table)
    console.print(f"bundle: {result.bundle_dir}")
    console.print(f"run: {result.run_id}")
    if result.version is not None:
        console.print(f"registered [bold]{result.version.name}[/bold] version {result.version.version} (challenger)")


@app.command("ui")
def ui_cmd(
    ctx: typer.Context,
    port: Annotated[int, typer.Option(help="Port of the MLflow UI.")] = 5000,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
) -> None:
    """Start the MLflow UI on the tracking store (the embedded SQLite store by default)."""
    import sys

    from tastebud.registry.tracking import artifact_root, is_embedded, tracking_uri

    settings = settings_of(ctx)
    if not is_embedded(settings):
        raise TastebudError(f"tracking goes to a server ({tracking_uri(settings)}): open its UI instead")
    settings.mlflow_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "mlflow", "ui",
        "--backend-store-uri", tracking_uri(settings),
        "--default-artifact-root", artifact_root(settings).as_uri(),
        "--host", host, "--port", str(port),
    ]  # fmt: skip
    console.print(f"MLflow UI on http://{host}:{port} (Ctrl-C to stop)")
    raise typer.Exit(subprocess.call(cmd))


@models_app.command("list")
def list_cmd(
    ctx: typer.Context, name: Annotated[str, typer.Argument(help="Registered model name.")] = "movielens-100k"
) -> None:
    """Show the versions of a model with key metrics and aliases."""
    from tastebud.registry.aliases import ModelRegistry

    versions = ModelRegistry(settings_of(ctx)).list_versions(name)
    if not versions:
        console.print(f"no versions of {name!r} registered")
        return
    print_versions(versions, f"Model {name}")


@models_app.command("show")
def show_cmd(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[str, typer.Argument(help="Version number or alias.")],
) -> None:
    """Print the manifest of a version's bundle."""
    from tastebud.registry.aliases import ModelRegistry

    registry = ModelRegistry(settings_of(ctx))
    mv = registry.resolve(name, version)
    console.print_json(json.dumps(registry.manifest(mv)))


@models_app.command("promote")
def promote_cmd(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[int, typer.Argument(help="Version to promote to champion.")],
    force: Annotated[bool, typer.Option("--force", help="Promote even if the gate refuses (recorded).")] = False,
    actor: ActorOption = None,
) -> None:
    """Promote a version to champion if it beats the current champion (the gate); exit 1 when refused."""
    from tastebud.pipeline.promote import promote
    from tastebud.registry.aliases import ModelRegistry

    settings = settings_of(ctx)
    result = promote(ModelRegistry(settings), name, version, settings=settings, force=force, actor=actor)
    style = {"promoted": "green", "forced": "yellow", "refused": "red"}[result.decision.action]
    console.print(f"[{style}]{result.decision.action}[/{style}] {name} version {version}")
    for reason in result.gate.reasons:
        console.print(f"  {reason}")
    if not result.promoted:
        raise typer.Exit(1)


@models_app.command("rollback")
def rollback_cmd(
    ctx: typer.Context, name: Annotated[str, typer.Argument(help="Registered model name.")], actor: ActorOption = None
) -> None:
    """Return champion to the previous champion."""
    from tastebud.pipeline.promote import rollback
    from tastebud.registry.aliases import ModelRegistry

    settings = settings_of(ctx)
    decision = rollback(ModelRegistry(settings), name, settings=settings, actor=actor)
    console.print(f"rolled back {name}: champion is version {decision.version} (was {decision.previous})")


@models_app.command("decisions")
def decisions_cmd(
    ctx: typer.Context, name: Annotated[str | None, typer.Argument(help="Only this model.")] = None
) -> None:
    """Print the decision log (promotions, refusals, forced promotions, rollbacks)."""
    from tastebud.pipeline.promote import decision_rows
    from tastebud.registry.decisions import read_decisions

    rows = decision_rows(read_decisions(settings_of(ctx), name))
    if not rows:
        console.print("no decisions recorded")
        return
    table = Table(title="Decisions")
    for col in rows[0]:
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*row.values())
    console.print(table)


@models_app.command("reproduce")
def reproduce_cmd(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[str, typer.Argument(help="Version number or alias.")],
    tolerance: Annotated[float, typer.Option(help="Largest absolute metric difference accepted.")] = 1e-6,
) -> None:
    """Re-train a version from its manifest and compare metrics; exit 1 if a difference exceeds the tolerance."""
    from tastebud.pipeline.train import reproduce
    from tastebud.registry.aliases import ModelRegistry

    settings = settings_of(ctx)
    result = reproduce(ModelRegistry(settings), name, version, settings, tolerance=tolerance)
    table = Table(title=f"Reproduce {name} version {result.version}")
    for col in ("metric", "recorded", "reproduced", "difference"):
        table.add_column(col, justify="right")
    for key, a, b, d in result.rows:
        table.add_row(key, _fmt(a), _fmt(b), "-" if d is None else f"{d:+.2e}")
    console.print(table)
    verdict = "[green]reproduced[/green]" if result.passed else "[red]NOT reproduced[/red]"
    console.print(f"{verdict}: max difference {result.max_difference:.2e} (tolerance {tolerance:g})")
    if not result.passed:
        raise typer.Exit(1)


@models_app.command("keygen")
def keygen_cmd(
    ctx: typer.Context,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Directory for the key pair (default: <home>/keys).")
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing key pair.")] = False,
) -> None:
    """Write an Ed25519 key pair for signing bundle manifests (private key: training side; public: serving)."""
    from tastebud.registry.signing import generate_keypair

    directory = out if out is not None else settings_of(ctx).home / "keys"
    private, public = generate_keypair(directory, overwrite=overwrite)
    console.print(f"private key (signs; keep it on the training side, mode 0600): {private}")
    console.print(f"public key (verifies; give it to serving): {public}")
    console.print(
        "configure: TASTEBUD_SIGNING__PRIVATE_KEY_PATH=" + str(private) + " where models are trained and registered, "
        "TASTEBUD_SIGNING__PUBLIC_KEY_PATH=" + str(public) + " where they are served"
    )
