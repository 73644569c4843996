"""`videoscore cancel`: queued jobs of a batch or a tag are cancelled in the database, running ones are left to
finish, and neither the reconciler nor the reaper sends a cancelled job's message again."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import update
from typer.testing import CliRunner

from videoscore import cli
from videoscore.core.jobspec import JobRequest
from videoscore.db import jobs
from videoscore.db.models import Job, utcnow
from videoscore.db.session import Database

LEASE = timedelta(seconds=60)


def _insert(db: Database, n: int, *, batch: str, tags: dict[str, str], queue: str) -> list[str]:
    requests = [JobRequest(video_uri=f"s3://b/{batch}-{i}.mp4", prompt=f"p{i}", batch=batch, tags=tags)
                for i in range(n)]
    with db.transaction() as s:
        rows = jobs.insert_jobs(s, requests, queue=queue)
    return [job.id for job, _ in rows]


def _cancel(database_url: str, *args: str) -> Any:
    env = {"VIDEOSCORE_DATABASE_URL": database_url}
    return CliRunner().invoke(cli.app, ["cancel", *args], env=env)


def test_cancel_by_batch_and_by_tag_leaves_running_jobs_and_nothing_cancelled_is_sent_again(
        database_url: str, redis_server: Any) -> None:
    import redis

    from videoscore.core.queueing import make_celery_app
    from videoscore.core.settings import Settings
    from videoscore.worker.service.reconcile import BrokerReconciler

    db = Database(database_url)
    queue = "cancel-q"
    first, running, *rest_of_batch = _insert(db, 4, batch="nightly", tags={}, queue=queue)
    tagged = _insert(db, 2, batch="other", tags={"run": "r7"}, queue=queue)
    [untagged] = _insert(db, 1, batch="other", tags={"run": "r8"}, queue=queue)
    [kept] = _insert(db, 1, batch="kept", tags={}, queue=queue)
    every = [first, running, *rest_of_batch, *tagged, untagged, kept]
    with db.transaction() as s:
        jobs.mark_enqueued(s, every)
        s.execute(update(Job).values(enqueued_at=utcnow() - timedelta(minutes=1),
                                     created_at=utcnow() - timedelta(minutes=5)))
        jobs.claim_job(s, running, worker_host="w1", lease=LEASE)

    by_batch = _cancel(database_url, "--batch", "nightly")
    by_tag = _cancel(database_url, "--tag", "run:r7")
    nothing = _cancel(database_url)

    assert by_batch.exit_code == 0, by_batch.output
    assert "cancelled 3 queued jobs" in by_batch.output
    assert "1 matching jobs are running: they are left to finish" in by_batch.output
    assert by_tag.exit_code == 0 and "cancelled 2 queued jobs" in by_tag.output and "running" not in by_tag.output
    assert nothing.exit_code != 0 and "cancel what?" in nothing.output
    with db.transaction() as s:
        status = {job_id: jobs.get_job(s, job_id).status for job_id in every}  # type: ignore[union-attr]
    assert {j for j, st in status.items() if st == "cancelled"} == {first, *rest_of_batch, *tagged}
    assert status[running] == "running" and status[untagged] == "queued" and status[kept] == "queued"

    # Redis lost every message (or someone ran `celery purge`): only the jobs still queued are sent again.
    settings = Settings(database_url=database_url, broker_url=redis_server.url.rsplit("/", 1)[0] + "/8")
    client = redis.Redis.from_url(settings.broker_url)
    client.flushdb()
    try:
        assert BrokerReconciler(db, make_celery_app(settings), settings.broker_url, interval_s=3600).run(client) == 2
        with db.transaction() as s:
            orphans = jobs.requeue_orphans(s, lease=timedelta(0), unsent_for=timedelta(0))
        assert {j.id for j in orphans} <= {running, untagged, kept}, "the reaper re-sends no cancelled job"
    finally:
        client.flushdb()


def test_cancel_by_id_takes_only_a_queued_job(database_url: str) -> None:
    db = Database(database_url)
    queued, running = _insert(db, 2, batch="b", tags={}, queue="q")
    with db.transaction() as s:
        jobs.claim_job(s, running, worker_host="w1", lease=LEASE)
        assert jobs.cancel_queued(s, job_ids=[queued, running]).cancelled == {queued: "b"}
        with pytest.raises(ValueError, match="cancel what"):
            jobs.cancel_queued(s)
