"""Content dedupe in the worker's task path, on S3 over HTTP, SQLite and PostgreSQL: the ETag comes from the
job's own GET, so a scored job makes one S3 request and no HEAD; a repeat of the same content, prompt, model,
revision and frame count is answered from the first job's scores with nothing decoded or scored; `force`,
another prompt or other bytes are scored; no download is left behind."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import media
from videoscore.worker.service import pipeline
from videoscore.worker.service.decision import Succeeded
from videoscore.worker.testing.harness import WorkerHarness
from videoscore.worker.testing.servers import S3Server
from videoscore.worker.video.storage import make_s3_client

BUCKET = f"dedupe-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def worker(tmp_path: Path, database_url: str, s3_server: S3Server,
           monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[WorkerHarness, list[str]]]:
    harness = WorkerHarness(tmp_path / "worker", database_url=database_url, s3_endpoint_url=s3_server.url,
                            allowed_buckets=[BUCKET], allow_file_uris=False)
    # The fast stand-in records the revision "fast-stand-in", not its folder's hash as the model's scorer does;
    # the worker's key must name what the scorer records for any earlier job to match.
    monkeypatch.setattr(pipeline, "checkpoint_revision_of", lambda _source: "fast-stand-in")
    s3 = make_s3_client(harness.settings)
    s3.create_bucket(Bucket=BUCKET)
    for name, frames in (("clip.mp4", 3), ("other.mp4", 4)):
        path = media.make_video(tmp_path / name, frames=frames, size=(32, 32))
        s3.upload_file(str(path), BUCKET, name)
    s3.upload_file(str(tmp_path / "clip.mp4"), BUCKET, "same-bytes.mp4")
    requests: list[str] = []  # S3 operations the worker made, in order
    harness.runtime.store._s3.meta.events.register(  # type: ignore[attr-defined]
        "before-call.s3", lambda model, **_: requests.append(model.name))
    with harness:
        yield harness, requests


def test_a_repeat_is_answered_from_the_first_jobs_scores_and_every_job_makes_one_get_and_no_head(
    worker: tuple[WorkerHarness, list[str]],
) -> None:
    harness, requests = worker

    def run(name: str, prompt: str, **fields: object) -> tuple[dict[str, object], list[str]]:
        job_id = harness.submit(f"s3://{BUCKET}/{name}", prompt, **fields)
        requests.clear()
        assert harness.run(job_id) == Succeeded()
        return harness.job(job_id).__dict__, list(requests)

    first, made = run("clip.mp4", "a red square")
    assert first["deduplicated_from"] is None and made == ["GetObject"]

    again, made = run("clip.mp4", "a red square")
    assert made == ["GetObject"]
    assert again["deduplicated_from"] == first["id"]
    for column in ("visual_quality", "factual_consistency", "frame_indices", "video_etag", "model_revision"):
        assert again[column] == first[column]
    assert again["decode_s"] == 0 and again["forward_s"] == 0

    same_bytes, made = run("same-bytes.mp4", "a red square")  # another key, the same content: the same ETag
    assert same_bytes["deduplicated_from"] == first["id"] and made == ["GetObject"]

    for name, prompt, fields in (("clip.mp4", "a red square", {"force": True}), ("clip.mp4", "a blue square", {}),
                                 ("other.mp4", "a red square", {})):
        scored, made = run(name, prompt, **fields)
        assert scored["deduplicated_from"] is None and made == ["GetObject"], (name, prompt, fields)
        assert scored["forward_s"] > 0

    assert not list((harness.root / "scratch").iterdir()), "a download was left behind"
