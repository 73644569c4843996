"""Read-only questions about the fleet, answered from the jobs table (the source of truth, not the broker).

The true load of a queue is its queued plus running jobs: the broker's list length misses messages that
workers have reserved or are running, ETA retries held in workers' memory and priority sub-lists, so an
autoscaler reading it would scale in while GPUs are busy. `queue_load` is what the worker and the exporter
publish as `videoscore_queue_load`; `snapshot` is what `videoscore fleet` prints.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from videoscore.core.names import JobStatus
from videoscore.db.models import Job, utcnow

ACTIVE = (JobStatus.QUEUED, JobStatus.RUNNING)


@dataclass(frozen=True)
class WorkerActivity:
    worker_host: str | None  # every claim sets it; the column is nullable
    running: int
    last_heartbeat: datetime | None


@dataclass(frozen=True)
class FleetSnapshot:
    at: datetime
    counts: dict[tuple[str, str], int]  # (queue, status) → jobs
    workers: list[WorkerActivity]  # hosts holding running jobs, most recent heartbeat first
    finished_in_window: dict[str, int]  # status → jobs finished in the window
    window: timedelta
    failures_by_kind: dict[str, int]  # error kind → failed jobs finished since `failures_since`
    failures_since: timedelta
    oldest_queued: datetime | None

    @property
    def load(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for (queue, status), n in self.counts.items():
            if status in ACTIVE:
                out[queue] = out.get(queue, 0) + n
        return out

    @property
    def jobs_per_s(self) -> float:
        return sum(self.finished_in_window.values()) / self.window.total_seconds()


def queue_load(session: Session) -> dict[str, int]:
    """Queued + running jobs per queue (uses the status index; cheap enough to run on every scrape)."""
    rows = session.execute(
        select(Job.queue, func.count()).where(Job.status.in_([s.value for s in ACTIVE])).group_by(Job.queue)
    )
    return {queue: count for queue, count in rows}


def long_queued(session: Session, *, sent_before: timedelta, limit: int = 10_000) -> list[tuple[str, str]]:
    """(id, queue) of queued jobs whose message was sent longer than `sent_before` ago, oldest first.

    After the broker lost data (Redis without AOF, or the fsync window of a host crash) these are the jobs
    whose message may be gone; re-sending them is safe (a duplicate finds the job claimed or finished).
    """
    return queued_sent_before(session, utcnow() - sent_before, limit=limit)


def queued_sent_before(session: Session, moment: datetime, *, limit: int | None = None) -> list[tuple[str, str]]:
    """(id, queue) of queued jobs whose message was sent before `moment`, oldest first."""
    query = (
        select(Job.id, Job.queue)
        .where(Job.status == JobStatus.QUEUED, Job.enqueued_at < moment)
        .order_by(Job.enqueued_at)
    )
    if limit is not None:
        query = query.limit(limit)
    return [(job_id, queue) for job_id, queue in session.execute(query)]


def queues_with_queued_jobs(session: Session) -> list[str]:
    return list(session.scalars(select(Job.queue).where(Job.status == JobStatus.QUEUED).distinct()))


def snapshot(
    session: Session, *, window: timedelta = timedelta(minutes=5), failures_since: timedelta = timedelta(hours=1)
) -> FleetSnapshot:
    now = utcnow()
    counts = {
        (queue, status): n
        for queue, status, n in session.execute(
            select(Job.queue, Job.status, func.count()).group_by(Job.queue, Job.status)
        )
    }
    workers = [
        WorkerActivity(host, n, last)
        for host, n, last in session.execute(
            select(Job.worker_host, func.count(), func.max(Job.heartbeat_at))
            .where(Job.status == JobStatus.RUNNING)
            .group_by(Job.worker_host)
        )
    ]
    workers.sort(key=lambda w: w.last_heartbeat or datetime.min.replace(tzinfo=now.tzinfo), reverse=True)
    finished = {
        status: n
        for status, n in session.execute(
            select(Job.status, func.count())
            .where(Job.finished_at >= now - window, Job.status.in_([JobStatus.SUCCEEDED, JobStatus.FAILED]))
            .group_by(Job.status)
        )
    }
    failures = {
        kind or "unknown": n
        for kind, n in session.execute(
            select(Job.error_kind, func.count())
            .where(Job.status == JobStatus.FAILED, Job.finished_at >= now - failures_since)
            .group_by(Job.error_kind)
        )
    }
    oldest = session.scalar(select(func.min(Job.created_at)).where(Job.status == JobStatus.QUEUED))
    return FleetSnapshot(
        at=now, counts=counts, workers=workers, finished_in_window=finished, window=window,
        failures_by_kind=dict(sorted(failures.items(), key=lambda kv: -kv[1])), failures_since=failures_since,
        oldest_queued=oldest,
    )
