"""`tastebud store current|upgrade|history` on a SQLite home."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from tastebud.cli import main
from tastebud.config import build_settings
from tastebud.registry.decisions import Decision, read_decisions
from tastebud.store import create_store, migrate


def run(capsys: pytest.CaptureFixture[str], home: Path, *args: str) -> tuple[int, str]:
    code = main(["--home", str(home), "store", *args])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_current_upgrade_history(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "home"
    code, out = run(capsys, home, "current")
    assert code == 3 and "not created yet" in out and "needs: tastebud store upgrade" in out
    assert not (home / "tastebud.db").exists()  # looking creates nothing

    legacy = home / "registry" / "decisions.jsonl"
    legacy.parent.mkdir(parents=True)
    legacy.write_text(Decision("2026-12-01T10:00:00+00:00", "m", "promoted", 1, None, "a", "r").to_json() + "\n")
    code, out = run(capsys, home, "upgrade")
    assert code == 0, out
    assert f"upgraded from nothing to {migrate.head_revision()}" in out and "imported 1 of 1 decisions" in out
    assert [d.version for d in read_decisions(build_settings(home=home))] == [1]

    code, out = run(capsys, home, "current", "--json")
    state = json.loads(out)
    assert code == 0 and state["up_to_date"] and state["current"] == migrate.head_revision()
    code, out = run(capsys, home, "upgrade")
    assert code == 0 and "already at the newest revision" in out
    code, out = run(capsys, home, "history")
    assert code == 0 and "0001_baseline" in out and "<- current" in out


def test_a_store_made_before_migrations_shows_as_such_and_upgrades(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    with create_store(build_settings(home=home)) as store:
        store.init_schema()
        with store.engine.begin() as conn:
            for table in ("alembic_version", "decisions", "trigger_state"):
                conn.execute(sa.text(f"DROP TABLE {table}"))
    code, out = run(capsys, home, "current")
    assert code == 3 and "made before migrations" in out
    code, out = run(capsys, home, "upgrade", "--json")
    result = json.loads(out)
    assert code == 0 and result["legacy"] and result["after"] == migrate.head_revision()


def test_an_unreachable_store_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "tastebud.db").mkdir()  # the home's database path is taken by a directory
    code = main(["--home", str(tmp_path), "store", "upgrade"])
    out = capsys.readouterr()
    assert code == 1 and "Traceback" not in out.err
    assert "cannot reach or use the store" in out.err or "unable to open" in out.err
