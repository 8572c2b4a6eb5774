"""The model registry: versions of named models and their aliases (``champion``, ``challenger``) in MLflow.

Each version points at a bundle stored as its run's ``bundle`` artifact. Metrics and provenance shown for a
version come from the bundle's manifest (the one source of truth); the MLflow tags on a version are copies
written from it for people browsing the MLflow UI, never read back. Their names (:data:`PROVENANCE_TAGS`) are
reserved: a caller's tags cannot overwrite them.

Reading a version's manifest fetches only ``bundle/manifest.json`` (and ``bundle/signature.json``) from a remote
artifact store, not the whole bundle; with a verification key configured (:mod:`tastebud.registry.signing`) the
manifest's signature is checked before its numbers are believed.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from tastebud.config import Settings
from tastebud.errors import BundleError, RegistryError
from tastebud.registry.bundle import MANIFEST, check_model_arrays, parse_manifest, verify_bundle
from tastebud.registry.signing import SIGNATURE, Verifier, verifier_from_settings
from tastebud.registry.tracking import log_artifact_dir, log_run, make_client, tracking_uri, with_retries

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion as MlflowModelVersion
    from mlflow.tracking import MlflowClient

logger = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"
#: Metrics shown by ``list`` and compared by the promotion gate.
KEY_METRICS = ("ndcg_at_10", "recall_at_10", "coverage", "rmse")
#: Version and run tags copied from the manifest (:func:`provenance_tags`); a caller may not set them.
PROVENANCE_TAGS = (
    "tastebud.model_family",
    "tastebud.snapshot_id",
    "tastebud.dataset",
    "tastebud.git_sha",
    "tastebud.package_version",
    "tastebud.params",
)


@dataclass
class ModelVersion:
    """One registered version of a named model.

    Attributes:
        name: registered model name (``movielens-100k``).
        version: version number, from 1.
        aliases: aliases pointing at this version.
        source: URI of the bundle in the artifact store.
        run_id: the MLflow run that produced it.
        tags: version tags (copies of manifest fields, decisions).
        created_at: UTC ISO time of registration.
        metrics: validation metrics from the bundle's manifest.
        family: model family from the bundle's manifest (``""`` when the manifest is unreadable).
        snapshot_id: training data snapshot id from the bundle's manifest (``""`` when unreadable).
    """

    name: str
    version: int
    aliases: list[str]
    source: str
    run_id: str | None
    tags: dict[str, str] = field(default_factory=dict)
    created_at: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    family: str = ""
    snapshot_id: str = ""


def _is_missing(err: Exception) -> bool:
    return getattr(err, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND") or "not found" in str(err).lower()


def local_path(uri: str) -> Path | None:
    """The local directory a ``file:`` URI or plain path points to, or ``None`` for remote URIs."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and uri[1:3] == ":\\"):  # plain or Windows path
        return Path(uri)
    return None


class ModelRegistry:
    """Named models, numbered versions and aliases over MLflow's model registry.

    MLflow is imported on first use, not when this module is imported.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._client: MlflowClient | None = None
        self._manifests: dict[tuple[str, int], dict[str, Any]] = {}
        self._verifier: Verifier | None = None

    @property
    def verifier(self) -> Verifier:
        """Checks manifest signatures with the keys of ``settings.signing`` (built on first use)."""
        if self._verifier is None:
            self._verifier = verifier_from_settings(self.settings)
        return self._verifier

    @property
    def client(self) -> MlflowClient:
        """The MLflow client (created on first use)."""
        if self._client is None:
            self._client = make_client(self.settings)
        return self._client

    @property
    def cache_dir(self) -> Path:
        """Where bundles downloaded from a remote artifact store are kept."""
        return self.settings.home / "registry" / "cache"

    # ------------------------------------------------------------------ registering
    def register(
        self, bundle_dir: Path, name: str, *, run_id: str | None = None, tags: dict[str, str] | None = None
    ) -> ModelVersion:
        """Register a verified bundle as the next version of ``name``.

        The bundle becomes the ``bundle`` artifact of ``run_id`` (logged there if the run lacks it; a run is
        created when ``run_id`` is ``None``), and the version's source points at it.

        ``tags`` may not use the provenance tag names (:data:`PROVENANCE_TAGS`): those are copies of the manifest.

        Raises:
            BundleError: the bundle is corrupt, unsigned or mis-signed while a verification key is configured, or
                its model (or a fallback) is empty or holds NaN/inf values.
            RegistryError: ``tags`` name a reserved provenance tag.
        """
        from mlflow.exceptions import MlflowException

        reserved = sorted(set(tags or {}) & set(PROVENANCE_TAGS))
        if reserved:
            raise RegistryError(
                f"tags {', '.join(reserved)} are reserved: they are copied from the bundle's manifest "
                "(the one source of provenance); use another tag name"
            )
        bundle_dir = Path(bundle_dir)
        manifest = verify_bundle(bundle_dir, verifier=self.verifier)
        check_model_arrays(bundle_dir, manifest, action="register")
        copies = provenance_tags(manifest)
        client = self.client
        if run_id is None:
            run_id = log_run(
                self.settings,
                run_name=f"register-{name}",
                params={},
                metrics={},
                tags=copies,
                artifacts={"bundle": bundle_dir},
                client=client,
            ).run_id
        elif not with_retries(lambda: client.list_artifacts(run_id, "bundle"), "list artifacts"):
            uri = with_retries(lambda: client.get_run(run_id), "get run").info.artifact_uri
            log_artifact_dir(client, run_id, bundle_dir, "bundle", artifact_uri=str(uri))
        run = with_retries(lambda: client.get_run(run_id), "get run")
        source = f"{run.info.artifact_uri.rstrip('/')}/bundle"
        with contextlib.suppress(MlflowException):  # it exists already
            client.create_registered_model(name)
        mv = with_retries(
            lambda: client.create_model_version(name, source, run_id=run_id, tags={**(tags or {}), **copies}),
            "create model version",
        )
        self._manifests[(name, int(mv.version))] = manifest
        logger.info("registered", extra={"model": name, "version": int(mv.version), "run_id": run_id})
        return self._convert(mv, self._aliases(name))

    # ------------------------------------------------------------------ reading
    def list_versions(self, name: str) -> list[ModelVersion]:
        """Every version of ``name``, oldest first (empty when the model is not registered)."""
        found = with_retries(lambda: self.client.search_model_versions(f"name = '{_quote(name)}'"), "search versions")
        aliases = self._aliases(name) if found else {}
        versions = [self._convert(mv, aliases) for mv in found]
        return sorted(versions, key=lambda v: v.version)

    def get(self, name: str, version: int) -> ModelVersion:
        """One version.

        Raises:
            RegistryError: the model or version does not exist.
        """
        from mlflow.exceptions import MlflowException

        try:
            mv = with_retries(lambda: self.client.get_model_version(name, str(int(version))), "get version")
        except MlflowException as err:
            if _is_missing(err):
                raise RegistryError(f"model {name!r} has no version {version}") from err
            raise
        return self._convert(mv, self._aliases(name))

    def resolve(self, name: str, ref: int | str) -> ModelVersion:
        """A version by number (``3`` or ``"3"``) or alias (``"champion"``).

        Raises:
            RegistryError: no such version or alias.
        """
        if isinstance(ref, int) or str(ref).strip().isdigit():
            return self.get(name, int(ref))
        version = self.get_alias(name, str(ref))
        if version is None:
            raise RegistryError(f"model {name!r} has no alias {ref!r}")
        return self.get(name, version)

    def set_alias(self, name: str, alias: str, version: int) -> None:
        """Point ``alias`` at ``version`` (which must exist)."""
        self.get(name, version)
        with_retries(lambda: self.client.set_registered_model_alias(name, alias, str(int(version))), "set alias")

    def delete_alias(self, name: str, alias: str) -> None:
        """Remove ``alias`` if set."""
        from mlflow.exceptions import MlflowException

        with contextlib.suppress(MlflowException):
            self.client.delete_registered_model_alias(name, alias)

    def get_alias(self, name: str, alias: str) -> int | None:
        """The version ``alias`` points at, or ``None`` (also when the model is not registered)."""
        return self._aliases(name).get(alias)

    def set_tag(self, name: str, version: int, key: str, value: str) -> None:
        """Set a tag on a version (decisions are mirrored there)."""
        with_retries(lambda: self.client.set_model_version_tag(name, str(int(version)), key, value), "set version tag")

    def _aliases(self, name: str) -> dict[str, int]:
        from mlflow.exceptions import MlflowException

        try:
            rm = with_retries(lambda: self.client.get_registered_model(name), "get model")
        except MlflowException as err:
            if _is_missing(err):
                return {}
            raise
        return {alias: int(v) for alias, v in (rm.aliases or {}).items()}

    # ------------------------------------------------------------------ bundles
    def bundle_path(self, mv: ModelVersion) -> Path:
        """A local directory holding the version's bundle (downloaded into the cache when the store is remote).

        Raises:
            BundleError: the bundle cannot be found or downloaded.
        """
        local = local_path(mv.source)
        if local is not None:
            if not (local / MANIFEST).is_file():
                raise BundleError(f"{local}: bundle of {mv.name} version {mv.version} not found")
            return local
        target = self.cache_dir / mv.name / str(mv.version)
        if (target / MANIFEST).is_file():
            try:
                verify_bundle(target, verifier=self.verifier)
                return target
            except BundleError:
                logger.warning("cached bundle is corrupt; downloading again", extra={"path": str(target)})
        self._download(mv.source, target)
        return target

    def manifest(self, mv: ModelVersion) -> dict[str, Any]:
        """The manifest of a version's bundle.

        From a remote store only ``manifest.json`` and ``signature.json`` are fetched (into
        ``<cache>/<name>/<version>.manifest/``), not the bundle's arrays. With a verification key configured the
        signature is checked (checksums are checked when the bundle itself is loaded).

        Raises:
            BundleError: the manifest cannot be read, or its signature is missing or wrong while a key is set.
        """
        key = (mv.name, mv.version)
        if key not in self._manifests:
            local = local_path(mv.source)
            if local is not None:
                directory = local
                if not directory.is_dir():
                    raise BundleError(f"{directory}: bundle directory not found")
            else:
                full = self.cache_dir / mv.name / str(mv.version)
                directory = full if (full / MANIFEST).is_file() else self._download_manifest(mv)
            raw = (directory / MANIFEST).read_bytes() if (directory / MANIFEST).is_file() else None
            if raw is None:
                raise BundleError(f"{directory / MANIFEST}: missing file")
            if self.verifier.configured:
                self.verifier.check(directory, raw)
            self._manifests[key] = parse_manifest(directory, raw)
        return self._manifests[key]

    def _download_manifest(self, mv: ModelVersion) -> Path:
        """Fetch only the manifest (and signature, if any) of a remote bundle; the directory holding them."""
        import mlflow.artifacts

        target = self.cache_dir / mv.name / f"{mv.version}.manifest"
        if (target / MANIFEST).is_file():
            return target
        target.mkdir(parents=True, exist_ok=True)
        source = mv.source.rstrip("/")
        for name, required in ((MANIFEST, True), (SIGNATURE, False)):
            tmp = target / f".{name}.tmp-{uuid.uuid4().hex[:8]}"
            try:
                with_retries(
                    functools.partial(
                        mlflow.artifacts.download_artifacts,
                        artifact_uri=f"{source}/{name}",
                        dst_path=str(tmp),
                        tracking_uri=tracking_uri(self.settings),
                    ),
                    f"download {name}",
                )
                (tmp / name).replace(target / name)
            except Exception as err:
                if required:
                    raise BundleError(f"{source}/{name}: cannot download the manifest ({err})") from err
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return target

    def _download(self, source: str, target: Path) -> None:
        """Download a bundle into ``target``: into a temporary sibling first, verified there (signature when a key
        is configured, then every checksum), and only then moved into place, so the cache never holds a bundle that
        was altered in the artifact store or truncated on the way."""
        import mlflow.artifacts

        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            with_retries(
                lambda: mlflow.artifacts.download_artifacts(
                    artifact_uri=source, dst_path=str(tmp), tracking_uri=tracking_uri(self.settings)
                ),
                "download bundle",
            )
            got = tmp / "bundle" if (tmp / "bundle" / MANIFEST).is_file() else tmp
            try:
                verify_bundle(got, verifier=self.verifier)
            except BundleError as err:  # name the artifact, not the temporary directory it was checked in
                raise BundleError(
                    f"{source}: downloaded bundle refused: {str(err).replace(str(got), 'bundle')}"
                ) from err
            if target.exists():
                shutil.rmtree(target)
            got.rename(target)
        except Exception as err:
            if isinstance(err, BundleError | RegistryError):
                raise
            raise BundleError(f"{source}: cannot download the bundle ({err})") from err
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _convert(self, mv: MlflowModelVersion, aliases: dict[str, int]) -> ModelVersion:
        version = int(mv.version)
        out = ModelVersion(
            name=mv.name,
            version=version,
            aliases=sorted(a for a, v in aliases.items() if v == version),
            source=str(mv.source),
            run_id=mv.run_id or None,
            tags=dict(mv.tags or {}),
            created_at=_iso_ms(mv.creation_timestamp),
        )
        try:
            manifest = self.manifest(out)
        except BundleError as err:
            logger.warning("bundle manifest unreadable", extra={"version": version, "error": str(err)})
            manifest = {}
        metrics = manifest.get("metrics") or {}
        out.metrics = {k: float(v) for k, v in metrics.items() if v is not None}
        out.family = str((manifest.get("model") or {}).get("name") or "")
        out.snapshot_id = str((manifest.get("data") or {}).get("snapshot_id") or "")
        return out


def provenance_tags(manifest: dict[str, Any]) -> dict[str, str]:
    """Tags copied from a manifest onto runs and versions (for browsing; never read back)."""
    data = manifest.get("data", {})
    return {
        "tastebud.model_family": str(manifest["model"]["name"]),
        "tastebud.snapshot_id": str(data.get("snapshot_id", "")),
        "tastebud.dataset": str(data.get("name", "")),
        "tastebud.git_sha": str(manifest.get("git_sha", "unknown")),
        "tastebud.package_version": str(manifest.get("package_version", "")),
        "tastebud.params": json.dumps(manifest["model"].get("params", {}), sort_keys=True)[:5000],
    }


def _quote(name: str) -> str:
    return name.replace("'", "\\'")


def _iso_ms(ms: int | None) -> str:
    import datetime as dt

    if not ms:
        return ""
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="seconds")


__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "KEY_METRICS",
    "PROVENANCE_TAGS",
    "ModelRegistry",
    "ModelVersion",
    "provenance_tags",
]
