"""API keys with scopes, rate limits, and no server paths in answers (``tastebud.serving.auth``, ``redact``)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tastebud.cli import main
from tastebud.config import Settings, build_settings
from tastebud.data.dataset import Dataset
from tastebud.errors import ConfigError
from tastebud.serving import create_app
from tastebud.serving.auth import (
    AuthMiddleware,
    AuthPolicy,
    RateLimits,
    hash_key,
    presented_key,
    required_scope,
)
from tastebud.serving.redact import redact_paths

from .conftest import FakeRegistry, FakeWriter
from .test_recommend import user_with_history, wait_ready

READ, PRIVATE, EVENTS, ADMIN = "tb_read-key", "tb_private-key", "tb_events-key", "tb_admin-key"
KEYS = {hash_key(READ): ["read"], hash_key(PRIVATE): ["read-private"], hash_key(EVENTS): ["write-events"],
        hash_key(ADMIN): ["admin"]}  # fmt: skip


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def with_auth(settings: Settings, **auth: Any) -> Settings:
    return settings.model_copy(update={"auth": settings.auth.model_copy(update=auth)})


@pytest.fixture
def writer() -> FakeWriter:
    return FakeWriter()


@pytest.fixture
def keyed(settings: Settings, registry: FakeRegistry, writer: FakeWriter) -> Iterator[TestClient]:
    """An app with four keys (one per scope) besides the legacy ``serving.admin_token`` (``s3cret``)."""
    app = create_app(with_auth(settings, keys=KEYS), registry=registry, request_log=writer)
    with TestClient(app, raise_server_exceptions=False) as c:
        wait_ready(c)
        yield c


def metric(client: TestClient, line_start: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# ---------------------------------------------------------------------------------------------- the scope table
@pytest.mark.parametrize(
    ("method", "path", "scope"),
    [
        ("GET", "/health", None), ("GET", "/healthz", None), ("GET", "/health/ready", None), ("GET", "/metrics", None),
        ("GET", "/docs", None), ("GET", "/openapi.json", None),
        ("GET", "/recommend/7", "read"), ("POST", "/recommend", "read"), ("GET", "/similar/3", "read"),
        ("GET", "/popular", "read"), ("GET", "/items/3", "read"), ("GET", "/models", "read"),
        ("GET", "/experiments", "read"), ("GET", "/experiments/x", "read"), ("GET", "/nowhere", "read"),
        ("GET", "/users/7/history", "read-private"), ("GET", "/trace/abc", "read-private"),
        ("POST", "/events", "write-events"), ("POST", "/admin/models/switch", "admin"), ("GET", "/admin/x", "admin"),
    ],
)  # fmt: skip
def test_required_scope_of_each_route(method: str, path: str, scope: str | None) -> None:
    assert required_scope(method, path) == scope


def test_presented_key_bearer_first_then_x_api_key() -> None:
    assert presented_key([(b"authorization", b"Bearer abc")]) == "abc"
    assert presented_key([(b"x-api-key", b" abc ")]) == "abc"
    assert presented_key([(b"authorization", b"Bearer one"), (b"x-api-key", b"two")]) == "one"
    assert presented_key([(b"authorization", b"Basic abc")]) is None
    assert presented_key([(b"authorization", b"abc")]) is None
    assert presented_key([]) is None


def test_keys_from_the_environment_are_hashes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    digest = hash_key(READ)
    monkeypatch.setenv("TASTEBUD_AUTH__KEYS", json.dumps({digest.upper(): ["read", "write-events"]}))
    monkeypatch.setenv("TASTEBUD_AUTH__RATE_LIMIT_PER_KEY", "100/second")
    auth = build_settings(home=tmp_path).auth
    assert auth.keys == {digest: ["read", "write-events"]} and auth.rate_limit_per_key == "100/second"
    monkeypatch.setenv("TASTEBUD_AUTH__KEYS", json.dumps({READ: ["read"]}))  # a key in clear, not its hash
    with pytest.raises(ConfigError, match="sha256"):
        build_settings(home=tmp_path)
    monkeypatch.setenv("TASTEBUD_AUTH__KEYS", json.dumps({digest: ["root"]}))
    with pytest.raises(ConfigError, match=r"auth\.keys"):
        build_settings(home=tmp_path)
    monkeypatch.delenv("TASTEBUD_AUTH__KEYS")
    monkeypatch.setenv("TASTEBUD_AUTH__RATE_LIMIT_PER_KEY", "plenty")
    with pytest.raises(ConfigError, match="rate limit"):
        build_settings(home=tmp_path)


# ---------------------------------------------------------------------------------------------- open (embedded)
def test_no_keys_is_open_as_before_and_says_so(
    settings: Settings, registry: FakeRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="tastebud.serving.app"):
        app = create_app(settings, registry=registry, request_log=FakeWriter())
    assert any("OPEN" in r.getMessage() and "TASTEBUD_AUTH__KEYS" in r.getMessage() for r in caplog.records)
    with TestClient(app) as c:
        wait_ready(c)
        assert c.get("/recommend/nobody?k=2").status_code == 200
        assert c.get("/trace/nope").status_code == 404  # open: no key needed, the id is unknown
        # admin stays guarded by serving.admin_token, before the body is parsed
        assert c.post("/admin/models/switch", content=b"{not json").status_code == 401
        assert c.post("/admin/models/switch", json={"version": 2}, headers={"X-API-Key": "s3cret"}).status_code == 200


def test_required_without_any_key_refuses_to_start(settings: Settings, registry: FakeRegistry) -> None:
    no_token = settings.model_copy(update={"serving": settings.serving.model_copy(update={"admin_token": None})})
    with pytest.raises(ConfigError, match="no API key"):
        create_app(with_auth(no_token, required=True), registry=registry)
    # the admin token alone is a key: required then means every non-public route needs it
    app = create_app(with_auth(settings, required=True), registry=registry, request_log=FakeWriter())
    with TestClient(app) as c:
        wait_ready(c)
        assert c.get("/recommend/nobody?k=1").status_code == 401
        assert c.get("/recommend/nobody?k=1", headers=bearer("s3cret")).status_code == 200


# ---------------------------------------------------------------------------------------------- keys and scopes
def test_public_routes_need_no_key(keyed: TestClient) -> None:
    for path in ("/health", "/healthz", "/health/ready", "/metrics", "/openapi.json", "/docs"):
        assert keyed.get(path).status_code == 200, path


def test_reads_need_a_key_with_the_read_scope(keyed: TestClient) -> None:
    for path in ("/recommend/nobody?k=1", "/popular?k=1", "/models", "/experiments"):
        r = keyed.get(path)
        assert r.status_code == 401 and r.json()["error"] == "unauthorized", path
        assert r.headers["www-authenticate"] == "Bearer"
    assert keyed.get("/recommend/nobody?k=1", headers=bearer("tb_wrong")).status_code == 401
    assert keyed.get("/recommend/nobody?k=1", headers={"Authorization": READ}).status_code == 401  # no scheme
    assert keyed.get("/recommend/nobody?k=1", headers=bearer(READ)).status_code == 200
    assert keyed.get("/recommend/nobody?k=1", headers={"X-API-Key": READ}).status_code == 200
    assert keyed.post("/recommend", json={"user_id": "nobody", "k": 1}, headers=bearer(PRIVATE)).status_code == 200
    r = keyed.get("/recommend/nobody?k=1", headers=bearer(EVENTS))
    assert r.status_code == 403 and r.json()["error"] == "forbidden" and "'read'" in r.json()["message"]


def test_history_and_trace_need_read_private(keyed: TestClient, train: Dataset) -> None:
    user = user_with_history(train, 5)
    for path in (f"/users/{user}/history", "/trace/nope"):
        assert keyed.get(path).status_code == 401, path
        assert keyed.get(path, headers=bearer(READ)).status_code == 403, path
        assert keyed.get(path, headers=bearer(EVENTS)).status_code == 403, path
    assert keyed.get(f"/users/{user}/history", headers=bearer(PRIVATE)).status_code == 200
    assert keyed.get(f"/users/{user}/history", headers=bearer(ADMIN)).status_code == 200
    assert keyed.get("/trace/nope", headers=bearer(PRIVATE)).status_code == 404  # admitted; the id is unknown


def test_events_need_write_events(keyed: TestClient) -> None:
    event = [{"event_id": "e1", "user_id": "u1", "item_id": "1", "event_type": "view"}]
    assert keyed.post("/events", json=event).status_code == 401
    assert keyed.post("/events", json=event, headers=bearer(READ)).status_code == 403
    assert keyed.post("/events", json=event, headers=bearer(PRIVATE)).status_code == 403
    # admitted (this app has no event store: 503 from the route itself)
    assert keyed.post("/events", json=event, headers=bearer(EVENTS)).status_code not in (401, 403)
    assert keyed.post("/events", content=b"{", headers=bearer(READ)).status_code == 403  # before the body


def test_admin_checks_the_key_before_the_body(keyed: TestClient) -> None:
    """A malformed body without a key is a 401 (not a 422); a key without admin a 403; an admin key works."""
    as_json = {"content-type": "application/json"}
    for body in (b"{not json", b'{"version": 2, "alias": "x"}', b"[]"):
        r = keyed.post("/admin/models/switch", content=body, headers=as_json)
        assert r.status_code == 401 and r.json()["error"] == "unauthorized", body
        r = keyed.post("/admin/models/switch", content=body, headers={**bearer(READ), **as_json})
        assert r.status_code == 403 and r.json()["error"] == "forbidden", body
        r = keyed.post("/admin/models/switch", content=body, headers={**bearer(ADMIN), **as_json})
        assert r.status_code == 422, body
    assert keyed.post("/admin/models/switch", json={"version": 2}, headers=bearer(PRIVATE)).status_code == 403
    r = keyed.post("/admin/models/switch", json={"version": 2}, headers=bearer(ADMIN))
    assert r.status_code == 200 and r.json()["serving"]["version"] == 2
    # serving.admin_token stays an admin key, as a bearer token or an X-API-Key
    assert keyed.post("/admin/models/switch", json={"version": 1}, headers=bearer("s3cret")).status_code == 200
    assert keyed.get("/users/nobody/history", headers={"X-API-Key": "s3cret"}).status_code != 403


def test_admin_disabled_is_refused_before_the_body(settings: Settings, registry: FakeRegistry) -> None:
    no_admin = settings.model_copy(update={"serving": settings.serving.model_copy(update={"admin_token": None})})
    with TestClient(create_app(with_auth(no_admin, keys={hash_key(READ): ["read"]}), registry=registry)) as c:
        r = c.post("/admin/models/switch", content=b"{not json", headers=bearer(READ))
        assert r.status_code == 403 and r.json()["error"] == "admin_disabled"


def test_a_refused_request_never_reads_its_body_nor_reaches_the_app() -> None:
    policy = AuthPolicy({hash_key(READ): frozenset({"read"}), hash_key(ADMIN): frozenset({"admin"})}, enforced=True)
    reached: list[Any] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        reached.append(scope)

    async def receive() -> Any:
        raise AssertionError("the body was read")

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    middleware = AuthMiddleware(inner, policy, RateLimits(None, None))
    for headers, status in (([], 401), ([(b"authorization", b"Bearer " + READ.encode())], 403)):
        sent.clear()
        scope = {"type": "http", "method": "POST", "path": "/admin/models/switch", "headers": headers}
        asyncio.run(middleware(scope, receive, send))
        assert sent[0]["status"] == status and scope["tastebud.rejected"] == status
    assert reached == []


def test_a_root_path_prefix_does_not_change_the_scope(settings: Settings, registry: FakeRegistry) -> None:
    """Behind a proxy that serves the API under a prefix, ``/api/admin/...`` still needs ``admin``."""
    app = create_app(with_auth(settings, keys=KEYS), registry=registry, request_log=FakeWriter())
    with TestClient(app, root_path="/api") as c:
        wait_ready(c)
        r = c.post("/api/admin/models/switch", json={"version": 2}, headers=bearer(READ))
        assert r.status_code == 403 and r.json()["error"] == "forbidden"
        assert c.get("/api/health").status_code == 200
        assert c.post("/api/admin/models/switch", json={"version": 2}, headers=bearer(ADMIN)).status_code == 200


def test_refused_requests_are_counted_by_route_and_status_not_logged(keyed: TestClient, writer: FakeWriter) -> None:
    line = 'tastebud_serving_requests_total{method="GET",route="/recommend/{user_id}",status="401"}'
    before = metric(keyed, line)
    writer.flush()
    logged = len(writer.store.records)
    for _ in range(3):
        keyed.get("/recommend/nobody?k=1")
    assert metric(keyed, line) == before + 3
    assert metric(keyed, 'tastebud_serving_rejected_requests_total{reason="unauthorized"}') >= 3
    writer.flush()
    assert len(writer.store.records) == logged  # refusals are not recommendation requests


# ---------------------------------------------------------------------------------------------- rate limits
def test_rate_limit_per_key_answers_429_with_retry_after(
    settings: Settings, registry: FakeRegistry, writer: FakeWriter
) -> None:
    app = create_app(with_auth(settings, keys=KEYS, rate_limit_per_key="3/minute"), registry=registry,
                     request_log=writer)  # fmt: skip
    with TestClient(app) as c:
        wait_ready(c)
        codes = [c.get("/recommend/nobody?k=1", headers=bearer(READ)).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        r = c.get("/popular?k=1", headers={"X-API-Key": READ})  # same key by either header
        assert r.status_code == 429 and r.json()["error"] == "rate_limited"
        assert 1 <= int(r.headers["retry-after"]) <= 60 and r.json()["retry_after_s"] == int(r.headers["retry-after"])
        assert c.get("/recommend/nobody?k=1", headers=bearer(PRIVATE)).status_code == 200  # another key's budget
        assert c.get("/health").status_code == 200 and c.get("/metrics").status_code == 200  # public: unlimited
        line = 'tastebud_serving_requests_total{method="GET",route="/popular",status="429"}'
        assert metric(c, line) == 1


def test_rate_limit_per_client_applies_before_authentication(settings: Settings, registry: FakeRegistry) -> None:
    app = create_app(with_auth(settings, keys=KEYS, rate_limit_per_client="2/minute"), registry=registry,
                     request_log=FakeWriter())  # fmt: skip
    with TestClient(app) as c:
        wait_ready(c)
        # wrong keys count too: guessing keys is limited per address
        codes = [c.get("/recommend/nobody?k=1", headers=bearer(f"tb_guess{i}")).status_code for i in range(3)]
        assert codes == [401, 401, 429]
        assert c.get("/recommend/nobody?k=1", headers=bearer(READ)).status_code == 429
        assert c.get("/health/ready").status_code == 200


def test_rate_limits_in_open_mode_use_the_client_address(settings: Settings, registry: FakeRegistry) -> None:
    app = create_app(with_auth(settings, rate_limit_per_client="2/minute"), registry=registry, request_log=FakeWriter())
    with TestClient(app) as c:
        wait_ready(c)
        assert [c.get("/popular?k=1").status_code for _ in range(3)] == [200, 200, 429]


def test_a_failing_rate_limit_storage_lets_requests_through(caplog: pytest.LogCaptureFixture) -> None:
    limits = RateLimits("1/minute", None, storage_uri="memory://")

    class Broken:
        async def hit(self, *args: Any) -> bool:
            raise ConnectionError("redis is down")

    async def check() -> float | None:
        limits._get()  # binds to this loop
        limits._limiter = Broken()
        return await limits.check(limits.per_key, "key", "k")

    assert asyncio.run(check()) is None
    assert "redis is down" in caplog.text


# ---------------------------------------------------------------------------------------------- OpenAPI
def test_openapi_documents_the_security_schemes_and_scopes(keyed: TestClient) -> None:
    doc = keyed.get("/openapi.json").json()
    schemes = doc["components"]["securitySchemes"]
    assert schemes["bearerAuth"]["type"] == "http" and schemes["bearerAuth"]["scheme"] == "bearer"
    assert schemes["apiKeyHeader"]["name"] == "X-API-Key"
    paths = doc["paths"]
    assert paths["/recommend/{user_id}"]["get"]["security"] == [{"bearerAuth": ["read"]}, {"apiKeyHeader": ["read"]}]
    assert paths["/users/{user_id}/history"]["get"]["security"][0] == {"bearerAuth": ["read-private"]}
    assert paths["/events"]["post"]["security"][0] == {"bearerAuth": ["write-events"]}
    assert paths["/admin/models/switch"]["post"]["security"][0] == {"bearerAuth": ["admin"]}
    assert paths["/health"]["get"]["security"] == []
    assert {"401", "403", "429"} <= set(paths["/popular"]["get"]["responses"])


# ---------------------------------------------------------------------------------------------- CLI
def test_keys_new_prints_a_key_that_the_printed_setting_accepts(
    capsys: pytest.CaptureFixture[str], settings: Settings, registry: FakeRegistry
) -> None:
    assert main(["keys", "new", "--scope", "read", "--scope", "write-events", "--json"]) == 0
    made = json.loads(capsys.readouterr().out)
    assert made["sha256"] == hash_key(made["key"]) and made["key"] not in made["env"]
    keys = json.loads(made["env"].split("=", 1)[1])
    assert keys == {made["sha256"]: ["read", "write-events"]}
    app = create_app(with_auth(settings, keys=keys), registry=registry, request_log=FakeWriter())
    with TestClient(app) as c:
        wait_ready(c)
        assert c.get("/popular?k=1", headers=bearer(made["key"])).status_code == 200
        assert c.get("/trace/x", headers=bearer(made["key"])).status_code == 403
    assert main(["keys", "new", "--scope", "root"]) == 1
    assert main(["keys", "new"]) == 1


# ---------------------------------------------------------------------------------------------- no paths leaked
def test_redact_paths_keeps_names() -> None:
    assert redact_paths("/srv/home/bundles/x/model/a.npy: sha256 mismatch") == "a.npy: sha256 mismatch"
    assert redact_paths("file:///srv/mlflow/artifacts/1/bundle: cannot download") == "bundle: cannot download"
    assert redact_paths("/srv/b/model/a.npy bad", {"/srv/b": "models:/ml/3"}) == "models:/ml/3/model/a.npy bad"
    for kept in ("models:/ml/3", "http://host:5000/api/2.0/x", "genre a/b", "no such file: x.npy"):
        assert redact_paths(kept) == kept
    assert redact_paths(None) is None


def test_no_answer_shows_a_server_path(
    settings: Settings, bundles: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """/models, /health, the 503 without a model and a refused switch name bundles, never their directories."""
    roots = {str(tmp_path_factory.getbasetemp()), str(tmp_path_factory.getbasetemp().resolve()), str(settings.home)}
    registry = FakeRegistry("ml", {1: bundles["corrupt"], 2: bundles["als"], 3: bundles["corrupt"]}, {"champion": 1})
    with TestClient(create_app(settings, registry=registry, request_log=FakeWriter())) as c:
        health: dict[str, Any] = {}
        for _ in range(500):  # the champion (corrupt) is refused in the background
            health = c.get("/health").json()
            if health["last_error"]:
                break
        assert health["status"] == "degraded" and "sha256 mismatch" in health["last_error"]
        assert "models:/ml/1" in health["last_error"]
        answers = [
            c.get("/health"), c.get("/health/ready"), c.get("/models"), c.get("/recommend/nobody?k=1"),
            c.post("/admin/models/switch", json={"version": 3}, headers=bearer("s3cret")),
            c.post("/admin/models/switch", json={"version": 2}, headers=bearer("s3cret")), c.get("/models"),
        ]  # fmt: skip
        assert [r.status_code for r in answers] == [200, 503, 200, 503, 409, 200, 200]
        assert answers[3].json()["error"] == "no_model" and "sha256 mismatch" in answers[3].json()["message"]
        assert [v["source"] for v in answers[2].json()["versions"]] == ["models:/ml/1", "models:/ml/2", "models:/ml/3"]
        for r in answers:
            for root in roots:
                assert root not in r.text, (r.request.url, r.text)


def test_own_http_clients_send_the_configured_key(monkeypatch: pytest.MonkeyPatch) -> None:
    from tastebud.serving.auth import client_headers
    from tastebud.stream.replay import HttpSink

    monkeypatch.delenv("TASTEBUD_API_KEY", raising=False)
    assert client_headers() == {}
    sink = HttpSink("http://127.0.0.1:9")
    assert "authorization" not in sink.client.headers
    sink.close()
    monkeypatch.setenv("TASTEBUD_API_KEY", " k-123 ")
    assert client_headers() == {"Authorization": "Bearer k-123"}
    sink = HttpSink("http://127.0.0.1:9")
    assert sink.client.headers["authorization"] == "Bearer k-123"
    sink.close()
