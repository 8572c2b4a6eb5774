"""The decision log in the store, on SQLite and a real PostgreSQL: order, filters, concurrent writers in two
processes, and the one-time import of a ``decisions.jsonl`` written by an earlier version."""

from __future__ import annotations

import json
import logging
import multiprocessing
from pathlib import Path

import pytest

from tastebud.config import Settings, build_settings
from tastebud.errors import RegistryError
from tastebud.registry.decisions import (
    Decision,
    append_decision,
    champion_history,
    decision_log_version,
    decisions_path,
    import_decisions_file,
    read_decisions,
)
from tastebud.store import create_store


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    if request.param == "sqlite":
        return build_settings(home=tmp_path / "home")
    pytest.importorskip("psycopg", reason="psycopg (tastebud[postgres]) is needed for PostgreSQL")
    return build_settings(home=tmp_path / "home", store={"url": request.getfixturevalue("postgres_database")})


def _d(action: str, version: int, name: str = "m", minute: int = 0, **fields: object) -> Decision:
    return Decision(f"2026-12-01T10:{minute:02d}:00+00:00", name, action, version, None, "tests", "why", **fields)  # type: ignore[arg-type]


def test_decisions_read_back_in_the_order_made_and_by_model(settings: Settings) -> None:
    assert read_decisions(settings) == [] and decision_log_version(settings) == (0, 0)
    made = [
        _d("promoted", 1, minute=5, numbers={"candidate": 0.31, "nested": {"k": [1, 2]}}, trigger="schedule"),
        _d("promoted", 7, name="other"),
        _d("refused", 2, minute=1),  # an earlier time: the log keeps the order decisions were made in
        _d("forced", 3, minute=2),
        _d("rolled_back", 1, minute=3),
    ]
    ids = [append_decision(settings, d) for d in made]
    assert ids == sorted(ids)
    assert read_decisions(settings) == made
    assert read_decisions(settings, "m") == [made[0], *made[2:]]
    assert champion_history(read_decisions(settings, "m")) == [1]
    assert decision_log_version(settings) == (5, ids[-1])
    # the same store, as another process sees it
    with create_store(settings) as store:
        assert [r["version"] for r in store.read_decisions("other")] == [7]


def test_invalid_decisions_are_refused_naming_the_field(settings: Settings) -> None:
    with pytest.raises(RegistryError, match="unknown decision action 'deleted'"):
        append_decision(settings, _d("deleted", 1))
    bad_time = Decision("yesterday", "m", "promoted", 1, None, "tests", "why")
    with pytest.raises(RegistryError, match=r"field 'time': 'yesterday' is not an ISO-8601 time"):
        append_decision(settings, bad_time)
    with pytest.raises(RegistryError, match="field 'version': expected an integer"):
        append_decision(settings, _d("promoted", "1"))  # type: ignore[arg-type]
    assert read_decisions(settings) == []
    # values JSON cannot hold are stored as the file stored them: NaN as null, other objects as text
    append_decision(settings, _d("refused", 2, numbers={"nan": float("nan"), "path": Path("/x")}))
    assert read_decisions(settings)[0].numbers == {"nan": None, "path": "/x"}


def _append_many(url: str, home: str, writer: int, count: int) -> int:
    settings = build_settings(home=home, store={"url": url})
    for n in range(count):
        append_decision(settings, Decision("2026-12-01T10:00:00+00:00", "m", "refused", n, None, f"w{writer}", "r"))
    return count


@pytest.mark.slow
def test_two_processes_appending_at_once_lose_nothing(settings: Settings) -> None:
    count = 60
    ctx = multiprocessing.get_context("spawn")
    args = [(settings.store_url, str(settings.home), w, count) for w in range(2)]
    with ctx.Pool(2) as pool:
        assert pool.starmap(_append_many, args) == [count, count]
    decisions = read_decisions(settings)
    assert len(decisions) == 2 * count
    for writer in ("w0", "w1"):  # each writer's decisions, whole and in the order it made them
        assert [d.version for d in decisions if d.actor == writer] == list(range(count))


def _jsonl(path: Path, decisions: list[Decision], *, old_format: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for d in decisions:
        fields = json.loads(d.to_json())
        if old_format:
            del fields["trigger"]  # lines written before the field existed
        lines.append(json.dumps(fields))
    path.write_text("\n".join(lines) + "\n\n")


def test_a_decisions_jsonl_is_imported_once_and_renamed(settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    path = decisions_path(settings)
    old = [_d("promoted", 1), _d("promoted", 2, minute=1), _d("rolled_back", 1, minute=2), _d("promoted", 1)]
    _jsonl(path, old, old_format=True)  # the same decision twice (two lines): both are kept
    with caplog.at_level(logging.WARNING, logger="tastebud.registry.decisions"):
        assert read_decisions(settings) == old
    assert not path.exists() and path.with_name("decisions.jsonl.imported").is_file()
    assert "imported 4 of 4 decisions" in caplog.text and "decisions.jsonl.imported" in caplog.text

    # a crash between the import and the rename leaves the file in place: the next start adds nothing
    path.with_name("decisions.jsonl.imported").rename(path)
    assert import_decisions_file(settings) == (0, 4)
    assert read_decisions(settings) == old
    assert path.with_name("decisions.jsonl.imported").is_file()

    # new decisions follow the imported ones; a later stray file with more lines adds only those
    append_decision(settings, _d("refused", 3, minute=9))
    _jsonl(path, [*old, _d("forced", 4, minute=10)])
    assert [d.version for d in read_decisions(settings)] == [1, 2, 1, 1, 3, 4]
    assert path.with_name("decisions.jsonl.imported.2").is_file()
    assert import_decisions_file(settings) is None


def test_the_import_is_all_or_nothing(settings: Settings) -> None:
    path = decisions_path(settings)
    _jsonl(path, [_d("promoted", 1)])
    with path.open("a") as fh:
        fh.write('{"time": "2026-12-01T10:00:00", "model_name": "m", "action": "promoted", "version": 2, '
                 '"previous": null, "actor": "a", "reason": "r"}\n')  # fmt: skip
    with pytest.raises(RegistryError, match=r"decisions.jsonl line 3, field 'time'.*UTC offset"):
        read_decisions(settings)
    assert path.is_file()
    with pytest.raises(RegistryError, match="line 3"):
        append_decision(settings, _d("promoted", 5))
    with create_store(settings) as store:
        assert store.read_decisions() == []  # nothing of the file, nor the decision refused with it
