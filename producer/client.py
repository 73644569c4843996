"""The Python SDK: submit jobs, read them back, wait for them. Commit first, then enqueue."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from core.errors import VideoScoreError
from core.jobspec import JobRequest, validate_job
from core.names import TERMINAL_STATUSES
from core.queueing import enqueue_jobs, make_celery_app
from core.settings import Settings
from db import jobs as job_queries
from db.records import JobRecord
from db.session import Database


class JobTimeoutError(VideoScoreError):
    """Jobs did not finish in time."""

    kind = "wait_timeout"


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

    def submit_many(self, requests: Iterable[dict[str, Any] | JobRequest]) -> list[JobRecord]:
        """Validate every request, insert them in one transaction, then enqueue the new ones."""
        valid = [validate_job(r, max_prompt_chars=self.settings.max_prompt_chars) for r in requests]
        with self.db.transaction() as session:
            inserted = job_queries.insert_jobs(session, valid, queue=self.settings.queue)
        new_ids = [job.id for job, created in inserted if created]
        if new_ids:
            # Only after the commit: a worker must never receive an id whose row it cannot see yet.
            enqueue_jobs(self._celery, new_ids, queue=self.settings.queue)
            with self.db.transaction() as session:
                job_queries.mark_enqueued(session, new_ids)
        return [job for job, _ in inserted]

    # --- reading ---

    def get(self, job_id: str) -> JobRecord | None:
        with self.db.transaction() as session:
            return job_queries.get_job(session, job_id)

    def results(self, *, batch: str | None = None, status: str | None = None, model: str | None = None,
                limit: int = 1000) -> list[JobRecord]:
        with self.db.transaction() as session:
            return job_queries.list_jobs(session, batch=batch, status=status, model=model, limit=limit)

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
            done = sum(1 for r in records if r.status in TERMINAL_STATUSES)
            if on_progress:
                on_progress(done, len(job_ids))
            if done == len(job_ids):
                return records
            if deadline is not None and time.monotonic() > deadline:
                raise JobTimeoutError(f"{len(job_ids) - done} of {len(job_ids)} jobs unfinished after {timeout_s}s")
            time.sleep(self.settings.poll_interval_s)
