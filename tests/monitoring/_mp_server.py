"""Runs the API under uvicorn with several workers: ``python _mp_server.py config.json``.

Each worker builds the app with :func:`create` (uvicorn ``--factory``); the config file names the home directory,
the port, the worker count and the bundle served as version 1 / ``champion``. ``PROMETHEUS_MULTIPROC_DIR`` comes
from the environment, as ``tastebud serve --workers N`` sets it.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn

from tastebud.config import build_settings
from tastebud.serving.app import create_app, limit_blas_threads

CONFIG_ENV = "TASTEBUD_TEST_MP_CONFIG"


@dataclass
class Version:
    name: str
    version: int
    aliases: list[str]
    source: str
    run_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    created_at: str = ""
    metrics: dict[str, float] = field(default_factory=dict)


class Registry:
    def __init__(self, path: str) -> None:
        self.path = path

    def get(self, name: str, version: int) -> Version:
        return Version(name, 1, ["champion"], self.path)

    def list_versions(self, name: str) -> list[Version]:
        return [self.get(name, 1)]

    def resolve(self, name: str, ref: int | str) -> Version:
        return self.get(name, 1)

    def get_alias(self, name: str, alias: str) -> int | None:
        return 1

    def bundle_path(self, mv: Version) -> Path:
        return Path(mv.source)


def create():  # type: ignore[no-untyped-def]
    cfg = json.loads(Path(os.environ[CONFIG_ENV]).read_text())
    settings = build_settings(home=cfg["home"], serving={"model_name": "ml", "watch_interval_s": 0})
    limit_blas_threads(1)
    return create_app(settings, registry=Registry(cfg["bundle"]))


def main() -> None:
    os.environ[CONFIG_ENV] = sys.argv[1]
    cfg = json.loads(Path(sys.argv[1]).read_text())
    uvicorn.run(
        "_mp_server:create", factory=True, host="127.0.0.1", port=cfg["port"], workers=cfg["workers"],
        log_level="warning", app_dir=str(Path(__file__).parent),
    )  # fmt: skip


if __name__ == "__main__":
    main()
