"""The Celery task: claim the job in the database, run the pipeline, persist the outcome, then ack.

Delivery is at least once and persistence is idempotent: the claim (a conditional UPDATE) lets one delivery
run a job, and the result is written only while that claim still holds, so duplicates are skipped and a
late result from a superseded attempt is dropped. Errors are handled by kind: a PermanentError fails the job
at once with its reason; a RetryableError hands the job back and re-sends its message after an exponential
backoff with jitter, until the attempt budget is spent; an unexpected exception is retried the same way.

The database may go away under a running task. Every statement runs through `_DatabaseGate`, which waits in
place (keeping the message, and a finished result, in hand) for up to `db_wait_s`, so a short outage costs
neither a re-score nor an attempt. Past that the message is re-sent; the row may then still be `running`
under this worker's claim, which the redelivery may take back (`claim_job(reclaim_own=True)`, safe because
this process holds at most one delivery of a job at a time) or, elsewhere, takes over once the lease runs out.
If the broker refuses the re-send too, the message is returned unacknowledged so Redis redelivers it.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, NoReturn, TypeVar

from celery import Celery, Task
from celery.exceptions import Reject
from sqlalchemy import text
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from videoscore.core.errors import (
    AttemptsExhaustedError,
    DatabaseUnavailableError,
    DeviceError,
    InvalidJobError,
    JobTimeLimitError,
    PermanentError,
    RetryableError,
    VideoScoreError,
)
from videoscore.core.names import TASK_SCORE_JOB, is_job_id
from videoscore.core.webhooks import fire_if_batch_complete
from videoscore.db import jobs as job_queries
from videoscore.db.records import JobRecord, ScoreResult
from videoscore.worker.service import metrics
from videoscore.worker.service.dedupe import scored_lookup
from videoscore.worker.service.pipeline import score_one_job
from videoscore.worker.service.retry import RetryPolicy
from videoscore.worker.service.runtime import Runtime, current_runtime

log = logging.getLogger(__name__)

DB_DOWN = (OperationalError, InterfaceError)
T = TypeVar("T")

Requeue = Callable[[float], NoReturn]


def register_tasks(app: Celery) -> None:
    # max_retries=None: our attempt budget (RetryPolicy) decides when to give up. Celery's default of 3 would
    # end the 4th re-send with MaxRetriesExceededError, acknowledging the message of a job left queued: lost.
    @app.task(name=TASK_SCORE_JOB, bind=True, max_retries=None)
    def score_job(self: Task, job_id: Any = None, *args: Any, **kwargs: Any) -> None:
        def requeue(delay_s: float) -> NoReturn:
            try:
                raise self.retry(countdown=delay_s, max_retries=None)
            except Reject as exc:  # Celery could not send the retry: keep this message instead of losing it
                log.warning("could not re-send job %s (%s); returning its message to the broker", job_id, exc)
                raise Reject(exc, requeue=True) from None

        run_score_job(current_runtime(), job_id, requeue=requeue, redeliveries=self.request.retries or 0)


def run_score_job(runtime: Runtime, job_id: Any, *, requeue: Requeue, redeliveries: int = 0) -> None:
    if not is_job_id(job_id):
        log.error("dropping malformed message: job id %r is not a job id", job_id)
        metrics.JOBS.labels("dropped").inc()
        return
    if not runtime.try_hold(job_id):
        log.info("job %s is already running in this worker: duplicate delivery skipped", job_id)
        metrics.JOBS.labels("skipped").inc()
        return
    try:
        _claim_and_run(runtime, job_id, requeue, redeliveries)
    finally:
        runtime.release(job_id)


def _claim_and_run(runtime: Runtime, job_id: str, requeue: Requeue, redeliveries: int) -> None:
    gate = _DatabaseGate(runtime)
    policy = runtime.retry_policy
    try:
        job = gate.run(
            lambda s: job_queries.claim_job(s, job_id, worker_host=runtime.worker_id, lease=runtime.lease,
                                            reclaim_own=True),
            what=f"claiming {job_id}",
        )
    except DatabaseUnavailableError as exc:
        log.warning("job %s not claimed: %s; re-sending it", job_id, exc.message)
        requeue(policy.delay_s(redeliveries + 1))
    except SQLAlchemyError as exc:  # the database answers, but this job's row cannot be read
        _fail_unreadable(gate, job_id, exc)
        return
    if job is None:
        log.info("job %s is not claimable (finished, cancelled, unknown or held by a live worker): skipped", job_id)
        metrics.JOBS.labels("skipped").inc()
        return
    if job.attempts > policy.max_attempts:
        _record_failure(runtime, gate, job, AttemptsExhaustedError(
            f"gave up after {job.attempts - 1} attempts; last error: {job.error_kind}: {job.error_message}"), requeue)
        return
    _run_claimed_job(runtime, gate, job, policy, requeue)


def _run_claimed_job(runtime: Runtime, gate: "_DatabaseGate", job: JobRecord, policy: RetryPolicy,
                     requeue: Requeue) -> None:
    try:
        result = _score_within_time_limit(runtime, job)
    except PermanentError as exc:
        _record_failure(runtime, gate, job, exc, requeue)
        return
    except FutureTimeout:
        _record_failure(runtime, gate, job, JobTimeLimitError(
            f"scoring did not finish within {runtime.limits.result_timeout_s:.0f}s (VIDEOSCORE_SCORE_TIMEOUT_S)"),
            requeue)
        return
    except DeviceError as exc:
        log.critical("device error on job %s: %s; this worker stops so it can be restarted", job.id, exc)
        _release(runtime, gate, job, exc, requeue, policy, then=_shut_down_worker)
        return
    except RetryableError as exc:
        _release(runtime, gate, job, exc, requeue, policy)
        return
    except Exception as exc:  # noqa: BLE001 - an unforeseen error: retried, but within the attempt budget
        log.exception("unexpected error scoring job %s", job.id)
        _release(runtime, gate, job, _InternalError(f"{type(exc).__name__}: {exc}"), requeue, policy)
        return
    started = time.perf_counter()
    try:
        written = gate.run(
            lambda s: job_queries.complete_job(s, job.id, result, worker_host=runtime.worker_id,
                                               attempt=job.attempts),
            what=f"saving {job.id}",
        )
    except DatabaseUnavailableError as exc:
        log.warning("job %s scored but not saved: %s; re-sending it", job.id, exc.message)
        requeue(policy.delay_s(job.attempts))
    metrics.STAGE_SECONDS.labels("persist").observe(time.perf_counter() - started)
    metrics.STAGE_SECONDS.labels("download").observe(result.download_s)
    metrics.STAGE_SECONDS.labels("decode").observe(result.decode_s)
    if not written and _saved_by_us(gate, runtime, job):
        written = True  # the first try committed but its answer was lost with the connection; the retry saw it
    if written:
        log.info("job %s succeeded (attempt %d)", job.id, job.attempts)
        metrics.JOBS.labels("succeeded").inc()
        fire_if_batch_complete(runtime.db, runtime.settings, job.batch)  # this job may have been its last one
    else:
        log.warning("job %s was taken over by another worker before we saved it; our result is dropped", job.id)
        metrics.JOBS.labels("superseded").inc()


def _saved_by_us(gate: "_DatabaseGate", runtime: Runtime, job: JobRecord) -> bool:
    try:
        row = gate.run(lambda s: job_queries.get_job(s, job.id), what=f"reading {job.id}")
    except (SQLAlchemyError, DatabaseUnavailableError):
        return False
    return (row is not None and row.status == "succeeded" and row.worker_host == runtime.worker_id
            and row.attempts == job.attempts)


def _score_within_time_limit(runtime: Runtime, job: JobRecord) -> ScoreResult:
    """Run fetch → frames → score in a helper thread and give up after `job_timeout_s`.

    Celery's time limits do not apply to the threads pool, and a stalled download or a pathological decode
    must not hold a worker slot forever. A thread cannot be killed: one that overruns is left to finish on
    its own (its result is discarded) while the job is failed with kind `time_limit`.
    """
    limit = float(runtime.settings.job_timeout_s)
    future: Future[ScoreResult] = Future()

    def stage() -> None:
        try:
            future.set_result(score_one_job(job, store=runtime.store, engine=runtime.engine, limits=runtime.limits,
                                            find_scored=scored_lookup(runtime.db)))
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting task thread
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


class _InternalError(RetryableError):
    """An unexpected error inside the worker."""

    kind = "internal_error"


def _record_failure(runtime: Runtime, gate: "_DatabaseGate", job: JobRecord, exc: VideoScoreError,
                    requeue: Requeue) -> None:
    log.info("job %s failed: %s: %s", job.id, exc.kind, exc.message)
    try:
        written = gate.run(
            lambda s: job_queries.fail_job(s, job.id, kind=exc.kind, message=exc.message,
                                           worker_host=runtime.worker_id, attempt=job.attempts),
            what=f"failing {job.id}",
        )
    except DatabaseUnavailableError:
        requeue(runtime.retry_policy.delay_s(job.attempts))
    if written:
        metrics.JOBS.labels("failed").inc()
        metrics.FAILURES.labels(exc.kind).inc()
        fire_if_batch_complete(runtime.db, runtime.settings, job.batch)
    else:
        metrics.JOBS.labels("superseded").inc()


def _release(runtime: Runtime, gate: "_DatabaseGate", job: JobRecord, exc: VideoScoreError, requeue: Requeue,
             policy: RetryPolicy, then: Callable[[], None] | None = None) -> None:
    if not policy.should_retry(job.attempts):
        _record_failure(runtime, gate, job, AttemptsExhaustedError(
            f"gave up after {job.attempts} attempts; last error: {exc.kind}: {exc.message}"), requeue)
        return
    delay = policy.delay_s(job.attempts)
    log.warning("job %s attempt %d: %s: %s; retrying in %.1fs", job.id, job.attempts, exc.kind, exc.message, delay)
    try:
        released = gate.run(
            lambda s: job_queries.release_for_retry(s, job.id, kind=exc.kind, message=exc.message,
                                                    worker_host=runtime.worker_id, attempt=job.attempts),
            what=f"releasing {job.id}",
        )
    except DatabaseUnavailableError:
        released = True  # still 'running' under our claim: the re-sent message may re-claim it (see module doc)
    if then is not None:
        then()
    if not released:
        log.warning("job %s was taken over by another worker; not re-sending it", job.id)
        metrics.JOBS.labels("superseded").inc()
        return
    metrics.JOBS.labels("retried").inc()
    requeue(delay)


def _fail_unreadable(gate: "_DatabaseGate", job_id: str, exc: SQLAlchemyError) -> None:
    error = InvalidJobError(f"the job's row cannot be read: {_describe(exc)}")
    log.error("job %s failed: %s: %s", job_id, error.kind, error.message)
    try:
        gate.run(lambda s: job_queries.fail_unclaimable(s, job_id, kind=error.kind, message=error.message),
                 what=f"failing {job_id}")
    except SQLAlchemyError as again:
        log.error("job %s could not be marked failed either (%s); dropping its message", job_id, _describe(again))
        return
    metrics.JOBS.labels("failed").inc()
    metrics.FAILURES.labels(error.kind).inc()


def _shut_down_worker() -> None:
    # SIGTERM is Celery's warm shutdown: other in-flight jobs finish, then the process exits for a restart.
    os.kill(os.getpid(), signal.SIGTERM)


class _DatabaseGate:
    """Runs one unit of work in a transaction, waiting in place while the database is unreachable.

    Unreachable means the statement failed with a connection-level error *and* a `SELECT 1` fails too. If the
    probe answers, the statement is retried twice more and then its error is raised as is: the database is
    up and something about this job's row is wrong (e.g. text that is not valid UTF-8 in SQLite).
    """

    FIRST_DELAY_S = 0.25
    MAX_DELAY_S = 5.0
    ATTEMPTS_WHEN_REACHABLE = 3

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def run(self, work: Callable[[Session], T], *, what: str) -> T:
        wait_s = self.runtime.settings.db_wait_s
        deadline = time.monotonic() + wait_s
        delay = self.FIRST_DELAY_S
        failures_while_reachable = 0
        warned = False
        while True:
            try:
                with self.runtime.db.transaction() as session:
                    return work(session)
            except DB_DOWN as exc:
                if self._reachable():
                    failures_while_reachable += 1
                    if failures_while_reachable >= self.ATTEMPTS_WHEN_REACHABLE:
                        raise
                    time.sleep(0.05 * failures_while_reachable)
                    continue
                if time.monotonic() + delay > deadline:
                    raise DatabaseUnavailableError(
                        f"database unreachable for {wait_s:.0f}s while {what} ({_describe(exc)})"
                    ) from None
                if not warned:
                    log.warning("database unreachable while %s (%s); waiting up to %.0fs", what, _describe(exc),
                                wait_s)
                    warned = True
                time.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(self.MAX_DELAY_S, delay * 2)

    def _reachable(self) -> bool:
        try:
            with self.runtime.db.transaction() as session:
                session.execute(text("SELECT 1"))
            return True
        except SQLAlchemyError:
            return False


def _describe(exc: BaseException) -> str:
    """The driver's own first line (no SQL, no parameters, no connection string)."""
    orig = getattr(exc, "orig", None) or exc
    first = (str(orig).strip().splitlines() or [""])[0]
    return f"{type(orig).__name__}: {first[:300]}"
