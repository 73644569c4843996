"""The Python SDK: submit jobs, read them back, wait for them. Commit first, then enqueue."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Literal

from videoscore.core.errors import IdempotencyConflictError, VideoScoreError
from videoscore.core.jobspec import JobRequest, validate_job
from videoscore.core.names import TERMINAL_STATUSES
from videoscore.core.queueing import enqueue_pipelined, make_celery_app, queue_for
from videoscore.core.settings import Settings
from videoscore.core.variants import ModelPolicy
from videoscore.core.webhooks import WebhookPolicy, check_webhook_url, fire_if_batch_complete
from videoscore.db import jobs as job_queries
from videoscore.db import queries
from videoscore.db.queries import GroupStats, JobFilter, Page
from videoscore.db.records import JobRecord
from videoscore.db.session import Database


class JobTimeoutError(VideoScoreError):
    """Jobs did not finish in time."""

    kind = "wait_timeout"


class UnknownJobsError(VideoScoreError):
    """No job has these ids."""

    kind = "unknown_job"

    def __init__(self, job_ids: Sequence[str]) -> None:
        self.job_ids = tuple(job_ids)
        shown = ", ".join(self.job_ids[:5]) + (f" and {len(self.job_ids) - 5} more" if len(self.job_ids) > 5 else "")
        super().__init__(f"no job {shown}")


class JobsNotSentError(VideoScoreError):
    """Jobs were stored but their messages could not be sent to the broker."""

    kind = "broker_unavailable"

    def __init__(self, jobs: Sequence[tuple[JobRecord, bool]], cause: BaseException) -> None:
        # Every job submitted so far, sent or not: the unsent ones are in the database, and the workers' reaper
        # sends them once the broker is back. Submitting them again with a new idempotency key would duplicate.
        self.jobs = list(jobs)
        reason = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
        super().__init__(f"{len(self.jobs)} job(s) stored but not sent to the broker ({reason}); the workers' "
                         "reaper sends them when it is back: do not resubmit")


class Client:
    """Submit scoring jobs and read their results from the database."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.db = Database(self.settings.database_url)
        self._celery = make_celery_app(self.settings, name="videoscore-producer")

    def close(self) -> None:
        self.db.dispose()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # --- submitting ---

    def submit(self, video_uri: str, prompt: str, **fields: Any) -> JobRecord:
        """Submit one job; `fields` may set model, batch, tags and idempotency_key."""
        return self.submit_many([{"video_uri": video_uri, "prompt": prompt, **fields}])[0]

    def submit_many(
        self,
        requests: Iterable[dict[str, Any] | JobRequest],
        *,
        chunk_size: int = job_queries.JOBS_PER_CHUNK,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> list[JobRecord]:
        """Validate every request (all or nothing), then insert and enqueue them `chunk_size` at a time.

        Each chunk is one transaction, committed before its messages are sent; a producer that dies between
        the two leaves rows the workers' reaper re-sends. Messages go to each job's queue (model, priority).
        """
        models = ModelPolicy.of(self.settings)  # a job naming no model gets VIDEOSCORE_MODEL
        valid = [validate_job(r, max_prompt_chars=self.settings.max_prompt_chars, models=models) for r in requests]
        return self.submit_valid(valid, chunk_size=chunk_size, on_progress=on_progress)

    def submit_valid(
        self,
        requests: Sequence[JobRequest],
        *,
        chunk_size: int = job_queries.JOBS_PER_CHUNK,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> list[JobRecord]:
        """`submit_many` for requests already checked with `validate_job` (the manifest reader does so)."""
        return [job for job, _ in self.submit_detailed(requests, chunk_size=chunk_size, on_progress=on_progress)]

    def submit_detailed(
        self,
        requests: Sequence[JobRequest],
        *,
        chunk_size: int = job_queries.JOBS_PER_CHUNK,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> list[tuple[JobRecord, bool]]:
        """`submit_valid`, also saying of each job whether it is new (False: its idempotency key existed).

        An idempotency key names one job: resubmitting it with the same fields answers the existing job, with
        other fields (a different prompt, `force`, …) raises IdempotencyConflictError naming each such request
        and the fields that differ. Checked for every chunk before the first is committed, so a conflict in a
        later chunk submits nothing (bar a concurrent submit of the same key in between).
        """
        out: list[tuple[JobRecord, bool]] = []
        if len(requests) > chunk_size:
            with self.db.transaction() as session:
                conflicts = job_queries.idempotency_conflicts(session, requests)
            if conflicts:
                raise IdempotencyConflictError(conflicts=tuple(conflicts))
        queues: dict[tuple[str, str], str] = {}

        def queue_of(request: JobRequest) -> str:
            key = (request.model, request.priority)
            if key not in queues:
                queues[key] = self.queue_of(request)
            return queues[key]

        for start in range(0, len(requests), chunk_size):
            chunk = requests[start:start + chunk_size]
            try:
                with self.db.transaction() as session:
                    inserted = job_queries.insert_jobs(session, chunk, queue=queue_of)
            except IdempotencyConflictError as exc:  # positions in the chunk → positions in `requests`
                raise IdempotencyConflictError(
                    conflicts=tuple(c._replace(position=c.position + start) for c in exc.conflicts)) from None
            by_queue: dict[str, list[str]] = {}
            for job, created in inserted:
                if created:
                    by_queue.setdefault(job.queue, []).append(job.id)
            # Only after the commit: a worker must never receive an id whose row it cannot see yet.
            try:
                for queue, ids in by_queue.items():
                    enqueue_pipelined(self._celery, ids, queue=queue)
            except Exception as exc:  # the broker's errors are kombu's, redis-py's or OSError
                raise JobsNotSentError([*out, *inserted], exc) from exc
            new_ids = [i for ids in by_queue.values() for i in ids]
            if new_ids:
                with self.db.transaction() as session:
                    job_queries.mark_enqueued(session, new_ids)
            out.extend(inserted)
            if on_progress:
                on_progress(len(out), len(requests))
        return out

    def queue_of(self, request: JobRequest) -> str:
        """The broker queue a request goes to (see core.queueing.queue_for)."""
        return queue_for(self.settings, request.model, request.priority)

    # --- reading ---

    def get(self, job_id: str) -> JobRecord | None:
        with self.db.transaction() as session:
            return job_queries.get_job(session, job_id)

    def results(self, *, batch: str | None = None, status: str | None = None, model: str | None = None,
                limit: int = 1000) -> list[JobRecord]:
        with self.db.transaction() as session:
            return job_queries.list_jobs(session, batch=batch, status=status, model=model, limit=limit)

    def search(self, where: JobFilter | None = None, *, limit: int = 100, cursor: str | None = None) -> Page:
        """One page of jobs matching `where` (batch, model, status, tags, time window, score bounds)."""
        with self.db.transaction() as session:
            return queries.search_jobs(session, where or JobFilter(), limit=limit, cursor=cursor)

    def iter_jobs(self, where: JobFilter | None = None) -> Iterator[JobRecord]:
        """Every job matching `where`, in creation order, read in pages (for exports)."""
        with self.db.transaction() as session:
            yield from queries.iter_jobs(session, where or JobFilter())

    def batch(self, name: str) -> queries.BatchSummary | None:
        """Counts by status, progress, score statistics and webhook state of a batch."""
        with self.db.transaction() as session:
            return queries.batch_summary(session, name)

    def aggregate(self, group_by: Literal["batch", "model"], where: JobFilter | None = None) -> list[GroupStats]:
        """Per batch or model: succeeded jobs, mean and p10/p50/p90 of each aspect."""
        with self.db.transaction() as session:
            return queries.aggregate(session, group_by, where)

    def cancel(self, job_id: str) -> bool:
        """Cancel a job no worker has started; False if it has started, finished or does not exist."""
        with self.db.transaction() as session:
            cancelled = job_queries.cancel_job(session, job_id)
            batch = job_queries.get_job(session, job_id).batch if cancelled else None  # type: ignore[union-attr]
        if cancelled:
            fire_if_batch_complete(self.db, self.settings, batch)
        return cancelled

    def set_batch_webhook(self, batch: str, url: str) -> None:
        """Call `url` once when every job of `batch` has finished (now, if it already has)."""
        check_webhook_url(url, WebhookPolicy.of(self.settings))
        with self.db.transaction() as session:
            queries.set_batch_webhook(session, batch, url)
        fire_if_batch_complete(self.db, self.settings, batch)

    def wait(
        self,
        job_ids: Sequence[str],
        *,
        timeout_s: float | None = None,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> list[JobRecord]:
        """Poll until every job is finished (succeeded, failed or cancelled); return them in order."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            with self.db.transaction() as session:
                records = job_queries.get_jobs(session, job_ids)
            found = {r.id for r in records}
            unknown = [i for i in dict.fromkeys(job_ids) if i not in found]
            if unknown:  # a typo would otherwise be waited for forever
                raise UnknownJobsError(unknown)
            done = sum(1 for r in records if r.status in TERMINAL_STATUSES)
            if on_progress:
                on_progress(done, len(job_ids))
            if done == len(job_ids):
                return records
            if deadline is not None and time.monotonic() > deadline:
                raise JobTimeoutError(f"{len(job_ids) - done} of {len(job_ids)} jobs unfinished after {timeout_s}s")
            time.sleep(self.settings.poll_interval_s)
