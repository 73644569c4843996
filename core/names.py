"""Stable names shared by producer and worker: they survive refactors because messages in flight carry them."""

from __future__ import annotations

from enum import StrEnum

TASK_SCORE_JOB = "videoscore.score_job"


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
