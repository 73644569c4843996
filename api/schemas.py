"""What the API answers with (its OpenAPI schemas). Requests reuse core.jobspec.JobRequest."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from videoscore.db.queries import AspectStats, BatchSummary, GroupStats
from videoscore.db.records import JobRecord


class FieldError(BaseModel):
    field: str = Field(description="Where the problem is, e.g. `jobs[3].prompt` or `query.limit`")
    message: str


class ErrorBody(BaseModel):
    code: str = Field(description="Stable machine-readable kind, e.g. validation_error, unauthorized, not_found")
    message: str = Field(description="What went wrong, for a person")
    fields: list[FieldError] = Field(default_factory=list)


class ErrorOut(BaseModel):
    error: ErrorBody


class JobOut(BaseModel):
    """One job: its request, state, the five scores (when succeeded) and provenance."""

    id: str
    status: str
    video_uri: str
    prompt: str
    model: str
    batch: str | None
    tags: dict[str, str]
    priority: str
    force: bool
    idempotency_key: str | None
    queue: str
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    worker_host: str | None
    error_kind: str | None
    error_message: str | None
    scores: dict[str, float] | None = Field(description="The five aspect scores; null until succeeded")
    stand_in_model: bool | None = Field(description="True: scored by an UNTRAINED STAND-IN, the scores mean nothing")
    model_revision: str | None
    deduplicated_from: str | None = Field(description="Set when the scores were copied from this earlier job")
    num_frames: int | None
    frame_indices: list[int] | None
    video_etag: str | None
    video_bytes: int | None
    video_total_frames: int | None
    video_fps: float | None
    video_duration_s: float | None
    video_width: int | None
    video_height: int | None
    download_s: float | None
    decode_s: float | None
    preprocess_s: float | None
    forward_s: float | None

    @classmethod
    def of(cls, record: JobRecord) -> "JobOut":
        data: dict[str, Any] = {name: getattr(record, name) for name in cls.model_fields if name != "scores"}
        return cls(**data, scores=record.scores)


class SubmittedMany(BaseModel):
    jobs: list[JobOut]
    created: int = Field(description="How many were new; the rest matched an existing idempotency key")


class JobPage(BaseModel):
    jobs: list[JobOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page")


class CancelOut(BaseModel):
    id: str
    status: str


class AspectStatsOut(BaseModel):
    mean: float | None
    p10: float | None
    p50: float | None
    p90: float | None

    @classmethod
    def of(cls, stats: AspectStats) -> "AspectStatsOut":
        return cls(mean=stats.mean, p10=stats.p10, p50=stats.p50, p90=stats.p90)


class GroupOut(BaseModel):
    group: str | None
    scored: int
    stand_in_model: bool
    aspects: dict[str, AspectStatsOut]

    @classmethod
    def of(cls, stats: GroupStats) -> "GroupOut":
        return cls(group=stats.group, scored=stats.scored, stand_in_model=stats.stand_in,
                   aspects={a: AspectStatsOut.of(s) for a, s in stats.aspects.items()})


class WebhookOut(BaseModel):
    url: str | None
    sent_at: datetime | None
    delivered_at: datetime | None
    attempts: int
    last_error: str | None


class BatchOut(BaseModel):
    batch: str
    total: int
    counts: dict[str, int]
    progress: float = Field(description="Finished (succeeded, failed or cancelled) / total")
    mean_scores: dict[str, float | None]
    scores: GroupOut
    webhook: WebhookOut

    @classmethod
    def of(cls, summary: BatchSummary) -> "BatchOut":
        return cls(
            batch=summary.batch, total=summary.total, counts=summary.counts, progress=summary.progress,
            mean_scores={a: s.mean for a, s in summary.stats.aspects.items()}, scores=GroupOut.of(summary.stats),
            webhook=WebhookOut(url=summary.webhook_url, sent_at=summary.webhook_sent_at,
                               delivered_at=summary.webhook_delivered_at, attempts=summary.webhook_attempts,
                               last_error=summary.webhook_last_error),
        )


class WebhookIn(BaseModel):
    url: str = Field(max_length=2000, description="http(s) URL POSTed once when the batch completes",
                     json_schema_extra={"pattern": "^https?://[^/]+", "examples": ["https://example.com/hooks/vs"]})


class AggregatesOut(BaseModel):
    group_by: str
    groups: list[GroupOut]


class Health(BaseModel):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)
