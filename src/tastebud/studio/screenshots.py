"""Screenshots of Tastebud Studio with headless Chromium, driven over the Chrome DevTools Protocol (CDP).

Streamlit renders in the browser: the page is an empty shell until its websocket has run the page's script and
sent the elements. So a plain ``chromium --screenshot`` of the URL catches either the shell or a half-drawn page,
depending on timing. Instead, :class:`Browser` starts ``chromium --headless=new --remote-debugging-port=0``, speaks
CDP to it over a websocket (the ``websockets`` package, which uvicorn and Streamlit already need) and, for each page:

1. injects a small observer before the page's own scripts run (``Page.addScriptToEvaluateOnNewDocument``): it notes,
   in the page's clock (``performance.now()``, milliseconds since navigation started), the frame in which the page's
   main heading was first painted and the last time anything in the main area changed;
2. navigates, then polls the page's state until the main heading is there, Streamlit's "running" widget is gone and
   the main area has not changed for ``settle_s`` (charts and API calls included);
3. takes a PNG of the viewport (``Page.captureScreenshot``) and keeps the main area's text and HTML.

A page fails when it shows an error element (``stException``, or an ``stAlert`` of the error kind), or when its main
content (the heading) does not appear within the timeout: an empty page.

``python scripts/screenshots.py http://127.0.0.1:8501`` (or ``make screenshots``) writes ``docs/studio/<page>.png``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tastebud.errors import TastebudError

#: Environment variable naming the Chromium (or Chrome) binary to use.
CHROMIUM_ENV = "TASTEBUD_CHROMIUM"
#: Binaries tried, in order, when the variable is unset.
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
DEFAULT_SIZE = (1400, 1000)


@dataclass(frozen=True)
class Page:
    """A studio page: its name (the PNG's stem), URL path, and the text its main heading (``h1``) contains.

    ``click``: the label of a button to click once the page has settled, before the screenshot (Discover picks a
    random user, so the picture shows recommendations rather than an empty form).
    """

    name: str
    path: str
    heading: str
    click: str | None = None


#: The studio's pages (``tastebud.studio.app``).
PAGES: tuple[Page, ...] = (
    Page("discover", "/", "Discover", click="Random user"),
    Page("user", "/user", "User", click="Random user"),
    Page("models", "/models", "Models"),
    Page("operations", "/operations", "Operations"),
)


class ScreenshotError(TastebudError):
    """Chromium is missing or failed, or a page showed an error or no content."""


@dataclass
class Capture:
    """What one page load gave.

    Attributes:
        page: the page.
        url: the URL loaded.
        heading_ms: when the main heading was first painted, in ms since navigation started (``None``: never).
        script_ms: when Streamlit reported the page's script finished, ms since navigation.
        complete_ms: when the page last changed before it settled (fully drawn, charts included), ms since
            navigation.
        errors: texts of the error elements (exceptions, error alerts) on the page.
        heading: the main heading's text.
        text: the main area's visible text.
        html: the main area's HTML.
        n_elements: Streamlit elements in the main area.
        png: the screenshot, when one was taken.
        timed_out: the page did not settle in time (``heading_ms`` tells whether it had content at all).
    """

    page: Page
    url: str
    heading_ms: float | None = None
    script_ms: float | None = None
    complete_ms: float | None = None
    errors: list[str] = field(default_factory=list)
    heading: str = ""
    text: str = ""
    html: str = ""
    n_elements: int = 0
    png: Path | None = None
    timed_out: bool = False

    @property
    def problems(self) -> list[str]:
        """Why this page fails (empty: it passes)."""
        out = [f"error element: {e[:300]}" for e in self.errors]
        if self.heading_ms is None:
            out.append(f"no main content: no heading containing {self.page.heading!r} appeared")
        elif self.timed_out:
            out.append("the page did not finish rendering (still running or changing) before the timeout")
        return out


# ---------------------------------------------------------------------------------------------------- chromium
def find_chromium() -> str:
    """The Chromium binary: ``$TASTEBUD_CHROMIUM`` or the first of :data:`CHROMIUM_NAMES` on the PATH.

    Raises:
        ScreenshotError: none found (``scripts/ensure-chromium.sh`` installs Debian's ``chromium``).
    """
    configured = os.environ.get(CHROMIUM_ENV)
    if configured:
        found = shutil.which(configured)
        if found is None:
            raise ScreenshotError(f"{CHROMIUM_ENV}={configured!r} is not an executable")
        return found
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    raise ScreenshotError(
        "Chromium not found (looked for " + ", ".join(CHROMIUM_NAMES) + f"; or set {CHROMIUM_ENV}); "
        "install it with `bash scripts/ensure-chromium.sh` (Debian: apt-get install chromium)"
    )


# The observer injected before the page's own scripts: times in the page's clock (ms since navigation start).
_OBSERVER = """
(() => {
  const state = window.__tastebud = {heading: null, change: null, done: null, expected: %s};
  const check = () => {
    const m = document.querySelector('[data-testid="stMain"]');
    if (!m) return;
    state.change = performance.now();
    const app = document.querySelector('[data-testid="stApp"]');
    const script = app ? app.getAttribute('data-test-script-state') : null;
    if (script === 'running') state.done = null;
    else if (script === 'notRunning' && state.done === null) state.done = performance.now();
    if (state.heading === null) {
      const h = [...m.querySelectorAll('h1')].find(e => e.innerText.includes(state.expected));
      // the frame after the heading entered the DOM is the one that paints it
      if (h) { state.heading = -1; requestAnimationFrame(() => { state.heading = performance.now(); }); }
    }
  };
  new MutationObserver(check).observe(document, {childList: true, subtree: true, characterData: true,
                                                 attributes: true, attributeFilter: ['data-test-script-state']});
})();
"""

# The state polled while waiting.
_STATE = """
(() => {
  const m = document.querySelector('[data-testid="stMain"]');
  const t = window.__tastebud || {};
  const q = s => [...document.querySelectorAll(s)];
  // an exception comes drawn with an error alert: count that alert once, as the exception
  const exc = '[data-testid="stException"]';
  const errors = q(exc + ', [data-testid="stAlertContentError"]')
    .filter(e => e.matches(exc) || (!e.querySelector(exc) && !e.closest(exc)))
    .map(e => e.innerText);
  const h = m ? [...m.querySelectorAll('h1')].map(e => e.innerText.trim()) : [];
  const app = document.querySelector('[data-testid="stApp"]');
  return {
    main: !!m,
    script: app ? app.getAttribute('data-test-script-state') : null,
    done_ms: t.done === undefined ? null : t.done,
    heading: h.find(x => x.includes(t.expected)) || h[0] || '',
    heading_ms: t.heading === undefined || t.heading === null || t.heading < 0 ? null : t.heading,
    change_ms: t.change === undefined ? null : t.change,
    now_ms: performance.now(),
    loading: q('[data-testid="stAppSkeleton"], [data-testid="stSkeleton"]').length > 0,
    n_elements: m ? m.querySelectorAll('[data-testid="stElementContainer"]').length : 0,
    errors: errors,
  };
})()
"""


class Browser:
    """Headless Chromium with one tab, driven over CDP. Use as a context manager.

    Args:
        chromium: the binary (default: :func:`find_chromium`).
        size: the window (and screenshot) size in CSS pixels.
        start_timeout: seconds to wait for Chromium's DevTools endpoint.
    """

    def __init__(
        self, chromium: str | None = None, *, size: tuple[int, int] = DEFAULT_SIZE, start_timeout: float = 30.0
    ) -> None:
        self.chromium = chromium or find_chromium()
        self.size = size
        self.start_timeout = start_timeout
        self._ids = itertools.count(1)
        self._profile: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._ws: Any = None
        self._connection = contextlib.ExitStack()

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> Browser:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        from websockets.sync.client import connect

        self._profile = tempfile.TemporaryDirectory(prefix="tastebud-chromium-", ignore_cleanup_errors=True)
        profile = Path(self._profile.name)
        width, height = self.size
        cmd = [
            self.chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--mute-audio",
            "--hide-scrollbars", "--remote-debugging-port=0", "--remote-allow-origins=*",
            f"--user-data-dir={profile}", f"--window-size={width},{height}", "about:blank",
        ]  # fmt: skip
        self._proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + self.start_timeout
        while not (port_file.is_file() and port_file.read_text().strip()):
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace")[-2000:] if self._proc.stderr else ""
                raise ScreenshotError(f"{self.chromium} exited with {self._proc.returncode}: {err}")
            if time.monotonic() > deadline:
                self.close()
                raise ScreenshotError(f"{self.chromium}: no DevTools endpoint within {self.start_timeout} s")
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
        page = next((t for t in targets if t.get("type") == "page"), None)
        if page is None:
            page = httpx.put(f"http://127.0.0.1:{port}/json/new?about:blank", timeout=10).json()
        self._ws = self._connection.enter_context(connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=10))
        self.send("Page.enable")
        self.send("Runtime.enable")
        self.send(
            "Emulation.setDeviceMetricsOverride",
            width=width, height=height, deviceScaleFactor=1, mobile=False,
        )  # fmt: skip

    def close(self) -> None:
        if self._ws is not None:
            with contextlib.suppress(Exception):
                self._connection.close()
            self._ws = None
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(10)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait(10)
            if self._proc.stderr:
                self._proc.stderr.close()
            self._proc = None
        if self._profile is not None:
            self._profile.cleanup()
            self._profile = None

    # ------------------------------------------------------------------ protocol
    def send(self, method: str, timeout: float = 30.0, **params: Any) -> dict[str, Any]:
        """Send one CDP command and return its result (events arriving meanwhile are dropped).

        Raises:
            ScreenshotError: the browser answered with an error, or did not answer in ``timeout`` seconds.
        """
        if self._ws is None:
            raise ScreenshotError("the browser is not started")
        msg_id = next(self._ids)
        self._ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ScreenshotError(f"CDP {method}: no answer within {timeout} s")
            try:
                message = json.loads(self._ws.recv(timeout=left))
            except TimeoutError:
                continue
            if message.get("id") != msg_id:
                continue
            if "error" in message:
                raise ScreenshotError(f"CDP {method}: {message['error']}")
            return message.get("result", {})  # type: ignore[no-any-return]

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise ScreenshotError(f"script failed in the page: {result['exceptionDetails'].get('text')}")
        return result.get("result", {}).get("value")

    # ------------------------------------------------------------------ pages
    def load(self, url: str, page: Page, *, timeout: float = 60.0, settle_s: float = 0.5) -> Capture:
        """Load ``url`` and wait until ``page`` has drawn its main content and settled; no screenshot yet.

        Settled: the heading is there, Streamlit says the script is not running (``stApp``'s
        ``data-test-script-state``, the attribute Streamlit's own end-to-end tests wait on), no skeleton is left,
        and nothing in the page has changed for ``settle_s`` seconds (charts draw after the script ends). Returns
        when an error element appears too (after it settles) or at the timeout (``timed_out``), never raising for
        what the page shows.
        """
        script = self.send("Page.addScriptToEvaluateOnNewDocument", source=_OBSERVER % json.dumps(page.heading))
        capture = Capture(page, url)
        try:
            self.send("Page.navigate", url=url)
            self._settle(capture, time.monotonic() + timeout, settle_s)
            if page.click and capture.heading_ms is not None and not capture.errors and not capture.timed_out:
                self.click(capture, page.click, timeout=timeout, settle_s=settle_s)
        finally:
            self.send("Page.removeScriptToEvaluateOnNewDocument", identifier=script["identifier"])
        return capture

    def click(self, capture: Capture, label: str, *, timeout: float = 60.0, settle_s: float = 0.5) -> None:
        """Click the button whose text contains ``label`` and wait until the rerun it starts has settled.

        Raises:
            ScreenshotError: no such button.
        """
        find = f"[...document.querySelectorAll('button')].find(e => e.innerText.includes({json.dumps(label)}))"
        clicked_at = self.evaluate(
            f"(() => {{ const b = {find}; if (!b) return null; const t = performance.now(); b.click(); return t; }})()"
        )
        if clicked_at is None:
            raise ScreenshotError(f"{capture.url}: no button {label!r} to click")
        self._settle(capture, time.monotonic() + timeout, settle_s, after_ms=float(clicked_at))

    def _settle(self, capture: Capture, deadline: float, settle_s: float, after_ms: float | None = None) -> None:
        """Poll until the page settled (see :meth:`load`; after a click: a script run that ended after it)."""
        state: dict[str, Any] = {}
        while True:
            state = self.evaluate(_STATE) or {}
            settled = (
                state.get("heading_ms") is not None
                and state.get("script") == "notRunning"
                and (after_ms is None or (state.get("done_ms") or -1.0) > after_ms)
                and not state.get("loading")
                and state.get("change_ms") is not None
                and state["now_ms"] - state["change_ms"] >= settle_s * 1000
            )
            if settled:
                break
            if time.monotonic() > deadline:
                capture.timed_out = True
                break
            time.sleep(0.05)
        if after_ms is None:
            capture.heading_ms = state.get("heading_ms")
            capture.script_ms = state.get("done_ms")
            if capture.heading_ms is not None and state.get("change_ms") is not None:
                capture.complete_ms = max(capture.heading_ms, state["change_ms"])
        capture.errors = [str(e) for e in state.get("errors") or []]
        capture.heading = str(state.get("heading") or "")
        capture.n_elements = int(state.get("n_elements") or 0)
        main = self.evaluate(
            "(() => { const m = document.querySelector('[data-testid=\"stMain\"]');"
            " return m ? [m.innerText, m.outerHTML] : ['', '']; })()"
        )
        capture.text, capture.html = (str(main[0]), str(main[1])) if main else ("", "")

    def screenshot(self, path: Path) -> Path:
        """Save a PNG of the viewport."""
        data = self.send("Page.captureScreenshot", format="png")["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path


def image_stats(path: Path) -> tuple[int, int, int, float]:
    """Width, height, distinct colours and the standard deviation of the grey levels of a PNG."""
    from PIL import Image, ImageStat

    with Image.open(path) as img:
        rgb = img.convert("RGB")
        colours = rgb.getcolors(maxcolors=1 << 20)
        grey = ImageStat.Stat(rgb.convert("L"))
        return rgb.width, rgb.height, len(colours) if colours is not None else 1 << 20, float(grey.stddev[0])


def is_trivial(path: Path) -> bool:
    """A blank or near-uniform image (an empty page): under 16 colours or almost no contrast."""
    _, _, colours, stddev = image_stats(path)
    return colours < 16 or stddev < 2.0


def capture_pages(
    base_url: str,
    out_dir: Path | None,
    pages: Sequence[Page] = PAGES,
    *,
    browser: Browser | None = None,
    timeout: float = 60.0,
) -> list[Capture]:
    """Load every page of the studio at ``base_url``; save ``<out_dir>/<page>.png`` for each (none when ``None``).

    Never raises for what a page shows: check :attr:`Capture.problems`.
    """
    with contextlib.ExitStack() as stack:
        if browser is None:
            browser = stack.enter_context(Browser())
        captures = []
        for page in pages:
            capture = browser.load(base_url.rstrip("/") + page.path, page, timeout=timeout)
            if out_dir is not None:
                capture.png = browser.screenshot(Path(out_dir) / f"{page.name}.png")
                if is_trivial(capture.png):
                    capture.errors.append("the screenshot is blank (uniform image)")
            captures.append(capture)
        return captures


def wait_for_studio(url: str, timeout: float = 60.0) -> None:
    """Wait until the studio answers its health check (``/_stcore/health``).

    Raises:
        ScreenshotError: not up within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url.rstrip("/") + "/_stcore/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise ScreenshotError(f"the studio at {url} did not answer /_stcore/health within {timeout} s")
        time.sleep(0.2)


# ---------------------------------------------------------------------------------------------------- a live studio
#: The model each ``--dataset`` of ``tastebud demo`` registers and promotes.
DEMO_MODELS = {"ml-100k": "movielens-100k", "lastfm-sample": "lastfm-sample"}


def _tastebud(home: Path, *args: str, log: Path, timeout: float = 900.0) -> None:
    cmd = [sys.executable, "-m", "tastebud.cli", "--home", str(home), *args]
    with log.open("ab") as out:
        code = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, check=False).returncode
    if code:
        tail = log.read_text(errors="replace")[-3000:]
        raise ScreenshotError(f"`tastebud {' '.join(args)}` exited with {code}; the end of {log}:\n{tail}")


def prepare_home(home: Path, dataset: str = "ml-100k") -> str:
    """A home with a promoted champion on ``dataset``, made by ``tastebud demo --no-serve`` unless already there.

    The demo leaves what the operator pages show: an evaluation, a champion, a decision, events and a retrain.
    ML-100K is copied from the test cache (``.tastebud-test/data/ml-100k``) when there, so no download is needed.

    Returns:
        the registered model name to serve.
    """
    home = Path(home).resolve()
    model = DEMO_MODELS[dataset]
    home.mkdir(parents=True, exist_ok=True)
    if (home / ".studio-demo-done").is_file():
        return model
    cached = Path.cwd() / ".tastebud-test" / "data" / dataset
    if dataset == "ml-100k" and cached.is_dir() and not (home / "data" / dataset).exists():
        shutil.copytree(cached, home / "data" / dataset)
    log = home / "studio-demo.log"
    _tastebud(home, "demo", "--dataset", dataset, "--models", "popular,ease", "--champion", "ease", "--no-serve",
              log=log)  # fmt: skip
    (home / ".studio-demo-done").write_text(model)
    return model


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """Terminate a started studio or API process, killing it when it does not stop within 15 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@contextlib.contextmanager
def serve_studio(home: Path, model: str, *, traffic: int = 40, timeout: float = 120.0) -> Iterator[tuple[str, str]]:
    """Run ``tastebud serve`` (the champion of ``model``) and ``tastebud studio`` over ``home``, on free ports.

    Sends ``traffic`` requests first (recommendations for the first users, similar items, the chart), so the
    Operations page has traffic to show, and waits for the studio's warm-up run (:func:`.launch.warm_up`). Yields
    ``(api_url, studio_url)``; stops both on exit.
    """
    from tastebud.studio.launch import launch, warm_up

    home = Path(home).resolve()
    api_port, studio_port = _free_port(), _free_port()
    api_url, studio_url = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{studio_port}"
    env = {**os.environ, "TASTEBUD_HOME": str(home)}
    cmd = [sys.executable, "-m", "tastebud.cli", "serve", "--port", str(api_port), "--model-name", model]
    with contextlib.ExitStack() as stack:
        api_log = stack.enter_context((home / "studio-api.log").open("ab"))
        api = subprocess.Popen(cmd, env=env, stdout=api_log, stderr=subprocess.STDOUT)
        stack.callback(stop_process, api)
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{api_url}/health/ready", timeout=2).status_code == 200:
                    break
            if api.poll() is not None or time.monotonic() > deadline:
                raise ScreenshotError(f"the API did not become ready; see {home / 'studio-api.log'}")
            time.sleep(0.2)
        _traffic(api_url, traffic)
        studio_log = stack.enter_context((home / "studio.log").open("ab"))
        studio = launch(
            studio_port, api_url, home=home, stdout=studio_log.fileno(), stderr=subprocess.STDOUT, warm=False
        )
        stack.callback(stop_process, studio)
        wait_for_studio(studio_url, timeout=timeout)
        warm_up(studio_url, studio, timeout=timeout)  # as `tastebud studio` does in the background; here, waited for
        yield api_url, studio_url


def _traffic(api_url: str, n: int) -> None:
    """``n`` requests to the API: recommendations for known users, one unknown user, similar items, the chart."""
    with httpx.Client(base_url=api_url, timeout=10) as client:
        popular = client.get("/popular", params={"k": 5}).json().get("recommendations") or []
        items = [str(it["item_id"]) for it in popular] or ["1"]
        for i in range(n):
            if i % 4 == 0:
                client.get(f"/similar/{items[i // 4 % len(items)]}", params={"k": 5})
            elif i % 10 == 9:
                client.get("/recommend/someone-new", params={"k": 5})
            else:
                client.get(f"/recommend/{i + 1}", params={"k": 10})


@contextlib.contextmanager
def _browser_or_exit() -> Iterator[Browser]:
    try:
        with Browser() as browser:
            yield browser
    except ScreenshotError as err:
        print(f"screenshots: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def main(argv: Sequence[str] | None = None) -> int:
    """``scripts/screenshots.py URL [--out docs/studio] [--page NAME ...]``: 0 when every page passed."""
    parser = argparse.ArgumentParser(description="Screenshot every page of a running Tastebud Studio.")
    parser.add_argument("url", nargs="?", default="http://127.0.0.1:8501", help="the studio's base URL")
    parser.add_argument("--out", type=Path, default=Path("docs/studio"), help="directory for <page>.png")
    parser.add_argument("--page", action="append", choices=[p.name for p in PAGES], help="only these pages")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds each page may take")
    parser.add_argument("--json", action="store_true", help="print one JSON object per page")
    parser.add_argument(
        "--serve",
        metavar="HOME",
        type=Path,
        help="instead of URL: make HOME with `tastebud demo` (once), start the API and the studio over it, shoot, stop",
    )
    parser.add_argument(
        "--dataset", choices=sorted(DEMO_MODELS), default="ml-100k", help="the demo's dataset (--serve)"
    )
    args = parser.parse_args(argv)
    pages = [p for p in PAGES if not args.page or p.name in args.page]
    with contextlib.ExitStack() as stack:
        try:
            url = args.url
            if args.serve is not None:
                model = prepare_home(args.serve, args.dataset)
                _, url = stack.enter_context(serve_studio(args.serve, model))
            wait_for_studio(url, timeout=args.timeout)
        except ScreenshotError as err:
            print(f"screenshots: {err}", file=sys.stderr)
            return 2
        with _browser_or_exit() as browser:
            captures = capture_pages(url, args.out, pages, browser=browser, timeout=args.timeout)
    failed = 0
    for c in captures:
        if args.json:
            record = {"page": c.page.name, "png": str(c.png), "heading_ms": c.heading_ms,
                      "complete_ms": c.complete_ms, "elements": c.n_elements, "problems": c.problems}  # fmt: skip
            print(json.dumps(record))
        else:
            status = "ok" if not c.problems else "FAILED: " + "; ".join(c.problems)
            timing = f"heading {c.heading_ms:.0f} ms, complete {c.complete_ms:.0f} ms" if c.complete_ms else "-"
            print(f"{c.page.name:<11} {c.png}  ({timing})  {status}")
        failed += bool(c.problems)
    return 1 if failed else 0


__all__ = [
    "CHROMIUM_ENV",
    "PAGES",
    "Browser",
    "Capture",
    "Page",
    "ScreenshotError",
    "capture_pages",
    "find_chromium",
    "image_stats",
    "is_trivial",
    "main",
    "prepare_home",
    "serve_studio",
    "stop_process",
    "wait_for_studio",
]
