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

The target is every page *complete* (charts and tables drawn) within 1 s, median of the warm loads.

``--baseline-src DIR`` compares with other code in the same run: a second studio runs with ``DIR`` (a directory
holding a ``tastebud`` package, e.g. a copy of an earlier ``src``) first on its ``PYTHONPATH``, over the same API
and home, and each round loads every page from both studios, one after the other, the order alternating between
rounds, so that both see the same load on a shared machine.

    .venv/bin/python bench/bench_studio.py --home bench/out/studio-home --repeats 9 --record
    .venv/bin/python bench/bench_studio.py --repeats 9 --baseline-src /tmp/old-src
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import _common as common
from tastebud.studio.screenshots import (
    PAGES,
    Browser,
    Capture,
    Page,
    prepare_home,
    serve_studio,
    stop_process,
    wait_for_studio,
)

#: The target: every page complete (main content, tables and charts drawn) within this many ms (warm median).
TARGET_MS = 1000.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


Timings = tuple[dict[str, Capture], dict[str, list[Capture]]]


def measure(studios: dict[str, str], repeats: int) -> dict[str, Timings]:
    """For each studio (label -> URL): one cold load of each page, then ``repeats`` rounds of warm loads in turn;
    with several studios, each page is loaded from every studio in turn, the order reversed every other round."""
    pages = [Page(p.name, p.path, p.heading) for p in PAGES]  # no clicks: the page as it opens
    out: dict[str, Timings] = {label: ({}, {p.name: [] for p in pages}) for label in studios}
    with Browser() as browser:
        for label, url in studios.items():
            for page in pages:
                out[label][0][page.name] = _checked(browser.load(url + page.path, page, timeout=120))
        order = list(studios.items())
        for round_ in range(repeats):
            for page in pages:
                for label, url in order if round_ % 2 == 0 else order[::-1]:
                    out[label][1][page.name].append(_checked(browser.load(url + page.path, page, timeout=120)))
    return out


@contextlib.contextmanager
def baseline_studio(src: Path, home: Path, api: str) -> Iterator[str]:
    """A second studio over the same API and home, importing ``tastebud`` from ``src`` first; yields its URL."""
    from tastebud.studio.launch import launch, warm_up

    if not (src / "tastebud" / "studio" / "app.py").is_file():
        raise SystemExit(f"--baseline-src {src}: no tastebud/studio/app.py under it (give a copy of an src folder)")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {"PYTHONPATH": os.pathsep.join([str(src.resolve()), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    with (home / "studio-baseline.log").open("ab") as log:
        proc = launch(port, api, home=home, env=env, stdout=log.fileno(), stderr=subprocess.STDOUT, warm=False)
    try:
        wait_for_studio(url, timeout=120)
        warm_up(url, proc, timeout=120)
        yield url
    finally:
        stop_process(proc)


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


def report(timings: dict[str, Timings], apptest: dict[str, list[float]] | None) -> tuple[str, bool]:
    """The table (one row per page and studio; with a baseline, the ratio of complete medians) and whether the
    first studio met the target."""
    several = len(timings) > 1
    headers = ["page", *(["code"] if several else []), "heading painted, ms", "script done, ms", "complete, ms",
               "cold: heading / complete, ms"]  # fmt: skip
    if apptest:
        headers.append("AppTest run, ms")
    if several:
        headers.append("complete, this / baseline")
    headers.append(f"complete < {TARGET_MS:.0f} ms")
    rows: list[list[Any]] = []
    ok = True
    labels = list(timings)
    for name in timings[labels[0]][1]:
        medians = {
            label: common.median([float(c.complete_ms or 0) for c in timings[label][1][name]]) for label in labels
        }
        for label in labels:
            cold, warm = timings[label]
            caps = warm[name]
            heading = [float(c.heading_ms or 0) for c in caps]
            script = [float(c.script_ms or 0) for c in caps]
            complete = [float(c.complete_ms or 0) for c in caps]
            c0 = cold[name]
            row: list[Any] = [name if label == labels[0] else "", *([label] if several else []), _ms(heading),
                              _ms(script), _ms(complete), f"{c0.heading_ms:.0f} / {c0.complete_ms:.0f}"]  # fmt: skip
            if apptest:
                row.append(_ms([t * 1000 for t in apptest[name]]) if label == labels[0] else "")
            if several:
                row.append(f"{medians[labels[0]] / medians[labels[1]]:.2f}" if label == labels[0] else "")
            passed = medians[label] < TARGET_MS
            if label == labels[0]:
                ok &= passed
            row.append("yes" if passed else "NO")
            rows.append(row)
    n = len(next(iter(timings[labels[0]][1].values())))
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
    parser.add_argument(
        "--baseline-src",
        type=Path,
        help="also time a studio importing tastebud from this directory (a copy of an earlier src), page by page in "
        "turn with this code's",
    )
    args = parser.parse_args(argv)
    command = ".venv/bin/python bench/bench_studio.py " + shlex.join(sys.argv[1:] if argv is None else argv)

    t0 = time.perf_counter()
    model = prepare_home(args.home, "ml-100k")
    print(f"home ready in {time.perf_counter() - t0:.0f} s: {args.home} ({model})", file=sys.stderr)
    with serve_studio(args.home, model) as (api, studio), contextlib.ExitStack() as stack:
        studios = {"this": studio}
        if args.baseline_src is not None:
            studios["baseline"] = stack.enter_context(baseline_studio(args.baseline_src, args.home.resolve(), api))
        common.wait_for_quiet(args.quiet_load, max_wait=args.max_wait)
        load_before = os.getloadavg()[0]
        timings = measure(studios, args.repeats)
        load_after = os.getloadavg()[0]
        env = {"TASTEBUD_STUDIO_API": api, "TASTEBUD_HOME": str(args.home.resolve())}
        apptest = apptest_times(env, args.repeats) if args.apptest else None
    text, ok = report(timings, apptest)
    note = (
        f"Command: `{command}`. Machine: {common.machine_note()} at the end (1-minute load {load_before:.2f} when "
        f"timing started, {load_after:.2f} when the browser timing ended); one Chromium, the API (1 worker) and the "
        "studio on the same cores.\n"
    )
    print(text)
    print(note)
    if args.record:
        common.append_results("## Studio: page times\n\n" + note + "\n" + text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
