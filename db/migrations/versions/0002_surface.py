"""surface: priorities, forced re-scoring, content dedupe, batch webhooks, pagination index

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 02:10:00

Adds to `jobs`: `priority` (high/normal/low, picks the broker queue), `force` (skip content dedupe) and
`deduplicated_from` (the job whose scores were copied), an index for keyset pagination (created_at, id) and
one for dedupe look-ups (video_etag, model). Adds `batches`, which holds a batch's completion webhook.
Existing rows keep their data: the new columns have server defaults or are nullable.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("priority", sa.String(length=8), server_default=sa.text("'normal'"),
                                      nullable=False))
        batch_op.add_column(sa.Column("force", sa.Boolean(), server_default=sa.false(), nullable=False))
        batch_op.add_column(sa.Column("deduplicated_from", sa.String(length=32), nullable=True))
        batch_op.create_index("ix_jobs_created_id", ["created_at", "id"], unique=False)
        batch_op.create_index("ix_jobs_dedupe", ["video_etag", "model"], unique=False)

    op.create_table(
        "batches",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("webhook_url", sa.Text(), nullable=True),
        sa.Column("webhook_sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("webhook_delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("webhook_attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("webhook_last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("batches")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_dedupe")
        batch_op.drop_index("ix_jobs_created_id")
        batch_op.drop_column("deduplicated_from")
        batch_op.drop_column("force")
        batch_op.drop_column("priority")
