"""Benchmark of Tastebud Studio's page times: each page in headless Chromium against a live API on ML-100K.

Setup (not timed): ``tastebud demo --no-serve`` once into ``--home`` (ML-100K, EASE champion, the loop's events, a
retrain), then ``tastebud serve`` and ``tastebud studio`` over it, with 40 requests sent first so the Operations
page has traffic (:func:`tastebud.studio.screenshots.serve_studio`).

Method: one headless Chromium (``--headless=new``) driven over the DevTools protocol
(:class:`tastebud.studio.screenshots.Browser`). Each measurement is a fresh navigation to the page's URL (a new
document, a new Streamlit session: the websocket, the page's script and every API call it makes). An observer
injected before the page's own scripts records, in the page's clock (``performance.now()``, ms since navigation
start):

- **heading**: the animation frame after the page's ``h1`` entered the DOM, i.e. first paint of the main content;
- **script done**: Streamlit's ``stApp`` switched ``data-test-script-state`` to ``notRunning`` (every element sent);
- **complete**: the last DOM change before the page stayed unchanged for 0.5 s (charts drawn).

The first load of each page after the studio starts is reported apart (**cold**: Streamlit compiles the page,
imports pandas/altair/MLflow, fills its caches); then ``--repeats`` rounds over the four pages in turn (warm),
medians and ranges. Pages that click (Discover's random user for the README pictures) are loaded without the
click here. Secondary figure (``--apptest``): ``streamlit.testing.v1.AppTest`` run time of each page's script
in-process, no browser, median of the same number of runs.

    .venv/bin/python bench/bench_studio.py --home bench/out/studio-home --repeats 7 --record
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import _common as common
from tastebud.studio.screenshots import PAGES, Browser, Capture, Page, prepare_home, serve_studio

#: The target: every page's main content painted within this many ms.
TARGET_MS = 1000.0


def measure(studio: str, repeats: int) -> tuple[dict[str, Capture], dict[str, list[Capture]]]:
    """One cold load of each page, then ``repeats`` rounds of warm loads in turn."""
    pages = [Page(p.name, p.path, p.heading) for p in PAGES]  # no clicks: the page as it opens
    cold: dict[str, Capture] = {}
    warm: dict[str, list[Capture]] = {p.name: [] for p in pages}
    with Browser() as browser:
        for page in pages:
            cold[page.name] = _checked(browser.load(studio + page.path, page, timeout=120))
        for _ in range(repeats):
            for page in pages:
                warm[page.name].append(_checked(browser.load(studio + page.path, page, timeout=120)))
    return cold, warm


def _checked(capture: Capture) -> Capture:
    if capture.problems:
        raise SystemExit(f"{capture.page.name}: {'; '.join(capture.problems)}")
    return capture


def apptest_times(studio_env: dict[str, str], repeats: int) -> dict[str, list[float]]:
    """Seconds of ``AppTest.run()`` for each page's script (in-process, against the same API and home)."""
    from streamlit.testing.v1 import AppTest

    from tastebud.studio import APP_PATH

    os.environ.update(studio_env)
    out: dict[str, list[float]] = {p.name: [] for p in PAGES}
    for _ in range(repeats + 1):  # the first round warms imports and caches, not kept
        for page in PAGES:
            at = AppTest.from_file(str(APP_PATH), default_timeout=120)
            at.run()
            if page.name != "discover":
                at.switch_page(f"pages/{page.name}.py")
            t0 = time.perf_counter()
            at.run()
            elapsed = time.perf_counter() - t0
            if at.exception:
                raise SystemExit(f"AppTest {page.name}: {at.exception}")
            out[page.name].append(elapsed)
    return {name: times[1:] for name, times in out.items()}


def _ms(values: Sequence[float]) -> str:
    return f"{common.median(values):.0f} ({min(values):.0f} to {max(values):.0f})"


def report(
    cold: dict[str, Capture], warm: dict[str, list[Capture]], apptest: dict[str, list[float]] | None
) -> tuple[str, bool]:
    headers = ["page", "heading painted, ms", "script done, ms", "complete, ms", "cold: heading / complete, ms"]
    if apptest:
        headers.append("AppTest run, ms")
    headers.append(f"heading < {TARGET_MS:.0f} ms")
    rows: list[list[Any]] = []
    ok = True
    for name, caps in warm.items():
        heading = [float(c.heading_ms or 0) for c in caps]
        script = [float(c.script_ms or 0) for c in caps]
        complete = [float(c.complete_ms or 0) for c in caps]
        c0 = cold[name]
        row: list[Any] = [name, _ms(heading), _ms(script), _ms(complete), f"{c0.heading_ms:.0f} / {c0.complete_ms:.0f}"]
        if apptest:
            row.append(_ms([t * 1000 for t in apptest[name]]))
        passed = common.median(heading) < TARGET_MS
        ok &= passed
        row.append("yes" if passed else "NO")
        rows.append(row)
    n = len(next(iter(warm.values())))
    title = f"Studio page times on ML-100K: medians (min to max) of {n} warm loads per page"
    return common.table(title, headers, rows), ok


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=Path("bench/out/studio-home"), help="Tastebud home (made once)")
    parser.add_argument("--repeats", type=int, default=7, help="warm loads per page")
    parser.add_argument("--apptest", action="store_true", help="also time each page's script with AppTest")
    parser.add_argument("--quiet-load", type=float, default=1.5, help="wait for this load before timing")
    parser.add_argument("--max-wait", type=float, default=120.0, help="longest wait for that load, s")
    parser.add_argument("--record", action="store_true", help="append the table to bench/RESULTS.md")
    args = parser.parse_args(argv)
    command = ".venv/bin/python bench/bench_studio.py " + shlex.join(sys.argv[1:] if argv is None else argv)

    t0 = time.perf_counter()
    model = prepare_home(args.home, "ml-100k")
    print(f"home ready in {time.perf_counter() - t0:.0f} s: {args.home} ({model})", file=sys.stderr)
    with serve_studio(args.home, model) as (api, studio):
        common.wait_for_quiet(args.quiet_load, max_wait=args.max_wait)
        load_before = os.getloadavg()[0]
        cold, warm = measure(studio, args.repeats)
        env = {"TASTEBUD_STUDIO_API": api, "TASTEBUD_HOME": str(args.home.resolve())}
        apptest = apptest_times(env, args.repeats) if args.apptest else None
    text, ok = report(cold, warm, apptest)
    note = (
        f"Command: `{command}`. Machine: {common.machine_note()} at the end (1-minute load {load_before:.2f} when "
        "timing started); one Chromium, the API (1 worker) and the studio on the same cores.\n"
    )
    print(text)
    print(note)
    if args.record:
        common.append_results("## Studio: page times\n\n" + note + "\n" + text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
