"""Drop instances.pixel_digest: the job's idempotency key is built from the content digest.

The listener hashed every received data set twice (the stored bytes, then the pixel data) and
the second hash only fed the idempotency key, where the content digest does the same job. Keys
of jobs opened before this revision stay as they are (new jobs never collide with them: a new
job is either a new series or a higher generation).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("pixel_digest")


def downgrade() -> None:
    # The digests are not recomputed: rows come back with NULL (the column was nullable).
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("pixel_digest", sa.String(length=64), nullable=True))
