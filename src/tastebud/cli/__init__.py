"""The ``tastebud`` command (Typer): thin commands that parse arguments and call the library.

One module per group of commands; importing them registers the commands on :data:`app`.
"""

from tastebud.cli import data, demo, evaluate, models, monitor, retrain, serve, stream  # noqa: F401  (registers the commands)
from tastebud.cli._app import app, main

__all__ = ["app", "main"]
