"""How much tracking, registering and loading a version add to training on MovieLens-100K.

Run: ``.venv/bin/python bench/bench_registry.py [--model ease] [--repeats 5]``. Each repeat trains the model
through :func:`tastebud.pipeline.train.train` on a warm embedded MLflow store, then resolves the new version
and loads its bundle as serving would. Reported: medians of each step; the target is that tracking +
registering + loading add < 2 s. The first run against a fresh store (database creation, MLflow import) is
reported separately.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from tastebud.config import build_settings
from tastebud.data.fetch import fetch_dataset, is_fetched
from tastebud.data.readers import read_dataset
from tastebud.pipeline.train import train
from tastebud.registry import ModelRegistry, load_bundle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="ease")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    os.environ.pop("MLFLOW_TRACKING_URI", None)

    data_home = Path(os.environ.get("TASTEBUD_TEST_HOME", Path(__file__).resolve().parents[1] / ".tastebud-test"))
    data_settings = build_settings(home=data_home)
    if not is_fetched("ml-100k", data_settings):
        fetch_dataset("ml-100k", data_settings, progress=False)
    ds = read_dataset("ml-100k", settings=data_settings)

    with tempfile.TemporaryDirectory() as tmp:
        settings = build_settings(home=Path(tmp))
        registry = ModelRegistry(settings)
        rows = []
        for i in range(args.repeats + 1):
            t0 = time.perf_counter()
            result = train(ds, args.model, settings=settings, registry=registry, name="bench")
            total = time.perf_counter() - t0
            t1 = time.perf_counter()
            mv = registry.resolve("bench", "challenger")
            bundle = load_bundle(registry.bundle_path(mv))
            load_s = time.perf_counter() - t1
            assert bundle.model.name == args.model
            t = result.timings
            rows.append(
                {
                    "train_s": t["data_s"] + t["fit_s"] + t["evaluate_s"],
                    "bundle_s": t["bundle_s"],
                    "track_s": t["track_s"],
                    "register_s": t["register_s"],
                    "load_s": load_s,
                    "added_s": t["track_s"] + t["register_s"] + load_s,
                    "total_s": total + load_s,
                }
            )
            label = "cold (fresh store)" if i == 0 else f"warm {i}"
            print(label, {k: round(v, 3) for k, v in rows[-1].items()})
    cold, warm = rows[0], rows[1:]
    print(f"\n| step | median of {len(warm)} warm runs | cold first run |")
    print("| --- | --- | --- |")
    for key in cold:
        print(f"| {key} | {statistics.median(r[key] for r in warm):.3f} s | {cold[key]:.3f} s |")


if __name__ == "__main__":
    main()
