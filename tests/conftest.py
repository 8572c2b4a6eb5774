"""Shared fixtures: small datasets with known structure, built through ``Dataset.from_frame``."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import sqlalchemy as sa

from mlflow_server import running_mlflow_server
from servers import URL_ENV, TempPostgres, pg_bin_dir
from tastebud.data.dataset import Dataset

#: Planted structure of ``cluster_dataset``: clusters, users and items per cluster, interactions per user.
N_CLUSTERS, USERS_PER_CLUSTER, ITEMS_PER_CLUSTER, ITEMS_PER_USER = 4, 30, 20, 10


@pytest.fixture(scope="session")
def toy_dataset() -> Dataset:
    """40 users x 25 items, random interactions (4-10 per user) with ratings, timestamps and genres."""
    rng = np.random.default_rng(7)
    users, items, ratings, stamps = [], [], [], []
    for u in range(40):
        chosen = rng.choice(25, size=rng.integers(4, 11), replace=False)
        users += [f"u{u:02d}"] * len(chosen)
        items += [f"i{i:02d}" for i in chosen]
        ratings += rng.integers(1, 6, size=len(chosen)).tolist()
        stamps += (1_600_000_000 + rng.integers(0, 90 * 86_400, size=len(chosen))).tolist()
    frame = pl.DataFrame({"user_id": users, "item_id": items, "rating": ratings, "timestamp": stamps})
    genres = ["Drama|Comedy", "Action", "Comedy", "Drama", "Action|Thriller"]
    meta = pl.DataFrame({"item_id": [f"i{i:02d}" for i in range(25)], "genres": [genres[i % 5] for i in range(25)]})
    return Dataset.from_frame(frame, items=meta, name="toy")


@pytest.fixture(scope="session")
def cluster_dataset() -> Dataset:
    """Users and items in 4 disjoint clusters: users only interact with items of their own cluster.

    User ``c<c>u<n>`` and item ``c<c>i<n>`` belong to cluster ``c``; each item's genre is ``g<c>``. Within a
    cluster, item popularity is skewed (lower item numbers are chosen more often).
    """
    rng = np.random.default_rng(11)
    weights = 1.0 / np.arange(1, ITEMS_PER_CLUSTER + 1) ** 0.5
    weights /= weights.sum()
    users, items = [], []
    for c in range(N_CLUSTERS):
        for u in range(USERS_PER_CLUSTER):
            chosen = rng.choice(ITEMS_PER_CLUSTER, size=ITEMS_PER_USER, replace=False, p=weights)
            users += [f"c{c}u{u:02d}"] * ITEMS_PER_USER
            items += [f"c{c}i{i:02d}" for i in chosen]
    frame = pl.DataFrame({"user_id": users, "item_id": items})
    all_items = [f"c{c}i{i:02d}" for c in range(N_CLUSTERS) for i in range(ITEMS_PER_CLUSTER)]
    meta = pl.DataFrame({"item_id": all_items, "genres": [[f"g{x[1]}"] for x in all_items]})
    return Dataset.from_frame(frame, items=meta, name="clusters")


@pytest.fixture(scope="session")
def ml100k() -> Dataset:
    """The real MovieLens-100K, fetched once into ``.tastebud-test/`` (GroupLens, else the RecBole wheel on PyPI).

    Set ``TASTEBUD_TEST_HOME`` to use another cache directory. Tests using it are marked ``slow`` and
    ``integration``: the first run downloads about 2 MB.
    """
    import os
    from pathlib import Path

    from tastebud.config import build_settings
    from tastebud.data.fetch import fetch_dataset, is_fetched
    from tastebud.data.readers import read_dataset

    home = Path(os.environ.get("TASTEBUD_TEST_HOME", Path(__file__).resolve().parents[1] / ".tastebud-test"))
    settings = build_settings(home=home)
    if not is_fetched("ml-100k", settings):
        fetch_dataset("ml-100k", settings, progress=False)
    return read_dataset("ml-100k", settings=settings)


@pytest.fixture(scope="session")
def ml100k_recbole_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real MovieLens-100K as RecBole atomic files, by the data layer's offline route (GroupLens not tried).

    ``fetch_dataset`` with downloads disabled takes ML-100K out of the RecBole wheel from PyPI. The wheel is kept in
    the cache of the test home (see ``ml100k``), so only the first run on a machine downloads it (about 2 MB).
    """
    import os
    import shutil

    from tastebud.config import build_settings
    from tastebud.data.fetch import fetch_dataset

    test_home = Path(os.environ.get("TASTEBUD_TEST_HOME", Path(__file__).resolve().parents[1] / ".tastebud-test"))
    shared_cache = build_settings(home=test_home).cache_dir
    settings = build_settings(home=tmp_path_factory.mktemp("recbole-home"), data={"allow_download": False})
    settings.cache_dir.mkdir(parents=True, exist_ok=True)
    for wheel in sorted(shared_cache.glob("recbole-*.whl")):
        shutil.copy(wheel, settings.cache_dir)
    path = fetch_dataset("ml-100k", settings, progress=False)
    shared_cache.mkdir(parents=True, exist_ok=True)
    for wheel in settings.cache_dir.glob("recbole-*.whl"):  # keep a fresh download for the next runs
        if not (shared_cache / wheel.name).exists():
            shutil.copy(wheel, shared_cache)
    return path


# PostgreSQL: a throw-away server for the session (or TASTEBUD_TEST_POSTGRES_URL's), a fresh database per test.
@pytest.fixture(scope="session")
def postgres_admin_url() -> Iterator[str]:
    """URL of a PostgreSQL server whose role may create databases: started here, or from the environment."""
    if os.environ.get(URL_ENV):
        yield os.environ[URL_ENV]
        return
    bin_dir = pg_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries not found; run scripts/ensure-postgres.sh")
    server = TempPostgres(bin_dir)
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def postgres_database(postgres_admin_url: str) -> Iterator[str]:
    """URL of a new, empty database on the test server, dropped after the test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(postgres_admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    yield sa.engine.make_url(postgres_admin_url).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.dispose()


# MLflow: one real tracking server (SQLite backend, proxied artifact store) per session; see tests/mlflow_server.py.
@pytest.fixture(scope="session")
def mlflow_server_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of the session's MLflow server: ``mlflow.db``, ``artifacts/`` (the artifact destination), log."""
    return tmp_path_factory.mktemp("mlflow-server")


@pytest.fixture(scope="session")
def mlflow_server_url(mlflow_server_root: Path) -> Iterator[str]:
    """Tracking URI (``http://127.0.0.1:<port>``) of an ``mlflow server`` started for the session, stopped after."""
    with running_mlflow_server(mlflow_server_root) as url:
        yield url
