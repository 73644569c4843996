"""What a job's end costs its batch's webhook, on SQLite and PostgreSQL: a job of a batch without a webhook
ends without a claim (no UPDATE of batches, one look-up inside the transaction that ends it); the worker that
ends a hooked batch's last job, scored or failed, fires its webhook once; a webhook registered while that last
job is ending is not missed (the registration's claim waits for the ending transaction); a claim whose COMMIT
answer was lost gets its URL back when run again with the same stamp."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from tests.api.servers import WebhookReceiver
from videoscore.core.jobspec import JobRequest
from videoscore.core.settings import Settings
from videoscore.core.webhooks import fire_if_batch_complete
from videoscore.db import jobs, queries
from videoscore.db.models import utcnow
from videoscore.db.records import ScoreResult
from videoscore.db.session import Database
from videoscore.worker.service.decision import Failed, Succeeded
from videoscore.worker.testing.harness import WorkerHarness
from videoscore.worker.testing.media import make_video


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    hooks = WebhookReceiver()
    yield hooks
    hooks.close()


@pytest.fixture
def worker(tmp_path: Path, database_url: str) -> Iterator[WorkerHarness]:
    with WorkerHarness(tmp_path / "worker", database_url=database_url, file_roots=[str(tmp_path)],
                       webhook_allow_private_addresses=True, webhook_max_attempts=1) as harness:
        yield harness


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    return make_video(tmp_path / "clip.mp4", frames=2, size=(32, 32))


def _statements(db: Database) -> list[str]:
    """Every statement (whitespace folded) and COMMIT on `db` from now on, in order."""
    seen: list[str] = []
    event.listen(db.engine, "before_cursor_execute",
                 lambda _conn, _cursor, statement, *_: seen.append(" ".join(statement.split())))
    event.listen(db.engine, "commit", lambda _conn: seen.append("COMMIT"))
    return seen


def test_a_job_of_a_batch_without_a_webhook_ends_without_claiming_one(worker: WorkerHarness, clip: Path) -> None:
    job_id = worker.submit(f"file://{clip}", "no hook here", batch="plain")
    seen = _statements(worker.runtime.db)

    assert worker.run(job_id) == Succeeded()

    assert not [s for s in seen if s.startswith("UPDATE batches")], seen
    ending = next(i for i, s in enumerate(seen) if s.startswith("UPDATE jobs SET") and " finished_at=" in s)
    look_up = next(i for i, s in enumerate(seen) if "FROM batches" in s)
    assert ending < look_up < seen.index("COMMIT", ending), seen  # one transaction ends the job and looks


def test_the_worker_that_ends_a_hooked_batchs_last_job_fires_its_webhook_once(
    worker: WorkerHarness, clip: Path, receiver: WebhookReceiver,
) -> None:
    good = worker.submit(f"file://{clip}", "hooked 1", batch="hooked")
    bad = worker.submit(f"file://{clip.parent / 'missing.mp4'}", "hooked 2", batch="hooked")
    with worker.runtime.db.transaction() as session:
        queries.set_batch_webhook(session, "hooked", receiver.url)

    assert worker.run(good) == Succeeded()
    assert not receiver.wait_for(1, timeout_s=0.5)  # one job is still queued
    assert isinstance(worker.run(bad), Failed)  # the last job fails: its end fires the webhook too

    [delivery] = receiver.wait_for(1)
    assert json.loads(delivery.body)["counts"] == {"succeeded": 1, "failed": 1}
    for job_id in (good, bad):  # a redelivery of either finished job fires nothing more
        worker.run(job_id)
    assert len(receiver.wait_for(2, timeout_s=1.0)) == 1


def test_a_webhook_registered_while_the_last_job_is_ending_is_claimed_by_its_registration(
    database_url: str, receiver: WebhookReceiver,
) -> None:
    db = Database(database_url)
    settings = Settings(database_url=database_url, webhook_allow_private_addresses=True, webhook_max_attempts=1)
    with db.transaction() as session:
        [(job, _)] = jobs.insert_jobs(session, [JobRequest(video_uri="s3://b/v.mp4", prompt="p", batch="late")],
                                      queue="q")
    with db.transaction() as session:
        claimed = jobs.claim_job(session, job.id, worker_host="w", lease=timedelta(seconds=60))
    assert claimed is not None
    registered = threading.Event()

    def register() -> None:  # what POST /batches/{name}/webhook and Client.set_batch_webhook do
        with db.transaction() as session:
            queries.set_batch_webhook(session, "late", receiver.url)
        registered.set()
        fire_if_batch_complete(db, settings, "late", background=False)

    try:
        with db.transaction() as session:  # the worker's transaction that ends the batch's last job
            assert jobs.complete_job(session, job.id, _result(), worker_host="w", attempt=claimed.attempts)
            assert queries.batch_webhook_due(session, "late") is False  # too early to see the webhook
            registration = threading.Thread(target=register)
            registration.start()
            registration.join(timeout=1.0)
            assert registration.is_alive(), "the registration must wait for the job's end to commit"
        registration.join(timeout=30)
        assert not registration.is_alive()
        assert registered.is_set()
        assert len(receiver.wait_for(1)) == 1
    finally:
        db.dispose()


def test_a_claim_run_again_with_its_own_stamp_gets_its_url_back_and_no_one_else_does(
    database_url: str,
) -> None:
    db = Database(database_url)
    try:
        with db.transaction() as session:
            [(job, _)] = jobs.insert_jobs(session, [JobRequest(video_uri="s3://b/v.mp4", prompt="p", batch="b")],
                                          queue="q")
            queries.set_batch_webhook(session, "b", "http://hooks.example/b")
        with db.transaction() as session:
            assert jobs.cancel_job(session, job.id)
        stamp = utcnow()
        for _ in range(2):  # the second run is what Database.run does after a COMMIT whose answer was lost
            with db.transaction() as session:
                assert queries.claim_batch_webhook(session, "b", at=stamp) == "http://hooks.example/b"
        with db.transaction() as session:
            assert queries.claim_batch_webhook(session, "b") is None
            assert queries.claim_batch_webhook(session, "b", at=stamp + timedelta(microseconds=1)) is None
    finally:
        db.dispose()


def _result() -> ScoreResult:
    scores: dict[str, Any] = {"visual_quality": 2.5, "temporal_consistency": 2.6, "dynamic_degree": 2.7,
                              "text_to_video_alignment": 2.8, "factual_consistency": 2.9}
    return ScoreResult(scores=scores, model_revision="r", stand_in_model=True, num_frames=2, frame_indices=[0, 1],
                       video_etag="e", video_bytes=10, video_total_frames=2, video_fps=24.0, video_duration_s=0.1,
                       video_width=32, video_height=32, download_s=0.0, decode_s=0.0, preprocess_s=0.0,
                       forward_s=0.0)
