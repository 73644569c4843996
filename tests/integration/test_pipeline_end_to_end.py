"""The whole path on real components: producer → database + Redis → worker process → S3 over HTTP →
frames → stand-in model → database → producer, on SQLite and on PostgreSQL.

The worker is the real `videoscore worker` command in its own process; S3 is moto's HTTP server; Redis is a
real redis-server. Scores read back from the database must equal those of calling the scorer directly.
Bad inputs, malformed messages and faults are the chaos suite's (tests/integration/test_bad_inputs.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import media
from tests.workers import WorkerProcess
from videoscore.core.settings import Settings
from videoscore.core.variants import ASPECTS, resolve_model
from videoscore.db.migrate import upgrade
from videoscore.producer.client import Client
from videoscore.worker.model.scorer import Scorer, ScoreRequest
from videoscore.worker.testing.servers import PostgresServer, RedisServer, S3Server
from videoscore.worker.video.frames import sample_video
from videoscore.worker.video.storage import make_s3_client

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
    }
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


def test_resubmitting_with_the_same_idempotency_key_scores_once(pipeline: Pipeline) -> None:
    key = f"idem-{uuid.uuid4().hex}"
    first = pipeline.client.submit(pipeline.uri("short.mp4"), "idempotent", model=str(pipeline.checkpoint),
                                   idempotency_key=key)
    second = pipeline.client.submit(pipeline.uri("short.mp4"), "idempotent", model=str(pipeline.checkpoint),
                                    idempotency_key=key)
    assert first.id == second.id
    [record] = pipeline.client.wait([first.id], timeout_s=60)
    assert record.status == "succeeded" and record.attempts == 1
