"""Model switching: admin endpoint, alias watcher, refused bundles, atomic swap."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tastebud.config import Settings
from tastebud.data.dataset import Dataset
from tastebud.errors import BundleError, RegistryError
from tastebud.monitoring.metrics import ServingMetrics
from tastebud.serving import ModelHolder, create_app

from .conftest import FakeRegistry, FakeWriter
from .test_recommend import wait_ready

AUTH = {"Authorization": "Bearer s3cret"}


@pytest.fixture
def client(settings: Settings, registry: FakeRegistry) -> Iterator[TestClient]:
    with TestClient(create_app(settings, registry=registry, request_log=FakeWriter())) as c:
        wait_ready(c)
        yield c


def served_version(client: TestClient) -> int:
    return client.get("/recommend/nobody?k=1").json()["model"]["version"]


def metric(client: TestClient, line_start: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_admin_switch_by_version_and_alias(client: TestClient, registry: FakeRegistry) -> None:
    r = client.post("/admin/models/switch", json={"version": 2}, headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json()["previous"]["version"] == 1 and r.json()["serving"]["version"] == 2
    body = client.get("/recommend/nobody?k=1").json()
    assert body["model"]["type"] == "itemknn" and body["provenance"]["model_version"] == 2
    assert client.get("/health").json()["model"]["version"] == 2
    r = client.post("/admin/models/switch", json={"alias": "champion"}, headers=AUTH)
    assert r.status_code == 200 and served_version(client) == 1
    assert client.get("/health").json()["model"]["alias"] == "champion"


def test_admin_needs_valid_token(client: TestClient) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
        r = client.post("/admin/models/switch", json={"version": 2}, headers=headers)
        assert r.status_code == 401 and r.json()["error"] == "unauthorized"
    assert served_version(client) == 1
    bad = client.post("/admin/models/switch", json={"version": 2, "alias": "x"}, headers=AUTH)
    assert bad.status_code == 422


def test_admin_disabled_without_token(settings: Settings, registry: FakeRegistry) -> None:
    no_admin = settings.model_copy(update={"serving": settings.serving.model_copy(update={"admin_token": None})})
    with TestClient(create_app(no_admin, registry=registry, request_log=FakeWriter())) as c:
        wait_ready(c)
        r = c.post("/admin/models/switch", json={"version": 2}, headers=AUTH)
        assert r.status_code == 403 and r.json()["error"] == "admin_disabled"
        assert served_version(c) == 1


def test_corrupt_bundle_refused_old_model_keeps_serving(client: TestClient) -> None:
    before = metric(client, 'tastebud_serving_model_switches_total{outcome="failed",trigger="admin"}')
    r = client.post("/admin/models/switch", json={"version": 3}, headers=AUTH)
    assert r.status_code == 409
    body = r.json()
    assert body["error"] == "bundle_refused" and "sha256 mismatch" in body["message"]
    assert body["serving"]["version"] == 1 and served_version(client) == 1
    assert metric(client, 'tastebud_serving_model_switches_total{outcome="failed",trigger="admin"}') == before + 1
    unknown = client.post("/admin/models/switch", json={"version": 99}, headers=AUTH)
    assert unknown.status_code == 404 and served_version(client) == 1


def test_models_lists_versions_and_aliases(client: TestClient) -> None:
    body = client.get("/models").json()
    assert [v["version"] for v in body["versions"]] == [1, 2, 3]
    assert body["aliases"] == {"champion": 1} and body["serving"]["version"] == 1


def test_watcher_follows_alias_and_skips_refused(bundles: dict[str, Path]) -> None:
    registry = FakeRegistry("ml", {1: bundles["als"], 2: bundles["itemknn"], 3: bundles["corrupt"]}, {})
    holder = ModelHolder(registry, name="ml", metrics=ServingMetrics())
    assert holder.poll_alias() is False and holder.current is None  # no champion yet
    registry.set_alias("ml", "champion", 1)
    assert holder.poll_alias() is True and holder.current.version == 1
    old = holder.current  # a request in flight holds this object
    registry.set_alias("ml", "champion", 2)
    assert holder.poll_alias() is True and holder.current.version == 2
    assert old.engine.recommend("nobody", 3).returned == 3 and old.version == 1  # still usable
    registry.set_alias("ml", "champion", 3)
    assert holder.poll_alias() is False and holder.current.version == 2
    assert "sha256 mismatch" in (holder.last_error or "")
    calls = []
    holder.loader = lambda p: calls.append(p)  # a refused version is not retried while the alias stays
    assert holder.poll_alias() is False and calls == []
    assert holder.poll_alias() is False and holder.current.version == 2


def test_load_path_refuses_incompatible(bundles: dict[str, Path], tmp_path: Path) -> None:
    holder = ModelHolder(None, name="ml")
    holder.load_path(bundles["als"], version=1)
    with pytest.raises(BundleError):
        holder.load_path(bundles["corrupt"], version=3)
    with pytest.raises(BundleError):
        holder.load_path(tmp_path / "missing", version=4)

    class Weird:  # loads, but is not a bundle the engine can serve
        def __init__(self) -> None:
            self.manifest: dict = {}
            self.model = object()
            self.fallback: dict = {}
            self.item_meta = None

    holder.loader = lambda p: Weird()
    with pytest.raises(BundleError, match="incompatible"):
        holder.load_path(bundles["als"], version=5)
    assert holder.current.version == 1
    with pytest.raises(BundleError):
        ModelHolder(None, name="ml").load(version=1)
    with pytest.raises(RegistryError):
        ModelHolder(FakeRegistry("ml", {}), name="ml").load(version=1)


def test_holder_sets_ann_ef_search_on_every_loaded_index(bundles: dict[str, Path], toy_dataset: Dataset) -> None:
    from types import SimpleNamespace

    from tastebud.models import create

    model = create("als", factors=8, iterations=3, use_ann=True, ann_threshold=1).fit(toy_dataset)
    assert model.ann_ is not None and model.ann_.kind == "hnsw" and model.ann_.ef_search != 24
    holder = ModelHolder(None, name="ml", ann_ef_search=24)
    holder.loader = lambda p: SimpleNamespace(manifest={}, model=model, fallback={}, item_meta=toy_dataset.item_meta)
    holder.load_path(bundles["als"], version=1)
    assert model.ann_.ef_search == 24 and model.ann_.index_.hnsw.efSearch == 24
    assert model.ann_similar_ is not None and model.ann_similar_.ef_search == 24
    user = str(toy_dataset.users.ids[0])
    assert holder.current.engine.recommend(user, 3).items


def test_freeze_gc_moves_the_loaded_model_out_of_full_collections(bundles: dict[str, Path]) -> None:
    import gc

    before = gc.get_freeze_count()
    try:
        ModelHolder(None, name="ml").load_path(bundles["als"], version=1)
        assert gc.get_freeze_count() == before  # off by default (tests, notebooks)
        ModelHolder(None, name="ml", freeze_gc=True).load_path(bundles["als"], version=1)
        assert gc.get_freeze_count() > before
    finally:
        gc.unfreeze()


def test_previous_model_is_collected_after_a_switch_with_freeze_gc(bundles: dict[str, Path]) -> None:
    """gc.freeze after a switch must not pin the model it replaced, even one that cyclic garbage still references.

    Cyclic garbage (a request's frames and traceback, say) that references the served model is alive until the
    collector's next pass; a freeze at that instant moved it to the permanent generation, which is never
    collected, so the old model stayed in memory for the life of the process.
    """
    import gc
    import weakref

    holder = ModelHolder(None, name="ml", freeze_gc=True)
    gc.disable()  # no automatic pass between the garbage and the switch (under load it waits for a full pass)
    try:
        first = holder.load_path(bundles["als"], version=1)
        refs = [weakref.ref(first), weakref.ref(first.engine), weakref.ref(first.engine.model)]
        garbage: list[object] = [first]
        garbage.append(garbage)  # a reference cycle, unreachable once dropped: collectable garbage
        del first, garbage
        holder.load_path(bundles["itemknn"], version=2)
        gc.collect()  # frozen objects are never examined: without the fix the cycle and the model survive this
        assert [r() is None for r in refs] == [True, True, True]
        assert holder.current is not None and holder.current.version == 2
        assert gc.get_freeze_count() > 0  # the new model is frozen
    finally:
        gc.enable()
        gc.unfreeze()
