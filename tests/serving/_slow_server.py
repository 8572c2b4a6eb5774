"""The API under uvicorn with a deliberately slow model: ``python _slow_server.py config.json``.

Every personal scoring call of the served model (one request, or a batch of them) sleeps ``slow_s`` seconds first
(a stand-in for exact scoring of a huge catalog or a wide HNSW search: work that releases the GIL, as NumPy and
FAISS do). ``offload_ms`` is ``serving.offload_ms`` (a huge value keeps scoring on the event loop: the behaviour
before the fix).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import uvicorn

from tastebud.config import build_settings
from tastebud.serving.app import create_app, limit_blas_threads
from tastebud.serving.holder import default_loader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _server import FileRegistry


def main() -> None:
    cfg = json.loads(Path(sys.argv[1]).read_text())
    slow_s = float(cfg["slow_s"])

    def slow_loader(directory: Path) -> Any:
        bundle = default_loader(directory)
        model = bundle.model
        fast = model.recommend_row

        def recommend_row(*args: Any, **kwargs: Any) -> Any:
            time.sleep(slow_s)
            return fast(*args, **kwargs)

        fast_rows = model.recommend_rows

        def recommend_rows(*args: Any, **kwargs: Any) -> Any:  # a scoring batch: slow once for the batch
            time.sleep(slow_s)
            return fast_rows(*args, **kwargs)

        model.recommend_row = recommend_row
        model.recommend_rows = recommend_rows
        return bundle

    settings = build_settings(
        home=cfg["home"],
        serving={"model_name": "ml", "watch_interval_s": 0, "result_cache_size": 0, "offload_ms": cfg["offload_ms"]},
    )
    registry = FileRegistry("ml", {1: cfg["bundle"]}, Path(cfg["aliases_file"]))
    limit_blas_threads(1)
    app = create_app(settings, registry=registry, loader=slow_loader)
    uvicorn.run(app, host="127.0.0.1", port=cfg["port"], log_level="warning")


if __name__ == "__main__":
    main()
