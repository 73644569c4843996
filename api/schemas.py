"""What the API answers with (its OpenAPI schemas). Requests reuse core.jobspec.JobRequest."""

from __future__ import annotations

from dataclasses import fields
from datetime import datetime
from typing import TYPE_CHECKING, Any, Self, get_type_hints

from pydantic import BaseModel, Field, create_model

from videoscore.core.variants import ASPECTS
from videoscore.db.queries import AspectStats, BatchSummary, BatchWebhook, GroupStats
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


class _JobView(BaseModel):
    """One job: its request, state, the five scores (when succeeded) and provenance."""

    @classmethod
    def of(cls, record: JobRecord) -> Self:
        data: dict[str, Any] = {name: getattr(record, name) for name in cls.model_fields if name != "scores"}
        return cls(**data, scores=record.scores)


def _job_fields() -> dict[str, Any]:
    """JobRecord's fields (db.records declares them, with their descriptions), the five aspects as `scores`."""
    types = get_type_hints(JobRecord)
    out: dict[str, Any] = {}
    for f in fields(JobRecord):
        if f.name in ASPECTS:
            out.setdefault("scores", (dict[str, float] | None,
                                      Field(description="The five aspect scores; null until succeeded")))
        else:
            out[f.name] = (types[f.name], Field(description=f.metadata.get("description")))
    return out


if TYPE_CHECKING:  # a type checker cannot see the fields of a model built at run time; it sees _JobView's API
    JobOut = _JobView
else:
    JobOut = create_model("JobOut", __base__=_JobView, __doc__=_JobView.__doc__, __module__=__name__,
                          **_job_fields())


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
    """A batch's webhook as its owner sees it; to any other token, a batch shows none (url null)."""

    url: str | None
    sent_at: datetime | None
    delivered_at: datetime | None
    attempts: int
    last_error: str | None = Field(description="`HTTP <status>` or a generic connection error of the last try")

    @classmethod
    def of(cls, hook: BatchWebhook) -> "WebhookOut":
        return cls(url=hook.url, sent_at=hook.sent_at, delivered_at=hook.delivered_at, attempts=hook.attempts,
                   last_error=hook.last_error)

    @classmethod
    def none(cls) -> "WebhookOut":
        return cls(url=None, sent_at=None, delivered_at=None, attempts=0, last_error=None)


class BatchOut(BaseModel):
    batch: str
    total: int
    counts: dict[str, int]
    progress: float = Field(description="Finished (succeeded, failed or cancelled) / total")
    mean_scores: dict[str, float | None]
    scores: GroupOut
    webhook: WebhookOut

    @classmethod
    def of(cls, summary: BatchSummary, *, caller: str | None = None) -> "BatchOut":
        """The batch as `caller` (a token's hash) sees it: its webhook only if the caller owns the batch."""
        owner = caller is not None and summary.owner_token_hash == caller
        webhook = WebhookOut(url=summary.webhook_url, sent_at=summary.webhook_sent_at,
                             delivered_at=summary.webhook_delivered_at, attempts=summary.webhook_attempts,
                             last_error=summary.webhook_last_error) if owner else WebhookOut.none()
        return cls(
            batch=summary.batch, total=summary.total, counts=summary.counts, progress=summary.progress,
            mean_scores={a: s.mean for a, s in summary.stats.aspects.items()}, scores=GroupOut.of(summary.stats),
            webhook=webhook,
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
