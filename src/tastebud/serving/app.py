"""The FastAPI app factory: composes settings, registry, model holder, request log and routes.

``create_app`` builds nothing heavy itself. Its lifespan starts the model watcher, which loads the watched alias
(``champion``) in a background thread, so the server answers health checks at once and readiness fails until a
model is served; it opens the request store and its background writer (unless given); at shutdown it stops the
watcher and drains the request log.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from tastebud.config import Settings, build_settings
from tastebud.monitoring.metrics import DRIFT_TEXTFILE, RETRAIN_TEXTFILE, ServingMetrics, mark_process_dead
from tastebud.serving.auth import AuthMiddleware, AuthPolicy, RateLimits, install_openapi_security
from tastebud.serving.batching import Batcher
from tastebud.serving.errors import install_error_handlers
from tastebud.serving.holder import BundleLoader, ModelHolder, settings_loader
from tastebud.serving.middleware import BodyLimitMiddleware, MetricsMiddleware
from tastebud.serving.provenance import image_digest
from tastebud.serving.routes import (
    events,
    experiments,
    health,
    items,
    metrics,
    models,
    popular,
    recommend,
    similar,
    trace,
)
from tastebud.serving.routes._shared import OrjsonResponse

logger = logging.getLogger(__name__)

#: Seconds the shutdown waits for the request log to drain.
DRAIN_TIMEOUT_S = 10.0


def create_app(
    settings: Settings | None = None,
    *,
    registry: Any = None,
    request_log: Any = None,
    holder: ModelHolder | None = None,
    store: Any = None,
    loader: BundleLoader | None = None,
    watch: bool = True,
    freeze_gc: bool = False,
) -> FastAPI:
    """Build the API.

    Args:
        settings: effective settings (built from the environment when ``None``).
        registry: a model registry (``resolve``, ``bundle_path``, ``get_alias``, ``list_versions``); the real
            :class:`tastebud.registry.ModelRegistry` is built at startup when ``None`` and no holder is given.
        request_log: a background request-log writer (``submit``, ``flush``, ``close``); ``None`` opens the
            store of ``settings`` and starts a :class:`tastebud.store.RequestLogWriter` at startup.
        holder: a ready model holder (tests); built from ``registry`` when ``None``.
        store: the request store for ``/trace`` (defaults to the writer's store).
        loader: how bundles are loaded (default: verified ``load_bundle``, with the manifest signature checked
            when ``settings.signing`` configures a key).
        watch: load the alias at startup and watch it; False leaves loading to the caller.
        freeze_gc: freeze the objects alive after each model load out of the garbage collector's full passes
            (server processes: :func:`create_app_from_env`).
    """
    settings = settings or build_settings()
    cfg = settings.serving
    policy = AuthPolicy.from_settings(settings)  # a ConfigError before anything starts (auth.required, no key)
    rate_limits = RateLimits.from_settings(settings)
    logger.log(logging.INFO if policy.enforced else logging.WARNING, policy.describe())
    metrics_ = holder.metrics if holder is not None else ServingMetrics()
    for textfile in (DRIFT_TEXTFILE, RETRAIN_TEXTFILE):  # the latest drift check's and retrain's gauges
        if settings.home / textfile not in metrics_.textfiles:
            metrics_.textfiles.append(settings.home / textfile)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # What this app opened itself (and so closes); Any like ``_default_request_log``'s results.
        owned_writer: Any = None
        owned_store: Any = None
        state = app.state
        if state.holder is None:
            reg = registry if registry is not None else _default_registry(settings)
            state.holder = ModelHolder(
                reg, name=cfg.model_name, alias=cfg.alias, metrics=metrics_,
                sparse_history_threshold=cfg.sparse_history_threshold, result_cache_size=cfg.result_cache_size,
                ann_ef_search=cfg.ann_ef_search, freeze_gc=freeze_gc, image_digest=image_digest(),
                loader=loader or settings_loader(settings),
                overlay_args=overlay_bounds(settings),
            )  # fmt: skip
        if state.request_log is None:
            owned_store, owned_writer = _default_request_log(settings, metrics_)
            state.request_log = owned_writer
        if state.store is None:
            state.store = owned_store or getattr(state.request_log, "store", None)
        follower = _attach_follower(settings, state, metrics_)
        if watch:
            state.holder.start(cfg.watch_interval_s)
        router = _start_router(settings, state) if watch else None
        consumer = _start_consumer(settings, state, metrics_)
        try:
            yield
        finally:
            if consumer is not None:
                consumer.stop()
            if follower is not None:
                follower.stop()
            if router is not None:
                router.stop()
            state.holder.stop()
            writer = state.request_log
            if writer is not None:
                try:
                    if writer is owned_writer:
                        writer.close(DRAIN_TIMEOUT_S)
                    else:
                        writer.flush(DRAIN_TIMEOUT_S)
                except Exception:
                    logger.exception("request log did not drain cleanly")
            if owned_store is not None:
                owned_store.close()
            mark_process_dead()  # this worker's live gauges leave the multiprocess directory

    app = FastAPI(
        title="Tastebud",
        summary="Recommendations with provenance: personal top-k, similar items, popular lists.",
        version=_package_version(),
        lifespan=lifespan,
        default_response_class=OrjsonResponse,
        **_telemetry(cfg.opentelemetry),
    )
    app.state.settings = settings
    app.state.holder = holder
    app.state.metrics = metrics_
    app.state.request_log = request_log
    app.state.store = store
    #: scoring batches of the plain /recommend path (None: every request scored on its own)
    app.state.batcher = (
        Batcher(cfg.batch_max, cfg.batch_inline_ms, cfg.batch_wait_ms, metrics_) if cfg.batch_max > 1 else None
    )
    install_error_handlers(app)
    _add_routes(app, (recommend, similar, popular, items, health, metrics, trace, models, events, experiments))
    install_openapi_security(app)
    # Starlette runs the middleware added last first: metrics see every request, refused ones included.
    app.add_middleware(AuthMiddleware, policy=policy, limits=rate_limits, metrics=metrics_)
    # inside the metrics (a 413 is counted), outside everything that could read a body
    app.add_middleware(BodyLimitMiddleware, max_bytes=cfg.max_body_bytes, metrics=metrics_)
    app.add_middleware(MetricsMiddleware, metrics=metrics_)
    return app


def opentelemetry_wanted(setting: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Whether FastAPI's OpenTelemetry instrumentation is wanted (``serving.opentelemetry``; ``auto``: see there)."""
    if setting != "auto":
        return setting == "on"
    return any(name.startswith("OTEL_") for name in environ) or (
        environ.get("FASTAPI_OTEL_AUTO_CONFIGURE", "").lower() == "true"
    )


def _telemetry(setting: str) -> dict[str, Any]:
    """``FastAPI``'s ``telemetry`` argument: all of it off unless wanted; nothing for a FastAPI without it.

    Enabled, FastAPI asks OpenTelemetry for its tracer, meter and logger providers on every request (each lookup
    reads the environment), about 5 us a request even when none is configured: more than all of a trivial
    route's own code.
    """
    if opentelemetry_wanted(setting) or "telemetry" not in inspect.signature(FastAPI.__init__).parameters:
        return {}
    return {"telemetry": {"tracing": False, "metrics": False, "logs": False}}


def _add_routes(app: FastAPI, modules: tuple[Any, ...]) -> None:
    """Put the routes of ``modules`` (each with an ``APIRouter`` named ``router``) into ``app``'s own route table.

    Routes are matched in order, one after the other, so the API's come first (the hot ``GET /recommend/{user_id}``
    at the head), before the documentation pages FastAPI adds. They go in as they are rather than through
    ``include_router``: FastAPI 0.165 keeps an included router as one nested route that each request walks router by
    router, route by route, saving and restoring scope keys at each step. In process, with ten routers, that cost
    ``/recommend`` (the first router) about 50 us a request and a route of the last router about 130 us, against
    a 120 us request of a trivial route matched first (bench/RESULTS.md). Our routers carry only tags, which
    ``APIRouter`` already copies into each of its routes, so nothing of an inclusion is lost.
    """
    app.router.routes[:0] = [route for module in modules for route in module.router.routes]


def create_app_from_env() -> FastAPI:
    """App factory for ``uvicorn --factory`` (each worker builds its own from the environment)."""
    settings = build_settings()
    limit_blas_threads(settings.serving.blas_threads)
    return create_app(settings, freeze_gc=True)


def limit_blas_threads(n: int) -> None:
    """Cap the BLAS thread pools and FAISS's OpenMP threads of this process at ``n`` (0: leave them).

    A request scores one user: matrices far too small for threads to pay off, while thread hand-offs (and
    contention between worker processes) cost milliseconds. FAISS searches a serving batch's queries in one call
    and would spread them over an OpenMP thread per core, in every worker at once. Call it from a server
    process's entry point only; it changes the whole process.
    """
    if n <= 0:
        return
    # Libraries loaded later (SciPy's OpenBLAS, FAISS's and its OpenMP, with the first model) read these variables
    # when they load, for every thread; threadpoolctl caps the pools already loaded (OpenMP's for this thread, which
    # runs the event loop).
    os.environ["OMP_NUM_THREADS"] = os.environ["OPENBLAS_NUM_THREADS"] = str(n)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        logger.warning("threadpoolctl is not installed: BLAS threads are not limited")
        return
    threadpool_limits(limits=n)  # every API: BLAS and OpenMP


def overlay_bounds(settings: Settings) -> dict[str, Any]:
    """The real-time overlays' bounds from ``settings.serving`` (:class:`UserOverlays` keyword arguments)."""
    cfg = settings.serving
    return {"max_bytes": cfg.overlay_max_bytes, "max_users": cfg.overlay_max_users, "max_items": cfg.overlay_max_items}


def _attach_follower(settings: Settings, state: Any, metrics_: ServingMetrics) -> Any:
    """Follow the event store in this process (every worker and replica does), when there is one; else None.

    The holder's loads then build each model's overlays from the store, so a restart loses no event, and the
    follower thread applies events stored by any process within ``serving.event_poll_s``.
    """
    store = state.store
    if store is None or not hasattr(store, "events_after"):
        return None
    from tastebud.serving.realtime import EventFollower

    holder = state.holder
    overlay_args = dict(holder.overlay_args) if holder is not None else overlay_bounds(settings)
    follower = EventFollower(
        store, interval_s=settings.serving.event_poll_s, overlay_args=overlay_args,
        on_apply=metrics_.realtime_events.inc,
    )  # fmt: skip
    try:
        holder.attach_follower(follower)
    except Exception as err:  # a store that cannot be read now is retried by the follower's polls
        logger.error("real-time overlays not rebuilt at start: %s", err)
    follower.start()
    return follower


def _start_router(settings: Settings, state: Any) -> Any:
    """Route users of the running experiments of the served model (polled every ``serving.watch_interval_s``)."""
    store = state.store
    if store is None or not hasattr(store, "list_experiments") or state.holder.registry is None:
        return None
    from tastebud.serving.experiments import ExperimentRouter

    router = ExperimentRouter(store, state.holder)
    state.holder.router = router
    router.start(settings.serving.watch_interval_s)
    return router


def _start_consumer(settings: Settings, state: Any, metrics_: ServingMetrics) -> Any:
    """Start the in-server Kafka consumer when ``stream.consume_in_server`` and a broker are set; else None."""
    stream = settings.stream
    if not (stream.consume_in_server and stream.bootstrap_servers):
        return None
    from tastebud.serving.realtime import BackgroundConsumer

    store = state.store if hasattr(state.store, "write_events") else None
    if store is None:
        from tastebud.store import create_store

        store = create_store(settings)
        store.init_schema()
    holder = state.holder
    follower = holder.follower
    # Once a batch is stored, this process applies it at once; the others read it from the store.
    on_stored = (lambda _events: follower.poll()) if follower is not None else holder.overlays.add
    consumer = BackgroundConsumer.from_settings(settings, store, on_stored, metrics_.stream)
    consumer.start()
    logger.info("consuming events in the server from %s", stream.bootstrap_servers)
    return consumer


def _default_registry(settings: Settings) -> Any:
    from tastebud.registry import ModelRegistry

    return ModelRegistry(settings)


def _default_request_log(settings: Settings, metrics_: ServingMetrics) -> tuple[Any, Any]:
    """Open the request store and start its writer; (None, None) when the store is unavailable."""
    try:
        from tastebud.store import RequestLogWriter, create_store

        store = create_store(settings)
        store.init_schema()
    except Exception as err:  # serving goes on without a request log rather than not at all
        logger.error("request log disabled: cannot open the store (%s)", err)
        return None, None
    if settings.stream.bootstrap_servers and settings.stream.publish_served:
        # Kafka mode: records go out as recommendation_served events; the ingest consumer writes them to the store,
        # which this process still opens for /trace and the real-time follower.
        from tastebud.stream.served import ServedPublisher

        publisher = ServedPublisher.from_settings(settings, metrics=metrics_)
        publisher.start()
        logger.info(
            "request log published to %s on %s", settings.stream.served_topic, settings.stream.bootstrap_servers
        )
        return store, publisher
    writer = RequestLogWriter(
        store,
        maxsize=settings.serving.request_log_queue,
        on_error=lambda _err: metrics_.request_log_errors.inc(),
        # records given up after failed writes (database locked, disk full); queue-full drops the routes count
        on_failed=metrics_.request_log_dropped.inc,
    )
    writer.start()
    return store, writer


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version("tastebud")
    except Exception:
        return os.environ.get("TASTEBUD_VERSION", "0")
