"""What a running two-variant experiment costs ``GET /recommend``, against no experiment, in one run.

Two ALS versions fitted on synthetic data of ML-100K's shape (943 x 1,682, 100,000 ratings; two seeds, so both arms
cost the same to score and the difference is the experiment's own work: assignment, the variant's model, the
exposure in the request log, the exposure counter) are registered in a fresh home's MLflow registry, v1 as champion
and v2 as challenger. One ``tastebud`` server (the production app, request log on, result cache off by default so
that every request is scored) is measured by ``wrk -t2 -c32`` on ``/recommend`` for random known users, alternating:
no experiment running / a 50/50 experiment running (a new one each round; the server picks it up through its
watcher). Reported: medians of req/s and p99 per mode, and the ratio.

    .venv/bin/python bench/bench_experiment_serving.py [--repeats 3] [--duration 10] [--workers 1] [--record]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import append_results, machine_note, table
from bench_serving import Server, run_wrk


def setup(home: Path) -> list[str]:
    """Register two ALS versions (champion, challenger) in ``home``; the known users' ids."""
    from tastebud.config import build_settings
    from tastebud.data.synthetic import generate_synthetic
    from tastebud.models import create
    from tastebud.registry import ModelRegistry
    from tastebud.registry.bundle import write_bundle

    settings = build_settings(home=home)
    train = generate_synthetic(943, 1682, 100_000, seed=7)
    fallback = {"popular": create("popular").fit(train)}
    registry = ModelRegistry(settings)
    for n, alias in enumerate(("champion", "challenger")):
        model = create("als", factors=64, iterations=10, random_state=n).fit(train)
        bundle = write_bundle(model, home / f"bundle-{n}", train=train, fallback=fallback, metrics={"ndcg_at_10": 0.1})
        registry.set_alias("ml", alias, registry.register(bundle, "ml").version)
    return [str(u) for u in train.users.ids.tolist()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--result-cache-size", type=int, default=0, help="0: every request scored (default)")
    parser.add_argument("--port", type=int, default=8771)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()

    from tastebud.config import build_settings
    from tastebud.experiments import create_experiment, start_experiment, stop_experiment
    from tastebud.registry import ModelRegistry
    from tastebud.store import create_store

    with tempfile.TemporaryDirectory(prefix="tb-exp-bench-") as tmp:
        home = Path(tmp) / "home"
        users = setup(home)
        settings = build_settings(home=home)
        registry = ModelRegistry(settings)
        store = create_store(settings)
        store.init_schema()
        env = {
            "TASTEBUD_HOME": str(home), "TASTEBUD_SERVING__MODEL_NAME": "ml",
            "TASTEBUD_SERVING__WATCH_INTERVAL_S": "0.5",
            "TASTEBUD_SERVING__RESULT_CACHE_SIZE": str(args.result_cache_size),
        }  # fmt: skip
        paths = [f"/recommend/{u}?k=10" for u in users]
        runs: dict[str, list[dict]] = {"none": [], "experiment": []}
        with Server(env, args.workers, args.port, Path(tmp) / "server.log") as server:
            run_wrk(server.url, paths, 3)  # warm-up
            for r in range(args.repeats):
                runs["none"].append(run_wrk(server.url, paths, args.duration, seed=r))
                arms = [{"name": "control", "ref": "champion"}, {"name": "treatment", "ref": "challenger"}]
                name = f"bench-{r}"
                create_experiment(store, registry, settings, {"name": name, "model_name": "ml", "variants": arms},
                                  actor="bench")  # fmt: skip
                start_experiment(store, registry, settings, name, actor="bench")
                time.sleep(3)  # every worker's watcher picks it up and loads the challenger
                runs["experiment"].append(run_wrk(server.url, paths, args.duration, seed=r))
                stop_experiment(store, name, actor="bench")
                time.sleep(3)
        logged = store.query_request_logs(limit=None)
        exposed = sum(1 for rec in logged if rec.get("experiment"))
    med = {m: statistics.median(x["rps"] for x in v) for m, v in runs.items()}
    p99 = {m: statistics.median(x["p99_us"] / 1000 for x in v) for m, v in runs.items()}
    rows = [
        [mode, f"{med[mode]:,.0f}", f"{p99[mode]:.1f}", f"{med[mode] / med['none']:.3f}"]
        for mode in ("none", "experiment")
    ]
    text = table(
        f"GET /recommend with and without a running 50/50 experiment ({args.workers} worker"
        f"{'s' if args.workers > 1 else ''}, result cache {args.result_cache_size})",
        ["experiments running", "req/s (median)", "p99 ms", "ratio"], rows,
    )  # fmt: skip
    note = (
        f"Command: `.venv/bin/python bench/bench_experiment_serving.py --repeats {args.repeats} --duration "
        f"{args.duration} --workers {args.workers} --result-cache-size {args.result_cache_size}`; wrk -t2 -c32 on "
        f"random known users, modes alternating in one run; {exposed:,} exposures logged with their experiment. "
        "Target: at most 5% less throughput with the experiment."
    )
    print(text)
    print(note)
    if args.record:
        append_results(f"## Experiments: serving cost\n\n{text}\n{note}\n\n{machine_note()}\n")


if __name__ == "__main__":
    main()
