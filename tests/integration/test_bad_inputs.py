"""The bad-input catalogue (tests/catalogue.py): each kind of bad job ends `failed` with its kind and reason, at
its first attempt, while a good job delivered next to it succeeds; a message that names no job is dropped.

Each case runs through the real task path in process (worker.testing.harness: claim → fetch from S3 over HTTP →
sample frames → engine batch → persist) on SQLite, because one of the rows can only exist there: a prompt that
is not valid UTF-8, which another program wrote. The worker must fail that row rather than retry it forever;
the producer refuses such a prompt at submit, shown here against PostgreSQL, which could not store it.
Scoring is the fast stand-in's; an over-long prompt measured in the real processor's tokens is
tests/unit/test_scorer.py's. A raw message that is not even a Celery message never reaches the task: Celery
drops it, and tests/chaos/test_bad_inputs.py shows a worker process doing so and serving on.
"""

from __future__ import annotations

import logging
import sqlite3
import uuid
from collections.abc import Iterator

import pytest

from tests.catalogue import BAD_INPUTS, MALFORMED_JOB_IDS, MAX_PIXELS, MAX_VIDEO_BYTES, BadInput, write_bad_media
from videoscore.core.errors import InvalidJobError
from videoscore.core.settings import Settings
from videoscore.db.migrate import upgrade
from videoscore.producer.client import Client
from videoscore.worker.service.decision import Dropped, Failed, Succeeded
from videoscore.worker.testing.harness import WorkerHarness
from videoscore.worker.testing.servers import PostgresServer, S3Server
from videoscore.worker.video.storage import make_s3_client

BUCKET = f"catalogue-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory, s3_server: S3Server) -> Iterator[WorkerHarness]:
    root = tmp_path_factory.mktemp("catalogue")
    harness = WorkerHarness(root / "worker", s3_endpoint_url=s3_server.url, allowed_buckets=[BUCKET, "absent-bucket"],
                            allow_file_uris=False, max_video_bytes=MAX_VIDEO_BYTES, max_video_pixels=MAX_PIXELS)
    s3 = make_s3_client(harness.settings)
    s3.create_bucket(Bucket=BUCKET)
    for key, path in write_bad_media(root / "media").items():
        s3.upload_file(str(path), BUCKET, key)
    with harness:
        yield harness


def _good_job(worker: WorkerHarness, next_to: str) -> str:
    return worker.submit(f"s3://{BUCKET}/good.mp4", f"a good clip, next to {next_to}")


def _bad_job(worker: WorkerHarness, bad: BadInput) -> str:
    job_id = worker.submit(bad.uri.format(bucket=BUCKET), bad.prompt or f"bad input: {bad.label}", model=bad.model)
    if bad.raw_prompt is not None:
        with sqlite3.connect(worker.database_path) as raw:  # another program writes bytes that are not UTF-8
            raw.execute("UPDATE jobs SET prompt = CAST(? AS TEXT) WHERE id = ?", (bad.raw_prompt, job_id))
    return job_id


@pytest.mark.parametrize("bad", BAD_INPUTS, ids=[b.label for b in BAD_INPUTS])
def test_a_bad_input_fails_at_once_with_its_kind_and_reason_and_the_good_job_next_to_it_succeeds(
    worker: WorkerHarness, bad: BadInput,
) -> None:
    bad_id, good_id = _bad_job(worker, bad), _good_job(worker, bad.label)

    decisions = worker.run_together([bad_id, good_id])

    state = worker.state(bad_id)
    assert (state.status, state.error_kind) == ("failed", bad.kind), state.error_message
    assert bad.fragment in (state.error_message or "")
    assert state.attempts <= 1, "a permanent error must not be retried"
    assert decisions == [Failed(bad.kind, state.error_message or ""), Succeeded()]
    assert worker.state(good_id).status == "succeeded"


@pytest.mark.parametrize("job_id", MALFORMED_JOB_IDS)
def test_a_message_that_names_no_job_is_dropped_and_logged_and_the_good_job_next_to_it_succeeds(
    worker: WorkerHarness, job_id: object, caplog: pytest.LogCaptureFixture,
) -> None:
    good_id = _good_job(worker, f"the message {job_id!r}")
    with caplog.at_level(logging.ERROR, logger="videoscore.worker.service.tasks"):
        decisions = worker.run_together([job_id, good_id])
    assert decisions == [Dropped(f"job id {job_id!r} is not a job id"), Succeeded()]
    assert f"dropping malformed message: job id {job_id!r}" in caplog.text


@pytest.mark.postgres
def test_a_prompt_that_is_not_utf8_is_refused_at_submit_so_postgresql_never_sees_it(
    postgres_server: PostgresServer,
) -> None:
    undecodable = b"caf\xe9 au lait".decode("utf-8", "surrogateescape")  # what a Latin-1 file read leniently gives
    settings = Settings(database_url=postgres_server.create_database())
    upgrade(settings.database_url)
    with Client(settings) as client:
        with pytest.raises(InvalidJobError, match="Unicode"):
            client.submit(f"s3://{BUCKET}/good.mp4", undecodable)
        assert client.results() == []  # no row, no message
