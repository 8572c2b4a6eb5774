"""`tastebud monitor` commands: drift against the training snapshot, KPIs and availability, replay evaluation."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from tastebud.cli._app import app, console, settings_of
from tastebud.config import Settings
from tastebud.errors import ParameterError

if TYPE_CHECKING:
    from tastebud.data.dataset import Dataset

monitor_app = typer.Typer(
    help="Monitoring: drift against the training snapshot, KPIs and availability, replay evaluation.",
    no_args_is_help=True,
)
app.add_typer(monitor_app, name="monitor")

UntilOption = Annotated[
    str | None,
    typer.Option("--until", help="End of the window, ISO-8601 UTC (default: now).", show_default=False),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
OutOption = Annotated[
    Path | None, typer.Option("--out", help="Also write the JSON here.", show_default=False, dir_okay=False)
]


def _window(since: str, until: str | None) -> tuple[datetime, datetime]:
    from tastebud.monitoring.report import parse_duration, parse_instant

    end = parse_instant(until) if until else datetime.now(UTC)
    return end - parse_duration(since), end


def _store(settings: Settings) -> Any:
    from tastebud.store import create_store

    store = create_store(settings)
    store.init_schema()
    return store


def _reference(source: str, settings: Settings) -> tuple[Dataset, dict[str, Any]]:
    """The training data of a bundle directory, a registered version (``name@alias``, ``name:3``) or a dataset."""
    from tastebud.data.readers import read_dataset

    path = Path(source).expanduser()
    manifest: dict[str, Any] | None = None
    if (path / "manifest.json").is_file():
        manifest = json.loads((path / "manifest.json").read_text())
    elif not path.exists() and ("@" in source or ":" in source):
        from tastebud.registry import ModelRegistry

        name, _, ref = source.replace("@", ":", 1).partition(":")
        registry = ModelRegistry(settings)
        bundle = registry.bundle_path(registry.resolve(name, int(ref) if ref.isdigit() else ref))
        manifest = json.loads((Path(bundle) / "manifest.json").read_text())
    info: dict[str, Any] = {"reference": source}
    if manifest is None:
        dataset = read_dataset(source, settings=settings)
    else:
        data = manifest.get("data", {})
        dataset_name = data.get("name") or ""
        dataset = read_dataset(dataset_name.split("/")[0], settings=settings)
        info["trained on"] = f"{dataset_name} (snapshot {data.get('snapshot_id')})"
        if data.get("snapshot_id") != dataset.snapshot_id:
            info["note"] = f"compared with the full dataset {dataset.name} (snapshot {dataset.snapshot_id})"
    info["reference dataset"] = f"{dataset.name} (snapshot {dataset.snapshot_id}, {dataset.n_interactions:,} rows)"
    return dataset, info


@monitor_app.command("drift")
def drift_cmd(
    ctx: typer.Context,
    reference: Annotated[
        str,
        typer.Option(
            "--reference",
            "-r",
            help="Training snapshot: a bundle directory, a registered version (ml@champion, ml:3), or a dataset "
            "name or path.",
        ),
    ],
    window: Annotated[str, typer.Option(help="Recent window of events (e.g. 24h, 7d).")] = "24h",
    until: UntilOption = None,
    warn: Annotated[float, typer.Option(help="PSI at which a signal warns.")] = 0.1,
    alert: Annotated[float, typer.Option(help="PSI at which a signal alerts.")] = 0.25,
    out: Annotated[
        Path | None, typer.Option("--out", help="Report directory (default: <home>/monitoring/drift/<time>).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """PSI and KL drift of ratings, item popularity, user activity, genre mix and served scores.

    Writes report.md, report.json and one PNG per signal, and the drift gauges that /metrics exports.
    Exit code 3 when a signal is at the alert level.
    """
    from tastebud.monitoring.drift import Thresholds, compute_drift, events_frame, served_scores, write_gauges
    from tastebud.monitoring.metrics import DRIFT_TEXTFILE
    from tastebud.monitoring.report import write_drift_report

    settings = settings_of(ctx)
    thresholds = Thresholds(warn=warn, alert=alert)
    start, end = _window(window, until)
    dataset, info = _reference(reference, settings)
    store = _store(settings)
    try:
        current = events_frame(store.query_events(since=start, until=end))
        recent_scores = served_scores(store.query_request_logs(since=start, until=end))
        # Served scores have no training-time counterpart: the window before is their reference.
        earlier_scores = served_scores(store.query_request_logs(since=start - (end - start), until=start))
    finally:
        store.close()
    report = compute_drift(
        dataset.to_frame(), current, item_meta=dataset.item_meta, thresholds=thresholds,
        reference_scores=earlier_scores, current_scores=recent_scores,
    )  # fmt: skip
    report.reference = info
    report.window = {"start": start.isoformat(), "end": end.isoformat(), "events": current.height}
    directory = out or settings.home / "monitoring" / "drift" / end.strftime("%Y%m%dT%H%M%SZ")
    markdown = write_drift_report(report, directory)
    write_gauges(report, settings.home / DRIFT_TEXTFILE)
    if as_json:
        console.print_json(data=report.to_dict())
    else:
        table = Table(title=f"Drift {start:%Y-%m-%d %H:%M} .. {end:%Y-%m-%d %H:%M} UTC ({current.height:,} events)")
        for col in ("signal", "PSI", "KL", "level"):
            table.add_column(col)
        colour = {"ok": "green", "warn": "yellow", "alert": "red"}
        for s in report.signals:
            table.add_row(s.signal, f"{s.psi:.4f}", f"{s.kl:.4f}", f"[{colour[s.level]}]{s.level}[/]")
        for name, reason in report.skipped.items():
            table.add_row(name, "", "", f"[dim]skipped: {reason}[/dim]")
        console.print(table)
        console.print(f"report: {markdown}")
    if report.level == "alert":
        raise typer.Exit(3)


@monitor_app.command("report")
def report_cmd(
    ctx: typer.Context,
    since: Annotated[str, typer.Option(help="Window length for the KPIs, ending at --until (e.g. 72h).")] = "72h",
    until: UntilOption = None,
    start: Annotated[
        str | None, typer.Option(help="Availability window start, ISO-8601 (default: the KPI window's).")
    ] = None,
    end: Annotated[str | None, typer.Option(help="Availability window end, ISO-8601 (default: --until).")] = None,
    objective: Annotated[float, typer.Option(help="Availability objective; minutes below it are listed.")] = 0.999,
    switch_window: Annotated[str, typer.Option(help="Window for counting model switches.")] = "7d",
    catalog_size: Annotated[
        int | None, typer.Option(help="Items in the catalog, for coverage (default: from the request log only).")
    ] = None,
    as_json: JsonOption = False,
    out: OutOption = None,
) -> None:
    """KPIs from the request log: traffic, latency p50/p95/p99, error ratio, fallback rate, coverage, availability.

    Availability counts a request as successful only when it is a correct response: a 2xx status, no error marker
    and a well-formed list (finite scores). Model switches are counted in the best --switch-window.
    """
    from tastebud.monitoring.kpis import availability, compute_kpis, model_switches, request_frame
    from tastebud.monitoring.report import parse_duration, parse_instant, write_json_report

    settings = settings_of(ctx)
    kpi_start, kpi_end = _window(since, until)
    a_start = parse_instant(start) if start else kpi_start
    a_end = parse_instant(end) if end else kpi_end
    switch_span = parse_duration(switch_window)
    store = _store(settings)
    try:
        lo = min(kpi_start, a_start)
        frame = request_frame(store.query_request_logs(since=lo, until=max(kpi_end, a_end)))
    finally:
        store.close()
    import polars as pl

    kpi_frame = frame.filter(pl.col("timestamp").is_between(kpi_start, kpi_end, closed="left"))
    result = {
        "window": {"start": kpi_start.isoformat(), "end": kpi_end.isoformat()},
        "kpis": compute_kpis(kpi_frame, catalog_size=catalog_size),
        "availability": availability(frame, a_start, a_end, objective=objective).to_dict(),
        "model_switches": model_switches(kpi_frame, window=switch_span),
    }
    if out is not None:
        write_json_report(result, out)
    if as_json:
        console.print_json(json.dumps(result, default=str))
        return
    _print_kpis(result)


def _print_kpis(result: dict[str, Any]) -> None:
    kpis = result["kpis"]
    table = Table(title=f"KPIs {result['window']['start'][:16]} .. {result['window']['end'][:16]} UTC")
    for col in ("model", "requests", "error ratio", "p50 ms", "p95 ms", "p99 ms", "fallback", "items served"):
        table.add_column(col, justify="right" if col != "model" else "left")
    rows = [("all", kpis["overall"]), *kpis["by_model_version"].items()]
    for name, k in rows:
        if not k.get("requests"):
            table.add_row(name, "0", *[""] * 6)
            continue
        lat = k["latency_ms"]
        fallback = "" if k["fallback_rate"] is None else f"{k['fallback_rate']:.1%}"
        served = f"{k['items_served']:,}" + ("" if k["catalog_coverage"] is None else f" ({k['catalog_coverage']:.1%})")
        table.add_row(
            name, f"{k['requests']:,}", f"{k['error_ratio']:.2%}", f"{lat['p50']:.2f}", f"{lat['p95']:.2f}",
            f"{lat['p99']:.2f}", fallback, served,
        )  # fmt: skip
    console.print(table)
    a = result["availability"]
    ratio = "n/a (no traffic)" if a["availability"] is None else f"{a['availability']:.4%}"
    console.print(
        f"availability {a['start'][:16]} .. {a['end'][:16]}: {ratio} ({a['successful']:,}/{a['total']:,}; "
        f"objective {a['objective']:.3%}, {len(a['breached_minutes'])} minute(s) breached)"
    )
    for m in a["breached_minutes"][:10]:
        console.print(f"  breached {m['minute'][:16]}: {m['successful']}/{m['total']} ({m['availability']:.2%})")
    s = result["model_switches"]
    console.print(
        f"model switches: {s['switches']} in the window, at most {s['best_window_switches']} in any "
        f"{s['window_days']:g}-day window"
    )


@monitor_app.command("replay")
def replay_cmd(
    ctx: typer.Context,
    since: Annotated[str, typer.Option(help="Logged recommendations of this window (e.g. 7d).")] = "7d",
    until: UntilOption = None,
    horizon: Annotated[str, typer.Option(help="How long after a request an event still counts.")] = "24h",
    as_json: JsonOption = False,
    out: OutOption = None,
) -> None:
    """Online hit rate and precision: logged lists joined with the same user's events within the horizon."""
    from tastebud.monitoring.drift import events_frame
    from tastebud.monitoring.kpis import request_frame
    from tastebud.monitoring.replay import replay_evaluate
    from tastebud.monitoring.report import parse_duration, write_json_report

    settings = settings_of(ctx)
    start, end = _window(since, until)
    span = parse_duration(horizon)
    if span > timedelta(days=365):
        raise ParameterError(f"--horizon {horizon}: at most a year")
    store = _store(settings)
    try:
        requests = request_frame(store.query_request_logs(since=start, until=end))
        events = events_frame(store.query_events(since=start, until=end + span))
    finally:
        store.close()
    result = {"window": {"start": start.isoformat(), "end": end.isoformat()}, **replay_evaluate(
        requests, events, horizon=span)}  # fmt: skip
    if out is not None:
        write_json_report(result, out)
    if as_json:
        console.print_json(json.dumps(result, default=str))
        return
    table = Table(title=f"Replay {start:%Y-%m-%d %H:%M} .. {end:%Y-%m-%d %H:%M} UTC, horizon {horizon}")
    for col in ("group", "lists", "followed", "hit rate", "precision", "hit rate (active)"):
        table.add_column(col, justify="left" if col == "group" else "right")
    groups = [("all", result["overall"])]
    groups += [(f"{r['model_name']}:{r['model_version']}", r) for r in result["by_model_version"]]
    groups += [(f"variant {r['variant']}", r) for r in result["by_variant"]]
    for name, r in groups:
        if not r.get("lists"):
            table.add_row(name, "0", "", "", "", "")
            continue
        active = "" if r["hit_rate_active"] is None else f"{r['hit_rate_active']:.2%}"
        table.add_row(
            name, f"{r['lists']:,}", f"{r['lists_followed']:,}", f"{r['hit_rate']:.2%}", f"{r['precision']:.4f}",
            active,
        )  # fmt: skip
    console.print(table)


def print_monitoring_hints(base_url: str) -> None:
    """Tell where to look: ``/metrics``, the monitor commands, and Prometheus and Grafana from ``deploy/``."""
    console.print(
        "Monitoring:\n"
        f"  {base_url}/metrics                 Prometheus metrics (traffic, latency, fallbacks, model, events)\n"
        "  tastebud monitor report --since 72h  KPIs, availability and model switches from the request log\n"
        "  tastebud monitor drift --reference ml-100k --window 24h   drift report (Markdown + PNG) and gauges\n"
        "  tastebud monitor replay --since 7d   online hit rate of logged recommendations\n"
        "  docker compose -f deploy/docker-compose.yml up   Prometheus on :9090 (alerts), Grafana on :3000\n"
        "  (without Docker: prometheus --config.file=deploy/prometheus/prometheus.yml, with the target set to "
        f"{base_url.removeprefix('http://')})"
    )
