"""Baseline: the store as it was before migrations (request log, events, dead letters, locks, retrains, experiments).

Revision ID: 0001_baseline
Revises: (none)
"""

from __future__ import annotations

from alembic import op

from tastebud.store.migrations.baseline import REVISION, baseline_metadata

revision = REVISION
down_revision: str | None = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create the baseline's tables and indexes (on an empty database: one made before migrations is stamped at
    this revision instead, see :func:`tastebud.store.migrate.upgrade`)."""
    baseline_metadata().create_all(op.get_bind(), checkfirst=False)


def downgrade() -> None:
    """Drop the baseline's tables (and their data)."""
    baseline_metadata().drop_all(op.get_bind())
