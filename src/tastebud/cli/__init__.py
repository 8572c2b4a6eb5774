"""The ``tastebud`` command (Typer): thin commands that parse arguments and call the library.

One module per group of commands; importing them registers the commands on :data:`app`.
"""

from tastebud.cli import (  # noqa: F401  (registers the commands)
    data,
    demo,
    evaluate,
    experiment,
    keys,
    models,
    monitor,
    retrain,
    serve,
    store,
    stream,
    studio,
)
from tastebud.cli._app import app, main

__all__ = ["app", "main"]
