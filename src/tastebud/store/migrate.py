"""Schema migrations of the store, through Alembic, run in code (no ``alembic.ini``).

The revisions live in ``tastebud/store/migrations/versions``: ``0001_baseline`` is the schema as it was before
migrations, later ones change it. :func:`upgrade` (what :meth:`tastebud.store.Store.init_schema` runs at every start)
brings a database to the newest revision:

* an empty database gets every revision in order;
* a database made by ``init_schema`` before migrations (the store's tables, no ``alembic_version``) is recognised,
  brought to exactly the baseline (missing tables, columns and indexes added, as the old ``init_schema`` did) and
  stamped at it, then upgraded like any other;
* a database at the newest revision is left alone.

Processes starting together on one database take turns: on PostgreSQL under a transaction-scoped advisory lock (the
whole upgrade is one transaction there, so a failed revision leaves nothing half-done), on SQLite under an exclusive
``flock`` of ``<database>.migrate.lock`` beside the file. The second finds the work done.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from tastebud.errors import StoreError
from tastebud.store.migrations import baseline

if TYPE_CHECKING:
    from tastebud.store.sql import Store

logger = logging.getLogger(__name__)
# Alembic reports every context it opens at INFO; at every start that is noise (this module logs what changed).
if logging.getLogger("alembic").level == logging.NOTSET:
    logging.getLogger("alembic").setLevel(logging.WARNING)

#: Where the revisions are (inside the package, so an installed wheel carries them).
SCRIPT_LOCATION = str(Path(__file__).resolve().parent / "migrations")
#: The first revision: the schema before migrations.
BASELINE = baseline.REVISION
#: Key of the PostgreSQL advisory lock that serialises migrations (the first 8 bytes of a sha256, signed).
_PG_LOCK_KEY = int.from_bytes(hashlib.sha256(b"tastebud:store-migrations").digest()[:8], "big", signed=True)
#: How long a SQLite migrator waits for another process's migration before giving up.
LOCK_TIMEOUT_S = 120.0
_thread_lock = threading.Lock()


@dataclass
class UpgradeResult:
    """What :func:`upgrade` did.

    Attributes:
        before: the revision found (``None``: an empty database, or one made before migrations).
        after: the revision the database is at now.
        legacy: the database was made before migrations and was stamped at the baseline.
        changes: what bringing a legacy database to the baseline changed, in words.
    """

    before: str | None
    after: str | None
    legacy: bool = False
    changes: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        """Whether the schema or its version changed."""
        return self.before != self.after or self.legacy


def alembic_config(connection: Connection | None = None) -> Config:
    """The Alembic configuration of the store's migrations, built in code; ``connection`` is what they run on."""
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    config.attributes["connection"] = connection
    return config


@functools.cache
def script_directory() -> ScriptDirectory:
    """The store's revisions (read once per process)."""
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    """The newest revision."""
    head = script_directory().get_current_head()
    assert head is not None, "the store's migrations have no revision"
    return head


def revisions() -> list[tuple[str, str]]:
    """Every revision as (id, one-line description), oldest first."""
    out = [(s.revision, (s.doc or "").strip().splitlines()[0]) for s in script_directory().walk_revisions()]
    return out[::-1]


def current_revision(store: Store) -> str | None:
    """The revision the store's database is at; ``None`` for an empty database or one made before migrations.

    Raises:
        StoreError: when the database cannot be reached.
    """
    with store._begin("schema version lookup") as conn:
        return MigrationContext.configure(conn).get_current_revision()


def is_legacy(store: Store) -> bool:
    """Whether the database holds the store's tables but no recorded revision (made before migrations)."""
    with store._begin("schema inspection") as conn:
        return _is_legacy(conn)


def upgrade(store: Store, revision: str = "head") -> UpgradeResult:
    """Bring the store's database to ``revision`` (the newest by default), serialised between processes.

    Raises:
        StoreError: when the database cannot be reached, refuses a revision, or another process holds the
            migration lock for longer than :data:`LOCK_TIMEOUT_S`; nothing of a failed revision stays on
            PostgreSQL.
    """
    with _serialised(store), store._begin("schema migration") as conn:
        if store.backend == "postgresql":
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_PG_LOCK_KEY)))
        before = MigrationContext.configure(conn).get_current_revision()
        result = UpgradeResult(before=before, after=before)
        if before is not None and before == (head_revision() if revision == "head" else revision):
            return result  # at every start but the first: nothing to do
        config = alembic_config(conn)
        known = {script.revision for script in script_directory().walk_revisions()}
        if before is not None and before not in known:
            raise StoreError(
                f"the store at {store.url} is at schema revision {before!r}, which this version of Tastebud does not "
                f"know (a newer version upgraded it?); its newest is {head_revision()!r}. Run the newer version, or "
                "point store.url at another database"
            )
        if before is None and _is_legacy(conn):
            try:
                result.changes = baseline.bring_to_baseline(conn)
            except ValueError as err:
                raise StoreError(f"the store at {store.url} cannot be brought to the baseline schema: {err}") from err
            command.stamp(config, BASELINE)
            result.legacy = True
            logger.info(
                "store at %s: made before migrations; brought to the baseline (%s) and stamped %s",
                store.url,
                "; ".join(result.changes) or "no change needed",
                BASELINE,
            )
        command.upgrade(config, revision)
        result.after = MigrationContext.configure(conn).get_current_revision()
    if result.before != result.after:
        logger.info("store at %s: schema upgraded from %s to %s", store.url, result.before or "nothing", result.after)
    return result


def _is_legacy(conn: Connection) -> bool:
    """No revision recorded (no ``alembic_version``, or an empty one left by an interrupted first stamp on SQLite,
    whose DDL is not transactional) yet some of the baseline's tables present."""
    if MigrationContext.configure(conn).get_current_revision() is not None:
        return False
    return bool(set(sa.inspect(conn).get_table_names()) & set(baseline.TABLES))


@contextlib.contextmanager
def _serialised(store: Store) -> Iterator[None]:
    """One migration at a time in this process, and on SQLite across processes (a file lock beside the database).

    PostgreSQL serialises with the advisory lock :func:`upgrade` takes inside its transaction.
    """
    with _thread_lock:
        database = store.engine.url.database or ""
        if store.backend != "sqlite" or database in ("", ":memory:") or database.startswith("file:"):
            yield
            return
        path = Path(database).expanduser().resolve().with_name(Path(database).name + ".migrate.lock")
        with _file_lock(path, store.url):
            yield


@contextlib.contextmanager
def _file_lock(path: Path, url: str) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: processes are not serialised (init_schema retries a lost race)
        yield
        return
    try:
        handle = path.open("a")
    except OSError as err:
        raise StoreError(f"schema migration of the store at {url}: cannot open the lock file {path}: {err}") from err
    with handle:
        deadline = time.monotonic() + LOCK_TIMEOUT_S
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StoreError(
                        f"schema migration of the store at {url}: another process has held {path} for more than "
                        f"{LOCK_TIMEOUT_S:.0f} s; is a migration stuck?"
                    ) from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


__all__ = [
    "BASELINE",
    "SCRIPT_LOCATION",
    "UpgradeResult",
    "alembic_config",
    "current_revision",
    "head_revision",
    "is_legacy",
    "revisions",
    "script_directory",
    "upgrade",
]
