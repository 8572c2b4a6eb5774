"""The recommendation endpoints through ``TestClient``: shape, filters, fallbacks, provenance, errors."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi import Depends, Request
from fastapi.testclient import TestClient
from starlette.responses import Response

from tastebud.config import Settings
from tastebud.data.dataset import Dataset
from tastebud.serving import create_app

from .conftest import FakeRegistry, FakeWriter


def wait_ready(client: TestClient, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/health/ready").status_code == 200:
            return
        time.sleep(0.02)
    raise AssertionError(f"not ready after {timeout}s: {client.get('/health').json()}")


@pytest.fixture
def writer() -> FakeWriter:
    return FakeWriter()


@pytest.fixture
def client(settings: Settings, registry: FakeRegistry, writer: FakeWriter) -> Iterator[TestClient]:
    app = create_app(settings, registry=registry, request_log=writer)
    with TestClient(app, raise_server_exceptions=False) as c:
        wait_ready(c)
        yield c


def user_with_history(train: Dataset, at_least: int) -> str:
    counts = np.bincount(train.interactions["user_idx"].to_numpy(), minlength=train.n_users)
    return str(train.users.ids[int(np.flatnonzero(counts >= at_least)[0])])


def test_recommend_known_user_shape_and_provenance(
    client: TestClient, train: Dataset, bundles: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    user = user_with_history(train, 10)
    r = client.get(f"/recommend/{user}?k=7")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["user_id"] == user and body["returned"] == 7 == len(body["recommendations"])
    assert body["is_fallback"] is False and body["fallback_reason"] is None and body["variant"] is None
    assert body["model"] == {"name": "ml", "version": 1, "alias": "champion", "type": "als"}
    scores = [it["score"] for it in body["recommendations"]]
    assert scores == sorted(scores, reverse=True)
    seen = set(train.to_frame().filter(user_id=user)["item_id"].to_list())
    assert not seen & {it["item_id"] for it in body["recommendations"]}
    assert all(set(it["because"]) <= seen for it in body["recommendations"])
    assert any(it["because"] for it in body["recommendations"])  # ALS explains
    manifest = __import__("json").loads((bundles["als"] / "manifest.json").read_text())
    prov = body["provenance"]
    assert prov["request_id"] == r.headers["x-request-id"] and len(prov["request_id"]) == 32
    assert prov["model_version"] == 1 and prov["git_sha"] == manifest["git_sha"]
    assert prov["data_snapshot_id"] == manifest["data"]["snapshot_id"] == train.snapshot_id
    assert prov["latency_ms"] >= 0 and prov["timestamp"].endswith("Z")
    assert prov["container_image_digest"] is None


def test_post_matches_get(client: TestClient, train: Dataset) -> None:
    user = user_with_history(train, 10)
    got = client.get(f"/recommend/{user}?k=5&genres=Drama,Comedy&year_min=1980").json()
    posted = client.post(
        "/recommend", json={"user_id": user, "k": 5, "filters": {"genres": ["Drama", "Comedy"], "year_min": 1980}}
    ).json()
    assert [i["item_id"] for i in got["recommendations"]] == [i["item_id"] for i in posted["recommendations"]]


def test_filters_applied_before_top_k(client: TestClient, train: Dataset) -> None:
    user = user_with_history(train, 10)
    meta = train.item_meta
    seen = set(train.to_frame().filter(user_id=user)["item_id"].to_list())
    passing = [
        row["item_id"]
        for row in meta.iter_rows(named=True)
        if row["year"] is not None and 1990 <= row["year"] <= 2005 and {"Drama", "Crime"} & set(row["genres"])
    ]
    available = len(set(passing) - seen)
    assert available >= 3  # the data must leave something to find
    k = 40
    body = client.get(f"/recommend/{user}?k={k}&genres=Drama,Crime&year_min=1990&year_max=2005").json()
    recs = body["recommendations"]
    assert len(recs) == min(k, available) == body["returned"]
    assert all(1990 <= it["year"] <= 2005 and {"Drama", "Crime"} & set(it["genres"]) for it in recs)
    if available < k:
        assert body["requested"] == k and "note" in body
    small = client.get(f"/recommend/{user}?k=3&genres=Drama,Crime&year_min=1990&year_max=2005").json()
    assert len(small["recommendations"]) == 3 and "note" not in small
    assert [i["item_id"] for i in small["recommendations"]] == [i["item_id"] for i in recs[:3]]


def test_exclude_seen_false_may_return_seen(client: TestClient, train: Dataset) -> None:
    user = user_with_history(train, 10)
    seen = set(train.to_frame().filter(user_id=user)["item_id"].to_list())
    body = client.get(f"/recommend/{user}?k=50&exclude_seen=false").json()
    assert seen & {it["item_id"] for it in body["recommendations"]}


def test_unknown_user_gets_popular(client: TestClient, train: Dataset) -> None:
    body = client.get("/recommend/nobody-at-all?k=5").json()
    assert body["is_fallback"] is True and body["fallback_reason"] == "unknown_user"
    popular = client.get("/popular?k=5").json()
    assert [i["item_id"] for i in body["recommendations"]] == [i["item_id"] for i in popular["recommendations"]]
    counts = train.to_frame().group_by("item_id").len().sort(["len", "item_id"], descending=[True, False])
    assert popular["recommendations"][0]["score"] == counts["len"][0]
    comedy = client.get("/recommend/nobody-at-all?k=5&genres=Comedy").json()
    assert comedy["recommendations"] and all("Comedy" in i["genres"] for i in comedy["recommendations"])
    assert comedy["fallback_reason"] == "unknown_user"


def test_sparse_history_uses_content(
    settings: Settings, registry: FakeRegistry, train: Dataset, bundles: dict[str, Path]
) -> None:
    counts = np.bincount(train.interactions["user_idx"].to_numpy(), minlength=train.n_users)
    threshold = int(np.median(counts))
    sparse = str(train.users.ids[int(np.flatnonzero(counts < threshold)[0])])
    rich = str(train.users.ids[int(np.flatnonzero(counts >= threshold)[0])])
    settings = settings.model_copy(
        update={"serving": settings.serving.model_copy(update={"sparse_history_threshold": threshold})}
    )
    with TestClient(create_app(settings, registry=registry, request_log=FakeWriter())) as c:
        wait_ready(c)
        body = c.get(f"/recommend/{sparse}?k=5").json()
        assert body["is_fallback"] is True and body["fallback_reason"] == "sparse_history"
        engine = c.app.state.holder.current.engine
        expected = engine.content.recommend([sparse], 5).item_ids[0]
        assert [i["item_id"] for i in body["recommendations"]] == expected
        assert c.get(f"/recommend/{rich}?k=5").json()["is_fallback"] is False


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("k=0", "k"),
        ("k=51", "k"),
        ("k=ten", "k"),
        ("year_min=-1", "year_min"),
        ("year_min=2000&year_max=1990", "year_min"),
        ("genres=NoSuchGenre", "genres"),
        ("exclude_seen=maybe", "exclude_seen"),
    ],
)
def test_bad_query_is_422_naming_the_field(client: TestClient, train: Dataset, query: str, field: str) -> None:
    r = client.get(f"/recommend/{user_with_history(train, 1)}?{query}")
    assert r.status_code == 422
    body = r.json()
    assert body["error"] == "invalid_request" and field in body["message"]
    assert any(d["field"] == field for d in body["details"])


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"user_id": "1", "k": "10"}, "k"),
        ({"user_id": 1}, "user_id"),
        ({"k": 5}, "user_id"),
        ({"user_id": "1", "k": -3}, "k"),
        ({"user_id": "1", "filters": {"year_min": -5}}, "filters.year_min"),
        ({"user_id": "1", "filters": {"year_min": 2000, "year_max": 1900}}, "year_min"),
        ({"user_id": "1", "surprise": True}, "surprise"),
    ],
)
def test_bad_body_is_422(client: TestClient, payload: dict, field: str) -> None:
    r = client.post("/recommend", json=payload)
    assert r.status_code == 422, r.text
    assert any(d["field"] == field for d in r.json()["details"])


def test_malformed_json_is_422(client: TestClient) -> None:
    r = client.post("/recommend", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"] == "invalid_request"


def test_similar_and_unknown_item(client: TestClient, train: Dataset) -> None:
    item = str(train.items.ids[0])
    body = client.get(f"/similar/{item}?k=4").json()
    assert body["item_id"] == item and len(body["recommendations"]) == 4
    assert item not in {i["item_id"] for i in body["recommendations"]}
    posted = client.post("/similar", json={"item_id": item, "k": 4}).json()
    assert posted["recommendations"] == body["recommendations"]
    r = client.get("/similar/no-such-item")
    assert r.status_code == 404 and r.json()["error"] == "unknown_item" and "no-such-item" in r.json()["message"]


def test_popular_by_genre(client: TestClient, train: Dataset) -> None:
    body = client.get("/popular?k=5&genre=Drama").json()
    assert len(body["recommendations"]) == 5 and all("Drama" in i["genres"] for i in body["recommendations"])
    scores = [i["score"] for i in body["recommendations"]]
    assert scores == sorted(scores, reverse=True)
    assert client.get("/popular?genre=Nope").status_code == 422


def test_item_and_history(client: TestClient, train: Dataset) -> None:
    item = str(train.items.ids[5])
    body = client.get(f"/items/{item}").json()
    row = train.item_meta.row(5, named=True)
    assert body["title"] == row["title"] and body["year"] == row["year"] and body["genres"] == row["genres"]
    assert body["n_interactions"] == train.to_frame().filter(item_id=item).height
    assert client.get("/items/nope").status_code == 404
    user = user_with_history(train, 10)
    hist = client.get(f"/users/{user}/history?limit=3").json()
    assert hist["total"] == train.to_frame().filter(user_id=user).height and len(hist["items"]) == 3
    assert client.get("/users/nobody/history").status_code == 404
    assert client.get(f"/users/{user}/history?limit=0").status_code == 422


def test_request_log_and_trace(client: TestClient, writer: FakeWriter, train: Dataset) -> None:
    user = user_with_history(train, 10)
    body = client.get(f"/recommend/{user}?k=3").json()
    rid = body["provenance"]["request_id"]
    assert writer.pending == 1  # submitted, not yet written
    trace = client.get(f"/trace/{rid}")
    assert trace.status_code == 200
    rec = trace.json()
    assert rec["user_id"] == user and rec["endpoint"] == "recommend" and rec["model_version"] == 1
    assert rec["item_ids"] == [i["item_id"] for i in body["recommendations"]]
    assert rec["provenance"]["data_snapshot_id"] == train.snapshot_id
    assert client.get("/trace/unknown-id").status_code == 404


def test_full_request_log_is_counted(settings: Settings, registry: FakeRegistry) -> None:
    writer = FakeWriter(maxsize=2)
    with TestClient(create_app(settings, registry=registry, request_log=writer)) as c:
        wait_ready(c)
        for _ in range(5):
            assert c.get("/popular?k=2").status_code == 200  # a full log never fails a request
        text = c.get("/metrics").text
    assert "tastebud_serving_request_log_dropped_total 3.0" in text


def test_no_model_means_503_never_mock(settings: Settings) -> None:
    empty = FakeRegistry("ml", {}, {})
    with TestClient(create_app(settings, registry=empty, request_log=FakeWriter())) as c:
        r = c.get("/recommend/1")
        assert r.status_code == 503 and r.json()["error"] == "no_model"
        assert c.get("/health/ready").status_code == 503
        health = c.get("/health")
        assert health.status_code == 200 and health.json()["status"] == "starting"


def test_unexpected_error_is_json_500(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = client.app.state.holder.current.engine

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(engine, "popular", boom)
    r = client.get("/popular")
    assert r.status_code == 500
    assert r.json() == {"error": "internal_error", "message": "internal server error; the incident is logged"}
    assert "Traceback" not in r.text and "secret" not in r.text


def test_metrics_and_openapi(client: TestClient, train: Dataset) -> None:
    client.get(f"/recommend/{user_with_history(train, 10)}?k=3")
    client.get("/recommend/nobody?k=3")
    client.get("/similar/no-such-item")
    text = client.get("/metrics").text
    assert 'tastebud_serving_requests_total{method="GET",route="/recommend/{user_id}",status="200"} 2.0' in text
    assert 'route="/similar/{item_id}",status="404"' in text
    assert 'tastebud_serving_recommendations_total{endpoint="recommend",fallback_reason="unknown_user",' in text
    assert "tastebud_serving_model_info{" in text and 'version="1"' in text
    assert 'tastebud_serving_model_switches_total{outcome="success",trigger="startup"} 1.0' in text
    spec = client.get("/openapi.json").json()
    for path in ("/recommend/{user_id}", "/recommend", "/similar/{item_id}", "/popular", "/trace/{request_id}",
                 "/admin/models/switch", "/models", "/health/ready", "/items/{item_id}"):  # fmt: skip
        assert path in spec["paths"]


def test_route_table_is_flat_with_the_hot_route_first(settings: Settings, registry: FakeRegistry) -> None:
    """Every route is matched in one walk of the app's own table (no nested router on the way), /recommend first."""
    from fastapi.routing import APIRoute

    from tastebud.serving.routes import recommend, similar

    app = create_app(settings, registry=registry, request_log=FakeWriter(), watch=False)
    routes = app.router.routes
    nested = [type(r).__name__ for r in routes if not hasattr(r, "path_regex")]
    assert nested == [], f"routes matched through a nested router: {nested}"
    first = routes[0]
    assert isinstance(first, APIRoute) and first.path == "/recommend/{user_id}" and first.methods == {"GET"}
    api = [r for r in routes if isinstance(r, APIRoute)]
    assert [r for r in api if r in similar.router.routes] == similar.router.routes  # each module's routes, once
    assert len(api) == len({(r.path, frozenset(r.methods)) for r in api})
    assert set(first.tags) == {"recommend"} and recommend.router.routes[0] is first
    spec = app.openapi()
    assert spec["paths"]["/recommend/{user_id}"]["get"]["tags"] == ["recommend"]
    assert spec["paths"]["/similar/{item_id}"]["get"]["tags"] == ["similar"]


async def _fine(request: Request) -> Response:
    return Response()


async def _extra(request: Request, k: int) -> Response:
    return Response()


def _blocking(request: Request) -> Response:
    return Response()


async def _returns_dict(request: Request) -> dict[str, int]:
    return {}


async def _unresolved(request: Request) -> NoSuchType:  # type: ignore[name-defined]  # noqa: F821
    return Response()


def test_hot_route_skips_fastapis_handler_and_refuses_endpoints_it_would_change() -> None:
    """GET /recommend's endpoint is called as it is; a RequestRoute refuses any endpoint FastAPI would have to help."""
    from tastebud.serving.routes import recommend
    from tastebud.serving.routes._shared import RequestRoute

    hot = recommend.router.routes[0]
    assert isinstance(hot, RequestRoute) and hot.get_route_handler() is recommend.recommend_get
    assert RequestRoute("/fine", _fine).get_route_handler() is _fine
    for endpoint, why in ((_extra, "does not take \\(request: Request\\)"), (_blocking, "is not an async def"),
                          (_returns_dict, "is not annotated to return a Response"),
                          (_unresolved, "annotations do not resolve")):  # fmt: skip
        with pytest.raises(TypeError, match=f"endpoint {endpoint.__name__}.{{0,2}} ?{why}"):
            RequestRoute("/x", endpoint)
    with pytest.raises(TypeError, match="has dependencies"):
        RequestRoute("/x", _fine, dependencies=[Depends(lambda: None)])


def test_hot_route_errors_and_documentation_unchanged(client: TestClient, train: Dataset) -> None:
    user = user_with_history(train, 10)
    r = client.get(f"/recommend/{user}?k=0")
    assert r.status_code == 422 and r.json()["error"] == "invalid_request" and "k" in r.text
    r = client.get(f"/recommend/{user}?explain=maybe")
    assert r.status_code == 422 and "explain" in r.text
    r = client.get(f"/recommend/{user}?k=3")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json" and r.headers["x-request-id"]
    op = client.get("/openapi.json").json()["paths"]["/recommend/{user_id}"]["get"]
    assert {p["name"] for p in op["parameters"]} >= {"user_id", "k", "exclude_seen", "explain", "genres"}
    assert op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/RecommendResponse")
    assert "422" in op["responses"]


def test_popular_parses_its_query_by_hand_with_the_same_errors_and_documentation(client: TestClient) -> None:
    from tastebud.serving.routes import popular
    from tastebud.serving.routes._shared import RequestRoute

    assert isinstance(popular.router.routes[0], RequestRoute)
    assert client.get("/popular").json()["returned"] == 10  # k's default
    for query, field in (("k=abc", "k"), ("k=0", "k"), ("k=1.5", "k"), ("genre=Nope", "genre")):
        r = client.get(f"/popular?{query}")
        assert r.status_code == 422 and r.json()["error"] == "invalid_request" and field in r.text, (query, r.text)
    body = client.get("/popular?k=3&genre=").json()  # an empty genre is no genre
    assert body["genre"] is None and body["returned"] == 3
    op = client.get("/openapi.json").json()["paths"]["/popular"]["get"]
    assert {p["name"]: p["schema"]["type"] for p in op["parameters"]} == {"k": "integer", "genre": "string"}
    assert op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/PopularResponse")


def test_unknown_route_and_method_are_json(client: TestClient) -> None:
    r = client.get("/no/such/route")
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    r = client.delete("/popular")
    assert r.status_code == 405 and r.json()["error"] == "method_not_allowed"
    assert 'route="unmatched"' in client.get("/metrics").text
