"""The Celery task: claim the job in the database, run the pipeline, persist the outcome, then ack.

Errors are handled by kind: a PermanentError fails the job at once with its reason; a RetryableError hands the
job back and re-sends its message after a backoff, until the attempt budget is spent; a database outage
re-sends the message without touching the row. Messages carry only job ids.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, NoReturn

from celery import Celery, Task
from sqlalchemy.exc import OperationalError, InterfaceError

from core.errors import (
    AttemptsExhaustedError,
    DeviceError,
    JobTimeLimitError,
    PermanentError,
    RetryableError,
    VideoScoreError,
)
from core.names import TASK_SCORE_JOB
from db import jobs as job_queries
from db.records import JobRecord
from producer.webhooks import fire_if_batch_complete
from worker.dedupe import scored_lookup
from worker.pipeline import score_one_job
from worker.retry import RetryPolicy
from worker.runtime import Runtime, current_runtime

log = logging.getLogger(__name__)

JOB_ID = re.compile(r"^[0-9a-f]{32}$")
DB_DOWN = (OperationalError, InterfaceError)

Requeue = Callable[[float], NoReturn]


def register_tasks(app: Celery) -> None:
    @app.task(name=TASK_SCORE_JOB, bind=True)
    def score_job(self: Task, job_id: Any = None, *args: Any, **kwargs: Any) -> None:
        def requeue(delay_s: float) -> NoReturn:
            raise self.retry(countdown=delay_s, max_retries=None)

        run_score_job(current_runtime(), job_id, requeue=requeue)


def run_score_job(runtime: Runtime, job_id: Any, *, requeue: Requeue) -> None:
    if not isinstance(job_id, str) or not JOB_ID.match(job_id):
        log.error("dropping malformed message: job id %r is not a job id", job_id)
        return
    policy = RetryPolicy(max_attempts=runtime.settings.max_attempts)
    try:
        with runtime.db.transaction() as session:
            job = job_queries.claim_job(session, job_id, worker_host=runtime.worker_id, lease=runtime.lease)
    except DB_DOWN as exc:
        log.warning("database unavailable while claiming %s: %s", job_id, exc)
        requeue(policy.delay_s(1))
    if job is None:
        log.info("job %s is not claimable (finished, cancelled, unknown or held by a live worker): skipped", job_id)
        return
    if job.attempts > policy.max_attempts:
        _record_failure(runtime, job, AttemptsExhaustedError(
            f"gave up after {job.attempts - 1} attempts; last error: {job.error_kind}: {job.error_message}"), requeue)
        return
    runtime.inflight.add(job.id)
    try:
        _run_claimed_job(runtime, job, policy, requeue)
    finally:
        runtime.inflight.discard(job.id)


def _run_claimed_job(runtime: Runtime, job: JobRecord, policy: RetryPolicy, requeue: Requeue) -> None:
    try:
        result = score_one_job(job, store=runtime.store, engine=runtime.engine, limits=runtime.limits,
                               find_scored=scored_lookup(runtime.db))
    except PermanentError as exc:
        _record_failure(runtime, job, exc, requeue)
        return
    except FutureTimeout:
        _record_failure(runtime, job, JobTimeLimitError(
            f"scoring did not finish within {runtime.limits.result_timeout_s:.0f}s"), requeue)
        return
    except DeviceError as exc:
        _release(runtime, job, exc, requeue, policy)
        return
    except RetryableError as exc:
        _release(runtime, job, exc, requeue, policy)
        return
    except Exception as exc:  # noqa: BLE001 - an unforeseen error: retried, but within the attempt budget
        log.exception("unexpected error scoring job %s", job.id)
        _release(runtime, job, _InternalError(f"{type(exc).__name__}: {exc}"), requeue, policy)
        return
    try:
        with runtime.db.transaction() as session:
            written = job_queries.complete_job(
                session, job.id, result, worker_host=runtime.worker_id, attempt=job.attempts
            )
    except DB_DOWN as exc:
        log.warning("database unavailable while saving %s: %s", job.id, exc)
        requeue(policy.delay_s(job.attempts))
    if not written:
        log.warning("job %s was taken over by another worker before we saved it; our result is dropped", job.id)
    else:
        fire_if_batch_complete(runtime.db, runtime.settings, job.batch)  # this job may have been its last one


class _InternalError(RetryableError):
    """An unexpected error inside the worker."""

    kind = "internal_error"


def _record_failure(runtime: Runtime, job: JobRecord, exc: VideoScoreError, requeue: Requeue) -> None:
    log.info("job %s failed: %s: %s", job.id, exc.kind, exc.message)
    try:
        with runtime.db.transaction() as session:
            job_queries.fail_job(
                session, job.id, kind=exc.kind, message=exc.message, worker_host=runtime.worker_id,
                attempt=job.attempts,
            )
    except DB_DOWN:
        requeue(RetryPolicy().delay_s(job.attempts))
    fire_if_batch_complete(runtime.db, runtime.settings, job.batch)


def _release(runtime: Runtime, job: JobRecord, exc: VideoScoreError, requeue: Requeue, policy: RetryPolicy) -> None:
    if not policy.should_retry(job.attempts):
        _record_failure(runtime, job, AttemptsExhaustedError(
            f"gave up after {job.attempts} attempts; last error: {exc.kind}: {exc.message}"), requeue)
        return
    delay = policy.delay_s(job.attempts)
    log.warning("job %s attempt %d: %s: %s; retrying in %.1fs", job.id, job.attempts, exc.kind, exc.message, delay)
    try:
        with runtime.db.transaction() as session:
            job_queries.release_for_retry(
                session, job.id, kind=exc.kind, message=exc.message, worker_host=runtime.worker_id,
                attempt=job.attempts,
            )
    except DB_DOWN:
        pass  # the row stays 'running' under our claim; the lease lets the redelivered message take it back
    requeue(delay)
