"""The schema: one row per scoring job, holding its request, its state, its scores and their provenance."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    false,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC timestamps on every backend (SQLite hands back naive datetimes otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(timezone.utc) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value


# JSON text on SQLite, jsonb on PostgreSQL (migration 0004): containment (`@>`) and a GIN index for analysts
JSONDocument = JSON().with_variant(JSONB(), "postgresql")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class Job(Base):
    __tablename__ = "jobs"

    # --- the request ---
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    video_uri: Mapped[str] = mapped_column(Text)
    prompt: Mapped[str] = mapped_column(Text)
    model: Mapped[str] = mapped_column(String(500))
    batch: Mapped[str | None] = mapped_column(String(200))
    tags: Mapped[dict[str, str]] = mapped_column(JSONDocument, default=dict)
    queue: Mapped[str] = mapped_column(String(200))
    priority: Mapped[str] = mapped_column(String(8), default="normal", server_default=text("'normal'"))
    force: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    # --- state ---
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    worker_host: Mapped[str | None] = mapped_column(String(255))
    error_kind: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)

    # --- the five aspect scores (full precision; round for display only) ---
    visual_quality: Mapped[float | None] = mapped_column(Float)
    temporal_consistency: Mapped[float | None] = mapped_column(Float)
    dynamic_degree: Mapped[float | None] = mapped_column(Float)
    text_to_video_alignment: Mapped[float | None] = mapped_column(Float)
    factual_consistency: Mapped[float | None] = mapped_column(Float)

    # --- provenance ---
    model_revision: Mapped[str | None] = mapped_column(String(100))
    stand_in_model: Mapped[bool | None] = mapped_column(Boolean)
    num_frames: Mapped[int | None] = mapped_column(Integer)
    frame_indices: Mapped[list[int] | None] = mapped_column(JSONDocument)
    video_etag: Mapped[str | None] = mapped_column(String(200))
    video_bytes: Mapped[int | None] = mapped_column(BigInteger)
    video_total_frames: Mapped[int | None] = mapped_column(Integer)
    video_fps: Mapped[float | None] = mapped_column(Float)
    video_duration_s: Mapped[float | None] = mapped_column(Float)
    video_width: Mapped[int | None] = mapped_column(Integer)
    video_height: Mapped[int | None] = mapped_column(Integer)
    download_s: Mapped[float | None] = mapped_column(Float)
    decode_s: Mapped[float | None] = mapped_column(Float)
    preprocess_s: Mapped[float | None] = mapped_column(Float)
    forward_s: Mapped[float | None] = mapped_column(Float)
    # set when the scores were copied from an earlier job on the same video content, prompt and model
    deduplicated_from: Mapped[str | None] = mapped_column(String(32))

    __table_args__ = (
        Index("ix_jobs_status_created", "status", "created_at"),
        Index("ix_jobs_batch_status", "batch", "status"),
        Index("ix_jobs_model_created", "model", "created_at"),
        Index("ix_jobs_created_id", "created_at", "id"),  # keyset pagination over all jobs
        Index("ix_jobs_dedupe", "video_etag", "model"),  # content dedupe: earlier scores of the same object
        # PostgreSQL only: tag filters are `tags @> '{…}'` (db.queries.tags_contain)
        Index("ix_jobs_tags_gin", "tags", postgresql_using="gin", postgresql_ops={"tags": "jsonb_path_ops"})
        .ddl_if(dialect="postgresql"),
    )


class Batch(Base):
    """Per-batch settings that outlive any one job: its owner, the completion webhook and its delivery record.

    A batch exists as jobs' `batch` name without a row here; a row appears when an API token first names the
    batch (submitting into it or registering its webhook: the token owns it) or the SDK registers a webhook.
    """

    __tablename__ = "batches"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # SHA-256 (hex) of the API token that created the batch, never the token; NULL: the operator's (SDK, CLI, or
    # created before batches had owners). Only the owner reads or changes the webhook through the API.
    owner_token_hash: Mapped[str | None] = mapped_column(String(64))
    webhook_url: Mapped[str | None] = mapped_column(Text)
    # claimed by exactly one caller (conditional UPDATE … WHERE webhook_sent_at IS NULL), then delivered
    webhook_sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    webhook_delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    webhook_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    webhook_last_error: Mapped[str | None] = mapped_column(Text)
