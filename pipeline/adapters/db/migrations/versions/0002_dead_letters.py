"""The dead-letter index and the record of replays.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

Serial = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "dead_letters",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("agent", sa.String(64), nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("error_type", sa.String(255), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("stacktrace", sa.Text(), nullable=True),
        sa.Column("event_id", sa.String(64), nullable=True),
        sa.Column("event_type", sa.String(64), nullable=True),
        sa.Column("original_topic", sa.String(255), nullable=False),
        sa.Column("original_partition", sa.Integer(), nullable=False),
        sa.Column("original_offset", sa.BigInteger(), nullable=False),
        sa.Column("original_timestamp", sa.Float(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("replays", sa.Integer(), nullable=False),
        sa.Column("first_failure_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("dead_lettered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("record_key", sa.LargeBinary(), nullable=True),
        sa.Column("record_value", sa.LargeBinary(), nullable=True),
        sa.Column("headers", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_dead_letters"),
    )
    op.create_index("ix_dead_letters_dead_lettered_at", "dead_letters", ["dead_lettered_at"])
    op.create_index("ix_dead_letters_event_id", "dead_letters", ["event_id"])
    op.create_table(
        "dead_letter_replays",
        sa.Column("id", Serial, autoincrement=True, nullable=False),
        sa.Column("dead_letter_id", sa.String(40), nullable=False),
        sa.Column("agent", sa.String(64), nullable=False),
        sa.Column("event_key", sa.String(320), nullable=False),
        sa.Column("replayed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("requested_by", sa.String(32), nullable=False),
        sa.ForeignKeyConstraint(
            ["dead_letter_id"],
            ["dead_letters.id"],
            name="fk_dead_letter_replays_dead_letter_id_dead_letters",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_dead_letter_replays"),
    )
    op.create_index("ix_dead_letter_replays_agent", "dead_letter_replays", ["agent", "event_key"])


def downgrade() -> None:
    op.drop_index("ix_dead_letter_replays_agent", table_name="dead_letter_replays")
    op.drop_table("dead_letter_replays")
    op.drop_index("ix_dead_letters_event_id", table_name="dead_letters")
    op.drop_index("ix_dead_letters_dead_lettered_at", table_name="dead_letters")
    op.drop_table("dead_letters")
