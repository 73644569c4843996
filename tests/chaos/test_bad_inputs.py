"""Scenario 5: a catalogue of bad inputs, each ending as a `failed` job with its reason while the good jobs
around them succeed and the worker keeps serving; malformed queue messages have no job row: they are
dropped and logged. The worker scores with the untrained stand-in of VideoScore-v1.1 (the real processor, so
an over-long prompt is measured in real tokens).

The catalogue runs on SQLite because one of its rows can only exist there: a prompt that is not valid UTF-8.
The producer refuses such a prompt at submit (shown here against PostgreSQL, which could not store it), but
SQLite keeps whatever bytes another program writes, and the worker must fail that row rather than retry it
forever. The worker's handling of every other kind does not depend on the database; the end-to-end tests
run the same worker on both.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from kombu import Connection

from tests.catalogue import BAD_INPUTS, MAX_PIXELS, MAX_VIDEO_BYTES, write_bad_media
from tests.chaos.cluster import BUCKET, Cluster, build_cluster
from videoscore.core.errors import InvalidJobError
from videoscore.core.jobspec import JobRequest
from videoscore.core.names import TASK_SCORE_JOB
from videoscore.core.queueing import enqueue_jobs, make_celery_app
from videoscore.db import jobs as job_queries
from videoscore.db.migrate import upgrade
from videoscore.producer.client import Client
from videoscore.worker.testing.servers import PostgresServer
from videoscore.worker.video.storage import make_s3_client

GOOD_AROUND = 3  # good jobs before and after the bad ones


@pytest.fixture
def catalogue_cluster(tmp_path: Path, stand_in_checkpoint: Path):
    cluster = build_cluster(tmp_path, f"sqlite:///{tmp_path / 'videoscore.db'}", model=str(stand_in_checkpoint), max_video_bytes=MAX_VIDEO_BYTES,
                            max_video_pixels=MAX_PIXELS, max_prompt_chars=1_000_000, batch_size=2,
                            max_attempts=3)
    s3 = make_s3_client(cluster.settings)
    for key, path in write_bad_media(tmp_path / "bad-media").items():
        s3.upload_file(str(path), BUCKET, key)
    try:
        yield cluster
    finally:
        cluster.stop()


def test_every_bad_input_fails_with_its_reason_and_the_good_jobs_around_it_succeed(
    catalogue_cluster: Cluster, postgres_server: PostgresServer, report
) -> None:
    cluster = catalogue_cluster
    worker = cluster.start_worker("w1", concurrency=4)
    worker.wait_ready(timeout_s=240)
    started = time.monotonic()
    model = cluster.settings.model
    good = lambda tag: {"video_uri": f"s3://{BUCKET}/good.mp4", "prompt": f"a good clip ({tag})", "model": model}
    before = [j.id for j in cluster.client.submit_many([good(f"before {i}") for i in range(GOOD_AROUND)])]
    bad = [j.id for j in cluster.client.submit_many(
        [{"video_uri": b.uri.format(bucket=BUCKET), "prompt": b.prompt or f"bad input: {b.label}", "model": model}
         for b in BAD_INPUTS])]
    unknown_model = _insert_and_send(cluster, JobRequest(video_uri=f"s3://{BUCKET}/good.mp4", prompt="p",
                                                         model="nobody/NoSuchModel"))
    _refused_at_submit_on_postgres(cluster, postgres_server)
    non_utf8 = _non_utf8_prompt_row(cluster)
    _send_malformed_messages(cluster)
    after = [j.id for j in cluster.client.submit_many([good(f"after {i}") for i in range(GOOD_AROUND)])]

    expected = [(b.label, b.kind, b.fragment) for b in BAD_INPUTS]
    expected.append(("unknown model", "unknown_model", "nobody/NoSuchModel"))
    expected.append(("non-UTF-8 prompt", "invalid_job", "cannot be read"))
    ids = before + bad + [unknown_model, non_utf8] + after
    by_id = cluster.wait_rows(ids, timeout_s=240)

    failed_ids = bad + [unknown_model, non_utf8]
    for (label, kind, fragment), job_id in zip(expected, failed_ids, strict=True):
        record = by_id[job_id]
        assert (label, record.status, record.error_kind) == (label, "failed", kind), record.error_message
        assert fragment in (record.error_message or ""), (label, record.error_message)
        assert record.attempts <= 1, f"{label}: a permanent error must not be retried"
    assert [by_id[j].status for j in before + after] == ["succeeded"] * (2 * GOOD_AROUND)
    log = worker.log()
    assert "dropping malformed message: job id 'not-a-job-id'" in log
    assert "dropping malformed message: job id None" in log
    assert "Can't decode message body" in log or "unknown message" in log.lower()
    assert worker.alive()

    figures = cluster.figures("5 bad-input catalogue", ids, seconds=time.monotonic() - started,
                              note=f"({len(expected)} kinds of bad job failed with their reason, 3 malformed "
                                   "messages dropped, a non-UTF-8 prompt refused at submit on PostgreSQL)")
    report(figures)
    assert (figures.lost, figures.scored_twice) == (0, 0)
    assert (figures.succeeded, figures.failed) == (2 * GOOD_AROUND, len(expected))


def _insert_and_send(cluster: Cluster, request: JobRequest) -> str:
    """Insert a row the producer would refuse (as a stale or hand-written one would be) and send its id."""
    with cluster.client.db.transaction() as session:
        [(job, _)] = job_queries.insert_jobs(session, [request], queue=cluster.settings.queue)
    enqueue_jobs(make_celery_app(cluster.settings), [job.id], queue=cluster.settings.queue)
    return job.id


def _refused_at_submit_on_postgres(cluster: Cluster, postgres_server: PostgresServer) -> None:
    undecodable = b"caf\xe9 au lait".decode("utf-8", "surrogateescape")  # what a Latin-1 file read leniently gives
    settings = cluster.settings.model_copy(update={"database_url": postgres_server.create_database()})
    upgrade(settings.database_url)
    with Client(settings) as client:
        with pytest.raises(InvalidJobError, match="Unicode"):
            client.submit(f"s3://{BUCKET}/good.mp4", undecodable, model=settings.model)
        assert client.results() == []  # no row, no message


def _non_utf8_prompt_row(cluster: Cluster) -> str:
    with cluster.client.db.transaction() as session:
        [(job, _)] = job_queries.insert_jobs(
            session, [JobRequest(video_uri=f"s3://{BUCKET}/good.mp4", prompt="placeholder",
                                 model=cluster.settings.model)], queue=cluster.settings.queue)
    path = cluster.settings.database_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as raw:  # another program writes Latin-1 bytes into the prompt column
        raw.execute("UPDATE jobs SET prompt = CAST(? AS TEXT) WHERE id = ?", (b"caf\xe9 au lait", job.id))
    enqueue_jobs(make_celery_app(cluster.settings), [job.id], queue=cluster.settings.queue)
    return job.id


def _send_malformed_messages(cluster: Cluster) -> None:
    app = make_celery_app(cluster.settings)
    app.send_task(TASK_SCORE_JOB, args=["not-a-job-id"], queue=cluster.settings.queue)
    app.send_task(TASK_SCORE_JOB, args=[], queue=cluster.settings.queue)
    with Connection(cluster.settings.broker_url) as connection:  # raw garbage, not even a Celery message
        connection.SimpleQueue(cluster.settings.queue).put(b"\xff\xfe garbage", serializer=None,
                                                            content_type="application/x-garbage")
