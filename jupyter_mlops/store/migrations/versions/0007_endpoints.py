"""Endpoints: a registered model version served over HTTP, and its log.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "endpoints",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False, index=True),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("model_name", sa.String(128), nullable=False),
        sa.Column("model_version", sa.Integer, nullable=False),
        sa.Column("entry", sa.Text, nullable=False),
        sa.Column("entry_name", sa.String(255), nullable=False),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("served_revision", sa.Integer, nullable=True),
        sa.Column("bind_host", sa.String(255), nullable=False),
        sa.Column("port", sa.Integer, nullable=True),
        sa.Column("url", sa.String(1024), nullable=True),
        sa.Column("key_hash", sa.String(64), nullable=True),
        sa.Column("config", sa.JSON, nullable=False),
        sa.Column("environment", sa.JSON, nullable=True),
        sa.Column("stats", sa.JSON, nullable=True),
        sa.Column("host", sa.String(255), nullable=True),
        sa.Column("pid", sa.Integer, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("stop_requested_at", sa.Float, nullable=True),
        sa.Column("heartbeat_at", sa.Float, nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_table(
        "endpoint_logs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("endpoint_id", sa.String(32), sa.ForeignKey("endpoints.id"), nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("wall_time", sa.Float, nullable=False),
    )
    op.create_index("ix_endpoint_logs_endpoint", "endpoint_logs", ["endpoint_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_endpoint_logs_endpoint", "endpoint_logs")
    op.drop_table("endpoint_logs")
    op.drop_table("endpoints")
