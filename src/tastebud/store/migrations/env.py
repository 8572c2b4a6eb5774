"""Alembic's environment for the store: runs on the connection :mod:`tastebud.store.migrate` hands over.

There is no ``alembic.ini``: :func:`tastebud.store.migrate.alembic_config` builds the configuration in code and puts
the open connection (inside the migration lock) in ``config.attributes["connection"]``.
"""

from __future__ import annotations

from alembic import context

from tastebud.store.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only reachable by running the alembic command line by hand
    raise RuntimeError("run the store's migrations through `tastebud store upgrade` (tastebud.store.migrate)")

context.configure(
    connection=connection,
    target_metadata=metadata,
    # SQLite alters a table by copying it; batch mode lets later revisions use op.alter_column there too.
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
