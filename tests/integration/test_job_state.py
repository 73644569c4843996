"""The job state machine in the database, on SQLite and PostgreSQL: who may run a job, and who may finish it."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update

from videoscore.core.jobspec import JobRequest
from videoscore.core.names import JobStatus
from videoscore.db import jobs
from videoscore.db.migrate import current_revision
from videoscore.db.models import Job, utcnow
from videoscore.db.records import ScoreResult
from videoscore.db.session import Database

LEASE = timedelta(seconds=60)


def _request(**fields: object) -> JobRequest:
    return JobRequest(**{"video_uri": "s3://bucket/video.mp4", "prompt": "a cat", **fields})  # type: ignore[arg-type]


def _result() -> ScoreResult:
    return ScoreResult(
        scores={"visual_quality": 2.5, "temporal_consistency": 2.6, "dynamic_degree": 2.7,
                "text_to_video_alignment": 2.8, "factual_consistency": 2.9},
        model_revision="abc", stand_in_model=True, num_frames=16, frame_indices=list(range(16)), video_etag="e",
        video_bytes=10, video_total_frames=16, video_fps=24.0, video_duration_s=0.6, video_width=32,
        video_height=32, download_s=0.1, decode_s=0.1, preprocess_s=0.1, forward_s=0.1,
    )


def _insert_one(db: Database, **fields: object) -> str:
    with db.transaction() as s:
        [(job, created)] = jobs.insert_jobs(s, [_request(**fields)], queue="q")
    assert created
    return job.id


def test_migrations_bring_an_empty_database_to_head(database_url: str) -> None:
    from alembic.script import ScriptDirectory

    from videoscore.db.migrate import alembic_config

    head = ScriptDirectory.from_config(alembic_config(database_url)).get_current_head()
    assert head is not None and current_revision(database_url) == head


def test_same_idempotency_key_returns_the_same_job(database_url: str) -> None:
    db = Database(database_url)
    first = _insert_one(db, idempotency_key="k-1")
    with db.transaction() as s:
        [(again, created)] = jobs.insert_jobs(s, [_request(idempotency_key="k-1")], queue="q")
    assert (again.id, created) == (first, False)


def test_a_job_is_claimed_by_one_delivery_only(database_url: str) -> None:
    db = Database(database_url)
    job_id = _insert_one(db)
    with db.transaction() as s:
        first = jobs.claim_job(s, job_id, worker_host="w1", lease=LEASE)
    with db.transaction() as s:
        second = jobs.claim_job(s, job_id, worker_host="w2", lease=LEASE)
    assert first is not None and first.status == JobStatus.RUNNING and first.attempts == 1
    assert second is None


def test_a_succeeded_job_is_not_scored_again_when_redelivered(database_url: str) -> None:
    db = Database(database_url)
    job_id = _insert_one(db)
    with db.transaction() as s:
        claimed = jobs.claim_job(s, job_id, worker_host="w1", lease=LEASE)
        assert claimed is not None
        assert jobs.complete_job(s, job_id, _result(), worker_host="w1", attempt=claimed.attempts)
    with db.transaction() as s:
        assert jobs.claim_job(s, job_id, worker_host="w2", lease=timedelta(0)) is None
        record = jobs.get_job(s, job_id)
    assert record is not None and record.status == JobStatus.SUCCEEDED
    assert record.scores == _result().scores and record.frame_indices == list(range(16))


def test_a_dead_workers_job_is_taken_over_and_its_late_result_is_dropped(database_url: str) -> None:
    db = Database(database_url)
    job_id = _insert_one(db)
    with db.transaction() as s:
        old = jobs.claim_job(s, job_id, worker_host="w1", lease=LEASE)
    with db.transaction() as s:  # w1 stops heartbeating; once its lease runs out, w2 may take the job
        new = jobs.claim_job(s, job_id, worker_host="w2", lease=timedelta(seconds=-1))
    assert old is not None and new is not None and new.attempts == 2
    with db.transaction() as s:
        assert not jobs.complete_job(s, job_id, _result(), worker_host="w1", attempt=old.attempts)
        assert jobs.complete_job(s, job_id, _result(), worker_host="w2", attempt=new.attempts)


def test_a_transient_failure_returns_the_job_to_the_queue_with_its_reason(database_url: str) -> None:
    db = Database(database_url)
    job_id = _insert_one(db)
    with db.transaction() as s:
        claimed = jobs.claim_job(s, job_id, worker_host="w1", lease=LEASE)
        assert claimed is not None
        assert jobs.release_for_retry(s, job_id, kind="storage_unavailable", message="503", worker_host="w1",
                                      attempt=1)
    with db.transaction() as s:
        again = jobs.claim_job(s, job_id, worker_host="w1", lease=LEASE)
    assert again is not None and again.attempts == 2 and again.error_kind == "storage_unavailable"


def test_a_permanent_failure_is_recorded_with_kind_and_message(database_url: str) -> None:
    db = Database(database_url)
    job_id = _insert_one(db)
    with db.transaction() as s:
        jobs.claim_job(s, job_id, worker_host="w1", lease=LEASE)
        assert jobs.fail_job(s, job_id, kind="video_not_found", message="s3://b/k does not exist",
                             worker_host="w1", attempt=1)
        record = jobs.get_job(s, job_id)
    assert record is not None
    assert (record.status, record.error_kind, record.error_message) == (
        "failed", "video_not_found", "s3://b/k does not exist")


def test_only_unstarted_jobs_can_be_cancelled(database_url: str) -> None:
    db = Database(database_url)
    waiting, started = _insert_one(db), _insert_one(db)
    with db.transaction() as s:
        jobs.claim_job(s, started, worker_host="w1", lease=LEASE)
        assert jobs.cancel_job(s, waiting)
        assert not jobs.cancel_job(s, started)


def test_only_the_holders_heartbeat_keeps_a_running_job_from_being_taken_for_an_orphan(database_url: str) -> None:
    db = Database(database_url)
    beating, silent = _insert_one(db), _insert_one(db)
    with db.transaction() as s:
        jobs.mark_enqueued(s, [beating, silent])
        jobs.claim_job(s, beating, worker_host="w1", lease=LEASE)
        jobs.claim_job(s, silent, worker_host="w2", lease=LEASE)
        s.execute(update(Job).where(Job.id.in_([beating, silent])).values(heartbeat_at=utcnow() - 2 * LEASE))
    with db.transaction() as s:
        jobs.heartbeat(s, [beating, silent], worker_host="w1")  # w1 holds only `beating`
    with db.transaction() as s:
        orphans = jobs.requeue_orphans(s, lease=LEASE, unsent_for=timedelta(hours=1))
    assert [j.id for j in orphans] == [silent]


def test_counts_by_status_per_batch(database_url: str) -> None:
    db = Database(database_url)
    a, _b = _insert_one(db, batch="b42"), _insert_one(db, batch="b42")
    _insert_one(db, batch="other")
    with db.transaction() as s:
        jobs.cancel_job(s, a)
        assert jobs.count_by_status(s, batch="b42") == {"queued": 1, "cancelled": 1}
