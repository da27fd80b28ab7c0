"""Indexes for what listings and widgets ask: metrics after an id of one run, runs newest
first and runs of one experiment newest first.

Revision ID: 0005
Revises: 0004
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_metrics_run_id", "metrics", ["run_id", "id"])
    op.create_index("ix_runs_created", "runs", ["created_at"])
    op.create_index("ix_runs_experiment_created", "runs", ["experiment_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_runs_experiment_created", "runs")
    op.drop_index("ix_runs_created", "runs")
    op.drop_index("ix_metrics_run_id", "metrics")
