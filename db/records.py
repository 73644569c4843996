"""Plain, detached views of job rows that both producer and worker pass around safely.

`JobRecord` is the one declaration of a job's public fields: `from_row` and the insert (db.jobs) read its
fields, the API's `JobOut` (api.schemas) and the export's columns (producer.export) are built from them. A new
column is declared here and in db.models; a field's metadata `description` shows in the API's schema.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from typing import Any

from videoscore.core.variants import ASPECTS
from videoscore.db.models import Job


@dataclass(frozen=True)
class JobRecord:
    """One job as its row holds it, less the worker's bookkeeping (enqueued_at, heartbeat_at)."""

    id: str
    video_uri: str
    prompt: str
    model: str
    batch: str | None
    tags: dict[str, str]
    queue: str
    status: str
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    worker_host: str | None
    error_kind: str | None
    error_message: str | None
    visual_quality: float | None
    temporal_consistency: float | None
    dynamic_degree: float | None
    text_to_video_alignment: float | None
    factual_consistency: float | None
    model_revision: str | None
    stand_in_model: bool | None = field(
        metadata={"description": "True: scored by an UNTRAINED STAND-IN, the scores mean nothing"})
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
    idempotency_key: str | None
    priority: str
    force: bool
    deduplicated_from: str | None = field(
        metadata={"description": "Set when the scores were copied from this earlier job"})

    @classmethod
    def from_row(cls, row: Job) -> "JobRecord":
        return cls(**{f.name: getattr(row, f.name) for f in fields(cls)})

    @property
    def scores(self) -> dict[str, float] | None:
        """The five aspect scores by name, or None until the job has succeeded."""
        values = {a: getattr(self, a) for a in ASPECTS}
        return None if any(v is None for v in values.values()) else values  # type: ignore[return-value]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key, value in data.items():
            if isinstance(value, datetime):
                data[key] = value.isoformat()
        return data


_NOT_COLUMNS = {f.name for f in fields(JobRecord)} - set(Job.__table__.columns.keys())
assert not _NOT_COLUMNS, f"JobRecord fields without a column in db.models.Job: {sorted(_NOT_COLUMNS)}"


@dataclass(frozen=True)
class ScoreResult:
    """Everything a worker learned while scoring one job, written in one UPDATE."""

    scores: dict[str, float]
    model_revision: str
    stand_in_model: bool
    num_frames: int
    frame_indices: list[int]
    video_etag: str | None
    video_bytes: int
    video_total_frames: int
    video_fps: float
    video_duration_s: float
    video_width: int
    video_height: int
    download_s: float
    decode_s: float
    preprocess_s: float
    forward_s: float
    deduplicated_from: str | None = None  # the job whose scores these are, when answered without the GPU
