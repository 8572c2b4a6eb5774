"""The studio's pure parts: moods, re-ranking and overlap, the API client's errors, the launch command, the CLI."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from live_server import free_port
from tastebud.errors import ConfigError
from tastebud.studio import API_ENV, APP_PATH, launch
from tastebud.studio.client import ApiClient, ApiError, like_events
from tastebud.studio.launch import RUN_PATH, studio_command, studio_env
from tastebud.studio.moods import apply_mood, load_moods, split_mood
from tastebud.studio.ranking import catalogue_facets, filter_items, jaccard, overlap_matrix, shared_items, surprise

ITEMS = [
    {"item_id": "a", "title": "A", "genres": ["Comedy"], "year": 1990, "score": 3.0},
    {"item_id": "b", "title": "B", "genres": ["Horror", "Thriller"], "year": 2001, "score": 2.0},
    {"item_id": "c", "title": "C", "genres": ["Drama"], "year": None, "score": 1.0},
]


def test_moods_file_has_about_twelve_presets_with_genres_and_tags() -> None:
    moods = load_moods()
    assert 10 <= len(moods) <= 14
    assert {"cosy", "thrilling", "heartbreak", "party", "focus"} <= set(moods)
    assert all(m.genres and m.tags and m.label for m in moods.values())


def test_every_mood_matches_tags_of_the_lastfm_sample() -> None:
    from tastebud.data.synthetic import MOOD_TAGS, STYLE_TAGS

    sample = {t.lower() for t in (*MOOD_TAGS, *STYLE_TAGS)}
    moods = load_moods()
    assert {name: sorted(m.tags) for name, m in moods.items() if not {t.lower() for t in m.tags} & sample} == {}
    used = {t.lower() for m in moods.values() for t in m.tags}
    assert set(t.lower() for t in MOOD_TAGS) <= used  # every mood tag the sample writes belongs to a mood


def test_a_mood_lifts_its_matches_and_strict_keeps_only_them() -> None:
    thrilling = load_moods()["thrilling"]
    assert [it["item_id"] for it in apply_mood(ITEMS, thrilling)] == ["b", "a", "c"]
    assert [it["item_id"] for it in apply_mood(ITEMS, thrilling, strict=True)] == ["b"]
    hits, others = split_mood(ITEMS, thrilling)
    assert ([it["item_id"] for it in hits], [it["item_id"] for it in others]) == (["b"], ["a", "c"])
    music = {"item_id": "m", "genres": [], "tags": ["Metal"]}  # tags, any case
    assert thrilling.matches(music)


def test_bad_moods_file_is_a_clear_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "moods.yaml"
    bad.write_text("cosy:\n  genres: [Comedy]\n")
    with pytest.raises(ConfigError, match="needs a label"):
        load_moods(bad)


def test_filters_keep_any_genre_and_the_year_range() -> None:
    assert [it["item_id"] for it in filter_items(ITEMS, genres=["thriller", "Drama"])] == ["b", "c"]
    assert [it["item_id"] for it in filter_items(ITEMS, year_range=(1985, 1995))] == ["a"]
    assert catalogue_facets(ITEMS) == (["Comedy", "Drama", "Horror", "Thriller"], (1990, 2001))
    assert catalogue_facets([{"item_id": "x", "genres": [], "year": None}]) == ([], None)


def test_surprise_lifts_the_long_tail() -> None:
    popularity = {"a": 1000.0, "b": 10.0, "c": 0.0}
    ranked = surprise(ITEMS, popularity)
    assert ranked[0]["item_id"] != "a"  # the most popular, best-scored item loses first place
    assert all("surprise" in it and "popularity" in it for it in ranked)
    assert surprise(ITEMS, {}, alpha=0.0)[0]["item_id"] == "a"  # no penalty: the model's order
    assert surprise([], {}) == []


def test_overlap_of_lists() -> None:
    lists = {"v1": ["a", "b", "c"], "v2": ["b", "c", "d"], "v3": ["x"]}
    assert jaccard(lists["v1"], lists["v2"]) == pytest.approx(0.5)
    assert jaccard([], []) == 1.0
    assert shared_items(lists) == {"b", "c"}
    rows = overlap_matrix(lists)
    assert len(rows) == 9
    assert {"a": "v1", "b": "v2", "jaccard": 0.5, "shared": 2} in rows


def test_client_reports_an_unreachable_api_in_words() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    client = ApiClient(url, connect_timeout_s=0.5)
    with pytest.raises(ApiError, match="cannot reach the API") as err:
        client.health()
    assert err.value.unreachable and not err.value.no_model and not err.value.refused


def test_client_reads_url_and_key_from_the_environment() -> None:
    client = ApiClient.from_env({API_ENV: "http://example.test:9/", "TASTEBUD_API_KEY": "k1"})
    assert client.base_url == "http://example.test:9"
    assert client._http.headers["Authorization"] == "Bearer k1"
    assert "Authorization" not in ApiClient.from_env({})._http.headers


def test_like_events_are_valid_rating_events() -> None:
    events = like_events("me", ["1", "2"])
    assert [e["item_id"] for e in events] == ["1", "2"]
    assert len({e["event_id"] for e in events}) == 2
    assert all(e["user_id"] == "me" and e["rating"] == 5 and isinstance(e["timestamp"], int) for e in events)


def test_launch_command_is_headless_streamlit_on_the_app(tmp_path: Path) -> None:
    cmd = studio_command(8600)
    assert cmd[:5] == [sys.executable, "-m", "streamlit", "run", str(RUN_PATH)]
    assert not (RUN_PATH.parent / "pages").exists()  # no legacy pages-directory mode
    assert "--server.headless" in cmd and cmd[cmd.index("--server.port") + 1] == "8600"
    env = studio_env("http://api:1/", home=tmp_path)
    assert env[API_ENV] == "http://api:1" and env["TASTEBUD_HOME"] == str(tmp_path.resolve())
    assert APP_PATH.is_file() and callable(launch)
    pages = APP_PATH.parent / "pages"
    assert {p.stem for p in pages.glob("*.py")} >= {"discover", "user", "models", "operations"}
    assert cmd[cmd.index("--server.scriptHealthCheckEnabled") + 1] == "true"  # the warm-up's route


def test_warm_up_runs_the_script_once_through_the_health_check_route() -> None:
    import http.server
    import threading

    from tastebud.studio.launch import WARM_UP_ROUTE, warm_up

    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert warm_up(f"http://127.0.0.1:{server.server_port}", timeout=10)
    finally:
        server.shutdown()
        server.server_close()
    assert seen == [WARM_UP_ROUTE]
    assert not warm_up(f"http://127.0.0.1:{free_port()}", timeout=1)  # nobody listening: gives up, never raises


def test_freeze_heap_takes_the_warm_process_out_of_later_collections() -> None:
    import gc
    import weakref

    from tastebud.studio.app import freeze_heap

    gc.collect()  # what earlier tests left as garbage would otherwise count as tracked but never be frozen
    was_frozen = gc.get_freeze_count()  # after the collection, which may free objects an earlier freeze holds
    tracked = len(gc.get_objects())
    try:
        frozen = freeze_heap()
        assert frozen >= tracked // 2
        # frozen objects still go when nothing refers to them, also on other threads an earlier test left running,
        # so the permanent generation may have lost a few since the freeze: never gained any, never lost many
        lost = was_frozen + frozen - gc.get_freeze_count()
        assert 0 <= lost < frozen // 100
        assert len(gc.get_objects()) < tracked - frozen // 2  # a collection no longer scans them

        class Node:
            other: object = None

        a, b = Node(), Node()
        a.other, b.other = b, a  # a cycle made after the freeze is still collected
        gone = weakref.ref(a)
        del a, b
        gc.collect()
        assert gone() is None
    finally:
        if not was_frozen:  # leave the test process as it was (an earlier freeze, e.g. a served app's, stays)
            gc.unfreeze()


def test_keep_widget_state_survives_a_run_without_the_widget(tmp_path: Path) -> None:
    from streamlit.testing.v1 import AppTest

    script = tmp_path / "tabs.py"
    script.write_text(
        "import streamlit as st\n"
        "from tastebud.studio.resources import keep_widget_state\n"
        "a, b = st.tabs(['A', 'B'], key='tab', on_change='rerun')\n"
        "if not a.open and st.session_state.get('keep'):\n"
        "    keep_widget_state('user', 'never-set')\n"
        "with a:\n"
        "    if a.open:\n"
        "        st.text_input('User', key='user')\n",
        encoding="utf-8",
    )
    for keep, expected in ((True, "196"), (False, "")):
        at = AppTest.from_file(str(script))
        at.session_state["keep"] = keep
        at.run()
        at.text_input(key="user").input("196").run()
        at.session_state["tab"] = "B"
        at.run()
        assert not at.text_input and "never-set" not in at.session_state
        at.session_state["tab"] = "A"
        at.run()
        assert not at.exception
        assert at.text_input(key="user").value == expected  # without it, Streamlit forgets the value


def test_cli_registers_studio() -> None:
    from typer.testing import CliRunner

    from tastebud.cli import app

    result = CliRunner().invoke(app, ["studio", "--help"])
    assert result.exit_code == 0
    assert "--api" in result.output and "--port" in result.output


def test_music_catalogues_are_told_apart_from_movies() -> None:
    from tastebud.studio.resources import Served, data_kind

    assert data_kind("lastfm-360k") == "music"
    assert data_kind("sample", [{"item_id": "a", "genres": ["chill"], "year": None}]) == "music"  # artists: no years
    assert data_kind("ml-100k", [{"item_id": "1", "genres": ["Drama"], "year": 1995}]) == "movies"
    music = Served("m", 1, "als", "music", "lastfm")
    assert (music.item_word, music.items_word, music.genres_word) == ("artist", "artists", "tags")
    assert Served("m", 1, "als", "movies", "ml").genres_word == "genres"


def test_lift_rows_take_classical_and_always_valid_intervals_of_every_metric() -> None:
    from tastebud.studio.pages.operations import lift_rows

    report = {
        "primary": {"metric": "hit_rate", "rel_lift": 0.05, "rel_ci": [0.01, 0.09], "seq_rel_ci": [-0.02, 0.12]},
        "secondary": [{"metric": "ndcg", "rel_lift": None}, {"metric": "mrr", "rel_lift": 0.1, "rel_ci": [None, 1],
                                                            "seq_rel_ci": [0.0, 0.2]}],
    }  # fmt: skip
    rows = lift_rows(report)
    assert [(r["metric"], r["interval"]) for r in rows] == [
        ("hit_rate", "classical"), ("hit_rate", "always-valid"), ("mrr", "always-valid")
    ]  # fmt: skip
    assert rows[0] == {"metric": "hit_rate", "interval": "classical", "lift": 0.05, "low": 0.01, "high": 0.09}
    assert lift_rows({}) == []


def test_operations_buckets_split_outcomes_in_time_order() -> None:
    from tastebud.studio.pages.operations import buckets

    rows = {  # the summary's bucket rows, keyed by the bucket's start in epoch seconds (not in time order as text)
        "999000": {"requests": 10, "successful": 8, "fallbacks": 3, "p50": 1.0, "p95": 2.0, "p99": 3.0},
        "1000800": {"requests": 4, "successful": 4, "fallbacks": 0, "p50": 5.0, "p95": 6.0, "p99": 7.5},
    }
    traffic, latency = buckets(rows)
    assert traffic[:3] == [
        {"bucket": "01-12 13:30", "outcome": "ok", "requests": 5},
        {"bucket": "01-12 13:30", "outcome": "fallback", "requests": 3},
        {"bucket": "01-12 13:30", "outcome": "error", "requests": 2},
    ]
    assert [r["requests"] for r in traffic[3:]] == [4, 0, 0] and traffic[3]["bucket"] == "01-12 14:00"
    assert [r["ms"] for r in latency] == [1.0, 2.0, 3.0, 5.0, 6.0, 7.5]
    assert buckets({}) == ([], [])


def test_rollback_returns_to_the_champion_before() -> None:
    from tastebud.pipeline.promote import previous_champion

    assert previous_champion([1, 3], current=3) == 1  # the champion before the current one
    assert previous_champion([1, 3], current=2) == 3  # the alias moved outside the log: back to the last logged
    assert previous_champion([3], current=3) is None
    assert previous_champion([1, 3], current=None) is None


def test_outcome_text_of_promotions_and_rollbacks() -> None:
    from tastebud.studio.pages.models import outcome_text

    answer = {"decision": {"action": "promoted", "version": 2, "previous": 1}, "reasons": ["ndcg ok"],
              "previous": {"version": 1}, "serving": {"version": 2}}  # fmt: skip
    kind, text, reasons = outcome_text("promote", answer)
    assert kind == "success" and "**Promoted** version 2" in text and "now serves version 2 (was 1)" in text
    assert reasons == ["ndcg ok"]
    forced = {**answer, "decision": {"action": "forced", "version": 2, "previous": 1}}
    assert outcome_text("promote", forced)[0] == "warning"
    back = {"decision": {"action": "rolled_back", "version": 1, "previous": 2}, "reasons": ["back"],
            "previous": {"version": 2}, "serving": {"version": 1}}  # fmt: skip
    kind, text, reasons = outcome_text("rollback", back)
    assert kind == "success" and "champion is version 1 again (was 2)" in text and reasons == []


def test_cli_studio_launches_the_app_with_api_and_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    import tastebud.studio
    from tastebud.cli import app

    calls: list[tuple[object, ...]] = []

    class Done:
        def wait(self, timeout: float | None = None) -> int:
            return 0

    def fake_launch(port: int, api: str, **kwargs: object) -> Done:
        calls.append((port, api, kwargs["home"], kwargs["address"]))
        return Done()

    monkeypatch.setattr(tastebud.studio, "launch", fake_launch)
    result = CliRunner().invoke(app, ["studio", "--port", "8600", "--api", "http://api:9", "--home", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert calls == [(8600, "http://api:9", tmp_path, "127.0.0.1")]
