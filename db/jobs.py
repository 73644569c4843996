"""Every query on jobs. Job state changes only here, each one a conditional UPDATE so races resolve in SQL.

The state machine: queued → running → succeeded | failed, with running → queued for a retry and
queued → cancelled. A worker *claims* a job before scoring it and *completes* it only while it still holds
the claim, so a redelivered message never scores a job twice.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import JSON, ColumnElement, Table, bindparam, false, func, insert, literal_column, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from videoscore.core.errors import IdempotencyConflict, IdempotencyConflictError, WorkerLostError
from videoscore.core.jobspec import JobRequest
from videoscore.core.names import JOBS_PER_CHUNK, JobStatus
from videoscore.core.variants import DEFAULT_MODEL
from videoscore.db.models import Job, utcnow
from videoscore.db.records import JobRecord, ScoreResult

MAX_ERROR_MESSAGE_CHARS = 4_000
"""Longest error message stored with a job; longer ones are cut."""

_JOBS = cast(Table, Job.__table__)  # the Core table: bulk and hot paths skip the ORM's per-row bookkeeping
_JSON_COLUMNS = frozenset(c.name for c in _JOBS.columns if isinstance(c.type, JSON))
_REQUEST_FIELDS = tuple(JobRequest.model_fields)  # each one a column of the same name
_SAME_JOB_FIELDS = tuple(name for name in _REQUEST_FIELDS if name != "idempotency_key")  # what a key promises
_NULL_RECORD = {f.name: None for f in fields(JobRecord)}


def new_job_id() -> str:
    return os.urandom(16).hex()  # 128 random bits, as uuid4().hex gives, at a fraction of its cost in bulk


def insert_jobs(
    session: Session, requests: Sequence[JobRequest], *, queue: str | Callable[[JobRequest], str]
) -> list[tuple[JobRecord, bool]]:
    """Insert jobs; a request whose idempotency key exists returns the existing job. Returns (job, created).

    Multi-row INSERT … ON CONFLICT (idempotency_key) DO NOTHING: safe under concurrent submits of one key on
    PostgreSQL (the later row is skipped, never an IntegrityError) and fast in bulk; rows whose key already
    existed are then read back. A key repeated within one call names one job. `queue` is a queue name, or a
    function of the request (its model and priority pick the queue).

    A key names one job: a request whose key names a job with other fields (`same_job` differs) raises
    IdempotencyConflictError, listing every such request, and the caller's transaction rolls back.
    """
    # The SDK and the API resolve a job's model (the deployment's default when it names none) in validate_job; a
    # request inserted without that step names no model, and gets the registry's default as it always did.
    requests = [request if request.model else request.model_copy(update={"model": DEFAULT_MODEL})
                for request in requests]
    now = utcnow()
    rows: list[dict[str, Any]] = []
    plan: list[int] = []  # for each request, the index of the row that answers it
    first_with_key: dict[str, int] = {}
    for request in requests:
        key = request.idempotency_key
        if key is not None and key in first_with_key:
            plan.append(first_with_key[key])
            continue
        if key is not None:
            first_with_key[key] = len(rows)
        plan.append(len(rows))
        # A new row: its request's fields, and the state every job starts in; the other columns stay NULL (or
        # their default) until a worker writes them.
        row = {name: getattr(request, name) for name in _REQUEST_FIELDS}
        row.update(id=new_job_id(), tags=dict(request.tags), queue=queue(request) if callable(queue) else queue,
                   status=JobStatus.QUEUED.value, attempts=0, created_at=now)
        rows.append(row)
    connection = session.connection()  # Core, not the ORM: its per-row bookkeeping costs more than the SQL
    inserted: set[str] = set()  # ids of the rows that went in; the others met an existing idempotency key
    for start in range(0, len(rows), JOBS_PER_CHUNK):
        chunk = rows[start:start + JOBS_PER_CHUNK]
        if connection.dialect.name == "postgresql":
            inserted.update(_copy_then_insert(connection, chunk))
        else:
            statement = _insert_skipping_known_keys(session).returning(_JOBS.c.id)
            inserted.update(connection.execute(statement, chunk).scalars())
    skipped_keys = [row["idempotency_key"] for row in rows if row["id"] not in inserted]
    owner = _job_ids_by_idempotency_key(session, skipped_keys)
    earlier = _jobs_by_id(session, list(owner.values()))
    answers: list[tuple[JobRecord, bool]] = []
    for row in rows:
        if row["id"] in inserted:
            answers.append((_record_from_values(row), True))
        else:
            answers.append((JobRecord.from_row(earlier[owner[row["idempotency_key"]]]), False))
    stored = {key: earlier[job_id] for key, job_id in owner.items()}
    conflicts = _conflicts(requests, {key: JobRecord.from_row(row) for key, row in stored.items()})
    if conflicts:
        raise IdempotencyConflictError(conflicts=tuple(conflicts))
    out: list[tuple[JobRecord, bool]] = []
    answered: set[int] = set()
    for index in plan:
        record, created = answers[index]
        out.append((record, created and index not in answered))
        answered.add(index)
    return out


def idempotency_conflicts(session: Session, requests: Sequence[JobRequest]) -> list[IdempotencyConflict]:
    """The requests whose idempotency key names a different job: a stored one, or an earlier request's."""
    keys = list({r.idempotency_key for r in requests if r.idempotency_key is not None})
    owner = _job_ids_by_idempotency_key(session, keys)
    rows = _jobs_by_id(session, list(owner.values()))
    return _conflicts(requests, {key: JobRecord.from_row(rows[job_id]) for key, job_id in owner.items()})


def differing_fields(request: JobRequest, job: JobRequest | JobRecord) -> tuple[str, ...]:
    """The request fields (all but the key) in which `request` asks for another job than `job`, sorted."""
    return tuple(sorted(name for name in _SAME_JOB_FIELDS if getattr(request, name) != getattr(job, name)))


def _conflicts(requests: Sequence[JobRequest], stored: Mapping[str, JobRecord]) -> list[IdempotencyConflict]:
    first: dict[str, JobRequest] = {}
    out: list[IdempotencyConflict] = []
    for index, request in enumerate(requests):
        key = request.idempotency_key
        if key is None:
            continue
        if key in stored:
            job_id: str | None = stored[key].id
            differ = differing_fields(request, stored[key])
        elif key in first:
            job_id, differ = None, differing_fields(request, first[key])
        else:
            first[key] = request
            continue
        if differ:
            out.append(IdempotencyConflict(index, key, job_id, differ))
    return out


def _insert_skipping_known_keys(session: Session):  # type: ignore[no-untyped-def]
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return pg_insert(_JOBS).on_conflict_do_nothing(index_elements=["idempotency_key"])
    if dialect == "sqlite":
        return sqlite_insert(_JOBS).on_conflict_do_nothing(index_elements=["idempotency_key"])
    return insert(_JOBS)


def _copy_then_insert(connection: Connection, rows: list[dict[str, Any]]) -> list[str]:
    """PostgreSQL: COPY the rows into a temporary table, then one INSERT … SELECT … ON CONFLICT DO NOTHING.

    COPY streams rows without per-row statements or parameter parsing, about ten times faster than an
    executemany from Python; the INSERT keeps the idempotency-key semantics and says which rows went in.
    """
    copied = list(rows[0])  # the columns insert_jobs sets; every row has the same
    columns = ", ".join(f'"{c}"' for c in copied)
    connection.exec_driver_sql(
        "CREATE TEMP TABLE IF NOT EXISTS new_jobs (LIKE jobs INCLUDING DEFAULTS) ON COMMIT DELETE ROWS")
    connection.exec_driver_sql("TRUNCATE new_jobs")
    raw = connection.connection.driver_connection
    with raw.cursor() as cursor:  # type: ignore[union-attr]
        with cursor.copy(f"COPY new_jobs ({columns}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row([json.dumps(row[c]) if c in _JSON_COLUMNS else row[c] for c in copied])
    result = connection.exec_driver_sql(
        f"INSERT INTO jobs ({columns}) SELECT {columns} FROM new_jobs "
        "ON CONFLICT (idempotency_key) DO NOTHING RETURNING id")
    return list(result.scalars())


def _record_from_values(values: dict[str, Any]) -> JobRecord:
    # What JobRecord(**fields) builds, without a frozen dataclass's per-field __setattr__ (1/3 of a bulk insert)
    record = object.__new__(JobRecord)
    record.__dict__.update(_NULL_RECORD)
    record.__dict__.update(values)
    return record


def _job_ids_by_idempotency_key(session: Session, keys: list[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for start in range(0, len(keys), JOBS_PER_CHUNK):
        chunk = keys[start:start + JOBS_PER_CHUNK]
        query = select(Job.idempotency_key, Job.id).where(Job.idempotency_key.in_(chunk))
        found.update({cast(str, key): job_id for key, job_id in session.execute(query)})  # IN (…) skips NULL
    return found


def _jobs_by_id(session: Session, job_ids: list[str]) -> dict[str, Job]:
    found: dict[str, Job] = {}
    for start in range(0, len(job_ids), JOBS_PER_CHUNK):
        chunk = job_ids[start:start + JOBS_PER_CHUNK]
        found.update({row.id: row for row in session.scalars(select(Job).where(Job.id.in_(chunk)))})
    return found


def mark_enqueued(session: Session, job_ids: Sequence[str]) -> None:
    """Record that the broker accepted these jobs' messages (the reaper looks for queued jobs without it).

    Only rows still queued: in a bulk submit, workers may already have finished the first jobs of a chunk,
    and a finished row must not be written again (nothing reads enqueued_at once a job left the queue).
    """
    now = utcnow()
    postgres = session.get_bind().dialect.name == "postgresql"
    for start in range(0, len(job_ids), JOBS_PER_CHUNK):
        chunk = list(job_ids[start:start + JOBS_PER_CHUNK])
        if postgres:  # one array parameter: psycopg parses a statement of 5,000 placeholders slowly
            session.connection().exec_driver_sql(
                "UPDATE jobs SET enqueued_at = %s WHERE id = ANY(%s) AND status = 'queued'", (now, chunk))
        else:
            session.execute(update(Job).where(Job.id.in_(chunk), Job.status == JobStatus.QUEUED)
                            .values(enqueued_at=now).execution_options(synchronize_session=False))


def get_job(session: Session, job_id: str) -> JobRecord | None:
    row = session.get(Job, job_id)
    return JobRecord.from_row(row) if row else None


def get_jobs(session: Session, job_ids: Sequence[str]) -> list[JobRecord]:
    rows = session.scalars(select(Job).where(Job.id.in_(job_ids))).all()
    by_id = {row.id: row for row in rows}
    return [JobRecord.from_row(by_id[j]) for j in job_ids if j in by_id]


def list_jobs(
    session: Session,
    *,
    batch: str | None = None,
    status: str | None = None,
    model: str | None = None,
    since: datetime | None = None,
    limit: int = 1000,
) -> list[JobRecord]:
    query = select(Job).order_by(Job.created_at, Job.id).limit(limit)
    if batch is not None:
        query = query.where(Job.batch == batch)
    if status is not None:
        query = query.where(Job.status == status)
    if model is not None:
        query = query.where(Job.model == model)
    if since is not None:
        query = query.where(Job.created_at >= since)
    return [JobRecord.from_row(row) for row in session.scalars(query)]


def count_by_status(session: Session, *, batch: str | None = None) -> dict[str, int]:
    query = select(Job.status, func.count()).group_by(Job.status)
    if batch is not None:
        query = query.where(Job.batch == batch)
    return {status: count for status, count in session.execute(query)}


def claim_job(
    session: Session, job_id: str, *, worker_host: str, lease: timedelta, reclaim_own: bool = False
) -> JobRecord | None:
    """Move a job to running for this worker, or return None if it is not ours to run.

    Claimable: queued jobs, and running jobs whose holder stopped heartbeating for longer than `lease`
    (its worker died; the broker redelivered the message). Succeeded, failed and cancelled jobs are not.
    With `reclaim_own`, a running job this same `worker_host` holds is claimable too: the worker gave up an
    earlier attempt without recording its end (the database was unreachable) and re-sent the message. Only
    pass it when no thread of this worker is still working on the job (worker.runtime's in-flight holds).
    Every claim counts an attempt; the attempt number is the claim's fencing token (see `complete_job`).
    """
    now = utcnow()
    params = {"claim_id": job_id, "claim_now": now, "claim_stale": now - lease, "claim_host": worker_host}
    # One round trip: the UPDATE hands back the claimed row (RETURNING; PostgreSQL, and SQLite >= 3.35).
    row = session.connection().execute(_CLAIM_OWN if reclaim_own else _CLAIM, params).one_or_none()
    return None if row is None else _record_from_values(dict(row._mapping))


def _claim_statement(*, reclaim_own: bool) -> Any:
    """The claim, built once: a Core UPDATE whose values are all parameters (a quarter of a claim's CPU went on
    building and coercing the expression per call), run on the session's connection (no ORM execution)."""
    jobs = _JOBS
    running = jobs.c.status == JobStatus.RUNNING.value
    claimable = or_(
        jobs.c.status == JobStatus.QUEUED.value,
        running & (jobs.c.heartbeat_at < bindparam("claim_stale", type_=jobs.c.heartbeat_at.type)),
        running & (jobs.c.worker_host == bindparam("claim_host")) if reclaim_own else false(),
    )
    now = bindparam("claim_now", type_=jobs.c.started_at.type)
    return (
        update(jobs)
        .where(jobs.c.id == bindparam("claim_id"), claimable)
        .values(status=JobStatus.RUNNING.value, attempts=jobs.c.attempts + 1, started_at=now, heartbeat_at=now,
                worker_host=bindparam("claim_host"))
        .returning(*(jobs.c[f.name] for f in fields(JobRecord)))
    )


_CLAIM = _claim_statement(reclaim_own=False)
_CLAIM_OWN = _claim_statement(reclaim_own=True)


def heartbeat(session: Session, job_ids: Sequence[str], *, worker_host: str) -> None:
    session.execute(
        update(Job)
        .where(Job.id.in_(job_ids), Job.status == JobStatus.RUNNING, Job.worker_host == worker_host)
        .values(heartbeat_at=utcnow())
    )


def complete_job(session: Session, job_id: str, result: ScoreResult, *, worker_host: str, attempt: int) -> bool:
    """Write the scores if this worker still holds the job's claim; False means someone else finished it."""
    values = asdict(result)
    values.update(values.pop("scores"))
    return _finish(session, job_id, worker_host, attempt, status=JobStatus.SUCCEEDED, **values)


def fail_job(session: Session, job_id: str, *, kind: str, message: str, worker_host: str, attempt: int) -> bool:
    """Record a permanent failure with its reason, if this worker still holds the claim."""
    return _finish(
        session, job_id, worker_host, attempt, status=JobStatus.FAILED, error_kind=kind,
        error_message=message[:MAX_ERROR_MESSAGE_CHARS],
    )


def release_for_retry(
    session: Session, job_id: str, *, kind: str, message: str, worker_host: str, attempt: int
) -> bool:
    """Hand a job back to the queue after a transient error, keeping the reason for the record."""
    result = session.execute(
        update(Job)
        .where(_held_by(job_id, worker_host, attempt))
        .values(
            status=JobStatus.QUEUED,
            error_kind=kind,
            error_message=message[:MAX_ERROR_MESSAGE_CHARS],
            heartbeat_at=None,
            enqueued_at=utcnow(),  # the retry message is sent right after this commit
        )
    )
    return result.rowcount == 1  # type: ignore[attr-defined]


def fail_unclaimable(session: Session, job_id: str, *, kind: str, message: str) -> bool:
    """Fail a job that never reached a worker's claim (e.g. its message was malformed or its attempts ran out)."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]))
        .values(status=JobStatus.FAILED, error_kind=kind, error_message=message[:MAX_ERROR_MESSAGE_CHARS],
                finished_at=utcnow())
    )
    return result.rowcount == 1  # type: ignore[attr-defined]


def cancel_job(session: Session, job_id: str) -> bool:
    """Cancel a job that no worker has started yet."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.QUEUED, Job.attempts == 0)
        .values(status=JobStatus.CANCELLED, finished_at=utcnow())
    )
    return result.rowcount == 1  # type: ignore[attr-defined]


@dataclass(frozen=True)
class CancelOutcome:
    """What `cancel_queued` did: the jobs it cancelled (id → batch), and how many matching jobs were running."""

    cancelled: dict[str, str | None]
    running: int


def cancel_queued(
    session: Session, *, job_ids: Sequence[str] = (), batch: str | None = None, tags: Mapping[str, str] | None = None
) -> CancelOutcome:
    """Cancel every queued job among `job_ids`, or of `batch` and carrying all of `tags`, in one UPDATE.

    Queued jobs include those waiting for a retry's re-send (attempts > 0): a cancelled job is never claimed
    (`claim_job`), re-sent by the reaper (`requeue_orphans`) or by the reconciler (`queued_sent_before`), all of
    which take only queued rows, so its message, wherever it is, is skipped when delivered. Running jobs are left
    to finish and only counted: a worker holds them, and its result is the job's.
    """
    if not (job_ids or batch is not None or tags):
        raise ValueError("cancel what? give job ids, a batch or tags")
    matching: list[ColumnElement[bool]] = []
    if job_ids:
        matching.append(_JOBS.c.id.in_(list(job_ids)))
    if batch is not None:
        matching.append(_JOBS.c.batch == batch)
    for key, value in (tags or {}).items():
        matching.append(_JOBS.c.tags[key].as_string() == value)
    rows = session.execute(
        update(_JOBS)
        .where(_JOBS.c.status == JobStatus.QUEUED, *matching)
        .values(status=JobStatus.CANCELLED, finished_at=utcnow())
        .returning(_JOBS.c.id, _JOBS.c.batch)
    ).all()
    running = session.scalar(select(func.count()).select_from(_JOBS).where(_JOBS.c.status == JobStatus.RUNNING,
                                                                             *matching))
    return CancelOutcome(cancelled={job_id: job_batch for job_id, job_batch in rows}, running=running or 0)


def requeue_orphans(
    session: Session, *, lease: timedelta, unsent_for: timedelta, limit: int = 500
) -> list[JobRecord]:
    """Take the jobs nobody will run unless their message is sent again, and mark them queued and sent.

    Orphans are running jobs whose worker stopped heartbeating for longer than `lease` (they go back to
    queued with error kind `worker_lost`, the last reason should their attempts run out) and queued jobs whose
    message was never confirmed sent `unsent_for` after creation. The caller sends their messages inside this
    same transaction, before it commits: if sending fails the rollback leaves the rows to the next round, and
    a commit lost after a send only duplicates a message, which the claim makes harmless. Rows are locked with
    SKIP LOCKED on PostgreSQL, so concurrent reapers on many workers never take (and re-send) the same job.
    """
    now = utcnow()
    orphaned = (Job.status == JobStatus.RUNNING) & (Job.heartbeat_at < now - lease)
    unsent = (Job.status == JobStatus.QUEUED) & Job.enqueued_at.is_(None) & (Job.created_at < now - unsent_for)
    rows = session.scalars(
        select(Job).where(or_(orphaned, unsent)).order_by(Job.created_at).limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    for row in rows:
        if row.status == JobStatus.RUNNING:
            row.status = JobStatus.QUEUED
            row.error_kind = WorkerLostError.kind
            row.error_message = f"worker {row.worker_host} stopped heartbeating during attempt {row.attempts}"
            row.heartbeat_at = None
        row.enqueued_at = now
    session.flush()
    return [JobRecord.from_row(row) for row in rows]


def _held_by(job_id: str, worker_host: str, attempt: int):  # type: ignore[no-untyped-def]
    return (
        (Job.id == job_id)
        & (Job.status == JobStatus.RUNNING)
        & (Job.worker_host == worker_host)
        & (Job.attempts == attempt)
    )


BATCH_LOCK_CLASS = 0x56534257
"""PostgreSQL advisory-lock class (first key) of a batch's webhook lock; the second key is hashtext(batch name).

A job's end holds it shared until its transaction commits (`_finish`); registering a webhook and then claiming
it takes it exclusively (db.queries.claim_batch_webhook), so that claim waits for the ends in flight."""


def batch_lock(batch: ColumnElement[Any], *, shared: bool) -> ColumnElement[Any]:
    """The transaction-level advisory lock of a batch's webhook, as an SQL expression (PostgreSQL only)."""
    lock = func.pg_advisory_xact_lock_shared if shared else func.pg_advisory_xact_lock
    return lock(literal_column(str(BATCH_LOCK_CLASS)), func.hashtext(batch))


def _finish(
    session: Session, job_id: str, worker_host: str, attempt: int, *, status: JobStatus, **values: object
) -> bool:
    params = {"status": status.value, "finished_at": utcnow(), **values,
              "held_id": job_id, "held_by": worker_host, "held_attempt": attempt}
    connection = session.connection()
    if connection.dialect.name != "postgresql":
        return connection.execute(_FINISH, params).rowcount == 1
    # PostgreSQL: the row's end also takes its batch's webhook lock, shared, until this transaction commits
    # (NULL batch: no lock). A webhook check later in this transaction (db.queries.batch_webhook_due) then either
    # sees a webhook registered before it, or the registration's claim waits for this commit and sees the job
    # finished: the batch's last end and a webhook registered at that moment cannot miss each other.
    return len(connection.execute(_FINISH_AND_LOCK, params).all()) == 1


# A Core UPDATE whose SET columns come from the parameters: compiled once per column set and cached, where an
# ORM update with .values() re-coerces ~20 literals per call (a quarter of a fast worker's CPU in the soak); built
# once, so that not even the WHERE clause is built per call.
_FINISH = update(_JOBS).where(
    _JOBS.c.id == bindparam("held_id"),
    _JOBS.c.status == JobStatus.RUNNING.value,
    _JOBS.c.worker_host == bindparam("held_by"),
    _JOBS.c.attempts == bindparam("held_attempt"),
)
_FINISH_AND_LOCK = _FINISH.returning(batch_lock(_JOBS.c.batch, shared=True))
