"""How the cost of ``tastebud train --model als`` grows with the data: an ML-25M-sized synthetic set.

Run: ``.venv/bin/python bench/bench_scale.py [--interactions 25000000] [--baseline-src DIR]``.

The set (160K users x 60K items by default, explicit ratings, ``tastebud data synth``) is generated once and
cached under ``bench/out/scale/`` (never committed). Each variant trains ALS on it through
:func:`tastebud.pipeline.train.train` in a fresh child process against a fresh embedded home (MLflow on SQLite,
local artifacts), exactly what ``tastebud train -d DIR --model als`` runs, and reports:

- per stage: read + prepare + split, the ALS fit, the fallback fits, validation, bundle write, tracking (the
  bundle logged as the run's artifact), registration, and the child's wall time from start to exit;
- the ratio of that end-to-end time to the ALS fit (target: at most 1.5);
- peak RSS of the child (``VmHWM``);
- bundle size against the size of the model's factors and the size the model needs (factors + its seen matrix;
  target: bundle within 2x of it), and the number of copies of the seen matrix's indices in the bundle;
- the MLflow store's size: the bytes its files list, and the bytes on disk (a hard-linked file counted once,
  with the bundle written by training), i.e. what registering adds to the disk.

``--baseline-src DIR`` runs the same measurement first with the package found in ``DIR`` (a directory holding a
``tastebud`` package, e.g. an export of an earlier commit), so the figures are compared within one run on the
same machine load. The load average is printed with the results: on a shared machine, compare ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "out" / "scale"
sys.path.insert(0, str(HERE))


# ---------------------------------------------------------------------------------------------------- child
def _child(data: Path, home: Path, t_start: float) -> None:
    """Train ALS on ``data`` into ``home`` and print one JSON line of figures (runs in a fresh process)."""
    import importlib

    from tastebud.config import build_settings

    # the module, not the package's re-exported ``train`` function
    pipeline = importlib.import_module("tastebud.pipeline.train")

    fits: dict[str, float] = {}
    original = pipeline.fit_models

    def timed_fit_models(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        main, fallback, fit_seconds = original(*args, **kwargs)
        fits["fits_total_s"] = time.perf_counter() - t0
        return main, fallback, fit_seconds

    pipeline.fit_models = timed_fit_models  # type: ignore[assignment]
    settings = build_settings(home=home)
    t0 = time.perf_counter()
    result = pipeline.train(str(data), "als", settings=settings, name="scale")
    train_s = time.perf_counter() - t0
    timings = dict(result.timings)
    timings["fallback_fit_s"] = fits["fits_total_s"] - timings["fit_s"]
    bundle = Path(result.bundle_dir)
    from _common import peak_rss_mib

    out = {
        "timings": timings,
        "train_call_s": train_s,
        "wall_s": time.time() - t_start,
        "peak_rss_mib": peak_rss_mib(),
        "bundle": _bundle_figures(bundle),
        "mlflow": _store_figures(home / "mlflow", exclude=bundle),
        "validation_users": result.report.n_users,
        "ndcg_at_10": result.metrics.get("ndcg_at_10"),
        "ndcg_ci": list(result.report.ci.get("ndcg", (None, None))),
    }
    print(json.dumps(out), flush=True)


def _sizes_child(data: Path, home: Path, t_start: float) -> None:
    """Bundle and MLflow-store size of popular + content fitted on ``data``'s split and ALS factors of the trained
    shape (seeded, not fitted): the size comparison without an ALS fit (``--sizes``)."""
    import numpy as np

    from tastebud.config import build_settings
    from tastebud.data.prepare import PrepareConfig, prepare
    from tastebud.data.readers import read_dataset
    from tastebud.data.split import make_split
    from tastebud.models import create
    from tastebud.models.als import ALSRecommender
    from tastebud.registry.bundle import write_bundle
    from tastebud.registry.tracking import log_run

    settings = build_settings(home=home)
    ds = prepare(read_dataset(str(data), settings=settings), PrepareConfig.from_params(dedupe="latest"))
    train = make_split(ds, "random", test_fraction=0.2, validation_fraction=0.1, seed=settings.seed).train
    rng = np.random.default_rng(0)
    factors = [rng.normal(size=(n, 64)).astype(np.float32) for n in (train.n_users, train.n_items)]
    model = ALSRecommender.from_factors(*factors, train.matrix("value"), train.users, train.items, factors=64)
    fallback = {"popular": create("popular").fit(train), "content": create("content").fit(train)}
    t0 = time.perf_counter()
    bundle = write_bundle(model, home / "bundle", train=train, metrics={}, fallback=fallback)
    write_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    log_run(settings, run_name="size", params={}, metrics={}, tags={}, artifacts={"bundle": bundle})
    log_s = time.perf_counter() - t0
    inodes = {(p.stat().st_dev, p.stat().st_ino): p.stat().st_size for p in home.rglob("*") if p.is_file()}
    out = {
        "bundle": _bundle_figures(bundle),
        "mlflow": _store_figures(settings.mlflow_dir, exclude=bundle),
        "home_disk_bytes": sum(inodes.values()),
        "bundle_write_s": write_s,
        "log_s": log_s,
    }
    print(json.dumps(out), flush=True)


def _bundle_figures(bundle: Path) -> dict[str, Any]:
    files = [p for p in bundle.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    factors = sum(p.stat().st_size for p in (bundle / "model").glob("*_factors.npy"))
    manifest = json.loads((bundle / "manifest.json").read_text())
    links = manifest.get("shared", {})
    # the seen matrix of the main model: its own files, or the shared files its links point to
    seen = 0
    for name in ("seen_data.npy", "seen_indices.npy", "seen_indptr.npy"):
        rel = f"model/{name}"
        path = bundle / links.get(rel, rel)
        seen += path.stat().st_size if path.exists() else 0
    copies = sum(1 for p in files if p.name == "seen_indices.npy") + len(
        {t for r, t in links.items() if r.endswith("seen_indices.npy")}
    )
    return {
        "bytes": size,
        "factor_bytes": factors,
        "needed_bytes": factors + seen,
        "seen_index_copies": copies,
        "schema_version": manifest.get("schema_version"),
    }


def _store_figures(store: Path, *, exclude: Path) -> dict[str, int]:
    """Bytes the store's files list, and bytes on disk not shared (hard-linked) with files under ``exclude``."""
    outside = {(p.stat().st_dev, p.stat().st_ino) for p in exclude.rglob("*") if p.is_file()}
    listed = added = 0
    seen: set[tuple[int, int]] = set()
    for p in store.rglob("*"):
        if not p.is_file():
            continue
        st = p.stat()
        listed += st.st_size
        key = (st.st_dev, st.st_ino)
        if key not in outside and key not in seen:
            added += st.st_size
        seen.add(key)
    return {"listed_bytes": listed, "added_bytes": added}


# ---------------------------------------------------------------------------------------------------- parent
def _dataset(users: int, items: int, interactions: int) -> Path:
    path = OUT / f"synth-{users}x{items}x{interactions}"
    if not path.exists():  # written atomically by the command: a directory that exists is complete
        path.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        subprocess.run(
            [
                str(Path(sys.executable).parent / "tastebud"),
                "data",
                "synth",
                "--users",
                str(users),
                "--items",
                str(items),
                "--interactions",
                str(interactions),
                "-o",
                str(path),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        print(f"generated {path} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return path


def _run_variant(label: str, data: Path, src: Path | None, child: str = "_child") -> dict[str, Any]:
    from _common import run_child

    home = OUT / f"home-{label}"
    shutil.rmtree(home, ignore_errors=True)
    env_path = os.pathsep.join(p for p in (str(src) if src else "", str(HERE)) if p)
    argv = [
        sys.executable,
        "-c",
        "import sys,time; t=time.time(); sys.path[:0]=" + repr(env_path.split(os.pathsep)) + "; "
        f"import bench_scale; bench_scale.{child}(" + f"__import__('pathlib').Path({str(data)!r}), "
        f"__import__('pathlib').Path({str(home)!r}), t)",
    ]
    print(f"[{label}] training on {data.name} ...", file=sys.stderr, flush=True)
    stdout, _ = run_child(argv)
    figures: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    figures["label"] = label
    shutil.rmtree(home, ignore_errors=True)
    return figures


def _row(fig: dict[str, Any]) -> list[Any]:
    t = fig["timings"]
    mib = 1 << 20
    b, s = fig["bundle"], fig["mlflow"]
    return [
        fig["label"],
        f"{t['data_s']:.1f}",
        f"{t['fit_s']:.1f}",
        f"{t['fallback_fit_s']:.1f}",
        f"{t['evaluate_s']:.1f} ({fig['validation_users']:,} users)",
        f"{t['bundle_s']:.1f}",
        f"{t.get('track_s', 0):.1f}",
        f"{t.get('register_s', 0):.1f}",
        f"{fig['wall_s']:.1f}",
        f"**{fig['wall_s'] / t['fit_s']:.2f}x**",
        f"{fig['peak_rss_mib'] / 1024:.2f} GiB",
        f"{b['bytes'] / mib:.0f} MiB ({b['bytes'] / b['needed_bytes']:.2f}x needed, "
        f"{b['seen_index_copies']} seen cop{'y' if b['seen_index_copies'] == 1 else 'ies'})",
        f"{b['factor_bytes'] / mib:.0f} / {b['needed_bytes'] / mib:.0f} MiB",
        f"{s['listed_bytes'] / mib:.0f} MiB listed, {s['added_bytes'] / mib:.0f} MiB added",
        f"{fig['ndcg_at_10']:.4f} [{fig['ndcg_ci'][0]:.4f}, {fig['ndcg_ci'][1]:.4f}]",
    ]


HEADERS = [
    "variant",
    "read+split s",
    "ALS fit s",
    "fallback fits s",
    "validation s",
    "bundle s",
    "track s",
    "register s",
    "end to end s",
    "end to end / fit",
    "peak RSS",
    "bundle",
    "factors / needed",
    "MLflow store",
    "NDCG@10 [95% CI]",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=160_000)
    parser.add_argument("--items", type=int, default=60_000)
    parser.add_argument("--interactions", type=int, default=25_000_000)
    parser.add_argument("--baseline-src", type=Path, default=None, help="directory holding an earlier tastebud package")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw figures here")
    parser.add_argument(
        "--sizes", action="store_true", help="only the bundle and store sizes (no ALS fit: seeded factors)"
    )
    args = parser.parse_args()
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    from _common import load_average, machine_note, table

    data = _dataset(args.users, args.items, args.interactions)
    load_before = load_average()
    results = []
    if args.sizes:
        mb = 1e6
        rows = []
        for label, src in (("before", args.baseline_src), ("after", None)):
            if label == "before" and src is None:
                continue
            fig = _run_variant(label, data, src.resolve() if src else None, child="_sizes_child")
            b = fig["bundle"]
            rows.append(
                [
                    label,
                    f"{b['bytes'] / mb:.1f} MB",
                    f"{b['factor_bytes'] / mb:.1f} MB",
                    f"{fig['mlflow']['listed_bytes'] / mb:.1f} MB",
                    f"{fig['home_disk_bytes'] / mb:.1f} MB",
                    f"{fig['bundle_write_s']:.1f} s",
                    f"{fig['log_s']:.1f} s",
                ]
            )
            results.append(fig)
        headers = ["variant", "bundle", "factors", "MLflow store listed", "home on disk", "bundle write", "log"]
        print(table(f"bundle sizes, {args.interactions:,} ratings", headers, rows))
        print(machine_note())
        if args.json is not None:
            args.json.write_text(json.dumps(results, indent=2))
        return
    if args.baseline_src is not None:
        results.append(_run_variant("before", data, args.baseline_src.resolve()))
    results.append(_run_variant("after", data, None))
    title = (
        f"tastebud train --model als on {args.users:,} users x {args.items:,} items x {args.interactions:,} "
        f"ratings (load average {load_before:.1f} at start, {load_average():.1f} at end)"
    )
    print(table(title, HEADERS, [_row(r) for r in results]))
    print(machine_note())
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
