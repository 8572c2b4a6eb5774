"""Shared fixtures of the serving tests: small real bundles, an in-memory registry and request log."""

from __future__ import annotations

import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tastebud.config import Settings, build_settings
from tastebud.data.dataset import Dataset
from tastebud.data.synthetic import generate_synthetic
from tastebud.errors import RegistryError
from tastebud.models import create
from tastebud.registry.bundle import write_bundle
from tastebud.store.schema import RequestLogRecord


@pytest.fixture(scope="session")
def train() -> Dataset:
    """200 users x 120 items of synthetic data with titles, years and genres."""
    return generate_synthetic(200, 120, 4000, seed=3)


@pytest.fixture(scope="session")
def bundles(train: Dataset, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Bundles written with the real ``write_bundle``: ``als`` (v1), ``itemknn`` (v2) and a ``corrupt`` one."""
    root = tmp_path_factory.mktemp("bundles")
    fallback = {"popular": create("popular").fit(train), "content": create("content").fit(train)}
    out = {}
    for name, model in (
        ("als", create("als", factors=8, iterations=4, random_state=1, num_threads=1)),
        ("itemknn", create("itemknn")),
    ):
        out[name] = write_bundle(model.fit(train), root / name, train=train, metrics={"ndcg_at_10": 0.1},
                                 fallback=fallback)  # fmt: skip
    corrupt = root / "corrupt"
    shutil.copytree(out["als"], corrupt)
    target = next(p for p in sorted((corrupt / "model").iterdir()) if p.suffix == ".npy")
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF  # one flipped byte: the checksum no longer matches
    target.write_bytes(bytes(data))
    out["corrupt"] = corrupt
    return out


@dataclass
class FakeVersion:
    name: str
    version: int
    aliases: list[str]
    source: str
    run_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    created_at: str = "2026-01-01T00:00:00Z"
    metrics: dict[str, float] = field(default_factory=dict)


class FakeRegistry:
    """In-memory registry with the shape of ``tastebud.registry.ModelRegistry``."""

    def __init__(self, name: str, paths: dict[int, Path], aliases: dict[str, int] | None = None) -> None:
        self.name = name
        self.paths = dict(paths)
        self.aliases = dict(aliases or {})
        self.lock = threading.Lock()

    def list_versions(self, name: str) -> list[FakeVersion]:
        return [self.get(name, v) for v in sorted(self.paths)]

    def get(self, name: str, version: int) -> FakeVersion:
        if name != self.name or version not in self.paths:
            raise RegistryError(f"model {name!r} has no version {version}")
        with self.lock:
            aliases = [a for a, v in self.aliases.items() if v == version]
        return FakeVersion(name, version, aliases, str(self.paths[version]))

    def resolve(self, name: str, ref: int | str) -> FakeVersion:
        if isinstance(ref, int) or str(ref).isdigit():
            return self.get(name, int(ref))
        version = self.get_alias(name, str(ref))
        if version is None:
            raise RegistryError(f"model {name!r} has no alias {ref!r}")
        return self.get(name, version)

    def set_alias(self, name: str, alias: str, version: int) -> None:
        with self.lock:
            self.aliases[alias] = version

    def get_alias(self, name: str, alias: str) -> int | None:
        with self.lock:
            return self.aliases.get(alias)

    def bundle_path(self, mv: FakeVersion) -> Path:
        return Path(mv.source)


class FakeStore:
    def __init__(self) -> None:
        self.records: dict[str, dict[str, Any]] = {}

    def get_request(self, request_id: str) -> dict[str, Any] | None:
        return self.records.get(request_id)


class FakeWriter:
    """Request-log writer with the shape of ``tastebud.store.RequestLogWriter`` (synchronous, bounded)."""

    def __init__(self, maxsize: int = 10_000) -> None:
        self.store = FakeStore()
        self.maxsize = maxsize
        self.pending_records: list[dict[str, Any]] = []
        self.flushed = self.closed = 0

    def submit(self, record: Any) -> bool:
        if len(self.pending_records) >= self.maxsize:
            return False
        # the routes submit typed RequestLogRecords, the middleware plain dicts; the store reads back dicts
        self.pending_records.append(record._asdict() if isinstance(record, RequestLogRecord) else dict(record))
        return True

    def flush(self, timeout: float = 5.0) -> bool:
        for r in self.pending_records:
            self.store.records[r["request_id"]] = r
        self.pending_records.clear()
        self.flushed += 1
        return True

    def close(self, timeout: float = 5.0) -> None:
        self.flush(timeout)
        self.closed += 1

    @property
    def pending(self) -> int:
        return len(self.pending_records)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return build_settings(
        home=tmp_path, serving={"model_name": "ml", "watch_interval_s": 0, "admin_token": "s3cret", "max_k": 50}
    )


@pytest.fixture
def registry(bundles: dict[str, Path]) -> FakeRegistry:
    return FakeRegistry("ml", {1: bundles["als"], 2: bundles["itemknn"], 3: bundles["corrupt"]}, {"champion": 1})
