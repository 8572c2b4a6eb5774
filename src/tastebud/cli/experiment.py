"""`tastebud experiment create|list|show|start|stop`: online experiments as data, from draft to stopped."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich import box
from rich.table import Table

from tastebud.cli._app import app, console, settings_of

if TYPE_CHECKING:
    from tastebud.experiments import Experiment
    from tastebud.store import Store

experiment_app = typer.Typer(
    help=(
        "Online experiments (A/B, interleaving, canary) stored as data: create a draft, start it (every variant's "
        "bundle is verified first), stop it. Serving assigns each user to a variant by a hash of the experiment's "
        "salt and the user id: the same user gets the same variant in every process and after every restart.\n\n"
        "Example: tastebud experiment create ease-vs-als --variant control=champion --variant "
        "treatment=challenger; tastebud experiment start ease-vs-als; tastebud experiment show ease-vs-als."
    ),
    no_args_is_help=True,
)
app.add_typer(experiment_app, name="experiment")

NameArgument = Annotated[str, typer.Argument(help="The experiment's name (lower case, digits, - and _).")]
ActorOption = Annotated[
    str | None,
    typer.Option("--actor", help="Who asks (recorded in the experiment's change history; default the OS user).",
                 show_default=False),
]  # fmt: skip
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]


@contextmanager
def _store(ctx: typer.Context) -> Iterator[Store]:
    from tastebud.store import create_store

    with create_store(settings_of(ctx)) as store:
        store.init_schema()
        yield store


def _actor(actor: str | None) -> str:
    from tastebud.registry.decisions import default_actor

    return actor or default_actor()


@experiment_app.command("create")
def create_cmd(
    ctx: typer.Context,
    name: NameArgument,
    variant: Annotated[
        list[str],
        typer.Option(
            "--variant",
            "-V",
            help="An arm as NAME=REF, REF a registry alias (champion, challenger) or a version number; repeat it "
            "for each arm, the control first: --variant control=champion --variant treatment=challenger.",
            show_default=False,
        ),
    ],
    weights: Annotated[
        str | None,
        typer.Option(
            "--weights",
            "-w",
            help="Percent of users per variant, in variant order, summing to 100 (default equal).",
            show_default=False,
        ),
    ] = None,
    kind: Annotated[
        str, typer.Option("--kind", help="ab (split users), interleaving (exactly 2 variants) or canary.")
    ] = "ab",
    model_name: Annotated[
        str | None,
        typer.Option("--model-name", "-n", help="Registered model (default: serving.model_name).", show_default=False),
    ] = None,
    primary_metric: Annotated[
        str,
        typer.Option(
            "--primary-metric", help="The metric that decides: hit_rate, click_rate, rating_rate, plays, mean_rating."
        ),
    ] = "hit_rate",
    secondary: Annotated[
        list[str] | None,
        typer.Option(
            "--secondary", help="A further metric reported (repeatable, or comma-separated).", show_default=False
        ),
    ] = None,
    guardrail: Annotated[
        list[str] | None,
        typer.Option(
            "--guardrail",
            help="A guardrail that must not get worse (repeatable, or comma-separated; default all of p95_latency, "
            "error_ratio, fallback_rate, coverage).",
            show_default=False,
        ),
    ] = None,
    mde: Annotated[float, typer.Option("--mde", help="Minimum detectable effect, relative (0.02: 2%).")] = 0.02,
    alpha: Annotated[float, typer.Option("--alpha", help="Significance level, two-sided.")] = 0.05,
    power: Annotated[float, typer.Option("--power", help="Power at the minimum detectable effect.")] = 0.8,
    min_lift: Annotated[
        float, typer.Option("--min-lift", help="Practical significance: the relative lift a winner must show.")
    ] = 0.0,
    holdout: Annotated[
        float,
        typer.Option("--holdout", help="Percent of the experiment's users kept on the default champion (no variant)."),
    ] = 0.0,
    layer: Annotated[
        str,
        typer.Option(
            "--layer", help="Traffic layer: running experiments of one model in one layer must not overlap in traffic."
        ),
    ] = "default",
    traffic_range: Annotated[
        str,
        typer.Option(
            "--traffic-range",
            help="START-END percent of the layer's users in the experiment (0-100: everyone; 0-10 and 10-20: two "
            "experiments side by side in one layer).",
        ),
    ] = "0-100",
    horizon: Annotated[
        str,
        typer.Option(
            "--horizon", help="Attribution horizon: an event counts for an exposure this long after it (s/m/h/d/w)."
        ),
    ] = "24h",
    actor: ActorOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create an experiment as a draft: every field validated, every variant's ref checked in the registry.

    A random salt is drawn and stored: it keys the assignment hash, so this experiment splits users independently
    of every other one. Nothing is served until [bold]tastebud experiment start[/bold].

    Examples:

    tastebud experiment create ease-vs-als --variant control=champion --variant treatment=challenger

    tastebud experiment create canary-v7 --kind canary --variant canary=7 --traffic-range 0-5 --layer canary

    tastebud experiment create three-way -V a=champion -V b=challenger -V c=4 --weights 50,25,25 --holdout 10
    """
    from tastebud.experiments import create_experiment, parse_range, parse_variant, parse_weights
    from tastebud.monitoring.report import parse_duration
    from tastebud.registry import ModelRegistry

    settings = settings_of(ctx)
    spec: dict[str, Any] = {
        "name": name,
        "kind": kind,
        "model_name": model_name,
        "variants": [parse_variant(v) for v in variant],
        "weights": None if weights is None else parse_weights(weights),
        "holdout": holdout,
        "layer": layer,
        "traffic_range": parse_range(traffic_range),
        "primary_metric": primary_metric,
        "secondary_metrics": _split(secondary),
        "mde": mde,
        "alpha": alpha,
        "power": power,
        "horizon_s": parse_duration(horizon).total_seconds(),
        "min_lift": min_lift,
    }
    if guardrail:
        spec["guardrails"] = _split(guardrail)
    with _store(ctx) as store:
        experiment = create_experiment(store, ModelRegistry(settings), settings, spec, _actor(actor))
    if as_json:
        console.print_json(json.dumps(_as_dict(experiment)))
        return
    console.print(
        f"created experiment [bold]{experiment.name}[/bold] (draft) on {experiment.model_name}: {_arms(experiment)}; "
        f"start it with `tastebud experiment start {experiment.name}`",
        highlight=False,
    )


@experiment_app.command("list")
def list_cmd(
    ctx: typer.Context,
    status: Annotated[
        str | None, typer.Option("--status", help="Only draft, running or stopped ones.", show_default=False)
    ] = None,
    model_name: Annotated[
        str | None, typer.Option("--model-name", "-n", help="Only this model's.", show_default=False)
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """List experiments, oldest first: status, variants and weights, layer, traffic range, holdout, start time (UTC).

    Example: tastebud experiment list --status running
    """
    from tastebud.experiments import list_experiments

    with _store(ctx) as store:
        experiments = list_experiments(store, status, model_name=model_name)
    if as_json:
        console.print_json(json.dumps([_as_dict(e) for e in experiments]))
        return
    if not experiments:
        console.print("no experiments" + (f" {status}" if status else "") + " (create one: tastebud experiment create)")
        return
    table = Table(title="Experiments (times UTC)", box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0))
    for col in ("name", "model", "kind", "status", "variants", "layer", "traffic", "holdout", "started"):
        table.add_column(col, no_wrap=True)
    style = {"draft": "cyan", "running": "green", "stopped": "dim"}
    for e in experiments:
        table.add_row(
            e.name, e.model_name, e.kind, f"[{style[e.status]}]{e.status}[/{style[e.status]}]", _arms(e, "\n"),
            e.layer, _span(e.traffic_range), f"{e.holdout:g}%", _time(e.started_at, short=True),
        )  # fmt: skip
    console.print(table)


@experiment_app.command("show")
def show_cmd(ctx: typer.Context, name: NameArgument, as_json: JsonOption = False) -> None:
    """Show an experiment's definition, its variants (with the versions pinned at start) and its change history.

    Example: tastebud experiment show ease-vs-als
    """
    from tastebud.experiments import experiment_changes, get_experiment

    with _store(ctx) as store:
        experiment = get_experiment(store, name)
        changes = experiment_changes(store, name)
    if as_json:
        console.print_json(json.dumps({**_as_dict(experiment), "changes": changes}, default=str))
        return
    table = Table(title=f"Experiment {experiment.name}", show_header=False, box=box.SIMPLE)
    table.add_column("field", style="bold")
    table.add_column("value")
    rows = [
        ("status", experiment.status), ("kind", experiment.kind), ("model", experiment.model_name),
        ("layer", experiment.layer), ("traffic", f"{_span(experiment.traffic_range)}% of the layer"),
        ("holdout", f"{experiment.holdout:g}% of its users"), ("primary metric", experiment.primary_metric),
        ("secondary metrics", ", ".join(experiment.secondary_metrics) or "-"),
        ("guardrails", ", ".join(experiment.guardrails) or "-"),
        ("mde / alpha / power", f"{experiment.mde:g} / {experiment.alpha:g} / {experiment.power:g}"),
        ("min lift", f"{experiment.min_lift:g}"), ("horizon", f"{experiment.horizon_s / 3600:g} h"),
        ("salt", experiment.salt), ("created", f"{_time(experiment.created_at)} by {experiment.created_by}"),
        ("started", _time(experiment.started_at)), ("stopped", _time(experiment.stopped_at)),
    ]  # fmt: skip
    for field, value in rows:
        table.add_row(field, value)
    console.print(table)
    arms = Table(title="Variants", box=box.SIMPLE_HEAD)
    for col in ("variant", "ref", "weight", "version at start"):
        arms.add_column(col)
    for v, w in zip(experiment.variants, experiment.weights, strict=True):
        pinned = experiment.versions.get(v.name)
        arms.add_row(v.name, v.ref, f"{w:g}%", "-" if pinned is None else str(pinned))
    console.print(arms)
    history = Table(title="Changes (times UTC)", box=box.SIMPLE_HEAD)
    for col in ("time", "actor", "action", "details"):
        history.add_column(col)
    for change in changes:
        history.add_row(_time(change["time"]), change["actor"], change["action"], _details(change["details"]))
    console.print(history)


@experiment_app.command("start")
def start_cmd(ctx: typer.Context, name: NameArgument, actor: ActorOption = None) -> None:
    """Start a draft: every variant's bundle is resolved, fetched and verified, then the experiment runs.

    Refused (the experiment stays a draft, the refusal is recorded) when a variant's bundle is missing or
    corrupt, or when a running experiment of the same model and layer overlaps its traffic range. The versions
    the variants resolve to now are pinned for the experiment's life.

    Example: tastebud experiment start ease-vs-als
    """
    from tastebud.experiments import start_experiment
    from tastebud.registry import ModelRegistry

    settings = settings_of(ctx)
    with _store(ctx) as store:
        experiment = start_experiment(store, ModelRegistry(settings), settings, name, _actor(actor))
    pinned = ", ".join(f"{variant} -> version {version}" for variant, version in experiment.versions.items())
    console.print(f"[green]started[/green] {experiment.name}: {pinned}", highlight=False)


@experiment_app.command("stop")
def stop_cmd(
    ctx: typer.Context,
    name: NameArgument,
    reason: Annotated[
        str | None, typer.Option("--reason", help="Why (recorded in the history).", show_default=False)
    ] = None,
    actor: ActorOption = None,
) -> None:
    """Stop a running experiment (or retire a draft); serving processes drop it at their next poll.

    Example: tastebud experiment stop ease-vs-als --reason "enough data"
    """
    from tastebud.experiments import stop_experiment

    with _store(ctx) as store:
        experiment = stop_experiment(store, name, _actor(actor), reason=reason)
    console.print(f"stopped {experiment.name} at {_time(experiment.stopped_at)} UTC", highlight=False)


@experiment_app.command("analyze")
def analyze_cmd(
    ctx: typer.Context,
    name: NameArgument,
    out: Annotated[
        str | None,
        typer.Option(
            "--out",
            help="Directory for analysis.md, analysis.json and lift.png (default: <home>/runs/experiments/NAME).",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Analyse an experiment from the logged exposures and the events that followed them (never status codes).

    Per variant: users, the primary metric's mean, absolute and relative lift with a 95% interval, p-value and
    bootstrap interval; CUPED on the metric's pre-exposure values; Holm-corrected secondary metrics; sample ratio
    mismatch (chi-squared, flagged at p < 0.001); guardrails (p95 latency, error ratio, fallback rate, coverage);
    power achieved and users still needed; and the always-valid interval (a confidence sequence, safe to look at
    every day) that the verdict rests on: ship, do not ship or keep running. Interleaving experiments get the
    per-user preference sign test.

    Example: tastebud experiment analyze ease-vs-als
    """
    from pathlib import Path

    from tastebud.experiments import get_experiment
    from tastebud.experiments.report import analyze_experiment, write_analysis

    settings = settings_of(ctx)
    with _store(ctx) as store:
        experiment = get_experiment(store, name)
        result = analyze_experiment(store, experiment, catalog_size=_catalog_size(settings, experiment))
    directory = Path(out) if out else settings.runs_dir / "experiments" / name
    _print_analysis(result, write_analysis(result, directory), as_json)


def _print_analysis(result: Any, paths: dict[str, Any], as_json: bool) -> None:
    """Print an analysis (``analyze`` and ``simulate``): the decision, the primary metric per variant, the lift."""
    if as_json:
        console.print_json(json.dumps(result.to_dict(), default=str))
        return
    style = {"ship": "green", "do not ship": "red"}.get(result.decision, "yellow")
    console.print(f"[{style}]{result.decision}[/{style}]: {result.reason}", highlight=False)
    report = result.report
    if report is not None:
        p = report.primary
        table = Table(title=f"{p.metric} ({p.kind})", box=box.SIMPLE_HEAD)
        for col in ("variant", "users", "mean", "95% CI"):
            table.add_column(col, justify="right")
        names = result.variants
        table.add_row(names[0], f"{p.n_control:,}", f"{p.mean_control:.4f}",
                      f"{p.ci_control[0]:.4f} - {p.ci_control[1]:.4f}")  # fmt: skip
        table.add_row(names[1], f"{p.n_treatment:,}", f"{p.mean_treatment:.4f}",
                      f"{p.ci_treatment[0]:.4f} - {p.ci_treatment[1]:.4f}")  # fmt: skip
        console.print(table)
        console.print(
            f"relative lift {100 * p.rel_lift:+.2f}% (95% CI {100 * p.rel_ci[0]:+.2f}% to {100 * p.rel_ci[1]:+.2f}%, "
            f"p={p.p_value:.3g}); always-valid {100 * p.seq_rel_ci[0]:+.2f}% to {100 * p.seq_rel_ci[1]:+.2f}%",
            highlight=False,
        )
        if report.srm is not None and report.srm.flagged:
            console.print(f"[red]sample ratio mismatch[/red] (p={report.srm.p_value:.2g}): trust no metric")
    console.print("written: " + ", ".join(str(p) for p in paths.values()), highlight=False)


@experiment_app.command("simulate")
def simulate_cmd(
    ctx: typer.Context,
    name: NameArgument,
    url: Annotated[str, typer.Option("--url", help="The running server (tastebud serve).")] = "http://127.0.0.1:8000",
    dataset: Annotated[
        str,
        typer.Option(
            "--dataset",
            "-d",
            help="Dataset whose held-out part (tastebud train's test split) says what each user really likes.",
        ),
    ] = "ml-100k",
    users: Annotated[
        int, typer.Option("--users", help="Simulated users (the first ones with held-out likes).", min=1)
    ] = 500,
    k: Annotated[int, typer.Option("--k", help="List length asked for.", min=1)] = 10,
    click_probability: Annotated[
        float, typer.Option("--click-probability", help="Chance a user clicks a recommended item they like.")
    ] = 0.8,
    out: Annotated[
        str | None,
        typer.Option(
            "--out", help="Directory for the analysis (default: <home>/runs/experiments/NAME).", show_default=False
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Simulate a short experiment against a running server, then analyse it.

    Each simulated user asks GET /recommend/USER (the server assigns the variant and logs the exposure) and clicks
    each recommended item that is in their held-out likes (the test part of the split tastebud train makes, items
    rated 4 or more: no model trained on them) with the given probability; the clicks go to POST /events. The
    variant that recommends more held-out items earns more clicks, and the analysis should name it.

    Example: tastebud experiment simulate ease-vs-als --url http://127.0.0.1:8000 --users 500
    """
    from pathlib import Path

    from tastebud.experiments import get_experiment
    from tastebud.experiments.report import analyze_experiment, write_analysis
    from tastebud.experiments.simulate import held_out_truth, simulate

    settings = settings_of(ctx)
    with _store(ctx) as store:
        get_experiment(store, name)  # an unknown experiment fails before any traffic
    truth = held_out_truth(dataset, settings)
    chosen = sorted(truth)[:users]
    sim = simulate(url, name, chosen, truth, k=k, seed=settings.seed, click_probability=click_probability)
    if not as_json:
        per_variant = ", ".join(f"{v}: {n:,} lists, {sim.clicks.get(v, 0):,} clicks" for v, n in sim.requests.items())
        console.print(f"simulated {len(chosen):,} users against {url}: {per_variant or 'no lists'}; "
                      f"{sim.accepted:,} events stored, {sim.errors:,} errors", highlight=False)  # fmt: skip
    with _store(ctx) as store:
        experiment = get_experiment(store, name)
        result = analyze_experiment(store, experiment, catalog_size=_catalog_size(settings, experiment))
    directory = Path(out) if out else settings.runs_dir / "experiments" / name
    _print_analysis(result, write_analysis(result, directory), as_json)


def _catalog_size(settings: Any, experiment: Experiment) -> int | None:
    """Items of the control's model (for catalog coverage), or None when its manifest cannot be read."""
    try:
        from tastebud.registry import ModelRegistry

        registry = ModelRegistry(settings)
        version = experiment.versions.get(experiment.variants[0].name)
        mv = registry.resolve(experiment.model_name, version if version is not None else experiment.variants[0].ref)
        return int(registry.manifest(mv)["data"]["n_items"])
    except Exception:
        return None


def _split(values: list[str] | None) -> list[str]:
    return [part.strip() for value in values or [] for part in value.split(",") if part.strip()]


def _arms(experiment: Experiment, sep: str = ", ") -> str:
    return sep.join(f"{v.name}={v.ref} {w:g}%" for v, w in zip(experiment.variants, experiment.weights, strict=True))


def _span(traffic_range: tuple[float, float]) -> str:
    return f"{traffic_range[0]:g}-{traffic_range[1]:g}"


def _time(value: Any, *, short: bool = False) -> str:
    return "-" if value is None else value.strftime("%m-%d %H:%M" if short else "%Y-%m-%d %H:%M:%S")


def _details(details: dict[str, Any] | None) -> str:
    if not details:
        return "-"
    if set(details) >= {"variants", "weights"}:  # the definition recorded at creation
        return "definition: " + ", ".join(
            f"{v['name']}={v['ref']} {w:g}%" for v, w in zip(details["variants"], details["weights"], strict=True)
        )
    return "; ".join(f"{k}: {v}" for k, v in details.items() if v is not None)


def _as_dict(experiment: Experiment) -> dict[str, Any]:
    return experiment.model_dump(mode="json")


@experiment_app.command("canary")
def canary_cmd(
    ctx: typer.Context,
    name: NameArgument,
    treatment: Annotated[
        str,
        typer.Option("--treatment", "-t", help="The new model: a registry alias (challenger) or a version number."),
    ],
    start: Annotated[
        float, typer.Option("--start", help="The treatment's first share of users, in percent (0 < START < 100).")
    ] = 5.0,
    model_name: Annotated[
        str | None,
        typer.Option("--model-name", "-n", help="Registered model (default: serving.model_name).", show_default=False),
    ] = None,
    actor: ActorOption = None,
) -> None:
    """Create and start a canary: control=champion at 100-START%, treatment=REF at START%; ramp it with `ramp`.

    Example: tastebud experiment canary canary-v7 --treatment challenger --start 5
    """
    from tastebud.errors import ExperimentError
    from tastebud.experiments import create_experiment, start_experiment
    from tastebud.registry import ModelRegistry

    if not 0.0 < start < 100.0:
        raise ExperimentError(f"--start {start:g}: expected a percentage between 0 and 100, e.g. 5")
    settings = settings_of(ctx)
    registry = ModelRegistry(settings)
    spec = {
        "name": name,
        "kind": "canary",
        "model_name": model_name,
        "variants": [{"name": "control", "ref": "champion"}, {"name": "treatment", "ref": treatment}],
        "weights": (100.0 - start, start),
        "guardrails": ["p95_latency", "error_ratio", "fallback_rate"],
    }
    with _store(ctx) as store:
        create_experiment(store, registry, settings, spec, _actor(actor))
        experiment = start_experiment(store, registry, settings, name, _actor(actor))
    pinned = ", ".join(f"{variant} -> version {version}" for variant, version in experiment.versions.items())
    console.print(
        f"[green]started canary[/green] {experiment.name}: {_arms(experiment)} ({pinned}); "
        f"ramp it with `tastebud experiment ramp {experiment.name}`",
        highlight=False,
    )


@experiment_app.command("ramp")
def ramp_cmd(
    ctx: typer.Context,
    name: NameArgument,
    steps: Annotated[
        str, typer.Option("--steps", help="The treatment's share after each step, percent, increasing, ending at 100.")
    ] = "5,25,50,100",
    every: Annotated[str, typer.Option("--every", help="Time between steps (s/m/h/d).")] = "10m",
    once: Annotated[bool, typer.Option("--once", help="Take one step and exit (for cron or CI).")] = False,
    min_requests: Annotated[
        int, typer.Option("--min-requests", help="Logged requests each variant needs at a step before it is judged.")
    ] = 200,
    promote: Annotated[
        bool, typer.Option("--promote", help="At completion, promote the treatment's version (the gate still decides).")
    ] = False,
    actor: ActorOption = None,
    as_json: JsonOption = False,
) -> None:
    """Ramp a running canary: check its guardrails (error ratio, p95 latency, fallback rate) on the traffic since
    the last step, then wait for traffic, move the treatment to the next step, complete it at 100%, or roll it
    back to the control (stopped, and a `rolled_back` decision in the decision log) when a guardrail is breached.

    Without --once it repeats every --every until the canary completes or rolls back.

    Example: tastebud experiment ramp canary-v7 --steps 5,25,50,100 --every 10m
    """
    import time

    from tastebud.experiments.canary import parse_steps, ramp_step
    from tastebud.monitoring.report import parse_duration
    from tastebud.registry import ModelRegistry

    plan = parse_steps(steps)
    interval = parse_duration(every).total_seconds()
    settings = settings_of(ctx)
    registry = ModelRegistry(settings)
    style = {"ramped": "green", "completed": "green", "rolled_back": "red", "waiting": "yellow"}
    while True:
        with _store(ctx) as store:
            step = ramp_step(
                store, registry, settings, name, steps=plan, actor=_actor(actor),
                catalog_size=None, min_requests=min_requests, promote=promote,
            )  # fmt: skip
        if as_json:
            console.print_json(json.dumps(step.to_dict(), default=str))
        else:
            colour = style[step.outcome]
            console.print(f"[{colour}]{step.outcome}[/{colour}] {name}: {step.reason}", highlight=False)
        if once or step.done:
            if step.outcome == "rolled_back":
                raise typer.Exit(2)
            return
        time.sleep(interval)
