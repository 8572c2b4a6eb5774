"""``scripts/screenshots.py``: every studio page in headless Chromium, against a real API and a real ``tastebud
studio``, saved as a PNG that shows the page (not a blank or an error), and the DOM checked for the page's content.

The failure paths use a tiny throw-away Streamlit app: a page raising an exception, one showing ``st.error``, and one
drawing nothing must each fail. The unit tests at the top need no browser.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from live_server import ServerProcess, free_port
from tastebud.studio.screenshots import (
    CHROMIUM_ENV,
    PAGES,
    Browser,
    Capture,
    Page,
    ScreenshotError,
    capture_pages,
    find_chromium,
    image_stats,
    is_trivial,
    wait_for_studio,
)

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "screenshots.py"
#: Text each page's main area shows once drawn against the studio home (beside its heading), after its click.
CONTENT = {
    "discover": ["Served:", "studio-test", "For you", "· score"],  # a random user's recommendations
    "user": ["User id"],
    "models": ["studio-test", "Versions"],
    "operations": ["API status", "Requests"],
}


# ---------------------------------------------------------------------------------------------------- no browser
def test_blank_and_uniform_images_are_trivial(tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (1400, 1000), "white").save(tmp_path / "blank.png")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (200, 300, 3), dtype=np.uint8)).save(tmp_path / "busy.png")
    assert is_trivial(tmp_path / "blank.png")
    assert not is_trivial(tmp_path / "busy.png")
    assert image_stats(tmp_path / "busy.png")[:2] == (300, 200)


def test_problems_name_errors_and_missing_content() -> None:
    page = Page("x", "/", "X")
    assert Capture(page, "u", heading_ms=10.0, complete_ms=20.0).problems == []
    assert "no main content" in Capture(page, "u").problems[0]
    assert "error element: boom" in Capture(page, "u", heading_ms=1.0, errors=["boom"]).problems
    assert "did not finish" in Capture(page, "u", heading_ms=1.0, timed_out=True).problems[0]


def test_chromium_named_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CHROMIUM_ENV, sys.executable)
    assert find_chromium() == sys.executable
    monkeypatch.setenv(CHROMIUM_ENV, "/nonexistent/chromium")
    with pytest.raises(ScreenshotError, match="not an executable"):
        find_chromium()


def test_script_says_when_the_studio_is_not_there(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), url, "--out", str(tmp_path), "--timeout", "1"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2 and "did not answer" in proc.stderr


# ---------------------------------------------------------------------------------------------------- browser
@pytest.fixture(scope="module")
def chromium() -> str:
    """The Chromium binary; installed by ``scripts/ensure-chromium.sh`` when missing (as root with apt-get)."""
    try:
        return find_chromium()
    except ScreenshotError:
        subprocess.run(["bash", str(ROOT / "scripts" / "ensure-chromium.sh")], check=False, timeout=900)
    try:
        return find_chromium()
    except ScreenshotError as err:
        if os.environ.get("CI"):
            pytest.fail(str(err))
        pytest.skip(str(err))


def start_streamlit(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop the process and its children (``tastebud studio`` runs Streamlit as a child): its whole session."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
        # the group may outlive its leader: give the children the same time
        deadline = time.monotonic() + wait
        while _group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not _group_alive(proc.pid):
            return


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def studio(chromium: str, api: ServerProcess, studio_home: Path) -> Iterator[str]:
    """A real ``tastebud studio`` against the module's API server; yields its URL."""
    port = free_port()
    env = {**os.environ, "TASTEBUD_HOME": str(studio_home)}
    env.pop("TASTEBUD_API_KEY", None)
    log = studio_home / "studio.log"
    cmd = [sys.executable, "-m", "tastebud.cli", "studio", "--port", str(port), "--api", api.url,
           "--home", str(studio_home)]  # fmt: skip
    proc = start_streamlit(cmd, env, log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_studio(url, timeout=90)
        # the studio warms itself up in the background; the pages are measured after it, as the bench does
        from tastebud.studio.launch import warm_up

        warm_up(url, timeout=120)
        yield url
    finally:
        stop(proc)


@pytest.mark.integration
@pytest.mark.slow
def test_screenshots_of_every_page(studio: str, tmp_path: Path) -> None:
    out = tmp_path / "shots"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), studio, "--out", str(out), "--json"],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    records = {r["page"]: r for r in map(json.loads, proc.stdout.splitlines())}
    assert set(records) == {p.name for p in PAGES}
    for page in PAGES:
        png = out / f"{page.name}.png"
        assert records[page.name]["problems"] == [] and records[page.name]["png"] == str(png)
        width, height, colours, stddev = image_stats(png)
        assert (width, height) == (1400, 1000)
        assert png.stat().st_size > 20_000, f"{png}: {png.stat().st_size} bytes"
        assert colours > 200 and stddev > 10, (page.name, colours, stddev)
        assert records[page.name]["heading_ms"] is not None and records[page.name]["elements"] > 0


@pytest.mark.integration
@pytest.mark.slow
def test_every_page_shows_its_main_content_and_no_error(studio: str, chromium: str) -> None:
    with Browser(chromium) as browser:
        captures = capture_pages(studio, None, browser=browser)
    for c in captures:
        assert c.problems == [], (c.page.name, c.problems, c.text[:2000])
        assert c.page.heading in c.heading
        assert 'data-testid="stException"' not in c.html and "stAlertContentError" not in c.html
        for text in CONTENT[c.page.name]:
            assert text in c.text, (c.page.name, text, c.text[:2000])
        assert c.heading_ms is not None and c.complete_ms is not None and c.complete_ms >= c.heading_ms


BROKEN_APP = """
import streamlit as st

mode = st.query_params.get("mode", "ok")
if mode != "empty":
    st.title("Broken")
if mode == "exception":
    raise RuntimeError("the page fell over")
if mode == "error":
    st.error("could not reach the API")
if mode == "ok":
    st.write("all good")
    st.warning("a warning is not an error")
"""


@pytest.fixture(scope="module")
def broken_app(chromium: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A tiny Streamlit app whose page raises, shows an error, draws nothing or works, by ``?mode=``."""
    directory = tmp_path_factory.mktemp("broken")
    (directory / "app.py").write_text(BROKEN_APP)
    port = free_port()
    cmd = [sys.executable, "-m", "streamlit", "run", str(directory / "app.py"), "--server.port", str(port),
           "--server.address", "127.0.0.1", "--server.headless", "true",
           "--browser.gatherUsageStats", "false"]  # fmt: skip
    proc = start_streamlit(cmd, dict(os.environ), directory / "streamlit.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_studio(url, timeout=60)
        yield url
    finally:
        stop(proc)


@pytest.mark.integration
@pytest.mark.slow
def test_error_elements_and_empty_pages_fail(broken_app: str, chromium: str, tmp_path: Path) -> None:
    pages = [Page(mode, f"/?mode={mode}", "Broken") for mode in ("ok", "exception", "error", "empty")]
    with Browser(chromium) as browser:
        start = time.monotonic()
        captures = {c.page.name: c for c in capture_pages(broken_app, tmp_path, pages, browser=browser, timeout=8)}
    assert time.monotonic() - start < 60
    assert captures["ok"].problems == [] and "all good" in captures["ok"].text
    assert any("the page fell over" in p for p in captures["exception"].problems)
    assert len(captures["exception"].errors) == 1  # the exception's alert is not counted twice
    assert any("could not reach the API" in p for p in captures["error"].problems)
    assert any("no main content" in p for p in captures["empty"].problems)
