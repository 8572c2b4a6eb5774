"""The model holder: an atomic reference to the served model, and hot switching off the request path.

A request reads :attr:`ModelHolder.current` once and works with that :class:`Served` object to the end, so a
switch never changes the model under a request in flight. A switch (admin call or alias watcher) resolves the
version in the registry, loads and verifies its bundle and prepares the :class:`Engine` on the calling thread
(never the event loop), and only then replaces the reference. A corrupt or incompatible bundle is refused with
:class:`~tastebud.errors.BundleError` and the old model keeps serving.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tastebud.errors import BundleError, TastebudError
from tastebud.monitoring.metrics import ServingMetrics
from tastebud.serving.engine import Engine
from tastebud.serving.provenance import static_provenance, utc_now
from tastebud.serving.realtime import EventFollower, UserOverlays
from tastebud.serving.redact import model_uri, redact_paths

logger = logging.getLogger(__name__)


class RegistryLike(Protocol):
    """What the holder needs of :class:`tastebud.registry.ModelRegistry`."""

    def resolve(self, name: str, ref: int | str) -> Any: ...
    def bundle_path(self, mv: Any) -> Path: ...
    def get_alias(self, name: str, alias: str) -> int | None: ...
    def list_versions(self, name: str) -> Sequence[Any]: ...


#: ``loader(directory) -> Bundle`` (``tastebud.registry.bundle.load_bundle`` with verification).
BundleLoader = Callable[[Path], Any]


@dataclass(frozen=True)
class Served:
    """A loaded bundle ready to answer requests, and what it is.

    Attributes:
        engine: scoring, filtering and shaping for this bundle.
        bundle: the loaded bundle (manifest, models, item metadata).
        name: the registered model name.
        version: the registered version (``None`` when loaded from a path outside the registry).
        alias: the alias it was loaded through, if any.
        loaded_at: UTC ISO time the swap happened.
        provenance: the static provenance block (from the manifest).
        model_block: the ``model`` block of responses (name, version, alias, type).
    """

    engine: Engine
    bundle: Any
    name: str
    version: int | None
    alias: str | None
    loaded_at: str
    provenance: dict[str, Any]
    model_block: dict[str, Any]


def events_cutoff(manifest: dict[str, Any]) -> int:
    """The highest store event id a bundle's model learned (``extra.events_through_id``; 0: none)."""
    extra = manifest.get("extra") or {}
    try:
        return max(0, int(extra.get("events_through_id") or 0))
    except (TypeError, ValueError):
        return 0


def refreeze_gc() -> None:
    """Collect the garbage alive now, then freeze every object left (:func:`gc.freeze`).

    A frozen object is never examined by the cyclic collector again. Freezing right after a switch, as the holder
    did, also froze the cyclic garbage alive at that instant (request frames, tracebacks: a few hundred objects a
    switch) and, with it, anything such garbage still referenced, an old model included: pinned for the life of
    the process. Collecting first drops that garbage. The collection walks only objects allocated since the last
    freeze (the new model's few tracked ones, recent garbage): about 0.3 ms a switch for ML-100K, where
    unfreezing and collecting everything took about 190 ms of CPU with the GIL held. A served model's own objects
    hold no reference cycles, so a replaced model is freed by reference counting even though it was frozen.
    """
    gc.collect()
    gc.freeze()


def default_loader(directory: Path) -> Any:
    """Load and verify a bundle (imports the registry's bundle module on first use)."""
    from tastebud.registry.bundle import load_bundle

    return load_bundle(Path(directory), verify=True)


def settings_loader(settings: Any) -> BundleLoader:
    """A loader that also checks manifest signatures with the keys of ``settings.signing``.

    With a verification key configured, unsigned and mis-signed bundles are refused (:class:`BundleError`, so the
    old model keeps serving); with none it loads like :func:`default_loader`.

    Raises:
        ConfigError: a configured key cannot be read.
    """
    from tastebud.registry.signing import verifier_from_settings

    verifier = verifier_from_settings(settings)

    def load(directory: Path) -> Any:
        from tastebud.registry.bundle import load_bundle

        return load_bundle(Path(directory), verify=True, verifier=verifier)

    return load


class ModelHolder:
    """Holds the served model and switches it atomically.

    Args:
        registry: resolves versions and aliases and gives bundle directories (``None``: only :meth:`load_path`).
        name: the registered model name to serve.
        alias: the alias to serve at startup and to watch.
        metrics: where switches and load times are counted.
        sparse_history_threshold: passed to every :class:`Engine`.
        result_cache_size: passed to every :class:`Engine`.
        ann_ef_search: HNSW candidate list size set on every loaded model's FAISS indexes (``None``: the bundle's).
        freeze_gc: after each load, move every object alive to the garbage collector's permanent generation
            (:func:`gc.freeze`); for server processes, where they are the long-lived model.
        image_digest: the container image digest for provenance.
        loader: loads a bundle directory (tests inject one).
        overlay_args: bounds of the real-time overlays (:class:`UserOverlays` keyword arguments).

    Real-time overlays: with an :class:`EventFollower` attached (:meth:`attach_follower`, done by the app when it
    has a store), every loaded model gets overlays built from the store's events after the model's cutoff, swapped
    in together with the model. Without one, a single set of overlays fed by :meth:`UserOverlays.add` is shared
    by every model (tests, the offline demo).
    """

    def __init__(
        self,
        registry: RegistryLike | None,
        *,
        name: str,
        alias: str = "champion",
        metrics: ServingMetrics | None = None,
        sparse_history_threshold: int = 0,
        result_cache_size: int = 0,
        ann_ef_search: int | None = None,
        freeze_gc: bool = False,
        image_digest: str | None = None,
        loader: BundleLoader | None = None,
        overlay_args: dict[str, Any] | None = None,
    ) -> None:
        self.registry = registry
        self.name = name
        self.alias = alias
        self.metrics = metrics or ServingMetrics()
        self.sparse_history_threshold = sparse_history_threshold
        self.result_cache_size = result_cache_size
        self.ann_ef_search = ann_ef_search
        self.freeze_gc = freeze_gc
        self.image_digest = image_digest
        self.loader = loader or default_loader
        self._current: Served | None = None
        self._switch_lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._alias_target: int | None = None  # alias value the watcher last acted on
        self._failed_target: int | None = None  # alias value whose bundle was refused (not retried)
        self.last_error: str | None = None
        self.started_at = time.time()
        self.overlay_args: dict[str, Any] = {"observe": self.metrics.realtime_seconds.observe, **(overlay_args or {})}
        #: follows the event store (set by :meth:`attach_follower`)
        self.follower: EventFollower | None = None
        #: routes users of running experiments to their variant's model (set by the app)
        self.router: Any = None
        self._shared_overlays = UserOverlays(**self.overlay_args)

    # ------------------------------------------------------------------ real-time events
    @property
    def overlays(self) -> UserOverlays:
        """The served model's real-time overlays (the shared ones before a model is loaded or without a follower)."""
        served = self._current
        if served is not None and served.engine.overlays is not None:
            return served.engine.overlays
        return self._shared_overlays

    def attach_follower(self, follower: EventFollower) -> None:
        """Follow the event store with ``follower``: the served model (if any) gets overlays rebuilt from the store.

        Raises:
            StoreError: the store cannot be read.
        """
        with self._switch_lock:
            self.follower = follower
            follower.follow(self.followed_overlays)
            served = self._current
            if served is not None:
                overlays = self._build_overlays(served)
                self._install(overlays, lambda: setattr(served.engine, "overlays", overlays))

    def followed_overlays(self) -> list[UserOverlays]:
        """The overlays of every model this process serves: the current one and any experiment variant's."""
        out = [] if self._current is None else [self.overlays]
        for served in self.variant_models():
            if served.engine.overlays is not None:
                out.append(served.engine.overlays)
        return out

    def variant_models(self) -> list[Served]:
        """Models loaded for experiment variants besides the current one (see :mod:`tastebud.serving.experiments`)."""
        router = self.router
        return [] if router is None else router.loaded()

    def prepare(self, version: int, *, alias: str | None = None) -> Served:
        """Resolve, load, verify and prepare ``version`` with its overlays, without serving it (experiment variants).

        Raises:
            TastebudError: the registry does not know the version.
            BundleError: the bundle is missing, corrupt or incompatible.
        """
        if self.registry is None:
            raise BundleError("no model registry configured: cannot resolve versions")
        mv = self.registry.resolve(self.name, version)
        path = self.registry.bundle_path(mv)
        served = self._prepare(Path(path), version=int(mv.version), alias=alias)
        overlays = self._build_overlays(served)
        self._install(overlays, lambda: setattr(served.engine, "overlays", overlays))
        if self.freeze_gc:  # a variant's model lives as long as the experiment: out of full GC passes too
            refreeze_gc()
        return served

    def _install(self, overlays: UserOverlays, install: Callable[[], None]) -> None:
        """Run ``install`` (the swap); with a follower, after catching ``overlays`` up with events stored meanwhile."""
        if self.follower is not None:
            self.follower.swap(install, overlays)
        else:
            install()

    def _build_overlays(self, served: Served) -> UserOverlays:
        cutoff = events_cutoff(served.bundle.manifest)
        vocabulary = served.engine.model.items_.lookup if served.engine.model.items_ is not None else None
        if self.follower is None:
            return self._shared_overlays
        try:
            return self.follower.build(cutoff=cutoff, vocabulary=vocabulary)
        except Exception as err:  # the store is unreachable: the follower's next poll reads everything after cutoff
            logger.warning("could not rebuild real-time overlays from the store (%s); they fill on the next poll", err)
            return UserOverlays(**self.overlay_args, vocabulary=vocabulary, cutoff=cutoff)

    # ------------------------------------------------------------------ reading
    @property
    def current(self) -> Served | None:
        """The served model (``None`` until one is loaded). Read it once per request."""
        return self._current

    # ------------------------------------------------------------------ switching
    def load(self, *, version: int | None = None, alias: str | None = None, trigger: str = "admin") -> Served:
        """Resolve a version (or alias) in the registry, load its bundle and swap it in; blocking.

        Raises:
            TastebudError: the registry does not know the version or alias.
            BundleError: the bundle is missing, corrupt or incompatible (the old model keeps serving).
        """
        if self.registry is None:
            raise BundleError("no model registry configured: cannot resolve versions or aliases")
        if version is None and alias is None:
            alias = self.alias
        ref: int | str = version if version is not None else str(alias)
        try:
            mv = self.registry.resolve(self.name, ref)
            path = self.registry.bundle_path(mv)
        except TastebudError as err:
            self.metrics.model_switches.labels(trigger=trigger, outcome="failed").inc()
            if isinstance(err, BundleError):  # e.g. a download that failed its checks: /health shows why
                self.last_error = redact_paths(str(err))
                keep = self._current
                logger.error("refused %s %s: %s; still serving version %s", self.name, ref, err,
                             keep.version if keep else None)  # fmt: skip
            raise
        served = self.load_path(path, version=int(mv.version), alias=alias, trigger=trigger)
        if alias == self.alias:
            self._alias_target = served.version  # the watcher need not load it again
        return served

    def load_path(
        self, path: Path, *, version: int | None = None, alias: str | None = None, trigger: str = "admin"
    ) -> Served:
        """Load, verify and prepare the bundle at ``path`` and swap it in; blocking.

        Raises:
            BundleError: the bundle is refused; the model served before stays.
        """
        with self._switch_lock:
            start = time.perf_counter()
            try:
                served = self._prepare(Path(path), version=version, alias=alias)
                overlays = self._build_overlays(served)
            except Exception as err:
                self.metrics.model_switches.labels(trigger=trigger, outcome="failed").inc()
                # /health and 503 bodies show it: the bundle's name, not where it lies on this server
                name = model_uri(self.name, version) if version is not None else Path(path).name
                self.last_error = redact_paths(str(err), {str(path): name})
                keep = self._current
                logger.error(
                    "refused bundle %s (version %s): %s; still serving version %s",
                    path, version, err, keep.version if keep else None,
                )  # fmt: skip
                if isinstance(err, BundleError):
                    raise
                raise BundleError(f"{path}: bundle is incompatible with this server ({err})") from err

            def install() -> None:
                served.engine.overlays = overlays
                self._current = served  # the atomic swap: requests already running keep the old object

            self._install(overlays, install)
            if self.freeze_gc:
                # The model's objects (catalog records, id maps, caches of the libraries) live as long as it is
                # served: out of the cyclic collector's full passes, which otherwise walked them all and paused
                # the event loop for up to 160 ms every few seconds under load.
                refreeze_gc()
            self.last_error = None
            self.metrics.model_switches.labels(trigger=trigger, outcome="success").inc()
            self.metrics.model_load_seconds.observe(time.perf_counter() - start)
            self.metrics.set_model(
                name=self.name, version=version, model=served.model_block["type"] or "",
                snapshot_id=served.provenance["data_snapshot_id"] or "", git_sha=served.provenance["git_sha"] or "",
            )  # fmt: skip
            self.metrics.model_loaded_timestamp.set(time.time())
            logger.info("serving %s version %s from %s", self.name, version, path)
            return served

    def _prepare(self, path: Path, *, version: int | None, alias: str | None) -> Served:
        bundle = self.loader(path)
        fallback = dict(getattr(bundle, "fallback", None) or {})
        if self.ann_ef_search is not None:
            for model in (bundle.model, *fallback.values()):
                for index in (getattr(model, "ann_", None), getattr(model, "ann_similar_", None)):
                    if index is not None:
                        index.set_ef_search(self.ann_ef_search)
        engine = Engine(
            bundle.model, fallback, bundle.item_meta,
            sparse_history_threshold=self.sparse_history_threshold, result_cache_size=self.result_cache_size,
            on_cache=self.metrics.count_cache,
        )  # fmt: skip
        engine.calibrate()  # what a request costs: the routes run the slow kinds off the event loop
        manifest = dict(bundle.manifest)
        provenance = static_provenance(
            manifest, name=self.name, version=version, image=self.image_digest,
            signed=bool(getattr(bundle, "signed", False)),
        )  # fmt: skip
        block = {"name": self.name, "version": version, "alias": alias, "type": provenance["model_type"]}
        return Served(
            engine=engine, bundle=bundle, name=self.name, version=version, alias=alias,
            loaded_at=utc_now().isoformat(timespec="seconds").replace("+00:00", "Z"),
            provenance=provenance, model_block=block,
        )  # fmt: skip

    # ------------------------------------------------------------------ alias watching
    def poll_alias(self, trigger: str = "watcher") -> bool:
        """Check the watched alias once and switch when it points somewhere new; True when a switch happened.

        A version whose bundle was refused is not retried until the alias moves again. An admin switch to a
        pinned version stays until the alias moves.
        """
        if self.registry is None:
            return False
        try:
            target = self.registry.get_alias(self.name, self.alias)
        except Exception as err:  # the registry may be briefly unreachable: try again next round
            logger.warning("could not read alias %s of %s: %s", self.alias, self.name, err)
            return False
        if target is None or target == self._alias_target or target == self._failed_target:
            return False
        try:
            self.load(version=target, alias=self.alias, trigger=trigger)
        except TastebudError:
            self._failed_target = target
            return False
        self._alias_target, self._failed_target = target, None
        return True

    def start(self, interval_s: float) -> None:
        """Load the watched alias in a background thread, then poll it every ``interval_s`` (0: load only)."""
        if self._watcher is not None:
            return
        self._stop.clear()

        def run() -> None:
            self.poll_alias(trigger="startup")
            while interval_s > 0 and not self._stop.wait(interval_s):
                self.poll_alias()

        self._watcher = threading.Thread(target=run, name="tastebud-model-watcher", daemon=True)
        self._watcher.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the watcher thread (a load in progress finishes first)."""
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout)
            self._watcher = None

    def uptime_s(self) -> float:
        """Seconds since the holder was created."""
        return time.time() - self.started_at
