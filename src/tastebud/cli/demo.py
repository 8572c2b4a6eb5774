"""`tastebud demo`: the main job."""

from __future__ import annotations

import subprocess
from typing import Annotated, Any

import typer

from tastebud.cli._app import app, console, print_split, print_summary, settings_of
from tastebud.config import Settings

#: ``--dataset`` values of the demo.
DEMO_DATASETS = ("ml-100k", "lastfm-sample")
#: Size of the Last.fm-format music sample the demo generates (users, artists, plays rows).
LASTFM_SAMPLE_SIZE = (2000, 800, 60_000)


# ---------------------------------------------------------------------------------------------------- demo
@app.command("demo")
def demo(
    ctx: typer.Context,
    models: Annotated[
        str, typer.Option("--models", "-m", help="Models to train and compare.")
    ] = "popular,itemknn,als,ease",
    k: Annotated[int, typer.Option(help="List length K.", min=1)] = 10,
    champion: Annotated[
        str, typer.Option(help="Model to train, register and promote as champion ('' skips this step).")
    ] = "ease",
    serve: Annotated[bool, typer.Option(help="End by serving the champion over HTTP (until Ctrl-C).")] = True,
    port: Annotated[int, typer.Option(help="Port of the API when serving.", min=1, max=65535)] = 8000,
    dataset: Annotated[
        str,
        typer.Option(
            help="ml-100k (MovieLens-100K, fetched) or lastfm-sample (a generated music sample in the Last.fm-360K "
            "layout, play counts and mood tags; written to the data directory if missing)."
        ),
    ] = "ml-100k",
    studio: Annotated[
        bool, typer.Option(help="When serving, also start Tastebud Studio (the web app) next to the API.")
    ] = True,
    studio_port: Annotated[int, typer.Option(help="Port of the studio.", min=1, max=65535)] = 8501,
) -> None:
    """The main job: fetch MovieLens-100K, prepare, split, train and compare models, register a champion, serve it."""
    from tastebud.data.describe import describe_dataset
    from tastebud.data.fetch import fetch_dataset, is_fetched
    from tastebud.data.prepare import PrepareConfig, prepare
    from tastebud.data.readers import read_dataset
    from tastebud.data.split import make_split
    from tastebud.evaluation.report import run_evaluation

    if dataset not in DEMO_DATASETS:
        raise typer.BadParameter(f"{dataset!r}: expected one of {', '.join(DEMO_DATASETS)}", param_hint="--dataset")
    settings = settings_of(ctx)
    if dataset == "lastfm-sample":
        _lastfm_sample(settings)
    else:
        console.rule("[bold]1. fetch MovieLens-100K")
        if is_fetched("ml-100k", settings):
            console.print("ml-100k already fetched")
        else:
            fetch_dataset("ml-100k", settings)
    console.rule("[bold]2. read and prepare")
    ds = prepare(read_dataset(dataset, settings=settings), PrepareConfig(dedupe="latest"))
    print_summary(describe_dataset(ds))
    console.rule("[bold]3. split (per-user random 80/20)")
    split = make_split(ds, "random", test_fraction=0.2, seed=settings.seed)
    print_split(split, describe_dataset)
    console.rule("[bold]4. train and evaluate")
    names = [m.strip() for m in models.split(",") if m.strip()]
    out_dir = settings.runs_dir / "demo"
    comparison = run_evaluation(ds, names, split="random", k=k, seed=settings.seed, out_dir=out_dir)
    comparison.print_table(console)
    console.print(f"report: {out_dir / 'comparison.md'}  plot: {out_dir / 'comparison.png'}")
    if champion:
        model_name, result = _register_champion(settings, champion, k, dataset)
        _the_loop(settings, result)
        _retrain(settings, model_name)
        if serve:
            music = result if dataset == "lastfm-sample" else None
            _serve(settings, model_name, port, music=music, studio_port=studio_port if studio else None)


def _lastfm_sample(settings: Settings) -> None:
    """Step 1 of ``--dataset lastfm-sample``: generate the music sample under the data directory, once."""
    from tastebud.data.lastfm import LASTFM_FILE
    from tastebud.data.synthetic import write_lastfm_sample

    console.rule("[bold]1. generate the Last.fm-format music sample")
    target = settings.data_dir / "lastfm-sample"
    if (target / LASTFM_FILE).is_file():
        console.print(f"lastfm-sample already generated ({target})")
        return
    users, artists, plays = LASTFM_SAMPLE_SIZE
    write_lastfm_sample(target, users, artists, plays, seed=settings.seed)
    console.print(f"generated {users} users, {artists} artists, {plays} play counts with mood tags -> {target}")


def _serve(
    settings: Settings, model_name: str, port: int, *, music: Any = None, studio_port: int | None = None
) -> None:
    """Serve the champion until Ctrl-C, with the studio on ``studio_port`` (``None``: no studio).

    ``music``: the lastfm-sample training result (its ids go in the hints).
    """
    from tastebud.cli.serve import run_server

    base = f"http://127.0.0.1:{port}"
    console.rule("[bold]9. serve the champion")
    if music is not None:
        train = music.split.train
        user, item = train.users.ids[0], train.items.ids[0]
        console.print(
            "Try:\n"
            f"  {base}/docs                        the OpenAPI docs\n"
            f"  {base}/recommend/{user}?k=10  artists for a listener, with explanations\n"
            f"  {base}/recommend/{user}?genres=chill,focus   a mood filter (tags act as genres)\n"
            f"  {base}/recommend/new-user          an unknown user: popular artists (is_fallback)\n"
            f"  {base}/similar/{item}  similar artists\n"
            f"  {base}/popular?genre=party         the most played party artists\n"
            f"  {base}/health  {base}/metrics\n"
            "Press Ctrl-C to stop."
        )
    else:
        console.print(
            "Try:\n"
            f"  {base}/docs                     the OpenAPI docs\n"
            f"  {base}/recommend/1?k=10         recommendations for user 1, with explanations\n"
            f"  {base}/recommend/1?genres=Comedy&year_min=1990&year_max=1999\n"
            f"  {base}/recommend/new-user       an unknown user: popular items (is_fallback)\n"
            f"  {base}/similar/50               items similar to Star Wars (1977)\n"
            f"  {base}/popular?genre=Drama      the most popular dramas\n"
            f"  {base}/health  {base}/metrics\n"
            "Press Ctrl-C to stop."
        )
    from tastebud.cli.monitor import print_monitoring_hints

    print_monitoring_hints(base)
    studio_proc = _start_studio(settings, base, studio_port) if studio_port is not None else None
    try:
        run_server(settings, host="127.0.0.1", port=port, model_name=model_name, alias="champion")
    finally:
        if studio_proc is not None:
            studio_proc.terminate()
            try:
                studio_proc.wait(10)
            except subprocess.TimeoutExpired:
                studio_proc.kill()
                studio_proc.wait()


def _start_studio(settings: Settings, api: str, port: int) -> subprocess.Popen[bytes] | None:
    """Start Tastebud Studio against the API at ``api`` and print its URL; ``None`` when Streamlit is missing."""
    from tastebud.studio import launch

    if not _has_streamlit():
        console.print("[yellow]Tastebud Studio needs Streamlit (pip install streamlit); serving the API only[/yellow]")
        return None
    log = settings.home / "studio.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = launch(port, api, home=settings.home, stdout=out.fileno(), stderr=subprocess.STDOUT)
    console.print(
        f"[bold]Tastebud Studio[/bold] (the web app): http://127.0.0.1:{port}   (log: {log}; --no-studio skips it)"
    )
    return proc


def _has_streamlit() -> bool:
    import importlib.util

    return importlib.util.find_spec("streamlit") is not None


def _register_champion(settings: Settings, model: str, k: int, dataset: str = "ml-100k") -> tuple[str, Any]:
    """Train ``model`` on ``dataset``, track and register it, promote it through the gate, print the registry."""
    from tastebud.cli.models import print_versions
    from tastebud.pipeline.promote import promote
    from tastebud.pipeline.train import train
    from tastebud.registry.aliases import ModelRegistry

    console.rule(f"[bold]5. train, track and register the champion ({model})")
    registry = ModelRegistry(settings)
    result = train(dataset, model, settings=settings, k=k, registry=registry)
    assert result.version is not None
    console.print(
        f"{result.version.name} version {result.version.version}: ndcg@{k} "
        f"{result.metrics.get(f'ndcg_at_{k}') or float('nan'):.4f} on validation; run {result.run_id}"
    )
    console.rule("[bold]6. promote through the gate")
    outcome = promote(registry, result.version.name, result.version.version, settings=settings, actor="demo")
    console.print(f"{outcome.decision.action}: {outcome.decision.reason}")
    print_versions(registry.list_versions(result.version.name), f"Registry: {result.version.name}")
    return result.version.name, result


def _the_loop(settings: Settings, result: Any, n_events: int = 5, k: int = 5) -> None:
    """Replay held-out ratings of one user as events through the ingest path; show their top-k before and after.

    The events are ratings the champion never saw (the user's test part of the training split). They go through
    :func:`tastebud.stream.ingest.ingest_events` (validation, the event store) and the serving engine's real-time
    overlay, exactly as ``POST /events`` does, and the same engine answers before and after.
    """
    import time

    import polars as pl

    from tastebud.serving.engine import Engine
    from tastebud.serving.realtime import UserOverlays
    from tastebud.store import create_store
    from tastebud.stream.ingest import ingest_events

    console.rule("[bold]7. the loop: new events change the recommendations")
    test = result.split.test.to_frame()
    # Among users with enough liked held-out ratings (4 stars or more), the one with the shortest training history:
    # a few new events weigh most in a short history, so the change is easy to see.
    # Play counts (the music sample) have no ratings: every held-out play counts, the most played first.
    plays = test["rating"].null_count() == test.height
    liked = test.sort("value", descending=True) if plays else test.filter(pl.col("rating") >= 4)
    counts = liked.group_by("user_id").len().filter(pl.col("len") >= n_events)
    if counts.height == 0:
        console.print("no held-out interactions to replay")
        return
    history = result.split.train.to_frame().group_by("user_id").len().rename({"len": "history"})
    ranked = counts.join(history, on="user_id", how="left").sort(["history", "user_id"])
    user = ranked["user_id"][0]
    rows = liked.filter(pl.col("user_id") == user)
    rows = (rows if plays else rows.sort("timestamp")).head(n_events)
    engine = Engine(result.model, result.fallback, result.split.train.item_meta)
    engine.overlays = UserOverlays()
    before = engine.recommend(str(user), k, explain=False)
    now = int(time.time())
    events: list[dict[str, Any]] = [
        {"event_id": f"demo-{user}-{r['item_id']}", "user_id": str(user), "item_id": str(r["item_id"]),
         **({"kind": "play", "value": float(r["value"])} if plays
            else {"rating": float(r["rating"]) if r.get("rating") is not None else 5.0}),
         "timestamp": int(r["timestamp"]) if r.get("timestamp") is not None else now}
        for r in rows.to_dicts()
    ]  # fmt: skip
    store = create_store(settings)
    try:
        store.init_schema()
        ingest = ingest_events(store, events, source="demo")
    finally:
        store.close()
    engine.overlays.add(ingest.events)
    after = engine.recommend(str(user), k, explain=True)
    titles = {e["item_id"]: _title(engine, e["item_id"]) for e in events}
    console.print(
        f"user {user}: {ingest.accepted} new events stored ({ingest.duplicates} already there), e.g. "
        + "; ".join(
            f"{titles[e['item_id']]} ({e['value']:g} plays)" if plays else f"{titles[e['item_id']]} ({e['rating']:g})"
            for e in events[:3]
        )
    )
    before_ids = {it["item_id"] for it in before.items}
    n_history = int(ranked["history"][0] or 0)
    console.print(f"[bold]top-{k} before[/bold] ({n_history} interactions in training)")
    for n, it in enumerate(before.items, 1):
        console.print(f"  {n}. {it['title'] or it['item_id']}")
    console.print(f"[bold]top-{k} after[/bold] (new entries marked +)")
    for n, it in enumerate(after.items, 1):
        mark = " " if it["item_id"] in before_ids else "+"
        because = ", ".join(_title(engine, i) for i in it["because"][:2])
        console.print(f" {mark}{n}. {it['title'] or it['item_id']}" + (f"  (because: {because})" if because else ""))


def _retrain(settings: Settings, model_name: str) -> None:
    """One retrain on the champion's data plus the events just stored, and the gate's decision."""
    from tastebud.cli.retrain import print_outcome
    from tastebud.monitoring.metrics import RETRAIN_TEXTFILE
    from tastebud.monitoring.retrain import write_retrain_gauges
    from tastebud.pipeline.retrain import run_retrain

    console.rule("[bold]8. retrain on the new events: the gate decides")
    with console.status("retraining (data + events, fit, fresh holdout, gate) ..."):
        outcome = run_retrain(settings, model_name=model_name, trigger="demo")
    write_retrain_gauges(outcome, settings.home / RETRAIN_TEXTFILE)
    print_outcome(outcome)
    console.print(
        "Later retrains: `tastebud retrain run`, or leave `tastebud retrain schedule --every 6h --volume-events "
        "10000` running; `tastebud retrain history` lists them."
    )


def _title(engine: Any, item_id: str) -> str:
    record = engine.catalog.record(item_id)
    return str(record["title"]) if record and record.get("title") else item_id
