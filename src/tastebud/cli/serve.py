"""`tastebud serve`: run the recommendation API under uvicorn."""

from __future__ import annotations

import os
from typing import Annotated, Any

import typer

from tastebud.cli._app import app, console, settings_of
from tastebud.config import Settings


@app.command("serve")
def serve_cmd(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="Interface to listen on (default: serving.host).")] = None,
    port: Annotated[int | None, typer.Option(help="TCP port (default: serving.port).", min=1, max=65535)] = None,
    workers: Annotated[
        int | None, typer.Option(help="uvicorn worker processes (default: serving.workers).", min=1)
    ] = None,
    model_name: Annotated[
        str | None, typer.Option("--model-name", help="Registered model to serve (default: serving.model_name).")
    ] = None,
    alias: Annotated[
        str | None, typer.Option(help="Registry alias to serve and watch (default: serving.alias, 'champion').")
    ] = None,
) -> None:
    """Serve recommendations over HTTP: loads the alias's bundle in the background, then follows the alias.

    Endpoints: /recommend, /similar, /popular, /items, /users/{id}/history, /health, /health/ready, /metrics,
    /trace, /models and /admin/models/switch (bearer token from serving.admin_token). API docs at /docs.
    """
    overrides = {
        key: value
        for key, value in {
            "host": host,
            "port": port,
            "workers": workers,
            "model_name": model_name,
            "alias": alias,
        }.items()
        if value is not None
    }
    run_server(settings_of(ctx), **overrides)


def run_server(settings: Settings, **overrides: Any) -> None:
    """Run uvicorn with ``settings.serving`` updated by ``overrides``; returns when the server stops."""
    import uvicorn

    settings = settings.model_copy(update={"serving": settings.serving.model_copy(update=overrides)})
    cfg = settings.serving
    console.print(
        f"serving [bold]{cfg.model_name}@{cfg.alias}[/bold] on http://{cfg.host}:{cfg.port} "
        f"({cfg.workers} worker{'s' if cfg.workers > 1 else ''}; docs at /docs)"
    )
    from tastebud.serving.auth import AuthPolicy

    # Checked here too so that a server that must not start (auth.required, no key) says why in one line.
    console.print(AuthPolicy.from_settings(settings).describe(), highlight=False, markup=False)
    log_level = settings.log_level.lower()
    from tastebud.serving.http import http_protocol

    if cfg.workers == 1:
        from tastebud.serving.app import create_app, limit_blas_threads

        limit_blas_threads(cfg.blas_threads)
        uvicorn.run(create_app(settings, freeze_gc=True), host=cfg.host, port=cfg.port, log_level=log_level,
                    http=http_protocol(cfg))  # fmt: skip
        return
    # Worker processes build their own app from the environment: hand them the effective settings there.
    os.environ["TASTEBUD_HOME"] = str(settings.home)
    for key in ("model_name", "alias", "host", "port", "blas_threads"):
        os.environ[f"TASTEBUD_SERVING__{key.upper()}"] = str(getattr(cfg, key))
    # Prometheus multiprocess mode: every worker writes its values to files in one fresh directory, so that a
    # scrape of any worker reports the whole server; the directory goes when the server stops.
    import shutil
    import tempfile

    from tastebud.monitoring.metrics import MULTIPROC_ENV

    metrics_dir = tempfile.mkdtemp(prefix="tastebud-metrics-")
    os.environ[MULTIPROC_ENV] = metrics_dir
    try:
        uvicorn.run(
            "tastebud.serving.app:create_app_from_env",
            factory=True,
            host=cfg.host,
            port=cfg.port,
            workers=cfg.workers,
            log_level=log_level,
            http=http_protocol(cfg),
        )
    finally:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(metrics_dir, ignore_errors=True)
