"""Stable names shared by producer and worker: they survive refactors because messages in flight carry them."""

from __future__ import annotations

import re
from enum import StrEnum

TASK_SCORE_JOB = "videoscore.score_job"

JOBS_PER_CHUNK = 5_000
"""Jobs per bulk step: per submit transaction (producer.client), per INSERT and IN (…) list (db.jobs), per
pipelined LPUSH (core.queueing), per page of an export (db.queries.iter_jobs). Well under SQLite's 32,766
bound parameters per statement."""

# A job id: 32 lowercase hex digits (a uuid4's hex). Messages carry nothing else; anything else is malformed.
JOB_ID = re.compile(r"^[0-9a-f]{32}$")


def is_job_id(value: object) -> bool:
    return isinstance(value, str) and JOB_ID.match(value) is not None


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
