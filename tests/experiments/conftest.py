"""Fixtures of the experiment tests: a store per test, an in-memory registry, and one real embedded MLflow registry
with small bundles (versions 1 and 2 sound, version 3 corrupt) shared by the session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tastebud.config import Settings, build_settings
from tastebud.errors import RegistryError
from tastebud.store import Store, create_store

#: The model of the fake registry and the default model of :func:`settings`.
MODEL = "m"
#: The model registered in the real registry.
REAL_MODEL = "exp-model"


@dataclass
class FakeVersion:
    name: str
    version: int
    source: str = ""
    aliases: list[str] = field(default_factory=list)


class FakeRegistry:
    """In-memory registry with the shape experiments use: versions 1-3 of ``m``, champion=1, challenger=2."""

    def __init__(self) -> None:
        self.versions = {MODEL: {1, 2, 3}}
        self.aliases = {MODEL: {"champion": 1, "challenger": 2}}

    def get(self, name: str, version: int) -> FakeVersion:
        if version not in self.versions.get(name, set()):
            raise RegistryError(f"model {name!r} has no version {version}")
        return FakeVersion(name, version, f"/bundles/{name}/{version}")

    def get_alias(self, name: str, alias: str) -> int | None:
        return self.aliases.get(name, {}).get(alias)

    def bundle_path(self, mv: Any) -> Path:
        return Path(mv.source)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return build_settings(home=tmp_path / "home", serving={"model_name": MODEL})


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """A fresh SQLite file store (a file, not memory: concurrent tests need real connections)."""
    with create_store(url=f"sqlite:///{tmp_path / 'store.db'}") as store:
        store.init_schema()
        yield store


@pytest.fixture
def registry() -> FakeRegistry:
    return FakeRegistry()


@pytest.fixture(scope="session")
def real_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home whose embedded MLflow registry holds ``exp-model`` versions 1, 2 (sound) and 3 (a corrupt bundle).

    ``champion`` is version 1 and ``challenger`` version 2.
    """
    from tastebud.data.synthetic import generate_synthetic
    from tastebud.models import create
    from tastebud.registry import ModelRegistry, write_bundle

    os.environ.pop("MLFLOW_TRACKING_URI", None)
    home = tmp_path_factory.mktemp("experiments-home")
    train = generate_synthetic(60, 40, 800, seed=5, name="tiny")
    popular = create("popular").fit(train)
    bundle = write_bundle(popular, home / "bundle", train=train, metrics={"ndcg_at_10": 0.1},
                          fallback={"popular": popular})  # fmt: skip
    registry = ModelRegistry(build_settings(home=home))
    for _ in range(3):
        registry.register(bundle, REAL_MODEL)
    registry.set_alias(REAL_MODEL, "champion", 1)
    registry.set_alias(REAL_MODEL, "challenger", 2)
    stored = registry.bundle_path(registry.get(REAL_MODEL, 3))
    target = next(p for p in sorted((stored / "model").rglob("*")) if p.is_file() and p.suffix in (".npy", ".json"))
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF  # one flipped byte: the checksum no longer matches
    # The embedded store hard-links registered files to the bundle they came from (all three versions share these
    # bytes), so version 3's copy is replaced by a new file rather than edited in place.
    target.unlink()
    target.write_bytes(bytes(data))
    return home


@pytest.fixture
def real_settings(real_home: Path) -> Settings:
    return build_settings(home=real_home, serving={"model_name": REAL_MODEL})
