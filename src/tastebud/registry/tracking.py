"""MLflow tracking: where runs go, and logging one training run (parameters, metrics, tags, artifacts).

MLflow is imported inside the functions: it takes about 2 s to import and serving must not pay that at start-up.
The embedded default is an SQLite backend (``<home>/mlflow/mlflow.db``) with local artifacts
(``<home>/mlflow/artifacts``); ``settings.registry.tracking_uri`` or ``MLFLOW_TRACKING_URI`` point it at a
tracking server instead.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from tastebud.config import Settings
from tastebud.errors import RegistryError

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

logger = logging.getLogger(__name__)
# MLflow logs its database migrations at INFO on first use; that is noise for a command-line user.
for _noisy in ("mlflow.store.db.utils", "alembic.runtime.migration", "mlflow.tracking._tracking_service.client"):
    logging.getLogger(_noisy).setLevel(logging.WARNING)
T = TypeVar("T")

#: MLflow limits a parameter value to 6000 characters; longer values are cut (the manifest keeps them whole).
_MAX_PARAM = 6000
#: Attempts and first back-off (seconds) of calls to a remote tracking server.
_RETRIES, _BACKOFF = 3, 0.5


def tracking_uri(settings: Settings) -> str:
    """The tracking URI: the settings, else ``MLFLOW_TRACKING_URI``, else the embedded SQLite store."""
    uri = settings.registry.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{(settings.mlflow_dir / 'mlflow.db').resolve()}"


def is_embedded(settings: Settings) -> bool:
    """Whether runs go to the embedded SQLite store in the home directory."""
    return not (settings.registry.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"))


def artifact_root(settings: Settings) -> Path:
    """Local artifact store of the embedded backend."""
    return (settings.mlflow_dir / "artifacts").resolve()


def make_client(settings: Settings) -> MlflowClient:
    """An MLflow client for tracking and the model registry (same URI for both)."""
    if is_embedded(settings):
        settings.mlflow_dir.mkdir(parents=True, exist_ok=True)
        artifact_root(settings).mkdir(parents=True, exist_ok=True)
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(settings)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def with_retries(call: Callable[[], T], what: str) -> T:
    """Run an MLflow call, retrying connection problems with back-off; other errors pass through."""
    delay = _BACKOFF
    for attempt in range(1, _RETRIES + 1):
        try:
            return call()
        except (ConnectionError, TimeoutError) as err:
            if attempt == _RETRIES:
                raise RegistryError(f"{what}: tracking server unreachable after {attempt} attempts ({err})") from err
            logger.warning("retrying MLflow call", extra={"what": what, "attempt": attempt, "error": str(err)})
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")  # pragma: no cover


def ensure_experiment(client: MlflowClient, settings: Settings) -> str:
    """Id of the settings' experiment, created (with the local artifact root when embedded) if missing."""
    name = settings.registry.experiment
    exp = with_retries(lambda: client.get_experiment_by_name(name), "get experiment")
    if exp is not None:
        return str(exp.experiment_id)
    location = (artifact_root(settings) / name).as_uri() if is_embedded(settings) else None
    from mlflow.exceptions import MlflowException

    try:
        return str(client.create_experiment(name, artifact_location=location))
    except MlflowException:  # created concurrently by another process
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return str(exp.experiment_id)


@dataclass
class TrackedRun:
    """A finished MLflow run: its id, experiment and artifact URI."""

    run_id: str
    experiment_id: str
    artifact_uri: str
    tracking_uri: str


def log_run(
    settings: Settings,
    *,
    run_name: str,
    params: dict[str, Any],
    metrics: dict[str, float | None],
    tags: dict[str, str],
    artifacts: dict[str, Path] | None = None,
    client: MlflowClient | None = None,
) -> TrackedRun:
    """Log one finished run: parameters, metrics, tags and artifact directories (name -> local directory).

    Metrics that are ``None`` or not finite are skipped (MLflow stores floats only).
    """
    from mlflow.entities import Metric, Param, RunTag

    client = client or make_client(settings)
    experiment_id = ensure_experiment(client, settings)
    run = with_retries(lambda: client.create_run(experiment_id, run_name=run_name, tags=dict(tags)), "create run")
    run_id = run.info.run_id
    status = "FAILED"
    try:
        now = int(time.time() * 1000)
        metric_rows = [
            Metric(key, float(value), now, 0)
            for key, value in metrics.items()
            if value is not None and float(value) == float(value) and abs(float(value)) != float("inf")
        ]
        param_rows = [Param(key, str(value)[:_MAX_PARAM]) for key, value in sorted(params.items())]
        tag_rows = [RunTag(key, str(value)) for key, value in tags.items()]
        with_retries(
            lambda: client.log_batch(run_id, metrics=metric_rows, params=param_rows, tags=tag_rows), "log batch"
        )
        for name, directory in (artifacts or {}).items():
            log_artifact_dir(client, run_id, Path(directory), name, artifact_uri=str(run.info.artifact_uri))
        status = "FINISHED"
    finally:
        client.set_terminated(run_id, status=status)
    return TrackedRun(
        run_id=run_id,
        experiment_id=experiment_id,
        artifact_uri=str(run.info.artifact_uri),
        tracking_uri=tracking_uri(settings),
    )


def local_artifact_dir(artifact_uri: str) -> Path | None:
    """The local directory behind a ``file:`` (or scheme-less) artifact URI; ``None`` for any remote store."""
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    parsed = urlparse(artifact_uri)
    if parsed.scheme == "file" and parsed.netloc in ("", "localhost"):
        return Path(url2pathname(parsed.path))
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and os.name == "nt"):  # a plain path
        return Path(artifact_uri)
    return None


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not supported: a real copy
        import shutil

        shutil.copy2(src, dst)


def log_artifact_dir(client: MlflowClient, run_id: str, directory: Path, name: str, *, artifact_uri: str) -> None:
    """Log ``directory`` as the run's artifact directory ``name``.

    In a local artifact store (the embedded default) the files are hard-linked instead of copied: a bundle is
    never changed in place (:func:`~tastebud.registry.bundle.write_bundle` replaces a directory by renaming a new
    one), so the registered copy and the bundle written by training can share their bytes on disk, and every
    load still verifies each file's checksum. Where a link cannot be made (another file system) the file is
    copied; a remote store gets the files through MLflow as usual.
    """
    local = local_artifact_dir(artifact_uri)
    if local is None:
        with_retries(functools.partial(client.log_artifacts, run_id, str(directory), name), f"log {name}")
        return
    import shutil

    shutil.copytree(directory, local / name, copy_function=_link_or_copy, dirs_exist_ok=True)


def flat_params(prefix: str, params: dict[str, Any]) -> dict[str, Any]:
    """``{"factors": 64}`` -> ``{"<prefix>.factors": 64}``."""
    return {f"{prefix}.{key}": value for key, value in params.items()}


__all__ = [
    "TrackedRun",
    "artifact_root",
    "ensure_experiment",
    "flat_params",
    "is_embedded",
    "local_artifact_dir",
    "log_artifact_dir",
    "log_run",
    "make_client",
    "tracking_uri",
    "with_retries",
]
