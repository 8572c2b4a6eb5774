"""The Spark engine of ALS: pyspark MLlib's ``ALS(implicitPrefs=True)`` fitting the factors of an ALS bundle.

``ALSRecommender`` with ``engine="spark"`` hands its training matrix here and gets back ``(user_factors,
item_factors)`` in the dataset's own user and item order, so everything after the fit (bundle, serving,
explanations, real-time fold-in) is the code of the ``implicit`` engine. pyspark is imported lazily: only this
engine needs it (``pip install 'tastebud[spark]'``, and Java 17 or newer for the driver).

How the hyperparameters map (Spark ``ml/recommendation/ALS.scala``, ``computeFactors``; implicit 0.7 CPU solver):

- **Confidence.** implicit's observed cell ``(u, i)`` with value ``v`` has confidence ``c = alpha * v`` and
  preference 1 (it multiplies the matrix by ``alpha`` and uses the product as the confidence). Spark's has
  ``c = 1 + alpha * |r|`` and preference ``r > 0``, its "confidence - 1" term being ``alpha * |r|``. This engine
  passes Spark the same ``alpha`` and the rating ``r = v - 1 / alpha``, so ``1 + alpha * r = alpha * v``: the same
  confidence on every cell. A value with ``alpha * v <= 1`` (an implicit confidence of 1 or less, which weighs an
  observed cell no more than an unobserved one) gets ``r`` = :data:`MIN_RATING`, confidence just above 1, since
  Spark reads ``r <= 0`` as a negative preference.
- **Regularization.** implicit penalises every factor by the same ``regularization * ||x||²``. Spark follows
  ALS-WR (Zhou et al. 2008): user ``u``'s penalty is ``regParam * n_u * ||x_u||²`` with ``n_u`` the user's positive
  ratings, likewise for items, so no single ``regParam`` reproduces implicit's penalty on every row. The engine
  sets ``regParam = regularization * (n_users + n_items) / (2 * nnz)`` (``nnz`` = positive cells): the penalty
  weights then sum to the same total, ``regParam * sum(n_u + n_i) = regularization * (n_users + n_items)``, and a
  user or item with the mean number of interactions is penalised exactly as implicit would. Heavier rows are
  regularised more than in implicit, lighter ones less. ``ALSConfig.spark_reg_param`` overrides the mapping.
- **Solver.** implicit defaults to three conjugate-gradient steps per row and sweep (``use_cg``); Spark solves
  each row exactly (Cholesky). ``factors`` is ``rank``, ``iterations`` is ``maxIter``, ``random_state`` is
  ``seed``; the initialisations differ, so the factors differ while the quality matches (bench/RESULTS.md,
  "Spark engine: parity and crossover").

The master and the session's resources come from the settings' ``spark`` section (``spark.master``, default
``local[*]``; ``TASTEBUD_SPARK__MASTER=spark://host:7077``); one session is started per process and reused.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import threading
import time
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from tastebud.errors import TastebudError

if TYPE_CHECKING:
    from tastebud.config import SparkSettings

logger = logging.getLogger(__name__)

#: Spark rating of a cell whose implicit confidence is 1 or less (Spark treats ratings <= 0 as negative preferences).
MIN_RATING = 1e-6
#: Seconds to wait for a TCP connection to a ``spark://`` master before calling it unreachable.
MASTER_CONNECT_TIMEOUT_S = 5.0

_lock = threading.Lock()
_settings: SparkSettings | None = None
_session: Any = None
_session_settings: SparkSettings | None = None
#: The temporary checkpoint directory of the running session (local masters without ``checkpoint_dir``).
_checkpoint_tmp: str | None = None


class SparkEngineError(TastebudError):
    """The Spark engine cannot run: pyspark or Java is missing, the master is wrong or unreachable, or Spark failed."""


def configure(settings: SparkSettings) -> None:
    """Use ``settings`` for the fits from now on (default: the process settings' ``spark`` section).

    A running session started with other settings is replaced at the next fit, once the new master has been
    checked; with the same settings it is reused.
    """
    global _settings
    with _lock:
        _settings = settings


def current_settings() -> SparkSettings:
    """The settings sessions start with: those given to :func:`configure`, else the process settings'."""
    if _settings is not None:
        return _settings
    from tastebud.config import get_settings

    return get_settings().spark


def stop() -> None:
    """Stop this process's Spark session, if one is running (the next fit starts a new one)."""
    with _lock:
        _stop_locked()


def _stop_locked() -> None:
    global _session, _session_settings, _checkpoint_tmp
    if _session is not None:
        try:
            _session.stop()
        except Exception as err:  # the driver JVM is gone: py4j cannot reach it to stop it
            logger.warning("spark driver unreachable; forgetting its session", extra={"error": str(err)})
            _forget_driver()
        _session = None
        _session_settings = None
    if _checkpoint_tmp is not None:
        shutil.rmtree(_checkpoint_tmp, ignore_errors=True)
        _checkpoint_tmp = None


def _alive(spark: Any) -> bool:
    """Whether ``spark``'s driver still answers and its context is not stopped."""
    try:
        return not bool(spark.sparkContext._jsc.sc().isStopped())
    except Exception:
        return False


def _forget_driver() -> None:
    """Drop pyspark's references to a driver JVM that died, so that the next session starts a new one.

    ``SparkSession.stop`` cannot clear them when the JVM is gone (it raises on the first call into it), and a
    process left with them fails every later call that looks for an active session: MLflow does, to find a
    registry URI, whenever it builds a client of its own.
    """
    from pyspark import SparkContext
    from pyspark.sql import SparkSession, SQLContext

    SparkSession._instantiatedSession = None
    SparkSession._activeSession = None
    SQLContext._instantiatedContext = None
    with SparkContext._lock:
        gateway = SparkContext._gateway
        context = SparkContext._active_spark_context
        if context is not None:
            context._jsc = None
            server = getattr(context, "_accumulatorServer", None)
            if server is not None:
                server.shutdown()
                context._accumulatorServer = None  # type: ignore[assignment]
        SparkContext._active_spark_context = None
        SparkContext._gateway = None
        SparkContext._jvm = None
    proc = getattr(gateway, "proc", None)
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait()


def check_available() -> None:
    """Raise :class:`SparkEngineError` unless pyspark can be imported and a Java runtime can be found."""
    try:
        import pyspark  # noqa: F401
    except ImportError as err:
        raise SparkEngineError(
            "the spark engine needs pyspark: pip install 'tastebud[spark]' (or use --engine implicit)"
        ) from err
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        if not os.access(os.path.join(java_home, "bin", "java"), os.X_OK):
            raise SparkEngineError(
                f"the spark engine needs Java 17 or newer: JAVA_HOME={java_home} has no executable bin/java"
            )
    elif shutil.which("java") is None:
        raise SparkEngineError(
            "the spark engine needs Java 17 or newer: no 'java' on PATH and JAVA_HOME is not set "
            "(install a JDK, e.g. openjdk-17-jre-headless, or set JAVA_HOME)"
        )


def check_master(master: str) -> None:
    """Raise :class:`SparkEngineError` for a master URL Spark cannot use, before a JVM is started.

    ``local``, ``local[N]``, ``local[*]``, ``local[N,F]``, ``local-cluster[...]``, ``yarn``, ``k8s://...``,
    ``mesos://...`` and ``spark://host:port[,host:port...]`` are accepted; a ``spark://`` master must accept a TCP
    connection within :data:`MASTER_CONNECT_TIMEOUT_S` (Spark itself would retry for minutes).
    """
    import re

    where = "spark.master (TASTEBUD_SPARK__MASTER)"
    if re.fullmatch(r"local(\[(\*|[1-9]\d*)(,\s*[1-9]\d*)?\])?|local-cluster\[.+\]|yarn", master):
        return
    if master.startswith(("k8s://", "mesos://")):
        return
    if not master.startswith("spark://"):
        raise SparkEngineError(
            f"{where}: {master!r} is not a Spark master URL; expected local[*], local[N], spark://host:port, "
            "yarn or k8s://https://host:port"
        )
    for hostport in master.removeprefix("spark://").split(","):
        host, _, port = hostport.rpartition(":")
        if not host or not port.isdigit():
            raise SparkEngineError(f"{where}: {master!r}: expected spark://host:port, got {hostport!r}")
        try:
            with socket.create_connection((host, int(port)), timeout=MASTER_CONNECT_TIMEOUT_S):
                pass
        except OSError as err:
            raise SparkEngineError(f"{where}: the Spark master {hostport} is not reachable ({err})") from err


def session() -> Any:
    """This process's ``SparkSession``, started on first use with :func:`current_settings`.

    Raises:
        SparkEngineError: pyspark or Java is missing, the master is invalid or unreachable, or Spark did not start.
    """
    global _session, _session_settings
    with _lock:
        settings = current_settings()
        if _session is not None and _session_settings == settings:
            if _alive(_session):
                return _session
            logger.warning("spark session's driver stopped or died; starting a new one")
        check_available()
        check_master(settings.master)
        _stop_locked()  # started with other settings, or its driver is gone
        from pyspark.sql import SparkSession

        builder = (
            SparkSession.builder.master(settings.master)
            .appName(settings.app_name)
            .config("spark.driver.memory", settings.driver_memory)
            .config("spark.sql.shuffle.partitions", str(settings.shuffle_partitions))
            .config("spark.sql.execution.arrow.pyspark.enabled", "true")
            .config("spark.ui.showConsoleProgress", "false")
        )
        if settings.master.startswith("local"):
            # a local driver talks to itself: never depend on the host name resolving
            builder = builder.config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
        for key, value in settings.conf.items():
            builder = builder.config(key, value)
        t0 = time.perf_counter()
        try:
            spark = builder.getOrCreate()
        except Exception as err:  # py4j/pyspark raise many kinds; all mean "no session"
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise SparkEngineError(f"could not start Spark with master {settings.master!r}: {first}") from err
        spark.sparkContext.setLogLevel("ERROR")
        logger.info(
            "spark session started",
            extra={"master": settings.master, "spark_version": spark.version, "seconds": time.perf_counter() - t0},
        )
        _session, _session_settings = spark, settings
        _set_checkpoint_dir(spark, settings)
        return spark


def _set_checkpoint_dir(spark: Any, settings: SparkSettings) -> None:
    """Give the session a checkpoint directory, without which ALS ignores ``checkpointInterval``.

    ALS's factor RDDs grow a lineage of a few stages per sweep; every task carries it serialised, and a long one
    overflows the stack of the thread that (de)serialises it: a task failure, or with ``local`` masters an
    executor error that ends the driver's JVM. Checkpoints cut it every ``checkpoint_interval`` sweeps.
    """
    global _checkpoint_tmp
    target = settings.checkpoint_dir
    if target is None:
        if not settings.master.startswith("local"):
            logger.warning(
                "no spark.checkpoint_dir for a cluster master: ALS runs without checkpoints "
                "(set TASTEBUD_SPARK__CHECKPOINT_DIR to a path every executor reaches, e.g. hdfs://...)"
            )
            return
        _checkpoint_tmp = target = tempfile.mkdtemp(prefix="tastebud-spark-checkpoints-")
    spark.sparkContext.setCheckpointDir(target)


def reg_param(regularization: float, matrix: sp.csr_matrix) -> float:
    """Spark's ``regParam`` matching implicit's ``regularization`` on ``matrix`` (see the module docstring)."""
    nnz = int((matrix.data > 0).sum())
    n_rows = matrix.shape[0] + matrix.shape[1]
    return float(regularization) * n_rows / (2 * nnz) if nnz else float(regularization)


def spark_ratings(values: np.ndarray, alpha: float) -> np.ndarray:
    """Ratings for Spark such that its confidence ``1 + alpha * r`` equals implicit's ``alpha * value``."""
    return np.maximum(np.asarray(values, dtype=np.float64) - 1.0 / alpha, MIN_RATING).astype(np.float32)


def fit(
    matrix: sp.csr_matrix,
    *,
    factors: int,
    iterations: int,
    regularization: float,
    alpha: float,
    random_state: int,
    reg_param_override: float | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Fit implicit-feedback ALS on Spark; returns ``(user_factors, item_factors, info)``.

    Args:
        matrix: users x items, the values implicit would see before it multiplies by ``alpha`` (rows and columns
            are the dataset's user and item indices).
        factors, iterations, regularization, alpha, random_state: ``ALSConfig``'s values (implicit's meaning).
        reg_param_override: Spark ``regParam`` to use instead of the mapping of ``regularization``.

    Returns:
        float32 factors with row ``u`` for user index ``u`` and row ``i`` for item index ``i`` (zero for a user
        or item without a positive cell, as implicit leaves them), and what to record in the manifest: engine,
        master, Spark version, the ``regParam`` and ``alpha`` given to Spark, seconds.

    Raises:
        SparkEngineError: Spark is not available or failed, or returned factors that do not match the data.
    """
    spark = session()
    from pyspark.ml.recommendation import ALS

    settings = current_settings()
    coo = matrix.tocoo()
    keep = coo.data != 0
    import pandas as pd

    frame = pd.DataFrame(
        {
            "user": coo.row[keep].astype(np.int32),
            "item": coo.col[keep].astype(np.int32),
            "rating": spark_ratings(coo.data[keep], alpha),
        }
    )
    rp = reg_param(regularization, matrix) if reg_param_override is None else float(reg_param_override)
    als = ALS(
        rank=factors,
        maxIter=iterations,
        regParam=rp,
        alpha=float(alpha),
        implicitPrefs=True,
        userCol="user",
        itemCol="item",
        ratingCol="rating",
        seed=int(random_state),
        nonnegative=False,
        checkpointInterval=settings.checkpoint_interval,
    )
    if settings.blocks is not None:
        als = als.setNumUserBlocks(settings.blocks).setNumItemBlocks(settings.blocks)
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            # pyspark warns about pandas versions newer than it knows; the conversions used here are plain columns
            warnings.filterwarnings("ignore", module="pyspark")
            ratings = spark.createDataFrame(frame)
            model = als.fit(ratings)
            users = model.userFactors.toPandas()
            items = model.itemFactors.toPandas()
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if not _alive(spark):
            stop()
            first += " (the Spark driver stopped; the next fit starts a new session)"
        raise SparkEngineError(f"Spark ALS failed on {settings.master!r}: {first}") from err
    seconds = time.perf_counter() - t0
    user_factors = _ordered(users, matrix.shape[0], factors, "user")
    item_factors = _ordered(items, matrix.shape[1], factors, "item")
    info = {
        "name": "spark",
        "master": settings.master,
        "spark_version": spark.version,
        "reg_param": rp,
        "alpha": float(alpha),
        "spark_seconds": seconds,
    }
    logger.info("spark als fitted", extra=info)
    return user_factors, item_factors, info


def _ordered(frame: Any, n: int, rank: int, what: str) -> np.ndarray:
    """Spark's ``(id, features)`` rows as an ``(n, rank)`` array whose row ``k`` is id ``k`` (zero where absent).

    Spark returns factors keyed by the integer ids it was given, in no particular order: this is where they are
    put back in the dataset's index order.
    """
    ids = frame["id"].to_numpy(dtype=np.int64)
    out = np.zeros((n, rank), dtype=np.float32)
    if len(ids) == 0:
        return out
    if ids.min() < 0 or ids.max() >= n or len(np.unique(ids)) != len(ids):
        raise SparkEngineError(f"Spark returned {what} factors for ids outside 0..{n - 1} or twice")
    features = np.stack([np.asarray(f, dtype=np.float32) for f in frame["features"]])
    if features.shape != (len(ids), rank):
        raise SparkEngineError(f"Spark returned {what} factors of shape {features.shape}, expected (*, {rank})")
    out[ids] = features
    return out
