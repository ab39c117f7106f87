"""Outbox rows of other services: a topic and headers of their own.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

Both columns are NULL on the order service's rows (and on every row written before): such a
row goes to ``orders.events`` with no headers but the event's own, as before.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("outbox", sa.Column("topic", sa.String(249), nullable=True))
    op.add_column("outbox", sa.Column("headers", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("headers")
        batch.drop_column("topic")
