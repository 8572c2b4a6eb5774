"""`tastebud store current|upgrade|history`: the shared store's schema version (Alembic migrations)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table

from tastebud.cli._app import app, console, settings_of

store_app = typer.Typer(
    help=(
        "The shared store (store.url: SQLite in the home by default, or PostgreSQL) and its schema version. It "
        "holds the events, dead letters, request log, experiments, retrain locks and history, and the registry's "
        "decision log. Every command that uses the store upgrades its schema at start, so `upgrade` is only needed "
        "to do it ahead of a deployment (e.g. before starting new API replicas against PostgreSQL).\n\n"
        "Example: TASTEBUD_STORE__URL=postgresql://tastebud:pw@db/tastebud tastebud store current"
    ),
    no_args_is_help=True,
)
app.add_typer(store_app, name="store")

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def _state(ctx: typer.Context) -> dict[str, Any]:
    from pathlib import Path

    from tastebud.store import create_store, migrate

    settings = settings_of(ctx)
    url = settings.store_url
    head = migrate.head_revision()
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///").split("?")[0]).is_file():
        with create_store(url=url) as store:
            shown = store.url
        return {"url": shown, "exists": False, "current": None, "head": head, "legacy": False, "up_to_date": False}
    with create_store(url=url) as store:
        current = migrate.current_revision(store)
        legacy = current is None and migrate.is_legacy(store)
        return {
            "url": store.url,
            "exists": True,
            "current": current,
            "head": head,
            "legacy": legacy,
            "up_to_date": current == head,
        }


@store_app.command("current")
def current_cmd(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Show the store's URL (password hidden), the schema revision it is at and the newest one; nothing changes.

    Exit code 0 when the store is at the newest revision, 3 when it needs `tastebud store upgrade` (or does not
    exist yet), so a deployment script can check before starting new code.
    """
    state = _state(ctx)
    if as_json:
        typer.echo(json.dumps(state))
    else:
        typer.echo(f"store:   {state['url']}")
        if not state["exists"]:
            typer.echo("state:   not created yet (the first command using it creates it; or: tastebud store upgrade)")
        elif state["legacy"]:
            typer.echo("current: none; made before migrations (upgrade stamps it at the baseline first)")
        else:
            typer.echo(f"current: {state['current'] or 'none (empty database)'}")
        typer.echo(f"newest:  {state['head']}")
        typer.echo("up to date" if state["up_to_date"] else "needs: tastebud store upgrade")
    if not state["up_to_date"]:
        raise typer.Exit(3)


@store_app.command("upgrade")
def upgrade_cmd(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Upgrade the store's schema to the newest revision and import a decisions.jsonl of the home, if any.

    Safe to run while other processes use the store and from several machines at once: migrations take turns (a
    PostgreSQL advisory lock, a file lock beside a SQLite file). A store made before migrations is brought to the
    baseline and stamped first. Running it again changes nothing.
    """
    from tastebud.registry.decisions import import_decisions_file
    from tastebud.store import create_store, migrate

    settings = settings_of(ctx)
    with create_store(settings) as store:
        result = migrate.upgrade(store)
        url = store.url
    imported = import_decisions_file(settings)
    if as_json:
        out: dict[str, Any] = {"url": url, "before": result.before, "after": result.after, "legacy": result.legacy}
        out |= {"changes": result.changes, "decisions_imported": imported}
        typer.echo(json.dumps(out))
        return
    typer.echo(f"store: {url}")
    if result.legacy:
        typer.echo(f"made before migrations: brought to the baseline ({'; '.join(result.changes) or 'no change'})")
    if result.before == result.after and not result.legacy:
        typer.echo(f"already at the newest revision {result.after}")
    else:
        typer.echo(f"upgraded from {result.before or 'nothing'} to {result.after}")
    if imported is not None:
        typer.echo(f"decision log: imported {imported[0]} of {imported[1]} decisions from decisions.jsonl")


@store_app.command("history")
def history_cmd(ctx: typer.Context) -> None:
    """List the schema revisions, oldest first, marking the one the store is at."""
    from tastebud.store import migrate

    state = _state(ctx)
    table = Table(box=box.SIMPLE, title=f"schema revisions of {state['url']}")
    table.add_column("revision")
    table.add_column("what it does")
    table.add_column("")
    for revision, doc in migrate.revisions():
        table.add_row(revision, doc, "<- current" if revision == state["current"] else "")
    console.print(table)
