"""Metric values round-trip bit-exactly on SQLite: a column of REAL affinity stores -0.0 as
the integer 0 and reads back 0.0, so such points are flagged and read back as -0.0.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("metrics", sa.Column("negative_zero", sa.SmallInteger, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("metrics") as batch:
        batch.drop_column("negative_zero")
