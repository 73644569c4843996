"""The Celery task: claim the job in the database, run the pipeline, persist the outcome, then ack.

Delivery is at least once and persistence is idempotent: the claim (a conditional UPDATE) lets one delivery
run a job, and the result is written only while that claim still holds, so duplicates are skipped and a
late result from a superseded attempt is dropped. What a delivery comes to is a value (worker.service.decision):
`decide` maps the attempt's outcome to it by error kind and attempt budget (a PermanentError fails the job at
once with its reason; a RetryableError or an unexpected exception hands the job back and re-sends its message
after an exponential backoff with jitter, until the attempt budget is spent), `run_score_job` persists it under
the claim and returns it, and `apply_to_celery` is the one place where it meets Celery.

The database may go away under a running task. Every statement runs through the `DatabaseGate`
(worker.service.gate), which waits in place (keeping the message, and a finished result, in hand) for up to
`db_wait_s`, so a short outage costs neither a re-score nor an attempt. Past that the message is re-sent; the
row may then still be `running` under this worker's claim, which the redelivery may take back
(`claim_job(reclaim_own=True)`, safe because this process holds at most one delivery of a job at a time) or,
elsewhere, takes over once the lease runs out. If the broker refuses the re-send too, the message is returned
unacknowledged so Redis redelivers it.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from celery import Celery, Task
from celery.exceptions import Reject
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from videoscore.core.errors import (
    AttemptsExhaustedError,
    DatabaseUnavailableError,
    DeviceError,
    InvalidJobError,
    JobTimeLimitError,
    PermanentError,
    RetryableError,
)
from videoscore.core.names import TASK_SCORE_JOB, JobStatus, is_job_id
from videoscore.core.webhooks import fire_if_batch_complete
from videoscore.db import jobs as job_queries
from videoscore.db import queries
from videoscore.db.records import JobRecord, ScoreResult
from videoscore.worker.service import metrics
from videoscore.worker.service.decision import (
    Decision,
    Dropped,
    Failed,
    Retry,
    Skipped,
    Succeeded,
    Superseded,
    decide,
)
from videoscore.worker.service.dedupe import PrefetchingStore, scored_lookup
from videoscore.worker.service.gate import DatabaseGate, describe
from videoscore.worker.service.pipeline import score_one_job
from videoscore.worker.service.runtime import Runtime, current_runtime

log = logging.getLogger(__name__)


def register_tasks(app: Celery) -> None:
    # max_retries=None: our attempt budget (RetryPolicy) decides when to give up. Celery's default of 3 would
    # end the 4th re-send with MaxRetriesExceededError, acknowledging the message of a job left queued: lost.
    # throws: a JobFailed is an expected end, logged by Celery in one line, not as an unexpected traceback.
    @app.task(name=TASK_SCORE_JOB, bind=True, max_retries=None, throws=(JobFailed,))
    def score_job(self: Task, job_id: Any = None, *args: Any, **kwargs: Any) -> None:
        decision = run_score_job(current_runtime(), job_id, redeliveries=self.request.retries or 0)
        apply_to_celery(self, job_id, decision)


class JobFailed(Exception):
    """The job failed for good (its failure is saved); raised so that Celery records the task as failed."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(kind, message)  # args as __init__ takes them: Celery pickles the exception
        self.kind = kind
        self.message = message

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


def apply_to_celery(task: Task, job_id: Any, decision: Decision) -> None:
    """The one adapter from a decision to Celery: a Retry re-sends the message; every other decision acks it.

    A Failed decision (already saved) raises JobFailed, so Celery's state, events and Flower show the task as
    failed rather than succeeded. Delivery is the same as a return: with acks_late, Celery acknowledges a task
    that raised (`task_acks_on_failure_or_timeout`, on by default), so the message is not delivered again.
    """
    if isinstance(decision, (Retry, Superseded, Failed)) and decision.stop_worker:
        _shut_down_worker()
    if isinstance(decision, Failed):
        raise JobFailed(decision.kind, decision.message)
    if not isinstance(decision, Retry):
        return
    try:
        raise task.retry(countdown=decision.delay_s, max_retries=None)
    except Reject as exc:  # Celery could not send the retry: keep this message instead of losing it
        log.warning("could not re-send job %s (%s); returning its message to the broker", job_id, exc)
        raise Reject(exc, requeue=True) from None


def run_score_job(runtime: Runtime, job_id: Any, *, redeliveries: int = 0) -> Decision:
    """Run one delivery of a job's message and persist its outcome; what the message should become is returned.

    `redeliveries` is how many times this message was re-sent already (Celery's `request.retries`).
    """
    if not is_job_id(job_id):
        log.error("dropping malformed message: job id %r is not a job id", job_id)
        metrics.JOBS.labels("dropped").inc()
        return Dropped(f"job id {job_id!r} is not a job id")
    if not runtime.try_hold(job_id):
        log.info("job %s is already running in this worker: duplicate delivery skipped", job_id)
        metrics.JOBS.labels("skipped").inc()
        return Skipped("duplicate delivery: the job is already running in this worker")
    try:
        return _claim_and_run(runtime, job_id, redeliveries)
    finally:
        runtime.release(job_id)


def _claim_and_run(runtime: Runtime, job_id: str, redeliveries: int) -> Decision:
    gate = DatabaseGate(runtime.db, wait_s=runtime.settings.db_wait_s)
    policy = runtime.retry_policy
    try:
        job = gate.run(
            lambda s: job_queries.claim_job(s, job_id, worker_host=runtime.worker_id, lease=runtime.lease,
                                            reclaim_own=True),
            what=f"claiming {job_id}",
        )
    except DatabaseUnavailableError as exc:
        log.warning("job %s not claimed: %s; re-sending it", job_id, exc.message)
        return Retry(policy.delay_s(redeliveries + 1), exc.message, kind=exc.kind)
    except SQLAlchemyError as exc:  # the database answers, but this job's row cannot be read
        return _fail_unreadable(gate, job_id, exc)
    if job is None:
        log.info("job %s is not claimable (finished, cancelled, unknown or held by a live worker): skipped", job_id)
        metrics.JOBS.labels("skipped").inc()
        return Skipped("not claimable: finished, cancelled, unknown or held by a live worker")
    outcome: ScoreResult | Exception
    if job.attempts > policy.max_attempts:  # earlier attempts ended without a word (their worker died)
        outcome = AttemptsExhaustedError(
            f"gave up after {job.attempts - 1} attempts; last error: {job.error_kind}: {job.error_message}")
    else:
        outcome = _attempt(runtime, job)
    if isinstance(outcome, DeviceError):
        log.critical("device error on job %s: %s; this worker stops so it can be restarted", job.id, outcome)
    decision = decide(outcome, attempt=job.attempts, policy=policy)
    if isinstance(decision, Failed):
        return _record_failure(runtime, gate, job, decision)
    if isinstance(decision, Retry):
        return _release(runtime, gate, job, decision)
    assert isinstance(outcome, ScoreResult)
    return _save(runtime, gate, job, outcome)


def _attempt(runtime: Runtime, job: JobRecord) -> ScoreResult | Exception:
    """One attempt at the job: its scores, or the exception it ended with (a spent time limit as time_limit)."""
    try:
        return _score_within_time_limit(runtime, job)
    except FutureTimeout:
        return JobTimeLimitError(
            f"scoring did not finish within {runtime.limits.result_timeout_s:.0f}s (VIDEOSCORE_SCORE_TIMEOUT_S)")
    except Exception as exc:  # noqa: BLE001 - every error is decided on by kind (worker.service.decision)
        if not isinstance(exc, (PermanentError, DeviceError, RetryableError)):
            log.exception("unexpected error scoring job %s", job.id)
        return exc


def _score_within_time_limit(runtime: Runtime, job: JobRecord) -> ScoreResult:
    """Run fetch → frames → score in a helper thread and give up after `job_timeout_s`.

    Celery's time limits do not apply to the threads pool, and a stalled download or a pathological decode
    must not hold a worker slot forever. A thread cannot be killed: one that overruns is left to finish on
    its own (its result is discarded) while the job is failed with kind `time_limit`.
    """
    limit = float(runtime.settings.job_timeout_s)
    future: Future[ScoreResult] = Future()

    def stage() -> None:
        try:  # the job's store: dedupe takes the ETag from the job's own GET (worker.service.dedupe)
            with PrefetchingStore(runtime.store) as store:
                future.set_result(score_one_job(job, store=store, engine=runtime.engine, limits=runtime.limits,
                                                find_scored=scored_lookup(runtime.db)))
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting task thread
            if not future.done():
                future.set_exception(exc)

    threading.Thread(target=stage, name=f"videoscore-job-{job.id[:8]}", daemon=True).start()
    try:
        return future.result(timeout=limit)
    except FutureTimeout:
        if future.done():  # the forward pass's own timeout, raised inside the stage
            raise
        raise JobTimeLimitError(
            f"job ran past its time limit of {limit:.0f}s (download, decode and scoring; VIDEOSCORE_JOB_TIMEOUT_S)"
        ) from None


# --- persisting a decision under the claim: each may end Superseded, or as a Retry if the database is gone ---


def _save(runtime: Runtime, gate: DatabaseGate, job: JobRecord, result: ScoreResult) -> Decision:
    started = time.perf_counter()
    try:
        written, webhook_due = gate.run(
            lambda s: (job_queries.complete_job(s, job.id, result, worker_host=runtime.worker_id,
                                                attempt=job.attempts), _webhook_due(s, job)),
            what=f"saving {job.id}",
        )
    except DatabaseUnavailableError as exc:
        log.warning("job %s scored but not saved: %s; re-sending it", job.id, exc.message)
        return Retry(runtime.retry_policy.delay_s(job.attempts), exc.message, kind=exc.kind)
    metrics.STAGE_SECONDS.labels("persist").observe(time.perf_counter() - started)
    metrics.STAGE_SECONDS.labels("download").observe(result.download_s)
    metrics.STAGE_SECONDS.labels("decode").observe(result.decode_s)
    if not written and _ended_by_us(gate, runtime, job, JobStatus.SUCCEEDED):
        written = True  # the first try committed but its answer was lost with the connection; the retry saw it
    if written:
        log.info("job %s succeeded (attempt %d)", job.id, job.attempts)
        metrics.JOBS.labels("succeeded").inc()
        if webhook_due:  # this job may have been the batch's last one
            fire_if_batch_complete(runtime.db, runtime.settings, job.batch, after_job_end=True)
        return Succeeded()
    log.warning("job %s was taken over by another worker before we saved it; our result is dropped", job.id)
    metrics.JOBS.labels("superseded").inc()
    return Superseded()


def _webhook_due(session: Session, job: JobRecord) -> bool:
    """In the transaction that ends the job: does its batch have a webhook to claim after the commit?

    A primary-key look-up instead of a claim's transaction per job; db.queries.batch_webhook_due says why a
    webhook registered meanwhile is not missed."""
    return job.batch is not None and queries.batch_webhook_due(session, job.batch)


def _ended_by_us(gate: DatabaseGate, runtime: Runtime, job: JobRecord, status: JobStatus) -> bool:
    """After a conditional write under our claim answered False: is the row as that write would have left it?

    It is when a first run of the write committed but its answer was lost with the connection and the
    gate ran it again (worker.service.gate), which then matched nothing."""
    try:
        row = gate.run(lambda s: job_queries.get_job(s, job.id), what=f"reading {job.id}")
    except (SQLAlchemyError, DatabaseUnavailableError):
        return False
    return (row is not None and row.status == status.value and row.worker_host == runtime.worker_id
            and row.attempts == job.attempts)


def _record_failure(runtime: Runtime, gate: DatabaseGate, job: JobRecord, failed: Failed) -> Decision:
    log.info("job %s failed: %s: %s", job.id, failed.kind, failed.message)
    try:
        written, webhook_due = gate.run(
            lambda s: (job_queries.fail_job(s, job.id, kind=failed.kind, message=failed.message,
                                            worker_host=runtime.worker_id, attempt=job.attempts),
                       _webhook_due(s, job)),
            what=f"failing {job.id}",
        )
    except DatabaseUnavailableError as exc:
        return Retry(runtime.retry_policy.delay_s(job.attempts), exc.message, kind=exc.kind,
                     stop_worker=failed.stop_worker)
    if not written and _ended_by_us(gate, runtime, job, JobStatus.FAILED):
        written = True  # as in _save: a first try committed unheard
    if written:
        metrics.JOBS.labels("failed").inc()
        metrics.FAILURES.labels(failed.kind).inc()
        if webhook_due:
            fire_if_batch_complete(runtime.db, runtime.settings, job.batch, after_job_end=True)
        return failed
    metrics.JOBS.labels("superseded").inc()
    return Superseded(stop_worker=failed.stop_worker)


def _release(runtime: Runtime, gate: DatabaseGate, job: JobRecord, retry: Retry) -> Decision:
    log.warning("job %s attempt %d: %s: %s; retrying in %.1fs", job.id, job.attempts, retry.kind, retry.reason,
                retry.delay_s)
    try:
        released = gate.run(
            lambda s: job_queries.release_for_retry(s, job.id, kind=retry.kind, message=retry.reason,
                                                    worker_host=runtime.worker_id, attempt=job.attempts),
            what=f"releasing {job.id}",
        )
    except DatabaseUnavailableError:
        released = True  # still 'running' under our claim: the re-sent message may re-claim it (see module doc)
    if not released and _ended_by_us(gate, runtime, job, JobStatus.QUEUED):
        released = True  # as in _save: a first try committed unheard
    if not released:
        log.warning("job %s was taken over by another worker; not re-sending it", job.id)
        metrics.JOBS.labels("superseded").inc()
        return Superseded(stop_worker=retry.stop_worker)
    metrics.JOBS.labels("retried").inc()
    return retry


def _fail_unreadable(gate: DatabaseGate, job_id: str, exc: SQLAlchemyError) -> Decision:
    error = InvalidJobError(f"the job's row cannot be read: {describe(exc)}")
    log.error("job %s failed: %s: %s", job_id, error.kind, error.message)
    try:
        gate.run(lambda s: job_queries.fail_unclaimable(s, job_id, kind=error.kind, message=error.message),
                 what=f"failing {job_id}")
    except SQLAlchemyError as again:
        log.error("job %s could not be marked failed either (%s); dropping its message", job_id, describe(again))
        return Dropped(f"the job's row cannot be read or failed: {describe(again)}")
    metrics.JOBS.labels("failed").inc()
    metrics.FAILURES.labels(error.kind).inc()
    return Failed(error.kind, error.message)


def _shut_down_worker() -> None:
    # SIGTERM is Celery's warm shutdown: other in-flight jobs finish, then the process exits for a restart.
    os.kill(os.getpid(), signal.SIGTERM)
