"""Property-based fuzzing of ``POST /events`` through the real app: arbitrary JSON (and non-JSON) bodies get a
documented status with a JSON body of bounded size, never a 5xx."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tastebud.config import build_settings
from tastebud.serving import create_app
from tastebud.store import create_store

from .conftest import FakeRegistry, FakeWriter

#: Statuses ``POST /events`` documents: stored (200), a body too large (413), invalid (422); a body that is not
#: text at all gets the framework's 400.
DOCUMENTED = {200, 400, 413, 422}
#: Largest answer allowed: 20 listed rejections of bounded reasons, or an error.
MAX_RESPONSE = 20_000
FUZZ = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=30),
    st.sampled_from(["rating", "view", "2023-11-14T22:13:20Z", "\x00", " ", "9" * 300, "u" * 200]),
)  # fmt: skip
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)  # fmt: skip
event_fields = st.sampled_from(["event_id", "user_id", "item_id", "kind", "rating", "value", "timestamp", "x"])
events_like = st.dictionaries(event_fields, json_values, max_size=8)
bodies = st.one_of(
    st.lists(events_like | json_values, max_size=30),
    st.fixed_dictionaries({"events": st.lists(events_like, max_size=30)}),
    json_values,
    st.integers(min_value=1001, max_value=1100).map(lambda n: [1] * n),  # over the events-per-request limit
)


@pytest.fixture(scope="module")
def client(bundles: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    home = tmp_path_factory.mktemp("fuzz-home")
    app_settings = build_settings(
        home=home, serving={"model_name": "ml", "watch_interval_s": 0, "max_body_bytes": 64 * 1024}
    )
    store = create_store(app_settings)
    store.init_schema()
    registry = FakeRegistry("ml", {1: bundles["als"]}, {"champion": 1})
    app = create_app(app_settings, registry=registry, request_log=FakeWriter(), store=store)
    with TestClient(app, raise_server_exceptions=False) as c:
        deadline = time.monotonic() + 30
        while c.get("/health/ready").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        yield c
    store.close()


def check(response: Any) -> None:
    assert response.status_code in DOCUMENTED, response.text[:500]
    assert len(response.content) <= MAX_RESPONSE, (response.status_code, len(response.content))
    body = response.json()
    if response.status_code == 200:
        assert body["accepted"] + body["duplicates"] + body["rejected_total"] >= len(body["rejected"])
        assert len(body["rejected"]) <= 20
    else:
        assert isinstance(body["error"], str) and isinstance(body["message"], str)


@FUZZ
@given(body=bodies)
def test_any_json_body_gets_a_documented_bounded_answer(client: TestClient, body: Any) -> None:
    check(client.post("/events", content=json.dumps(body), headers={"content-type": "application/json"}))


@FUZZ
@given(data=st.binary(max_size=300) | st.integers(1, 10).map(lambda n: b"[" + b"1," * (32 * 1024 + n) + b"1]"))
def test_any_bytes_get_a_documented_bounded_answer(client: TestClient, data: bytes) -> None:
    check(client.post("/events", content=data, headers={"content-type": "application/json"}))
