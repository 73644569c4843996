"""Read-side queries for researchers and the API: filters, keyset pages, batch summaries, aggregates, dedupe
look-ups and the batch-webhook claim. State changes of jobs stay in db.jobs.

Percentiles are PostgreSQL's `percentile_cont` there and the same linear interpolation in Python on SQLite
(which has no such aggregate); a test checks that both give the same numbers.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal, cast

from sqlalchemy import (
    Boolean,
    ColumnElement,
    Select,
    Table,
    and_,
    bindparam,
    exists,
    func,
    literal,
    or_,
    select,
    type_coerce,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import InstrumentedAttribute, Session

from videoscore.core.names import JobStatus
from videoscore.core.variants import ASPECTS
from videoscore.db.jobs import JOBS_PER_CHUNK, batch_lock
from videoscore.db.models import Batch, Job, utcnow
from videoscore.db.records import JobRecord, ScoreResult

PERCENTILES = (0.1, 0.5, 0.9)
UNFINISHED = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)


class BadCursorError(ValueError):
    """The pagination cursor is not one this server handed out."""


class tags_contain(ColumnElement[bool]):  # noqa: N801 (an SQL function's name, as sqlalchemy's are)
    """`column` (a JSON object) holds every key: value of `wanted`.

    PostgreSQL: one containment test, `tags @> '{"k": "v", …}'`, which the GIN index on jobs.tags answers
    (migration 0004); elsewhere one JSON lookup per key. The SQL spells out the keys, so it is never cached.
    """

    inherit_cache = False
    type = Boolean()

    def __init__(self, column: ColumnElement[Any] | InstrumentedAttribute[Any], wanted: dict[str, str]) -> None:
        self.column = column
        self.wanted = dict(wanted)


@compiles(tags_contain)
def _tags_contain_by_key(element: tags_contain, compiler: Any, **kw: Any) -> str:
    return str(compiler.process(
        and_(*(element.column[key].as_string() == value for key, value in element.wanted.items())).self_group(),
        **kw))


@compiles(tags_contain, "postgresql")
def _tags_contain_jsonb(element: tags_contain, compiler: Any, **kw: Any) -> str:
    return str(compiler.process(type_coerce(element.column, JSONB).contains(element.wanted), **kw))


@dataclass(frozen=True)
class JobFilter:
    """What to select: every field is optional, and all given ones must hold."""

    batch: str | None = None
    model: str | None = None
    status: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    since: datetime | None = None  # created at or after
    until: datetime | None = None  # created before
    min_scores: dict[str, float] = field(default_factory=dict)  # aspect → lowest accepted score
    max_scores: dict[str, float] = field(default_factory=dict)  # aspect → highest accepted score

    def __post_init__(self) -> None:
        for aspect in (*self.min_scores, *self.max_scores):
            if aspect not in ASPECTS:
                raise ValueError(f"unknown aspect {aspect!r}; expected one of {', '.join(ASPECTS)}")

    def apply(self, query: Select[Any]) -> Select[Any]:
        if self.batch is not None:
            query = query.where(Job.batch == self.batch)
        if self.model is not None:
            query = query.where(Job.model == self.model)
        if self.status is not None:
            query = query.where(Job.status == self.status)
        if self.tags:
            query = query.where(tags_contain(Job.tags, self.tags))
        if self.since is not None:
            query = query.where(Job.created_at >= _aware(self.since))
        if self.until is not None:
            query = query.where(Job.created_at < _aware(self.until))
        for aspect, low in self.min_scores.items():
            query = query.where(getattr(Job, aspect) >= low)
        for aspect, high in self.max_scores.items():
            query = query.where(getattr(Job, aspect) <= high)
        return query


# --- pages -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Page:
    jobs: list[JobRecord]
    next_cursor: str | None  # pass back to get the following page; None on the last one


def search_jobs(session: Session, where: JobFilter, *, limit: int = 100, cursor: str | None = None) -> Page:
    """Jobs in creation order, `limit` at a time, by keyset: stable under inserts, cheap at any depth."""
    query = where.apply(select(Job)).order_by(Job.created_at, Job.id).limit(limit + 1)
    if cursor is not None:
        after_time, after_id = decode_cursor(cursor)
        query = query.where(or_(Job.created_at > after_time, and_(Job.created_at == after_time, Job.id > after_id)))
    rows = list(session.scalars(query))
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = encode_cursor(rows[-1].created_at, rows[-1].id) if more and rows else None
    return Page([JobRecord.from_row(r) for r in rows], next_cursor)


def iter_jobs(session: Session, where: JobFilter, *, chunk: int = JOBS_PER_CHUNK) -> Iterator[JobRecord]:
    """Every matching job, in creation order, fetched `chunk` rows at a time (for exports)."""
    cursor: str | None = None
    while True:
        page = search_jobs(session, where, limit=chunk, cursor=cursor)
        yield from page.jobs
        if page.next_cursor is None:
            return
        cursor = page.next_cursor


def encode_cursor(created_at: datetime, job_id: str) -> str:
    raw = json.dumps([_aware(created_at).isoformat(), job_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        when, job_id = json.loads(raw)
        parsed = datetime.fromisoformat(when)
        if not isinstance(job_id, str) or len(job_id) > 32 or parsed.tzinfo is None:
            raise ValueError
        return parsed, job_id
    except (ValueError, TypeError, UnicodeDecodeError):
        raise BadCursorError(f"cursor {cursor[:60]!r} is not a cursor this server handed out") from None


# --- batches and aggregates ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AspectStats:
    mean: float | None
    p10: float | None
    p50: float | None
    p90: float | None


@dataclass(frozen=True)
class GroupStats:
    """Scores of one group (a batch or a model): succeeded jobs only."""

    group: str | None
    scored: int
    stand_in: bool  # True when any score in the group came from an untrained stand-in model
    aspects: dict[str, AspectStats]


@dataclass(frozen=True)
class BatchSummary:
    batch: str
    total: int
    counts: dict[str, int]
    finished: int
    stats: GroupStats
    webhook_url: str | None
    webhook_sent_at: datetime | None
    webhook_delivered_at: datetime | None
    webhook_attempts: int
    webhook_last_error: str | None
    owner_token_hash: str | None = None  # the API token that created the batch (its hash); None: the operator's

    @property
    def progress(self) -> float:
        return self.finished / self.total if self.total else 0.0


def batch_summary(session: Session, batch: str) -> BatchSummary | None:
    """Counts by status, progress and score statistics of a batch; None when no job carries that name."""
    counts = {s: n for s, n in session.execute(
        select(Job.status, func.count()).where(Job.batch == batch).group_by(Job.status))}
    if not counts:
        return None
    total = sum(counts.values())
    [stats] = aggregate(session, "batch", JobFilter(batch=batch)) or [GroupStats(batch, 0, False, _empty())]
    row = session.get(Batch, batch)
    return BatchSummary(
        batch=batch, total=total, counts=counts,
        finished=sum(n for s, n in counts.items() if s not in UNFINISHED), stats=stats,
        webhook_url=row.webhook_url if row else None, webhook_sent_at=row.webhook_sent_at if row else None,
        webhook_delivered_at=row.webhook_delivered_at if row else None,
        webhook_attempts=row.webhook_attempts if row else 0, webhook_last_error=row.webhook_last_error if row else None,
        owner_token_hash=row.owner_token_hash if row else None,
    )


def aggregate(session: Session, group_by: Literal["batch", "model"],
              where: JobFilter | None = None) -> list[GroupStats]:
    """Per batch or per model: how many succeeded jobs, and mean, p10, p50, p90 of each aspect."""
    where = where or JobFilter()
    key = getattr(Job, group_by)
    scored = JobFilter(**{**where.__dict__, "status": JobStatus.SUCCEEDED.value})
    if session.get_bind().dialect.name == "postgresql":
        return _aggregate_in_sql(session, key, scored)
    return _aggregate_in_python(session, key, scored)


def _aggregate_in_sql(session: Session, key: Any, where: JobFilter) -> list[GroupStats]:
    columns: list[Any] = [key, func.count(), func.bool_or(Job.stand_in_model)]
    for aspect in ASPECTS:
        column = getattr(Job, aspect)
        columns.append(func.avg(column))
        columns += [func.percentile_cont(p).within_group(column) for p in PERCENTILES]
    query = where.apply(select(*columns)).group_by(key).order_by(key)
    out = []
    for row in session.execute(query):
        values = list(row)
        aspects = {}
        for i, aspect in enumerate(ASPECTS):
            mean, p10, p50, p90 = (None if v is None else float(v) for v in values[3 + 4 * i: 7 + 4 * i])
            aspects[aspect] = AspectStats(mean, p10, p50, p90)
        out.append(GroupStats(values[0], int(values[1]), bool(values[2]), aspects))
    return out


def _aggregate_in_python(session: Session, key: Any, where: JobFilter) -> list[GroupStats]:
    columns = [key, Job.stand_in_model, *(getattr(Job, a) for a in ASPECTS)]
    groups: dict[Any, list[Sequence[Any]]] = {}
    for row in session.execute(where.apply(select(*columns))):
        groups.setdefault(row[0], []).append(row)
    out = []
    for name in sorted(groups, key=lambda g: (g is None, g or "")):
        rows = groups[name]
        aspects = {}
        for i, aspect in enumerate(ASPECTS):
            values = sorted(r[2 + i] for r in rows if r[2 + i] is not None)
            mean = math.fsum(values) / len(values) if values else None
            aspects[aspect] = AspectStats(mean, *(percentile_cont(values, p) for p in PERCENTILES))
        out.append(GroupStats(name, len(rows), any(bool(r[1]) for r in rows), aspects))
    return out


def percentile_cont(ordered: Sequence[float], fraction: float) -> float | None:
    """PostgreSQL's percentile_cont: linear interpolation between the two nearest ranks of sorted values."""
    if not ordered:
        return None
    position = fraction * (len(ordered) - 1)
    lower = math.floor(position)
    upper = min(lower + 1, len(ordered) - 1)
    return ordered[lower] + (position - lower) * (ordered[upper] - ordered[lower])


def _empty() -> dict[str, AspectStats]:
    return {a: AspectStats(None, None, None, None) for a in ASPECTS}


# --- content dedupe ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ContentKey:
    """What makes two jobs' scores interchangeable: same bytes, prompt, model, weights and frame count."""

    video_etag: str
    prompt: str
    model: str
    model_revision: str
    num_frames: int  # frames the worker would sample (the variant's count, or the override)


def find_scored_duplicate(session: Session, key: ContentKey) -> ScoreResult | None:
    """Scores of an earlier succeeded job on the same content, copied, with `deduplicated_from` set.

    The frame-count rule: the model card samples min(total, N) frames of a video, so an earlier job matches
    when it sampled exactly N frames, or all of the video's frames and the video has no more than N.
    """
    row = session.connection().execute(_SCORED_DUPLICATE, {
        "dup_etag": key.video_etag, "dup_model": key.model, "dup_revision": key.model_revision,
        "dup_prompt": key.prompt, "dup_frames": key.num_frames,
    }).first()
    if row is None:
        return None
    return ScoreResult(
        scores={a: getattr(row, a) for a in ASPECTS},
        model_revision=row.model_revision or key.model_revision, stand_in_model=bool(row.stand_in_model),
        num_frames=row.num_frames or 0, frame_indices=list(row.frame_indices or []), video_etag=row.video_etag,
        video_bytes=row.video_bytes or 0, video_total_frames=row.video_total_frames or 0,
        video_fps=row.video_fps or 0.0, video_duration_s=row.video_duration_s or 0.0,
        video_width=row.video_width or 0, video_height=row.video_height or 0,
        download_s=0.0, decode_s=0.0, preprocess_s=0.0, forward_s=0.0,
        deduplicated_from=row.deduplicated_from or row.id,
    )


def _scored_duplicate_query() -> Select[Any]:
    """The dedupe look-up, built once (Core, the columns a ScoreResult takes; index ix_jobs_dedupe)."""
    jobs = cast(Table, Job.__table__)
    frames = bindparam("dup_frames", type_=jobs.c.num_frames.type)
    same_frames = or_(jobs.c.num_frames == frames,
                      and_(jobs.c.num_frames == jobs.c.video_total_frames, jobs.c.video_total_frames <= frames))
    columns = ["id", "deduplicated_from", *ASPECTS, "model_revision", "stand_in_model", "num_frames",
               "frame_indices", "video_etag", "video_bytes", "video_total_frames", "video_fps", "video_duration_s",
               "video_width", "video_height"]
    return (
        select(*(jobs.c[name] for name in columns))
        .where(jobs.c.video_etag == bindparam("dup_etag"), jobs.c.model == bindparam("dup_model"),
               jobs.c.status == JobStatus.SUCCEEDED.value, jobs.c.model_revision == bindparam("dup_revision"),
               jobs.c.prompt == bindparam("dup_prompt"), same_frames)
        .order_by(jobs.c.finished_at)
        .limit(1)
    )


_SCORED_DUPLICATE = _scored_duplicate_query()


# --- batch owners and webhooks -------------------------------------------------------------------------------


def claim_batch(session: Session, batch: str, owner: str) -> bool:
    """Make `batch` belong to `owner` (an API token's hash) if it is nobody's yet; True if it is `owner`'s.

    Nobody's: no row here and no job named after it. A batch with jobs but no row was made through the SDK or
    the CLI, or before batches had owners: the operator's, as a row without an owner is. Of concurrent claims
    of a new name one inserts the row (… ON CONFLICT DO NOTHING) and the others read its owner.
    """
    found = session.execute(select(Batch.owner_token_hash).where(Batch.name == batch)).first()
    if found is None:
        if session.scalar(select(exists().where(Job.batch == batch))):
            return False
        session.execute(_insert_batch_if_new(session).values(name=batch, created_at=utcnow(), webhook_attempts=0,
                                                             owner_token_hash=owner))
        found = session.execute(select(Batch.owner_token_hash).where(Batch.name == batch)).first()
    return found is not None and found[0] is not None and found[0] == owner


def _insert_batch_if_new(session: Session) -> Any:
    table = cast(Table, Batch.__table__)
    if session.get_bind().dialect.name == "postgresql":
        return pg_insert(table).on_conflict_do_nothing(index_elements=["name"])
    return sqlite_insert(table).on_conflict_do_nothing(index_elements=["name"])


@dataclass(frozen=True)
class BatchWebhook:
    """A batch's row: its owner and its webhook (url None: none registered)."""

    batch: str
    owner_token_hash: str | None
    url: str | None
    sent_at: datetime | None
    delivered_at: datetime | None
    attempts: int
    last_error: str | None


def batch_webhook(session: Session, batch: str) -> BatchWebhook | None:
    """The batch's owner and webhook, whether or not it has jobs yet; None when it has no row."""
    row = session.get(Batch, batch)
    if row is None:
        return None
    return BatchWebhook(batch=row.name, owner_token_hash=row.owner_token_hash, url=row.webhook_url,
                        sent_at=row.webhook_sent_at, delivered_at=row.webhook_delivered_at,
                        attempts=row.webhook_attempts, last_error=row.webhook_last_error)


def set_batch_webhook(session: Session, batch: str, url: str) -> None:
    """Register (or replace, until it has fired) the URL called once when `batch` completes."""
    row = session.get(Batch, batch)
    if row is None:
        session.add(Batch(name=batch, created_at=utcnow(), webhook_url=url, webhook_attempts=0))
    elif row.webhook_sent_at is None:
        row.webhook_url = url
    session.flush()


def batch_webhook_due(session: Session, batch: str) -> bool:
    """Whether `batch` has a webhook that has not fired yet: one primary-key look-up.

    A worker asks this in the transaction that ends a job of the batch, after the job's UPDATE (db.jobs._finish),
    and claims the webhook after that commit only if the answer is yes, so a batch without a webhook costs its
    jobs no transaction of their own. Nothing is missed: a webhook registered too late for this look-up to see
    is claimed by its registration (`claim_batch_webhook`, which waits for this transaction on PostgreSQL; on
    SQLite the registration's write cannot commit while this transaction holds the write lock).
    """
    return bool(session.connection().execute(_WEBHOOK_DUE, {"due_batch": batch}).scalar())


_BATCHES = cast(Table, Batch.__table__)
_WEBHOOK_DUE = select(exists().where(_BATCHES.c.name == bindparam("due_batch"), _BATCHES.c.webhook_url.is_not(None),
                                     _BATCHES.c.webhook_sent_at.is_(None)))


def claim_batch_webhook(session: Session, batch: str, *, at: datetime | None = None,
                        wait_for_ends: bool = True) -> str | None:
    """If `batch` has a webhook, has not fired it, and no job of it is queued or running: claim it.

    One conditional UPDATE (… WHERE webhook_sent_at IS NULL AND NOT EXISTS unfinished jobs), so of the
    workers that finish a batch's last jobs at the same moment exactly one gets the URL back; the others
    get None. Call it after the caller's own job outcome is committed.

    `at` stamps the claim; a caller that runs the claim again after losing the answer to its COMMIT (a dead
    connection, db.session.Database.run) passes the same `at` and gets the URL back if its first run won.
    `wait_for_ends` (PostgreSQL): first wait, on the batch's advisory lock, for the transactions that are ending
    a job of the batch right now (db.jobs._finish holds it shared until commit), so that their jobs count as
    finished here. Needed after registering a webhook (those jobs' own look-ups may have missed it); a worker
    whose job end saw the webhook due (`batch_webhook_due`) claims without waiting.
    """
    at = at or utcnow()
    if wait_for_ends and session.get_bind().dialect.name == "postgresql":
        session.execute(select(batch_lock(literal(batch), shared=False)))
    unfinished = exists().where(Job.batch == batch, Job.status.in_(UNFINISHED))
    claimable = and_(Batch.webhook_sent_at.is_(None), ~unfinished, exists().where(Job.batch == batch))
    return session.execute(
        update(Batch)
        .where(Batch.name == batch, Batch.webhook_url.is_not(None), or_(claimable, Batch.webhook_sent_at == at))
        .values(webhook_sent_at=at)
        .returning(Batch.webhook_url)
        .execution_options(synchronize_session=False)
    ).scalar_one_or_none()


def record_webhook_delivery(session: Session, batch: str, *, attempts: int, error: str | None) -> None:
    session.execute(
        update(Batch).where(Batch.name == batch).values(
            webhook_attempts=attempts,
            webhook_last_error=error[:2000] if error else None,
            webhook_delivered_at=None if error else utcnow(),
        )
    )


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)
