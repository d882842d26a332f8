"""Stage marks in job events (inference done, SEG written, sent, verified) and the summary SR
of each result.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("job_events") as batch:
        batch.add_column(sa.Column("stage", sa.String(length=32), nullable=True))
    with op.batch_alter_table("results") as batch:
        batch.add_column(sa.Column("sr_sop_instance_uid", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("sr_path", sa.String(length=1024), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("results") as batch:
        batch.drop_column("sr_path")
        batch.drop_column("sr_sop_instance_uid")
    with op.batch_alter_table("job_events") as batch:
        batch.drop_column("stage")
