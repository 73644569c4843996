"""initial schema: jobs

Revision ID: 0001
Revises: 
Create Date: 2026-11-28 01:20:38.471570
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('jobs',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('idempotency_key', sa.String(length=200), nullable=True),
    sa.Column('video_uri', sa.Text(), nullable=False),
    sa.Column('prompt', sa.Text(), nullable=False),
    sa.Column('model', sa.String(length=500), nullable=False),
    sa.Column('batch', sa.String(length=200), nullable=True),
    sa.Column('tags', sa.JSON(), nullable=False),
    sa.Column('queue', sa.String(length=200), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('enqueued_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('worker_host', sa.String(length=255), nullable=True),
    sa.Column('error_kind', sa.String(length=64), nullable=True),
    sa.Column('error_message', sa.Text(), nullable=True),
    sa.Column('visual_quality', sa.Float(), nullable=True),
    sa.Column('temporal_consistency', sa.Float(), nullable=True),
    sa.Column('dynamic_degree', sa.Float(), nullable=True),
    sa.Column('text_to_video_alignment', sa.Float(), nullable=True),
    sa.Column('factual_consistency', sa.Float(), nullable=True),
    sa.Column('model_revision', sa.String(length=100), nullable=True),
    sa.Column('stand_in_model', sa.Boolean(), nullable=True),
    sa.Column('num_frames', sa.Integer(), nullable=True),
    sa.Column('frame_indices', sa.JSON(), nullable=True),
    sa.Column('video_etag', sa.String(length=200), nullable=True),
    sa.Column('video_bytes', sa.BigInteger(), nullable=True),
    sa.Column('video_total_frames', sa.Integer(), nullable=True),
    sa.Column('video_fps', sa.Float(), nullable=True),
    sa.Column('video_duration_s', sa.Float(), nullable=True),
    sa.Column('video_width', sa.Integer(), nullable=True),
    sa.Column('video_height', sa.Integer(), nullable=True),
    sa.Column('download_s', sa.Float(), nullable=True),
    sa.Column('decode_s', sa.Float(), nullable=True),
    sa.Column('preprocess_s', sa.Float(), nullable=True),
    sa.Column('forward_s', sa.Float(), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('idempotency_key')
    )
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.create_index('ix_jobs_batch_status', ['batch', 'status'], unique=False)
        batch_op.create_index('ix_jobs_model_created', ['model', 'created_at'], unique=False)
        batch_op.create_index('ix_jobs_status_created', ['status', 'created_at'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_jobs_status_created')
        batch_op.drop_index('ix_jobs_model_created')
        batch_op.drop_index('ix_jobs_batch_status')

    op.drop_table('jobs')
