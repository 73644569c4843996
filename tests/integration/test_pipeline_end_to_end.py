"""The whole path on real components: producer → database + Redis → worker process → S3 over HTTP →
frames → stand-in model → database → producer, on SQLite and on PostgreSQL.

The worker is the real `videoscore worker` command in its own process; S3 is moto's HTTP server; Redis is a
real redis-server. Scores read back from the database must equal those of calling the scorer directly.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kombu import Connection

from core.names import TASK_SCORE_JOB
from core.queueing import enqueue_jobs, make_celery_app
from core.settings import Settings
from core.variants import ASPECTS, resolve_model
from db import jobs as job_queries
from core.jobspec import JobRequest
from db.migrate import upgrade
from producer.client import Client
from tests import media
from tests.servers import PostgresServer
from tests.workers import WorkerProcess
from worker.embedded import RedisServer, S3Server
from worker.frames import sample_video
from worker.scorer import Scorer, ScoreRequest
from worker.storage import make_s3_client

pytestmark = pytest.mark.slow
BUCKET = "pipeline-videos"
MAX_VIDEO_BYTES = 3_000_000
MAX_PIXELS = 640 * 480


@dataclass
class Pipeline:
    settings: Settings
    client: Client
    worker: WorkerProcess
    videos: dict[str, Path]  # name → local copy of what was uploaded
    checkpoint: Path

    def uri(self, name: str) -> str:
        return f"s3://{BUCKET}/{name}"


@pytest.fixture(scope="session")
def uploaded_videos(tmp_path_factory: pytest.TempPathFactory, s3_server: S3Server) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("videos")
    videos = {
        "short.mp4": media.make_video(folder / "short.mp4", frames=20, size=(160, 120)),
        "exact48.mp4": media.make_video(folder / "exact48.mp4", frames=48, size=(192, 108)),
        "long.mp4": media.make_video(folder / "long.mp4", frames=130, size=(160, 120), gop=50),
        "truncated.mp4": media.make_truncated_video(folder / "truncated.mp4"),
        "not-a-video.mp4": media.make_not_a_video(folder / "not-a-video.mp4"),
        "audio-only.m4a": media.make_audio_only(folder / "audio-only.m4a"),
        "zero-frames.mkv": media.make_zero_frame_video(folder / "zero-frames.mkv"),
        "huge-resolution.mp4": media.make_video(folder / "huge-resolution.mp4", frames=2, size=(1280, 720)),
    }
    huge = folder / "huge-file.mp4"
    huge.write_bytes(b"\0" * (MAX_VIDEO_BYTES + 1))
    videos["huge-file.mp4"] = huge
    s3 = make_s3_client(Settings(s3_endpoint_url=s3_server.url, s3_access_key_id="test",
                                 s3_secret_access_key="test"))  # type: ignore[arg-type]
    s3.create_bucket(Bucket=BUCKET)
    for name, path in videos.items():
        s3.upload_file(str(path), BUCKET, name)
    return videos


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def pipeline(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    redis_server: RedisServer,
    s3_server: S3Server,
    uploaded_videos: dict[str, Path],
    stand_in_checkpoint: Path,
) -> Iterator[Pipeline]:
    workdir = tmp_path_factory.mktemp(f"pipeline-{request.param}")
    if request.param == "sqlite":
        database_url = f"sqlite:///{workdir / 'videoscore.db'}"
    else:
        server: PostgresServer = request.getfixturevalue("postgres_server")
        database_url = server.create_database()
    upgrade(database_url)
    settings = Settings(
        database_url=database_url,
        broker_url=redis_server.url,
        queue=f"test-{uuid.uuid4().hex[:8]}",
        s3_endpoint_url=s3_server.url,
        s3_access_key_id="test",
        s3_secret_access_key="test",  # type: ignore[arg-type]
        allowed_buckets=[BUCKET, "absent-bucket"],
        max_video_bytes=MAX_VIDEO_BYTES,
        max_video_pixels=MAX_PIXELS,
        model=str(stand_in_checkpoint),
        batch_size=2,
        batch_wait_ms=200,
        poll_interval_s=0.1,
        max_prompt_chars=1_000_000,  # let over-long prompts through to the worker's own token check
    )
    worker = WorkerProcess(settings, workdir / "worker.log", concurrency=4).start()
    client = Client(settings)
    try:
        worker.wait_ready()
        yield Pipeline(settings, client, worker, uploaded_videos, stand_in_checkpoint)
    finally:
        client.close()
        worker.stop()


def _direct_scores(checkpoint: Path, video: Path, prompt: str) -> list[float]:
    spec = resolve_model(str(checkpoint))
    sampled = sample_video(video, spec.num_frames)
    with Scorer.load(spec, device="cpu", dtype="float32") as scorer:
        return scorer.score([ScoreRequest(frames=sampled.frames, prompt=prompt)]).scores[0].as_list()


def test_scores_read_back_equal_the_scorer_called_directly(pipeline: Pipeline) -> None:
    names = ["short.mp4", "exact48.mp4", "long.mp4"]
    prompts = {name: f"a synthetic clip called {name}, with a moving square" for name in names}
    jobs = pipeline.client.submit_many(
        [{"video_uri": pipeline.uri(n), "prompt": prompts[n], "model": str(pipeline.checkpoint), "batch": "e2e"}
         for n in names]
    )
    done = pipeline.client.wait([j.id for j in jobs], timeout_s=180)

    for name, record in zip(names, done, strict=True):
        assert record.status == "succeeded", (record.error_kind, record.error_message, pipeline.worker.log()[-3000:])
        expected = _direct_scores(pipeline.checkpoint, pipeline.videos[name], prompts[name])
        got = [getattr(record, aspect) for aspect in ASPECTS]
        assert got == pytest.approx(expected, abs=1e-4)
        assert record.stand_in_model is True and record.attempts == 1
        assert record.frame_indices == sample_video(pipeline.videos[name], 48).indices
        assert record.video_bytes == pipeline.videos[name].stat().st_size and record.video_etag
        assert all(t is not None and t >= 0 for t in (record.download_s, record.decode_s, record.forward_s))


BAD_INPUTS = [
    ("missing key", "s3://pipeline-videos/nope.mp4", None, "video_not_found", "does not exist"),
    ("missing bucket", "s3://absent-bucket/a.mp4", None, "video_not_found", "bucket 'absent-bucket' does not exist"),
    ("bucket not allowed", "s3://someone-elses-bucket/a.mp4", None, "video_access_denied", "allowlist"),
    ("not a video", "s3://pipeline-videos/not-a-video.mp4", None, "video_decode_error", ""),
    ("truncated video", "s3://pipeline-videos/truncated.mp4", None, "video_decode_error", ""),
    ("audio only", "s3://pipeline-videos/audio-only.m4a", None, "video_decode_error", "video stream"),
    ("zero frames", "s3://pipeline-videos/zero-frames.mkv", None, "video_decode_error", ""),
    ("huge resolution", "s3://pipeline-videos/huge-resolution.mp4", None, "video_too_large", "1280"),
    ("huge file", "s3://pipeline-videos/huge-file.mp4", None, "video_too_large", "limit"),
    ("over-long prompt", "s3://pipeline-videos/short.mp4", "word " * 60_000, "prompt_too_long", ""),
]


def test_bad_inputs_fail_with_a_recorded_reason_and_the_worker_keeps_serving(pipeline: Pipeline) -> None:
    requests = [
        {"video_uri": uri, "prompt": prompt or f"bad input: {label}", "model": str(pipeline.checkpoint)}
        for label, uri, prompt, _kind, _fragment in BAD_INPUTS
    ]
    bad = pipeline.client.submit_many(requests)
    good = pipeline.client.submit(pipeline.uri("short.mp4"), "a good job after the bad ones",
                                  model=str(pipeline.checkpoint))
    records = pipeline.client.wait([j.id for j in bad] + [good.id], timeout_s=180)

    for (label, _uri, _prompt, kind, fragment), record in zip(BAD_INPUTS, records, strict=False):
        assert (label, record.status, record.error_kind) == (label, "failed", kind), record.error_message
        assert fragment in (record.error_message or "")
        assert record.attempts == 1, f"{label}: a permanent error must not be retried"
    assert records[-1].status == "succeeded"
    assert pipeline.worker.alive()


def test_a_job_naming_an_unknown_model_fails_at_the_worker(pipeline: Pipeline) -> None:
    # The producer refuses unknown models; this job skips it, as a stale or hand-written row would.
    with pipeline.client.db.transaction() as session:
        [(job, _)] = job_queries.insert_jobs(
            session, [JobRequest(video_uri=pipeline.uri("short.mp4"), prompt="p", model="nobody/NoSuchModel")],
            queue=pipeline.settings.queue,
        )
    enqueue_jobs(make_celery_app(pipeline.settings), [job.id], queue=pipeline.settings.queue)
    [record] = pipeline.client.wait([job.id], timeout_s=60)
    assert (record.status, record.error_kind) == ("failed", "unknown_model")


def test_malformed_messages_are_dropped_and_the_next_job_is_scored(pipeline: Pipeline) -> None:
    app = make_celery_app(pipeline.settings)
    app.send_task(TASK_SCORE_JOB, args=["not-a-job-id"], queue=pipeline.settings.queue)
    app.send_task(TASK_SCORE_JOB, args=[], queue=pipeline.settings.queue)
    with Connection(pipeline.settings.broker_url) as connection:  # raw garbage, not even a Celery message
        connection.SimpleQueue(pipeline.settings.queue).put(b"\xff\xfe garbage", serializer=None,
                                                             content_type="application/x-garbage")
    job = pipeline.client.submit(pipeline.uri("short.mp4"), "after the garbage", model=str(pipeline.checkpoint))
    [record] = pipeline.client.wait([job.id], timeout_s=60)
    assert record.status == "succeeded"
    assert pipeline.worker.alive()


def test_resubmitting_with_the_same_idempotency_key_scores_once(pipeline: Pipeline) -> None:
    key = f"idem-{uuid.uuid4().hex}"
    first = pipeline.client.submit(pipeline.uri("short.mp4"), "idempotent", model=str(pipeline.checkpoint),
                                   idempotency_key=key)
    second = pipeline.client.submit(pipeline.uri("short.mp4"), "idempotent", model=str(pipeline.checkpoint),
                                    idempotency_key=key)
    assert first.id == second.id
    [record] = pipeline.client.wait([first.id], timeout_s=60)
    assert record.status == "succeeded" and record.attempts == 1
