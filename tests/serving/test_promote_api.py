"""``POST /admin/models/promote`` and ``POST /admin/models/rollback`` over a real registry with two versions.

ALS (v1, champion) and item-KNN (v2) trained on synthetic data; item-KNN beats ALS on their shared validation
split, so promoting v2 passes the gate and promoting v1 back over it is refused.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tastebud.config import Settings, build_settings
from tastebud.registry import CHAMPION, Decision, ModelRegistry, append_decision, read_decisions
from tastebud.serving import create_app

from .conftest import FakeWriter
from .test_recommend import wait_ready

NAME = "promo"
AUTH = {"Authorization": "Bearer s3cret"}


@pytest.fixture(scope="module")
def template_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home with v1 (ALS, champion, one ``promoted`` decision) and v2 (item-KNN); copied by each test."""
    from tastebud.data.synthetic import generate_synthetic
    from tastebud.pipeline.train import train

    home = tmp_path_factory.mktemp("promote") / "home"
    settings = build_settings(home=home)
    data = generate_synthetic(200, 120, 4000, seed=3)
    registry = ModelRegistry(settings)
    train(data, "als", {"factors": 8, "iterations": 4, "random_state": 1, "num_threads": 1}, settings=settings,
          name=NAME, registry=registry)  # fmt: skip
    train(data, "itemknn", {}, settings=settings, name=NAME, registry=registry)
    registry.set_alias(NAME, CHAMPION, 1)
    append_decision(settings, Decision("2026-12-01T10:00:00+00:00", NAME, "promoted", 1, None, "tests", "first"))
    return home


@pytest.fixture
def home(template_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    home = tmp_path / "home"
    shutil.copytree(template_home, home)  # the bundles stay where the template's runs put them (read only)
    return home


def make_settings(home: Path, registry: dict[str, object] | None = None, **serving: object) -> Settings:
    return build_settings(
        home=home,
        serving={"model_name": NAME, "watch_interval_s": 0, "admin_token": "s3cret", **serving},
        registry=registry or {},
    )


@pytest.fixture
def settings(home: Path) -> Settings:
    return make_settings(home)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings, registry=ModelRegistry(settings), request_log=FakeWriter())) as c:
        wait_ready(c)
        yield c


def served(client: TestClient) -> int:
    return int(client.get("/health").json()["model"]["version"])


def champion(settings: Settings) -> int | None:
    return ModelRegistry(settings).get_alias(NAME, CHAMPION)


def test_admin_routes_need_the_admin_key(client: TestClient, settings: Settings) -> None:
    for path, body in (("/admin/models/promote", {"version": 2}), ("/admin/models/rollback", {})):
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            r = client.post(path, json=body, headers=headers)
            assert r.status_code == 401 and r.json()["error"] == "unauthorized", r.text
    assert champion(settings) == 1 and served(client) == 1
    assert [d.action for d in read_decisions(settings, NAME)] == ["promoted"]


def test_admin_routes_disabled_without_an_admin_token(home: Path) -> None:
    no_admin = make_settings(home, admin_token=None)
    with TestClient(create_app(no_admin, registry=ModelRegistry(no_admin), request_log=FakeWriter())) as c:
        wait_ready(c)
        for path, body in (("/admin/models/promote", {"version": 2}), ("/admin/models/rollback", {})):
            r = c.post(path, json=body, headers=AUTH)
            assert r.status_code == 403 and r.json()["error"] == "admin_disabled", r.text
        assert champion(no_admin) == 1 and served(c) == 1


def test_promote_passes_moves_the_alias_serves_it_and_logs(client: TestClient, settings: Settings) -> None:
    r = client.post("/admin/models/promote", json={"version": 2, "actor": "studio"}, headers=AUTH)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["decision"]["action"] == "promoted" and body["decision"]["version"] == 2
    assert body["decision"]["previous"] == 1 and body["decision"]["actor"] == "studio"
    assert any("vs champion" in reason and reason.endswith("ok") for reason in body["reasons"])
    assert body["previous"]["version"] == 1 and body["serving"]["version"] == 2
    assert champion(settings) == 2 and served(client) == 2
    last = read_decisions(settings, NAME)[-1]
    assert (last.action, last.version, last.previous, last.actor) == ("promoted", 2, 1, "studio")
    again = client.post("/admin/models/promote", json={"version": 2}, headers=AUTH)
    assert again.status_code == 409 and again.json()["error"] == "conflict"  # already the champion
    unknown = client.post("/admin/models/promote", json={"version": 9}, headers=AUTH)
    assert unknown.status_code == 404 and champion(settings) == 2


def test_gate_refusal_is_a_409_with_reasons_and_the_alias_stays(home: Path) -> None:
    strict = make_settings(home, registry={"promotion_margin": 10.0})  # v2 would have to rank 11 times better
    with TestClient(create_app(strict, registry=ModelRegistry(strict), request_log=FakeWriter())) as c:
        wait_ready(c)
        r = c.post("/admin/models/promote", json={"version": 2}, headers=AUTH)
        assert r.status_code == 409, r.text
        body = r.json()
        assert body["error"] == "gate_refused" and "champion stays version 1" in body["message"]
        assert body["decision"]["action"] == "refused" and body["decision"]["actor"] == "api"
        assert any("not enough" in reason for reason in body["reasons"]), body["reasons"]
        assert champion(strict) == 1 and served(c) == 1
        assert [d.action for d in read_decisions(strict, NAME)] == ["promoted", "refused"]
        forced = c.post("/admin/models/promote", json={"version": 2, "force": True}, headers=AUTH)
        assert forced.status_code == 200 and forced.json()["decision"]["action"] == "forced"
        assert champion(strict) == 2 and served(c) == 2


def test_rollback_restores_the_previous_champion(client: TestClient, settings: Settings) -> None:
    assert client.post("/admin/models/promote", json={"version": 2}, headers=AUTH).status_code == 200
    assert champion(settings) == 2 and served(client) == 2
    wrong = client.post("/admin/models/rollback", json={"version": 2}, headers=AUTH)
    assert wrong.status_code == 409 and "returns to version 1" in wrong.json()["message"]
    assert champion(settings) == 2
    r = client.post("/admin/models/rollback", json={"version": 1}, headers=AUTH)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["decision"]["action"] == "rolled_back" and body["decision"]["version"] == 1
    assert body["decision"]["previous"] == 2 and body["serving"]["version"] == 1
    assert champion(settings) == 1 and served(client) == 1
    assert read_decisions(settings, NAME)[-1].action == "rolled_back"
    none_left = client.post("/admin/models/rollback", json={}, headers=AUTH)
    assert none_left.status_code == 409 and none_left.json()["error"] == "conflict"
    assert champion(settings) == 1
