"""`tastebud experiment simulate`: simulated users click held-out items they like; the analysis names the better one.

Unit tests drive :func:`tastebud.experiments.simulate.simulate` with a fake HTTP client (the click logic, batching,
error counting). The integration test trains a strong ALS (treatment) and the popularity model (control) through
``tastebud.pipeline.train.train`` on a synthetic CSV, serves them in an A/B experiment through a real server, builds
the ground truth from the same held-out split (checked disjoint from what the models trained on), simulates, and
expects the analysis to ship the treatment; then runs the CLI, and checks its one-line error once the server is gone.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from tastebud.errors import ExperimentError
from tastebud.experiments.simulate import NO_VARIANT, ground_truth_from, simulate


class FakeResponse:
    def __init__(self, status_code: int, body: Any) -> None:
        self.status_code, self.body = status_code, body

    def json(self) -> Any:
        return self.body


class FakeHttp:
    """Answers /recommend from a table user -> (status, variant, items); records every POST /events."""

    def __init__(self, lists: Mapping[str, tuple[int, str | None, list[str]]], events_status: int = 200) -> None:
        self.lists, self.events_status = lists, events_status
        self.gets: list[tuple[str, dict[str, Any]]] = []
        self.posts: list[list[dict[str, Any]]] = []

    def get(self, url: str, **kwargs: Any) -> FakeResponse:
        self.gets.append((url, kwargs.get("params", {})))
        user = url.rsplit("/", 1)[1]
        status, variant, items = self.lists[user]
        if status != 200:
            return FakeResponse(status, {"error": "boom"})
        experiment = "exp" if variant != "other" else "another-experiment"
        recs = [{"item_id": i, "score": 1.0} for i in items]
        return FakeResponse(200, {"experiment": experiment, "variant": variant, "recommendations": recs})

    def post(self, url: str, **kwargs: Any) -> FakeResponse:
        assert url == "http://srv/events"
        events = kwargs["json"]
        self.posts.append(events)
        if self.events_status != 200:
            return FakeResponse(self.events_status, {"error": "down"})
        return FakeResponse(200, {"accepted": len(events), "duplicates": 0, "rejected": [], "users_updated": 1})


LISTS: dict[str, tuple[int, str | None, list[str]]] = {
    "u1": (200, "control", ["a", "b", "c"]),
    "u2": (200, "treatment", ["a", "d", "e"]),
    "u3": (200, "treatment", ["x"]),
    "u4": (503, None, []),
    "u5": (200, "other", ["a"]),
    "u6": (200, None, ["a"]),  # holdout: the experiment answered without a variant
}
TRUTH = {"u1": {"b", "z"}, "u2": {"a", "d", "e"}, "u3": {"y"}, "u4": {"a"}, "u5": {"a"}, "u6": set()}


def test_users_click_exactly_the_recommended_items_they_like() -> None:
    http = FakeHttp(LISTS)
    result = simulate("http://srv/", "exp", list(LISTS), TRUTH, k=3, timestamp=1_700_000_000, http=http,
                      click_probability=1.0)  # fmt: skip
    assert [url for url, _ in http.gets] == [f"http://srv/recommend/{u}" for u in LISTS]
    assert all(params == {"k": 3} for _, params in http.gets)
    assert result.requests == {"control": 1, "treatment": 2, NO_VARIANT: 2}
    assert result.clicks == {"control": 1, "treatment": 3, NO_VARIANT: 1}
    assert result.errors == 1  # the 503: neither a success nor a failure of a variant
    events = [e for batch in http.posts for e in batch]
    assert {(e["user_id"], e["item_id"]) for e in events} == {("u1", "b"), ("u2", "a"), ("u2", "d"), ("u2", "e"),
                                                              ("u5", "a")}  # fmt: skip
    assert all(e["kind"] == "click" and e["timestamp"] == 1_700_000_000 for e in events)
    assert len({e["event_id"] for e in events}) == len(events)
    assert result.accepted == len(events) == 5


def test_click_probability_batches_and_default_timestamp() -> None:
    lists = {f"u{n}": (200, "treatment", [f"i{j}" for j in range(10)]) for n in range(200)}
    truth = {user: {f"i{j}" for j in range(10)} for user in lists}
    before = int(time.time())
    http = FakeHttp(lists)
    result = simulate("http://srv", "exp", list(lists), truth, http=http, seed=3, click_probability=0.3,
                      batch_size=100)  # fmt: skip
    assert 0.25 < result.clicks["treatment"] / 2000 < 0.35
    assert all(len(batch) <= 109 for batch in http.posts) and len(http.posts) >= 5
    events = [e for batch in http.posts for e in batch]
    assert len(events) == result.clicks["treatment"] == result.accepted
    assert all(before + 1 <= e["timestamp"] <= int(time.time()) + 1 for e in events)  # after the exposure
    again = simulate("http://srv", "exp", list(lists), truth, http=FakeHttp(lists), seed=3, click_probability=0.3)
    assert again.clicks == result.clicks  # the seed fixes the draws
    none = simulate("http://srv", "exp", list(lists), truth, http=FakeHttp(lists), click_probability=0.0)
    assert none.clicks == {} and none.requests == {"treatment": 200}


def test_a_failed_event_batch_is_an_error_and_stores_nothing() -> None:
    http = FakeHttp(LISTS, events_status=500)
    result = simulate("http://srv", "exp", list(LISTS), TRUTH, http=http, click_probability=1.0)
    assert result.errors == 2 and result.accepted == 0


def test_an_unreachable_server_is_one_clear_error() -> None:
    from live_server import free_port

    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ExperimentError, match=f"cannot reach the server at {url}"):
        simulate(url, "exp", ["u1"], {})
    with pytest.raises(ExperimentError, match="click_probability"):
        simulate(url, "exp", ["u1"], {}, click_probability=2.0)


def test_ground_truth_keeps_the_well_rated_test_items() -> None:
    import polars as pl

    from tastebud.data.dataset import Dataset

    frame = pl.DataFrame(
        {"user_id": ["a", "a", "b", "b"], "item_id": ["1", "2", "1", "3"], "rating": [5.0, 3.0, 4.0, 1.0]}
    )
    assert ground_truth_from(Dataset.from_frame(frame)) == {"a": {"1"}, "b": {"1"}}
    assert ground_truth_from(Dataset.from_frame(frame), min_rating=1.0) == {"a": {"1", "2"}, "b": {"1", "3"}}


@pytest.mark.slow
@pytest.mark.integration
def test_simulated_experiment_ships_the_model_that_finds_held_out_items(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from live_server import ServerProcess
    from tastebud.config import build_settings
    from tastebud.data.synthetic import generate_synthetic
    from tastebud.experiments import create_experiment, get_experiment, start_experiment
    from tastebud.experiments.report import analyze_experiment
    from tastebud.experiments.simulate import held_out_truth
    from tastebud.pipeline.train import train
    from tastebud.registry import ModelRegistry
    from tastebud.store import create_store

    home = tmp_path / "home"
    settings = build_settings(home=home)
    csv = tmp_path / "ratings.csv"
    generate_synthetic(500, 200, 12000, seed=5).to_frame().write_csv(csv)
    registry = ModelRegistry(settings)
    versions = {}
    for alias, model, params in (("champion", "popular", {}), ("challenger", "als", {"factors": 16, "iterations": 15})):
        result = train(str(csv), model, params, settings=settings, track=False, register=False,
                       bundle_dir=tmp_path / f"bundle-{model}")  # fmt: skip
        versions[alias] = registry.register(result.bundle_dir, "ml").version
        registry.set_alias("ml", alias, versions[alias])
    # The ground truth is the test part of the very split train() fitted on: no model saw those pairs.
    truth = held_out_truth(str(csv), settings)
    train_part = result.split.train.to_frame()
    seen = set(zip(train_part["user_id"].to_list(), train_part["item_id"].to_list(), strict=True))
    assert len(truth) > 300 and not any((u, i) in seen for u, items in truth.items() for i in items)
    store = create_store(settings)
    store.init_schema()
    arms = [{"name": "control", "ref": "champion"}, {"name": "treatment", "ref": "challenger"}]
    # A fixed salt: with a random one, about one run in a thousand splits these 470 users unevenly enough for the
    # sample-ratio check (p < 0.001) to refuse to ship, which is the check working, not the model losing.
    monkeypatch.setattr("tastebud.experiments.definitions.secrets.token_hex", lambda n: "5a1d" * (n // 2))
    create_experiment(store, registry, settings, {"name": "sim", "model_name": "ml", "mde": 0.5, "variants": arms},
                      actor="test")  # fmt: skip
    start_experiment(store, registry, settings, "sim", actor="test")
    users = sorted(truth)
    with ServerProcess(home, "ml", workers=1) as server:
        sim = simulate(server.url, "sim", users, truth, k=10, seed=1)
        assert sim.errors == 0 and sum(sim.requests.values()) == len(users)
        assert set(sim.requests) == {"control", "treatment"}
        assert sim.accepted == sum(sim.clicks.values()) > 0
        # The better model recommends more held-out items, so its users click more.
        assert sim.clicks["treatment"] / sim.requests["treatment"] > sim.clicks["control"] / sim.requests["control"]
        time.sleep(0.5)
        analysis = analyze_experiment(store, get_experiment(store, "sim"), catalog_size=200)
        report = analysis.report
        assert report is not None and report.primary.metric == "hit_rate"
        assert sum(analysis.users.values()) == len(users)
        assert report.primary.mean_treatment > report.primary.mean_control
        assert analysis.decision == "ship", analysis.to_markdown()
        run = subprocess.run(
            [sys.executable, "-m", "tastebud.cli", "experiment", "simulate", "sim", "--url", server.url,
             "--dataset", str(csv), "--users", "40", "--out", str(tmp_path / "report")],
            env=server.env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert run.returncode == 0, run.stdout + run.stderr
        assert "simulated 40 users" in run.stdout and "ship" in run.stdout and "relative lift" in run.stdout
        assert (tmp_path / "report" / "analysis.json").exists()
    store.close()
    gone = subprocess.run(
        [sys.executable, "-m", "tastebud.cli", "experiment", "simulate", "sim", "--url", server.url,
         "--dataset", str(csv), "--users", "5"],
        env=server.env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert gone.returncode != 0
    message = (gone.stdout + gone.stderr).strip()
    assert f"cannot reach the server at {server.url}" in message and "Traceback" not in message
