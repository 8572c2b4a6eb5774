"""Ensembles on MovieLens-100K: test NDCG@10 against their members, and serving latency against the slowest member.

Run (from the repository root; ML-100K is read from the test home ``.tastebud-test`` or ``--home``):

- ``.venv/bin/python bench/bench_ensemble.py quality [--members ease,als,slim,rp3beta ...] [--record]``: the random
  protocol of ``tests/test_quality_ml100k.py`` (per-user random 80/20, seed 42, every rating an interaction,
  every unseen item a candidate, K=10, binary relevance). Each ensemble learns its weights on validation carves
  of the training part (never the test part); each member is also fitted and evaluated alone. NDCG@10 with a
  1,000-resample bootstrap 95% interval.
- ``.venv/bin/python bench/bench_ensemble.py latency [--members als,slim,rp3beta] [--users 500] [--record]``:
  the serving engine (``Engine.recommend``, explanations on as the route's default, result cache off) for the
  ensemble and for each member alone, on the same random known users; median and p99 per request, alternating
  the models request by request, and the ratio of the ensemble's median to its slowest member's.
- ``.venv/bin/python bench/bench_ensemble.py http [--members als,slim,rp3beta] [--users 300] [--record]``: the same
  comparison through the whole app (``GET /recommend/{user}``, middleware, JSON, request log to a discarding
  writer, result cache off), one ``create_app`` per model over its written bundle, driven by Starlette's
  in-process ``TestClient`` (no socket); medians per request.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import append_results, machine_note, table

DEFAULT_HOME = Path(__file__).resolve().parents[1] / ".tastebud-test"


def load_split(home: Path) -> Any:
    from tastebud.config import build_settings
    from tastebud.data.fetch import fetch_dataset, is_fetched
    from tastebud.data.readers import read_dataset
    from tastebud.data.split import make_split

    settings = build_settings(home=home)
    if not is_fetched("ml-100k", settings):
        fetch_dataset("ml-100k", settings, progress=False)
    ds = read_dataset("ml-100k", settings=settings)
    return make_split(ds, "random", test_fraction=0.2, seed=42)


def quality(args: argparse.Namespace) -> str:
    from tastebud.evaluation.protocol import evaluate
    from tastebud.models import create

    split = load_split(args.home)
    rows: list[list[Any]] = []
    singles: dict[str, tuple[float, tuple[float, float], float]] = {}
    for spec in args.members:
        for name in spec.split(","):
            if name not in singles:
                report = evaluate(create(name).fit(split.train), split, k=10, n_boot=1000)
                singles[name] = (report.metric("ndcg"), report.ci["ndcg"], report.metric("recall"))
                print(f"{name}: {singles[name][0]:.4f}", flush=True)
        t0 = time.perf_counter()
        model: Any = create("ensemble", members=spec, blend=args.blend).fit(split.train)
        fit_s = time.perf_counter() - t0
        report = evaluate(model, split, k=10, n_boot=1000)
        low, high = report.ci["ndcg"]
        val = model.validation_
        weights = ", ".join(f"{n} {w:.2f}" for n, w in zip(val["members"], val["weights"], strict=True))
        best_name = max(spec.split(","), key=lambda n: singles[n][0])
        rows.append([
            f"ensemble({spec})", weights, f"{report.metric('ndcg'):.4f}", f"[{low:.4f}, {high:.4f}]",
            f"{report.metric('recall'):.4f}", f"{best_name} {singles[best_name][0]:.4f}", f"{val['ndcg_at_10']:.4f}",
            f"{fit_s:.0f}",
        ])  # fmt: skip
        print(rows[-1], flush=True)
    for name, (value, (low, high), recall) in singles.items():
        rows.append([name, "-", f"{value:.4f}", f"[{low:.4f}, {high:.4f}]", f"{recall:.4f}", "-", "-", "-"])
    return table(
        f"Ensembles on ML-100K, random 80/20 seed 42, test NDCG@10 (blend={args.blend}; weights learned on 3 "
        "per-user 15% carves of the training part)",
        [
            "model",
            "learned weights",
            "NDCG@10",
            "95% CI",
            "Recall@10",
            "best member alone",
            "validation NDCG@10",
            "fit s",
        ],
        rows,
    )


def latency(args: argparse.Namespace) -> str:
    from tastebud.models import create
    from tastebud.serving.engine import Engine

    split = load_split(args.home)
    train = split.train
    spec = args.members[0]
    names = spec.split(",")
    weights = None if args.learn else [1.0] * len(names)  # equal weights keep every member (a learned 0 drops one)
    ensemble: Any = create("ensemble", members=spec, blend=args.blend, weights=weights).fit(train)
    members = {m.name: m for m in ensemble.members_}
    fallback = {"popular": create("popular").fit(train)}
    engines = {
        name: Engine(model, fallback, train.item_meta, result_cache_size=0)
        for name, model in {"ensemble": ensemble, **members}.items()
    }
    rng = np.random.default_rng(0)
    users = [str(u) for u in rng.choice(train.users.ids, size=args.users, replace=True).tolist()]
    for engine in engines.values():  # warm-up
        for user in users[:50]:
            engine.recommend(user, 10)
    times: dict[str, list[float]] = {name: [] for name in engines}
    for user in users:
        for name, engine in engines.items():
            t0 = time.perf_counter()
            engine.recommend(user, 10, explain=True)
            times[name].append(time.perf_counter() - t0)
    medians = {name: float(np.median(t)) * 1e6 for name, t in times.items()}
    slowest = max((n for n in engines if n != "ensemble"), key=lambda n: medians[n])
    ratio = medians["ensemble"] / medians[slowest]
    rows = [[name, f"{medians[name]:.0f}", f"{float(np.percentile(times[name], 99)) * 1e6:.0f}"] for name in engines]
    rows.append([f"ensemble / slowest member ({slowest})", f"{ratio:.2f}x", ""])
    print(rows, flush=True)
    return table(
        f"Ensemble serving latency in process (Engine.recommend, k=10, explanations on, cache off, "
        f"{args.users} random known users of ML-100K; members {spec})",
        ["model", "median µs", "p99 µs"],
        rows,
    )


class _OneBundle:
    """A registry of one bundle as version 1 and ``champion`` (what the serving holder asks of a registry)."""

    def __init__(self, name: str, path: Path) -> None:
        from types import SimpleNamespace

        self.name, self.path = name, path
        self.version = SimpleNamespace(name=name, version=1, aliases=["champion"], source=str(path))

    def resolve(self, name: str, ref: Any) -> Any:
        return self.version

    def get_alias(self, name: str, alias: str) -> int:
        return 1

    def bundle_path(self, mv: Any) -> Path:
        return self.path


class _DiscardLog:
    """A request-log writer that keeps nothing (the benchmark measures the route, not the store)."""

    pending = 0

    def submit(self, record: Any) -> bool:
        return True

    def flush(self, timeout: float = 5.0) -> bool:
        return True

    def close(self, timeout: float = 5.0) -> None:
        return None


def http(args: argparse.Namespace) -> str:
    import tempfile

    from fastapi.testclient import TestClient

    from tastebud.config import build_settings
    from tastebud.models import create
    from tastebud.registry.bundle import write_bundle
    from tastebud.serving import create_app

    split = load_split(args.home)
    train = split.train
    spec = args.members[0]
    ensemble: Any = create("ensemble", members=spec, weights=[1.0] * len(spec.split(","))).fit(train)
    models = {"ensemble": ensemble, **{m.name: m for m in ensemble.members_}}
    fallback = {"popular": create("popular").fit(train)}
    rng = np.random.default_rng(0)
    users = [str(u) for u in rng.choice(train.users.ids, size=args.users, replace=True).tolist()]
    times: dict[str, list[float]] = {name: [] for name in models}
    with tempfile.TemporaryDirectory(prefix="tastebud-bench-ens-") as tmp:
        clients = {}
        for name, model in models.items():
            path = write_bundle(model, Path(tmp) / name, train=train, metrics={}, fallback=fallback)
            settings = build_settings(
                home=Path(tmp) / f"home-{name}", serving={"model_name": name, "result_cache_size": 0}
            )
            app = create_app(settings, registry=_OneBundle(name, path), request_log=_DiscardLog())
            clients[name] = TestClient(app).__enter__()
            while clients[name].get("/health/ready").status_code != 200:
                time.sleep(0.05)
        try:
            for client in clients.values():  # warm-up
                for user in users[:30]:
                    client.get(f"/recommend/{user}?k=10")
            for user in users:
                for name, client in clients.items():
                    t0 = time.perf_counter()
                    response = client.get(f"/recommend/{user}?k=10")
                    times[name].append(time.perf_counter() - t0)
                    assert response.status_code == 200, response.text
        finally:
            for client in clients.values():
                client.__exit__(None, None, None)
    medians = {name: float(np.median(t)) * 1e3 for name, t in times.items()}
    slowest = max((n for n in models if n != "ensemble"), key=lambda n: medians[n])
    rows = [[name, f"{medians[name]:.2f}"] for name in models]
    rows.append([f"ensemble / slowest member ({slowest})", f"{medians['ensemble'] / medians[slowest]:.2f}x"])
    print(rows, flush=True)
    return table(
        "Ensemble serving latency through the app (GET /recommend, k=10, explanations on, cache off, in-process "
        f"TestClient, {args.users} random known users of ML-100K; members {spec}, equal weights)",
        ["model", "median ms"],
        rows,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["quality", "latency", "http"])
    parser.add_argument("--home", type=Path, default=Path(os.environ.get("TASTEBUD_TEST_HOME", DEFAULT_HOME)))
    parser.add_argument("--members", nargs="+", default=["ease,als,slim,rp3beta"], help="comma-separated member lists")
    parser.add_argument("--blend", choices=["score", "rank"], default="score")
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--learn", action="store_true", help="latency: learned weights (may drop members)")
    parser.add_argument("--record", action="store_true", help="append the table to bench/RESULTS.md")
    args = parser.parse_args()
    text = {"quality": quality, "latency": latency, "http": http}[args.what](args)
    print(text)
    if args.record:
        append_results(f"{text}\n_{machine_note()}_\n")


if __name__ == "__main__":
    main()
