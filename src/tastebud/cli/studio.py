"""`tastebud studio`: run Tastebud Studio (the Streamlit web app) against a running API."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from typing import Annotated

import typer

from tastebud.cli._app import app, console, settings_of
from tastebud.errors import ConfigError


@app.command("studio")
def studio_cmd(
    ctx: typer.Context,
    port: Annotated[int, typer.Option(help="Port of the studio.", min=1, max=65535)] = 8501,
    api: Annotated[str, typer.Option(help="Base URL of the Tastebud API (tastebud serve).")] = "http://127.0.0.1:8000",
    home: Annotated[
        Path | None,
        typer.Option(
            "--home",
            help="Home whose registry and store the operator pages read (default: the global "
            "--home, or TASTEBUD_HOME).",
        ),
    ] = None,
    address: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
) -> None:
    """Run the studio: Discover, User, Models and Operations pages over the API (and the home's registry and store).

    Set TASTEBUD_API_KEY when the API requires keys. Stops with Ctrl-C.
    """
    import importlib.util

    from tastebud.studio import launch

    if importlib.util.find_spec("streamlit") is None:
        raise ConfigError("the studio needs Streamlit: pip install streamlit")
    settings = settings_of(ctx)
    home = home or settings.home
    console.print(f"[bold]Tastebud Studio[/bold] on http://{address}:{port} (API {api}, home {home}); Ctrl-C stops it")
    proc = launch(port, api, home=home, address=address)
    # A SIGTERM to this command stops the studio too, as Ctrl-C does (no orphaned Streamlit server).
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    if code:
        raise typer.Exit(code)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
