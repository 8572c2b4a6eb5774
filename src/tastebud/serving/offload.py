"""Slow scoring off the event loop: which requests run in a worker thread.

A route is an ``async def``: whatever it computes inline runs on the worker's event loop, so one request that
scores a large catalog (exact scoring of a million items, an HNSW search, explanations over a long history) holds
every other request of the process, ``/health`` included, until it ends. Each :class:`~tastebud.serving.engine.Engine`
measures what one request of each kind costs when its model loads (:meth:`Engine.calibrate`); a kind whose cost
reaches ``serving.offload_ms`` is run with :func:`to_thread` (Starlette's thread pool), where NumPy and FAISS release
the GIL. Cheaper kinds stay inline: the hand-off to a thread and back costs about 50-100 microseconds, more than a
whole request of a small model (see "Slow work off the event loop" in bench/RESULTS.md).
"""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool as to_thread
from starlette.requests import Request

__all__ = ["is_slow", "to_thread"]


def is_slow(request: Request, engine: Any, kind: str) -> bool:
    """Whether a ``kind`` request (``recommend``, ``similar``, ``popular``) of ``engine`` should leave the loop."""
    cost = engine.cost_ms.get(kind) if hasattr(engine, "cost_ms") else None  # an engine stand-in has none
    return cost is not None and cost >= request.app.state.settings.serving.offload_ms
