"""Every studio page driven by Streamlit's ``AppTest`` against a real API (``tastebud serve`` in a child process)
over a home with two registered versions: widgets are set and clicked, what the page shows is read back.

Failure paths: the API on a closed port (every page shows a banner, none a traceback; the operator pages still read
the registry), an API without a model, an unknown user (explained as a fallback), a wrong admin token (refused).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from live_server import ServerProcess
from tastebud.studio import API_ENV, APP_PATH
from tastebud.studio.client import like_events

from .conftest import MODEL_NAME

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PAGES = ("discover", "user", "models", "operations")
ADMIN_TOKEN = "s3cret"  # what ServerProcess configures


def open_app(monkeypatch: pytest.MonkeyPatch, url: str, home: Path, page: str = "discover") -> AppTest:
    """The studio against ``url`` over ``home``, run once and switched to ``page``."""
    monkeypatch.setenv(API_ENV, url)
    monkeypatch.setenv("TASTEBUD_HOME", str(home))
    monkeypatch.setenv("TASTEBUD_SERVING__MODEL_NAME", MODEL_NAME)  # what the operator pages read without the API
    monkeypatch.delenv("TASTEBUD_API_KEY", raising=False)
    st.cache_data.clear()  # caches live in the process: one test's answers (trending, catalogue) not another's
    at = AppTest.from_file(str(APP_PATH), default_timeout=60)
    at.run()
    if page != "discover":
        at.switch_page(f"pages/{page}.py").run()
    assert not at.exception, at.exception
    return at


def texts(at: AppTest, kind: str) -> list[str]:
    return [str(e.value) for e in getattr(at, kind)]


def charts(at: AppTest) -> int:
    return len(at.get("vega_lite_chart"))


def open_tab(at: AppTest, key: str, label: str) -> None:
    """Switch the page's tabs ``key`` to ``label`` (lazy tabs: only the open one runs) and rerun."""
    at.session_state[key] = label
    at.run()
    assert not at.exception, at.exception


# ---------------------------------------------------------------------------------------------------- discover
def test_discover_random_user_gets_explained_recommendations(
    monkeypatch: pytest.MonkeyPatch, api: ServerProcess, studio_home: Path
) -> None:
    at = open_app(monkeypatch, api.url, studio_home)
    assert any("Served: **studio-test** version 1" in c for c in texts(at, "caption"))
    at.button(key="random_user").click().run()
    assert not at.exception
    user = at.text_input(key="discover_user").value
    assert user  # a training user of the served version
    cards = [m for m in texts(at, "markdown") if m.startswith("1. **")]
    assert cards, texts(at, "markdown")
    captions = texts(at, "caption")
    assert any(c.startswith("Because you liked *") for c in captions), captions  # titles, not ids
    assert any("score" in c for c in captions)
    assert not at.info  # a known user: no fallback


def test_discover_unknown_user_is_explained_as_a_fallback(
    monkeypatch: pytest.MonkeyPatch, api: ServerProcess, studio_home: Path
) -> None:
    at = open_app(monkeypatch, api.url, studio_home)
    at.text_input(key="discover_user").input("nobody-at-all").run()
    assert not at.exception
    info = " ".join(texts(at, "info"))
    assert "Fallback" in info and "unknown to the model" in info and "unknown_user" in info
    assert any(m.startswith("1. **") for m in texts(at, "markdown"))  # popular items still shown


def test_discover_start_fresh_posts_picks_and_personalises_live(
    monkeypatch: pytest.MonkeyPatch, api: ServerProcess, studio_home: Path
) -> None:
    at = open_app(monkeypatch, api.url, studio_home)
    at.radio(key="discover_mode").set_value("Start fresh").run()
    picks = at.multiselect(key="discover_picks")
    assert len(picks.options) > 20
    for value in list(picks.options)[:3]:
        picks = at.multiselect(key="discover_picks").select(value)
    at.run()
    at.button(key="save_picks").click().run()
    assert not at.exception
    assert any("Stored 3 like(s)" in s for s in texts(at, "success")), texts(at, "success")
    fresh = at.session_state["fresh_user"]
    assert fresh.startswith("studio-")
    assert any("Personalised live from 3 recent event(s)" in c for c in texts(at, "caption")), texts(at, "caption")
    assert not at.info  # no fallback: the real-time path answered
    assert len([m for m in texts(at, "markdown") if m[:1].isdigit()]) == 10
    stored = api.get(f"/recommend/{fresh}?k=3").json()
    assert stored["realtime_events"] == 3 and not stored["is_fallback"]


def test_discover_filters_moods_and_surprise(
    monkeypatch: pytest.MonkeyPatch, api: ServerProcess, studio_home: Path
) -> None:
    at = open_app(monkeypatch, api.url, studio_home)
    at.text_input(key="discover_user").input("1").run()
    genre = at.multiselect(key="discover_genres").options[0]
    at.multiselect(key="discover_genres").select(genre).run()
    assert not at.exception
    facts = [c for c in texts(at, "caption") if "score" in c]
    assert facts and all(genre in c for c in facts), facts  # every item has the genre (API filter)
    at.multiselect(key="discover_genres").unselect(genre).run()
    at.selectbox(key="discover_mood").select("thrilling").run()
    assert any("fit the mood" in c for c in texts(at, "caption"))
    at.toggle(key="discover_surprise").set_value(True).run()
    assert not at.exception
    assert any("Surprise" in c for c in texts(at, "caption"))
    assert any("popularity" in c for c in texts(at, "caption"))
    at.slider(key="discover_k").set_value(5).run()
    assert len([m for m in texts(at, "markdown") if m[:1].isdigit()]) == 5


def test_discover_similar_items_and_top_charts(
    monkeypatch: pytest.MonkeyPatch, api: ServerProcess, studio_home: Path
) -> None:
    top = api.get("/popular?k=1").json()["recommendations"][0]
    assert api.post("/events", json=like_events("trend-setter", [top["item_id"]])).status_code == 200
    at = open_app(monkeypatch, api.url, studio_home)
    assert charts(at) == 0  # lazy tabs: the top charts run when their tab is opened
    open_tab(at, "discover_tab", "Top charts")
    assert charts(at) == 3  # overall, per genre, trending (the store's recent events)
    open_tab(at, "discover_tab", "Similar movies")
    first = top["title"]
    at.text_input(key="similar_query").input(first.split()[0]).run()
    assert not at.exception
    assert at.selectbox(key="similar_pick").value is not None
    assert any(s.startswith("Like ") for s in texts(at, "subheader"))
    at.text_input(key="similar_query").input("no such title, surely").run()
    assert any("No movie title contains" in w for w in texts(at, "warning"))


def test_discover_tabs_run_when_opened_and_keep_what_was_typed(
    monkeypatch: pytest.MonkeyPatch, api: ServerProcess, studio_home: Path
) -> None:
    at = open_app(monkeypatch, api.url, studio_home)
    assert [t.label for t in at.tabs] == ["For you", "Similar movies", "Top charts"]
    at.text_input(key="discover_user").input("1").run()
    at.slider(key="discover_k").set_value(5).run()
    assert len([m for m in texts(at, "markdown") if m[:1].isdigit()]) == 5
    open_tab(at, "discover_tab", "Top charts")
    assert charts(at) == 3
    assert not [m for m in texts(at, "markdown") if m[:1].isdigit()]  # the closed tab drew nothing
    assert "discover_user" not in [t.key for t in at.text_input]
    open_tab(at, "discover_tab", "For you")
    assert at.text_input(key="discover_user").value == "1"  # typed before the look at the charts
    assert at.slider(key="discover_k").value == 5
    assert len([m for m in texts(at, "markdown") if m[:1].isdigit()]) == 5 and charts(at) == 0


# ---------------------------------------------------------------------------------------------------- user
def test_user_page_shows_history_and_versions_side_by_side(
    monkeypatch: pytest.MonkeyPatch, api: ServerProcess, studio_home: Path
) -> None:
    at = open_app(monkeypatch, api.url, studio_home, "user")
    assert any("Type a user id" in i for i in texts(at, "info"))
    at.text_input(key="user_id").input("1").run()
    assert not at.exception
    assert set(at.multiselect(key="user_versions").value) == {"v1 (champion)", "v2 (challenger)"}
    markdown = texts(at, "markdown")
    assert "**served: v1**" in markdown and "**v1 (champion)**" in markdown and "**v2 (challenger)**" in markdown
    assert any("training interaction(s)" in c for c in texts(at, "caption"))
    assert any("Jaccard" in c for c in texts(at, "caption"))
    assert any("⭐" in m for m in markdown)  # served and v1 are the same model: shared items are marked
    assert charts(at) == 1
    at.text_input(key="user_id").input("stranger").run()
    assert not at.exception
    assert any("not in the served model's training data" in i for i in texts(at, "info"))
    assert any("unknown user: popular items" in c for c in texts(at, "caption"))


# ---------------------------------------------------------------------------------------------------- models
def test_models_page_versions_intervals_decisions_drift(
    monkeypatch: pytest.MonkeyPatch, api: ServerProcess, studio_home: Path
) -> None:
    at = open_app(monkeypatch, api.url, studio_home, "models")
    versions = at.table[0].value
    assert sorted(versions["version"]) == [1, 2]
    assert set(versions["aliases"]) == {"champion", "challenger"}
    assert charts(at) == 1 and not at.dataframe  # metric intervals; the other tabs run when opened
    at.selectbox(key="models_metric").select("recall").run()
    assert not at.exception
    open_tab(at, "models_tab", "Decisions")
    assert list(at.dataframe[0].value["action"]) == ["promoted"] and charts(at) == 0
    open_tab(at, "models_tab", "Drift")
    assert any("Overall drift level: **ok**" in s for s in texts(at, "success"))
    assert charts(at) == 1  # drift shares
    open_tab(at, "models_tab", "Versions")
    assert at.selectbox(key="models_metric").value == "recall"  # kept while the other tabs were open


def test_models_promote_needs_the_admin_token_and_rollback_returns(
    monkeypatch: pytest.MonkeyPatch, api: ServerProcess, studio_home: Path
) -> None:
    from tastebud.config import build_settings
    from tastebud.registry import CHAMPION, ModelRegistry, read_decisions

    settings = build_settings(home=studio_home)
    registry = ModelRegistry(settings)
    at = open_app(monkeypatch, api.url, studio_home, "models")
    open_tab(at, "models_tab", "Promote / roll back")
    at.selectbox(key="promote_version").select(2).run()
    at.button(key="promote").click().run()
    assert any("Enter the admin token" in w for w in texts(at, "warning"))
    at.text_input(key="admin_token").input("wrong").run()
    at.button(key="promote").click().run()
    assert not at.exception
    assert any("Refused by the API" in e for e in texts(at, "error")), texts(at, "error")
    assert api.get("/health").json()["model"]["version"] == 1 and registry.get_alias(MODEL_NAME, CHAMPION) == 1
    at.text_input(key="admin_token").input(ADMIN_TOKEN).run()
    at.button(key="promote").click().run()
    assert not at.exception, at.exception
    success = texts(at, "success")
    assert any("**Promoted** version 2" in s and "now serves version 2" in s for s in success), success
    assert any("vs champion" in s for s in success)  # the gate's reasons
    assert api.get("/health").json()["model"]["version"] == 2
    assert registry.get_alias(MODEL_NAME, CHAMPION) == 2  # a real promotion: the registry's alias moved
    last = read_decisions(settings, MODEL_NAME)[-1]
    assert (last.action, last.version, last.actor) == ("promoted", 2, "studio")
    assert "version 1" in at.button(key="rollback").label  # the page reran: roll back targets the champion before
    at.button(key="rollback").click().run()
    assert any("**Rolled back**" in s and "now serves version 1" in s for s in texts(at, "success"))
    assert api.get("/health").json()["model"]["version"] == 1 and registry.get_alias(MODEL_NAME, CHAMPION) == 1
    assert read_decisions(settings, MODEL_NAME)[-1].action == "rolled_back"
    at.selectbox(key="promote_version").select(1).run()  # the champion again: already promoted
    at.button(key="promote").click().run()
    assert not at.exception and any("Nothing to do" in w for w in texts(at, "warning")), texts(at, "warning")


# ---------------------------------------------------------------------------------------------------- operations
def test_operations_page_kpis_timeline_experiments(
    monkeypatch: pytest.MonkeyPatch, api: ServerProcess, studio_home: Path
) -> None:
    for _ in range(5):
        api.get("/recommend/1?k=5")
    at = open_app(monkeypatch, api.url, studio_home, "operations")
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["API status"] == "ok"
    assert int(metrics["Requests"].replace(",", "")) >= 5
    assert {"p50", "p95", "p99", "Error ratio", "Fallback rate", "Availability"} <= set(metrics)
    assert float(metrics["Availability"].rstrip("%")) > 0
    assert charts(at) == 1  # traffic; the other tabs run when opened
    assert f"{MODEL_NAME}:1" in list(at.table[0].value["model"])  # requests per served version
    open_tab(at, "ops_tab", "Latency")
    assert charts(at) == 1  # latency percentiles
    latency = at.table[0].value
    assert f"{MODEL_NAME}:1" in list(latency["model"]) and {"p50 ms", "p95 ms", "p99 ms"} <= set(latency.columns)
    assert {"p50", "p95", "p99", "Availability"} <= {m.label for m in at.metric}  # the figures head every tab
    open_tab(at, "ops_tab", "Timeline")
    assert charts(at) == 1 and "decision" in list(at.dataframe[0].value["kind"])
    open_tab(at, "ops_tab", "Experiments")
    assert list(at.dataframe[-1].value["name"]) == ["ease-vs-knn"]  # the experiments table
    assert at.selectbox(key="ops_experiment").value == "ease-vs-knn"
    assert any("Decision: none yet" in m and "not started" in m for m in texts(at, "markdown"))
    at.segmented_control(key="ops_window").set_value("15 minutes").run()
    assert not at.exception


# ---------------------------------------------------------------------------------------------------- failures
@pytest.mark.parametrize("page", PAGES)
def test_every_page_shows_a_banner_when_the_api_is_down(
    monkeypatch: pytest.MonkeyPatch, studio_home: Path, closed_url: str, page: str
) -> None:
    at = open_app(monkeypatch, closed_url, studio_home, page)
    assert any("not reachable" in e for e in texts(at, "error")), texts(at, "error")
    if page == "models":  # the registry still answers
        assert sorted(at.table[0].value["version"]) == [1, 2]


class _NoModel(BaseHTTPRequestHandler):
    """An API that is up but has no model: /health says starting, the rest 503."""

    def do_GET(self) -> None:
        if self.path == "/health":
            self._send(200, {"status": "starting", "model": None, "loaded_at": None, "uptime_s": 1.0,
                             "last_error": None})  # fmt: skip
        else:
            self._send(503, {"error": "no_model", "message": "no model loaded"})

    def _send(self, status: int, body: dict[str, object]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def no_model_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NoModel)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("page", ["discover", "user"])
def test_no_model_loaded_is_a_banner(
    monkeypatch: pytest.MonkeyPatch, studio_home: Path, no_model_url: str, page: str
) -> None:
    at = open_app(monkeypatch, no_model_url, studio_home, page)
    assert any("No model is loaded" in e for e in texts(at, "error")), texts(at, "error")


ARTISTS = [{"item_id": f"a{i}", "title": f"Artist {i}", "genres": [], "year": None, "score": 10.0 - i, "because": []}
           for i in range(8)]  # fmt: skip


class _MusicApi(_NoModel):
    """An API serving a music model whose artists have neither genres nor years (plain Last.fm)."""

    def do_GET(self) -> None:
        model = {"name": "music", "version": 1, "alias": "champion", "type": "als"}
        if self.path == "/health":
            self._send(200, {"status": "ok", "model": model, "loaded_at": None, "uptime_s": 1.0, "last_error": None})
        elif self.path == "/models":
            self._send(200, {"name": "music", "serving": model, "aliases": {"champion": 1}, "versions": [
                {"version": 1, "aliases": ["champion"], "tags": {"tastebud.dataset": "lastfm-360k"}}]})  # fmt: skip
        elif self.path.startswith("/popular"):
            self._send(200, {"recommendations": ARTISTS, "is_fallback": False, "model": model})
        else:
            self._send(404, {"error": "not_found", "message": "unknown"})

    def do_POST(self) -> None:
        body = {"user_id": "fan", "recommendations": ARTISTS[:5], "is_fallback": False, "model": {"version": 1}}
        self._send(200, body)


@pytest.fixture
def music_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _MusicApi)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_music_has_artists_and_no_genre_or_year_controls(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, music_url: str
) -> None:
    at = open_app(monkeypatch, music_url, tmp_path / "empty-home")
    assert any("· artists" in c for c in texts(at, "caption"))
    assert [t.label for t in at.tabs] == ["For you", "Similar artists", "Top charts"]
    at.text_input(key="discover_user").input("fan").run()
    assert not at.exception
    assert [s.label for s in at.slider] == ["How many"]  # no year range
    assert "discover_genres" not in [m.key for m in at.multiselect]  # no genres
    assert any(m.startswith("1. **Artist 0**") for m in texts(at, "markdown"))
    open_tab(at, "discover_tab", "Top charts")
    assert any("have no tags" in c for c in texts(at, "caption"))  # the per-tag chart says why it is empty
