"""A change feed (``events``: what the sidebar follows instead of re-listing), and run
listings ordered by (created_at, id) for keyset paging.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("subject", sa.String(255), nullable=False),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("wall_time", sa.Float, nullable=False),
    )
    # Keyset paging walks runs by (created_at, id); the id breaks ties in the index itself.
    op.drop_index("ix_runs_experiment_created", "runs")
    op.drop_index("ix_runs_created", "runs")
    op.create_index("ix_runs_created_id", "runs", ["created_at", "id"])
    op.create_index("ix_runs_experiment_created_id", "runs",
                    ["experiment_id", "created_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_runs_experiment_created_id", "runs")
    op.drop_index("ix_runs_created_id", "runs")
    op.create_index("ix_runs_created", "runs", ["created_at"])
    op.create_index("ix_runs_experiment_created", "runs", ["experiment_id", "created_at"])
    op.drop_table("events")
