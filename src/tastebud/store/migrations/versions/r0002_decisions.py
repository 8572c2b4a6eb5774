"""The decision log as a table: every promotion, refusal, forced promotion, rollback and abandoned retrain.

Until this revision the log was ``<home>/registry/decisions.jsonl``; :mod:`tastebud.registry.decisions` imports such
a file once (``import_key`` keeps a second import from adding anything).

Revision ID: 0002_decisions
Revises: 0001_baseline
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_decisions"
down_revision: str | None = "0001_baseline"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create ``decisions``."""
    op.create_table(
        "decisions",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model_name", sa.String(255), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("previous", sa.Integer(), nullable=True),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("numbers", sa.JSON(none_as_null=True), nullable=False),
        sa.Column("trigger", sa.String(64), nullable=True),
        sa.Column("import_key", sa.String(64), nullable=True),
    )
    op.create_index("ix_decisions_model_name_id", "decisions", ["model_name", "id"])
    op.create_index("uq_decisions_import_key", "decisions", ["import_key"], unique=True)


def downgrade() -> None:
    """Drop ``decisions`` (and the log in it)."""
    op.drop_table("decisions")
