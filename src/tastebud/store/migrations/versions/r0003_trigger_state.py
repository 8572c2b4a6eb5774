"""The retrain triggers' memory of the last attempt per model, shared by every scheduler process and machine.

Until this revision it was ``<home>/pipeline/triggers.json`` (one model's state, local to the machine);
:class:`tastebud.pipeline.triggers.TriggerChecker` imports such a file once.

Revision ID: 0003_trigger_state
Revises: 0002_decisions
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_trigger_state"
down_revision: str | None = "0002_decisions"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create ``trigger_state``."""
    op.create_table(
        "trigger_state",
        sa.Column("model_name", sa.String(255), primary_key=True),
        sa.Column("champion_version", sa.Integer(), nullable=False),
        sa.Column("through_id", sa.BigInteger(), nullable=False),
        sa.Column("attempted_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    """Drop ``trigger_state``."""
    op.drop_table("trigger_state")
