"""`tastebud keys new|hash`: API keys of the HTTP API (the server holds only their sha256 digests)."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from tastebud.cli._app import app, console
from tastebud.errors import ParameterError

keys_app = typer.Typer(
    help="API keys of the HTTP API: make one, or hash one for the settings (auth.keys).", no_args_is_help=True
)
app.add_typer(keys_app, name="keys")

#: The scopes a key may grant (``tastebud.serving.auth.SCOPES``, repeated here so ``--help`` stays fast).
SCOPES = ("read", "read-private", "write-events", "admin")


def _config_lines(digest: str, scopes: list[str]) -> list[str]:
    env = json.dumps({digest: scopes})
    return [
        "Configure the server with (merge it with any keys already configured):",
        f"  TASTEBUD_AUTH__KEYS='{env}'",
        "or in the YAML settings file (TASTEBUD_CONFIG):",
        "  auth:",
        "    keys:",
        f"      {digest}: [{', '.join(scopes)}]",
    ]


def _scopes(scope: list[str] | None) -> list[str]:
    scopes = list(dict.fromkeys(scope or []))
    if not scopes:
        raise ParameterError(f"give at least one --scope ({', '.join(SCOPES)})")
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown:
        raise ParameterError(f"unknown scope {unknown[0]!r}: choose from {', '.join(SCOPES)}")
    return scopes


ScopeOption = Annotated[
    list[str] | None,
    typer.Option(
        "--scope",
        "-s",
        help="A scope the key grants (repeat): read, read-private (history, trace; implies read), write-events "
        "(POST /events), admin (everything).",
        show_default=False,
    ),
]


@keys_app.command("new")
def keys_new(
    scope: ScopeOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (key, sha256, scopes, env).")] = False,
) -> None:
    """Make a new random API key; print it once, with the line that configures the server (its sha256 only)."""
    from tastebud.serving.auth import hash_key, new_key

    scopes = _scopes(scope)
    key = new_key()
    digest = hash_key(key)
    if as_json:
        env = json.dumps({digest: scopes})
        typer.echo(json.dumps({"key": key, "sha256": digest, "scopes": scopes, "env": f"TASTEBUD_AUTH__KEYS={env}"}))
        return
    typer.echo(f"API key (shown once; give it to the client, keep it secret): {key}")
    typer.echo(f"sha256: {digest}")
    typer.echo(f"scopes: {', '.join(scopes)}")
    for line in _config_lines(digest, scopes):
        typer.echo(line)
    console.print(
        "Clients send it as [bold]Authorization: Bearer <key>[/bold] or [bold]X-API-Key: <key>[/bold].",
        highlight=False,
    )


@keys_app.command("hash")
def keys_hash(scope: ScopeOption = None) -> None:
    """Print the sha256 of a key read from standard input (an existing key), with its configuration line."""
    from tastebud.serving.auth import hash_key

    key = sys.stdin.readline().strip()
    if not key:
        raise ParameterError('no key on standard input: echo "$KEY" | tastebud keys hash --scope read')
    digest = hash_key(key)
    typer.echo(digest)
    if scope:
        for line in _config_lines(digest, _scopes(scope)):
            typer.echo(line)
