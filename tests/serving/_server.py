"""Runs the API under uvicorn for the process-level tests: ``python _server.py config.json``.

The registry reads versions and aliases from JSON files the test can rewrite; the request log is the real
SQLite store in the home directory. Requests with an ``x-test-delay`` header wait that many seconds before
they reach the app, so that a test can have requests in flight when it sends SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn

from tastebud.config import build_settings
from tastebud.errors import RegistryError
from tastebud.serving.app import create_app, limit_blas_threads


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


class FileRegistry:
    def __init__(self, name: str, versions: dict[int, str], aliases_file: Path) -> None:
        self.name, self.versions, self.aliases_file = name, versions, aliases_file

    def _aliases(self) -> dict[str, int]:
        return json.loads(self.aliases_file.read_text())

    def list_versions(self, name: str) -> list[Version]:
        return [self.get(name, v) for v in sorted(self.versions)]

    def get(self, name: str, version: int) -> Version:
        if version not in self.versions:
            raise RegistryError(f"no version {version}")
        aliases = [a for a, v in self._aliases().items() if v == version]
        return Version(name, version, aliases, self.versions[version])

    def resolve(self, name: str, ref: int | str) -> Version:
        if isinstance(ref, int) or str(ref).isdigit():
            return self.get(name, int(ref))
        version = self._aliases().get(str(ref))
        if version is None:
            raise RegistryError(f"no alias {ref!r}")
        return self.get(name, version)

    def get_alias(self, name: str, alias: str) -> int | None:
        return self._aliases().get(alias)

    def bundle_path(self, mv: Version) -> Path:
        return Path(mv.source)


class DelayMiddleware:
    def __init__(self, app):  # type: ignore[no-untyped-def]
        self.app = app

    async def __call__(self, scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] == "http":
            for key, value in scope["headers"]:
                if key == b"x-test-delay":
                    await asyncio.sleep(float(value))
        await self.app(scope, receive, send)


def main() -> None:
    cfg = json.loads(Path(sys.argv[1]).read_text())
    settings = build_settings(
        home=cfg["home"],
        serving={"model_name": "ml", "watch_interval_s": cfg.get("watch_interval_s", 0.2),
                 "admin_token": "s3cret", "port": cfg["port"]},
    )  # fmt: skip
    registry = FileRegistry("ml", {int(k): v for k, v in cfg["versions"].items()}, Path(cfg["aliases_file"]))
    limit_blas_threads(1)
    app = create_app(settings, registry=registry)
    app.add_middleware(DelayMiddleware)
    uvicorn.run(app, host="127.0.0.1", port=cfg["port"], log_level="warning")


if __name__ == "__main__":
    main()
