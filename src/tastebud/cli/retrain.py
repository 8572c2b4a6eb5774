"""`tastebud retrain run|history`: retrain the champion on its data plus the new events (gated); past retrains."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from tastebud.cli._app import app, console, err_console, parse_params, settings_of

retrain_app = typer.Typer(
    help=(
        "Retraining: the champion's data plus the events stored since its cutoff, a candidate of the same family, "
        "both compared on a fresh holdout of the newest events, and the promotion gate. One retrain per model at a "
        "time (a lock in the store); every run is kept in the history."
    ),
    no_args_is_help=True,
)
app.add_typer(retrain_app, name="retrain")

ModelNameOption = Annotated[
    str | None,
    typer.Option("--model-name", "-n", help="Registered model (default: serving.model_name).", show_default=False),
]


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


@retrain_app.command("run")
def run_cmd(
    ctx: typer.Context,
    model_name: ModelNameOption = None,
    tune: Annotated[
        int,
        typer.Option(
            "--tune", min=0, help="Optuna trials on the pre-holdout data before fitting (0: the champion's parameters)."
        ),
    ] = 0,
    warm_start: Annotated[
        bool,
        typer.Option(
            "--warm-start", help="Start from the champion's factors (ALS); other families fit from scratch as usual."
        ),
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Retrain even without new events (the gate still decides).")
    ] = False,
    param: Annotated[
        list[str] | None,
        typer.Option("--param", "-p", help="Override one of the champion's parameters, key=value (repeatable)."),
    ] = None,
    trigger: Annotated[
        str, typer.Option("--trigger", help="What asked for this run, recorded in the history and the decision log.")
    ] = "manual",
    as_json: Annotated[bool, typer.Option("--json", help="Print the outcome as JSON.")] = False,
) -> None:
    """Retrain the champion on its data plus the new events; promote the candidate only if it passes the gate.

    Data: the champion's data plus the events stored since its cutoff, one interaction per (user, item).
    Holdout: the newest 20% of the new first-time (user, item) pairs (retrain.holdout_fraction).
    The candidate is fitted on the rest; the champion answers as serving does (earlier new events folded in).
    Gate: NDCG@10 up by registry.promotion_margin (1%), coverage kept, enough holdout users.
    The shipped model is then refitted on all the data, holdout included.

    Exit code 0: promoted, refused by the gate, or no new data.
    Exit code 1: data rejected, another retrain of the model running (busy), or a failure; one line says why.
    """
    from tastebud.pipeline.retrain import run_retrain

    settings = settings_of(ctx)
    name = model_name or settings.serving.model_name
    out = run_retrain(
        settings,
        model_name=name,
        trigger=trigger,
        tune=tune,
        warm_start=warm_start,
        force=force,
        params=parse_params(param) or None,
    )
    from tastebud.monitoring.metrics import RETRAIN_TEXTFILE
    from tastebud.monitoring.retrain import write_retrain_gauges

    try:  # what /metrics reports (last run, last success, outcome, gate) and the staleness alert watches
        write_retrain_gauges(out, settings.home / RETRAIN_TEXTFILE)
    except OSError as err:
        err_console.print(f"[yellow]warning:[/yellow] retrain gauges not written: {err}", highlight=False)
    if as_json:
        console.print_json(json.dumps(out.to_dict(), default=str))
    elif out.ok:
        print_outcome(out)
    if not out.ok:  # one line, never a traceback
        err_console.print(f"[red]error:[/red] retrain {out.outcome}: {out.reason}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)


def print_outcome(out: Any) -> None:
    """The outcome of one retrain: decision, reason, the holdout comparison, the new data and the time taken."""
    style = {"promoted": "green", "refused": "yellow", "no_new_data": "cyan"}.get(out.outcome, "red")
    version = f" version {out.version}" if out.version is not None else ""
    console.print(f"[{style}]{out.outcome}[/{style}] {out.model_name}{version} (trigger {out.trigger})")
    console.print(f"  {out.reason}", highlight=False)
    for note in out.recovered:
        console.print(f"  [yellow]cleaned up:[/yellow] {note}", highlight=False)
    gate = out.gate or {}
    if gate.get("holdout", {}).get("users"):
        table = Table(
            title=f"Holdout: {gate['holdout']['interactions']:,} interactions, {gate['holdout']['users']:,} users"
        )
        for col in ("metric", "candidate", f"champion (v{out.champion_version})"):
            table.add_column(col, justify="right")
        for key, value in gate["candidate"].items():
            table.add_row(key, _fmt(value), _fmt(gate["champion"].get(key)))
        sources = gate.get("champion_sources", {})
        table.add_row(
            "champion lists",
            "",
            f"{sources.get('model', 0)} model, {sources.get('fold_in', 0)} fold-in, "
            f"{sources.get('popular', 0)} popular",
        )
        console.print(table)
    lineage = out.lineage or {}
    if lineage:
        ev = lineage["events"]
        console.print(
            f"  data: {out.n_interactions:,} interactions ({ev['count']:,} new events, ids {ev['after_id']}..."
            f"{ev['through_id']}; {lineage['new_users']:,} new users, {lineage['new_items']:,} new items), "
            f"snapshot {lineage['snapshot_id']}",
            highlight=False,
        )
    fit = out.fit_s or 0.0
    console.print(
        f"  time: {out.duration_s:.1f} s ({fit:.1f} s fitting, {out.duration_s - fit:.1f} s everything else)",
        highlight=False,
    )


@retrain_app.command("history")
def history_cmd(
    ctx: typer.Context,
    model_name: ModelNameOption = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Most recent runs shown.")] = 20,
    all_models: Annotated[bool, typer.Option("--all", help="Every model's runs, not just one model's.")] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the rows as JSON (every reason and gate number).")
    ] = False,
) -> None:
    """Show past retrains, newest first: trigger, outcome, versions, NDCG@10 of candidate and champion, timings.

    A run that is still "running" while no retrain runs was killed; the next retrain marks it "killed".
    """
    from tastebud.store import create_store

    settings = settings_of(ctx)
    name = None if all_models else (model_name or settings.serving.model_name)
    with create_store(settings) as store:
        store.init_schema()
        rows = store.retrain_history(name, limit=limit)
    if as_json:
        console.print_json(json.dumps(rows, default=str))
        return
    if not rows:
        console.print(f"no retrains recorded{'' if name is None else f' for {name!r}'}")
        return
    from rich import box

    table = Table(
        title=f"Retrains{'' if name is None else f' of {name}'} (times UTC)",
        box=box.SIMPLE_HEAD,
        padding=0,
        pad_edge=False,
    )
    columns = ["#", "started", *(["model"] if name is None else []), "trigger", "outcome", "ver", "champ",
               "ndcg@10", "events", "s (fit)"]  # fmt: skip
    for col in columns:
        table.add_column(col, no_wrap=True)
    for row in rows:
        gate = row.get("gate") or {}
        cand, champ = (gate.get("candidate") or {}).get("ndcg_at_10"), (gate.get("champion") or {}).get("ndcg_at_10")
        seconds = "-" if row["duration_s"] is None else f"{row['duration_s']:.1f} ({_fmt(row['fit_s'], 1)})"
        table.add_row(
            str(row["id"]),
            row["started_at"].strftime("%m-%d %H:%M"),
            *([row["model_name"]] if name is None else []),
            row["trigger"],
            row["outcome"],
            _fmt(row["version"]),
            _fmt(row["champion_version"]),
            "-" if cand is None else f"{cand:.3f}/{_fmt(champ, 3)}",
            _fmt(row["n_new_events"]),
            seconds,
        )
    console.print(table)
    for row in rows:  # reasons are long: one line each under the table (--json has every field)
        console.print(f"  #{row['id']} {row['outcome']}: {row['reason'] or '-'}", highlight=False)


@retrain_app.command("schedule")
def schedule_cmd(
    ctx: typer.Context,
    every: Annotated[
        str | None,
        typer.Option(
            "--every",
            help="Retrain at this interval: a number and a unit s, m, h, d or w (30m, 6h, 1d).",
            show_default=False,
        ),
    ] = None,
    cron: Annotated[
        str | None,
        typer.Option(
            "--cron",
            help="Retrain at these times instead, a crontab expression in UTC: minute hour day-of-month month "
            "day-of-week ('0 */6 * * *': every 6 hours on the hour; '30 2 * * *': 02:30 daily).",
            show_default=False,
        ),
    ] = None,
    check_every: Annotated[
        str, typer.Option("--check-every", help="How often the volume and drift triggers are checked.")
    ] = "5m",
    volume_events: Annotated[
        int | None,
        typer.Option(
            "--volume-events", help="Retrain once this many new events arrived since the champion's cutoff.", min=1
        ),
    ] = None,
    volume_new_users_pct: Annotated[
        float | None,
        typer.Option(
            "--volume-new-users-pct",
            help="Retrain once new users (unknown to the champion) reach this percentage of its users.",
            min=0.0,
        ),
    ] = None,
    drift: Annotated[
        bool,
        typer.Option(
            "--drift/--no-drift",
            help="Retrain when the events since the cutoff drift from the champion's training data (PSI at the "
            "alert level on a --drift-signals signal).",
        ),
    ] = False,
    drift_signals: Annotated[
        str,
        typer.Option(
            "--drift-signals",
            help="Signals the drift trigger watches, comma-separated: rating, item_popularity, genre_mix, "
            "user_activity. user_activity is off by default: every new user lands in its 'new' bucket, so it "
            "alerts whenever people sign up (--volume-new-users-pct counts them instead).",
        ),
    ] = "rating,item_popularity,genre_mix",
    drift_alert: Annotated[float, typer.Option("--drift-alert", help="PSI at which a signal alerts.", min=0.0)] = 0.25,
    drift_min_events: Annotated[
        int,
        typer.Option("--drift-min-events", help="Fewest events since the cutoff before drift is judged.", min=1),
    ] = 200,
    model_name: ModelNameOption = None,
    tune: Annotated[
        int, typer.Option("--tune", help="Optuna trials before each fit (0: keep the parameters).", min=0)
    ] = 0,
    warm_start: Annotated[
        bool, typer.Option("--warm-start", help="Start each fit from the champion's factors (ALS).")
    ] = False,
    once: Annotated[
        bool,
        typer.Option(
            "--once",
            help="Check every trigger once (the schedule against the last recorded success), retrain if one "
            "fired, and exit: for running from cron or a Kubernetes CronJob.",
        ),
    ] = False,
) -> None:
    """Retrain on a schedule and when triggers fire, until SIGTERM or Ctrl-C.

    Examples:

      tastebud retrain schedule --every 6h

      tastebud retrain schedule --cron "0 3 * * *" --volume-events 50000 --drift

      tastebud retrain schedule --every 1d --volume-new-users-pct 5 --once   (from cron)

    A retrain promotes its candidate only through the gate, so a retrain that finds nothing better changes
    nothing. Retrains never overlap (one at a time here; the store lock across processes). After every retrain
    the gauges in <home>/monitoring/retrain.prom are updated; /metrics exports them and Prometheus alerts when no
    retrain succeeded within twice the schedule.
    """
    from tastebud.monitoring.drift import Thresholds
    from tastebud.monitoring.metrics import RETRAIN_TEXTFILE
    from tastebud.pipeline.schedule import RetrainService, Schedule, parse_interval
    from tastebud.pipeline.triggers import TriggerChecker, TriggerConfig, parse_drift_signals

    settings = settings_of(ctx)
    name = model_name or settings.serving.model_name
    schedule = Schedule(
        every=parse_interval(every) if every is not None else None,
        cron=cron,
        check_every=parse_interval(check_every, option="--check-every"),
    )
    config = TriggerConfig(
        volume_events=volume_events, volume_new_users_pct=volume_new_users_pct, drift=drift,
        drift_signals=parse_drift_signals(drift_signals),
        drift_thresholds=Thresholds(warn=min(0.1, drift_alert), alert=drift_alert), drift_min_events=drift_min_events,
    )  # fmt: skip
    checker = TriggerChecker(settings, name, config) if config.any else None
    service = RetrainService.for_settings(settings, name, schedule, checker=checker, tune=tune, warm_start=warm_start)
    if once:
        result = service.once()
        table = Table(title=f"Retrain triggers of {name}")
        for col in ("trigger", "fired", "reason"):
            table.add_column(col)
        for c in result.checks:
            table.add_row(c.trigger, "[green]yes[/green]" if c.fired else "no", c.reason)
        console.print(table)
        if result.outcome is None:
            console.print("no trigger fired: nothing to do")
            return
        status = getattr(result.outcome, "outcome", "?")
        console.print(f"retrain ({result.fired.trigger if result.fired else '?'}): {status} "
                      f"{getattr(result.outcome, 'reason', '') or ''}".rstrip())  # fmt: skip
        if status in ("failed", "rejected_data"):
            raise typer.Exit(1)
        return
    triggers = []
    if config.volume_events is not None:
        triggers.append(f">= {config.volume_events:,} new events")
    if config.volume_new_users_pct is not None:
        triggers.append(f">= {config.volume_new_users_pct:g}% new users")
    if config.drift:
        triggers.append(f"drift on {', '.join(config.drift_signals)}")
    checks = f"; checks every {check_every}: {', '.join(triggers)}" if triggers else ""
    console.print(
        f"retraining {name}: {schedule.describe()}{checks}. Gauges: {settings.home / RETRAIN_TEXTFILE}. "
        "Ctrl-C or SIGTERM stops (a retrain in progress finishes first)."
    )
    service.serve()
