"""An ensemble bundle served by the real app: loaded like any model, personal lists, real-time events."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tastebud.config import Settings
from tastebud.data.dataset import Dataset
from tastebud.models import create
from tastebud.models.ensemble import EnsembleRecommender
from tastebud.registry.bundle import load_bundle, verify_bundle, write_bundle
from tastebud.serving import create_app
from tastebud.store import create_store

from .conftest import FakeRegistry, FakeWriter

NOW = int(time.time()) - 60
MEMBERS = {"als": {"factors": 8, "iterations": 4, "num_threads": 1}, "ease": {"l2": 50.0}}


@pytest.fixture(scope="module")
def ensemble_bundle(train: Dataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = EnsembleRecommender(members="ease,als,itemknn", member_params=MEMBERS, random_state=3).fit(train)
    fallback = {"popular": create("popular").fit(train), "content": create("content").fit(train)}
    return write_bundle(
        model, tmp_path_factory.mktemp("ens") / "bundle", train=train, metrics={"ndcg_at_10": 0.1}, fallback=fallback
    )


@pytest.fixture
def store(settings: Settings) -> Iterator[Any]:
    s = create_store(settings)
    s.init_schema()
    yield s
    s.close()


@pytest.fixture
def client(settings: Settings, ensemble_bundle: Path, store: Any) -> Iterator[TestClient]:
    registry = FakeRegistry("ml", {1: ensemble_bundle}, {"champion": 1})
    app = create_app(settings, registry=registry, request_log=FakeWriter(), store=store)
    with TestClient(app, raise_server_exceptions=False) as c:
        deadline = time.monotonic() + 30
        while c.get("/health/ready").status_code != 200:
            assert time.monotonic() < deadline, c.get("/health").json()
            time.sleep(0.02)
        yield c


def rating(event_id: str, user: str, item: str, value: float = 5.0) -> dict[str, Any]:
    return {"event_id": event_id, "user_id": user, "item_id": item, "rating": value, "timestamp": NOW}


def rec_ids(client: TestClient, user: str, k: int = 10) -> tuple[list[str], dict[str, Any]]:
    r = client.get(f"/recommend/{user}?k={k}")
    assert r.status_code == 200, r.text
    body = r.json()
    return [it["item_id"] for it in body["recommendations"]], body


def test_bundle_lists_every_member_file_with_its_checksum(ensemble_bundle: Path) -> None:
    manifest = verify_bundle(ensemble_bundle)
    assert manifest["model"]["name"] == "ensemble"
    member_files = [f for f in manifest["files"] if f.startswith("model/members/")]
    loaded = load_bundle(ensemble_bundle).model
    expected = {f"{i}-{name}" for i, name in enumerate(loaded.member_names)}
    assert {f.split("/")[2] for f in member_files} == expected
    assert all(f"model/members/{d}/model.json" in manifest["files"] for d in expected)
    assert isinstance(loaded, EnsembleRecommender) and loaded.member_names


def test_a_tampered_member_file_is_refused(ensemble_bundle: Path, tmp_path: Path) -> None:
    import shutil

    from tastebud.errors import BundleError

    copy = tmp_path / "b"
    shutil.copytree(ensemble_bundle, copy)
    target = sorted((copy / "model" / "members").rglob("*.npy"))[0]
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        load_bundle(copy)


def test_known_user_gets_the_ensembles_list(client: TestClient, ensemble_bundle: Path, train: Dataset) -> None:
    counts = np.bincount(train.interactions["user_idx"].to_numpy(), minlength=train.n_users)
    user = str(train.users.ids[int(np.argmax(counts))])
    items, body = rec_ids(client, user)
    assert body["is_fallback"] is False and len(items) == 10
    assert body["provenance"]["model_type"] == "ensemble"
    model = load_bundle(ensemble_bundle).model
    assert items == model.recommend([user], k=10).item_ids[0]
    because = {x for it in body["recommendations"] for x in it["because"]}
    assert because  # explained by the explaining member


def test_new_user_events_personalise_the_next_list(client: TestClient, train: Dataset) -> None:
    user = "ensemble-new-user"
    before, body = rec_ids(client, user)
    assert body["is_fallback"] is True
    liked = [str(i) for i in train.items.ids[[3, 17, 42]]]
    r = client.post("/events", json=[rating(f"e{n}", user, item) for n, item in enumerate(liked)])
    assert r.status_code == 200 and r.json()["users_updated"] == 1
    after, body = rec_ids(client, user)
    assert body["is_fallback"] is False and len(after) == 10
    assert after != before and not set(liked) & set(after)


def test_known_user_events_change_the_list(client: TestClient, train: Dataset) -> None:
    user = str(train.users.ids[5])
    before, _ = rec_ids(client, user)
    new = before[:3]
    assert client.post("/events", json=[rating(f"k{n}", user, i) for n, i in enumerate(new)]).status_code == 200
    after, body = rec_ids(client, user)
    assert body["is_fallback"] is False
    assert after != before and not set(new) & set(after)
