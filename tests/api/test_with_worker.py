"""The API, the CLI and a real worker process together, on PostgreSQL, Redis and S3 over HTTP: content dedupe
answers a repeated video from the database, `force` scores it again, the worker that finishes a batch fires
its webhook once, a high-priority job travels on its own queue, and a manifest's pipelined messages are
consumed like any other Celery message."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests import media
from tests.api.conftest import WEBHOOK_SECRET, api_settings
from tests.api.servers import ApiProcess, WebhookReceiver
from tests.workers import WorkerProcess
from videoscore.core.settings import Settings
from videoscore.core.webhooks import verify_signature
from videoscore.db.migrate import upgrade
from videoscore.worker.testing.servers import PostgresServer, RedisServer, S3Server
from videoscore.worker.video.storage import make_s3_client

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
BUCKET = "dedupe-videos"


@dataclass
class Stack:
    settings: Settings
    api: ApiProcess
    worker: WorkerProcess
    checkpoint: Path
    workdir: Path

    def http(self) -> httpx.Client:
        return self.api.client()

    def job(self, name: str = "clip.mp4", **fields: object) -> dict[str, object]:
        return {"video_uri": f"s3://{BUCKET}/{name}", "prompt": "a red square moving right",
                "model": str(self.checkpoint), **fields}

    def wait(self, http: httpx.Client, job_ids: list[str], timeout_s: float = 120) -> list[dict[str, object]]:
        deadline = time.monotonic() + timeout_s
        while True:
            jobs = [http.get(f"/jobs/{j}").json() for j in job_ids]
            if all(j["status"] in ("succeeded", "failed", "cancelled") for j in jobs):
                return jobs
            assert time.monotonic() < deadline, (jobs, self.worker.log()[-3000:])
            time.sleep(0.2)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer, s3_server: S3Server,
          postgres_server: PostgresServer, stand_in_checkpoint: Path) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("with-worker")
    s3 = make_s3_client(Settings(s3_endpoint_url=s3_server.url, s3_access_key_id="test",
                                 s3_secret_access_key="test"))  # type: ignore[arg-type]
    s3.create_bucket(Bucket=BUCKET)
    for name, frames in (("clip.mp4", 20), ("other.mp4", 24)):
        s3.upload_file(str(media.make_video(workdir / name, frames=frames, size=(96, 64))), BUCKET, name)
    database_url = postgres_server.create_database()
    upgrade(database_url)
    settings = api_settings(database_url, redis_server.url, s3_endpoint_url=s3_server.url, s3_access_key_id="test",
                            s3_secret_access_key="test", allowed_buckets=[BUCKET], model=str(stand_in_checkpoint),
                            batch_size=2, batch_wait_ms=100)
    worker = WorkerProcess(settings, workdir / "worker.log", concurrency=2).start()
    api = ApiProcess(settings, workdir / "api.log").start()
    try:
        worker.wait_ready()
        yield Stack(settings, api, worker, stand_in_checkpoint, workdir)
    finally:
        api.stop()
        worker.stop()


def test_a_repeated_video_is_answered_from_the_database_and_force_scores_it_again(stack: Stack) -> None:
    prompt = f"dedupe {uuid.uuid4().hex[:6]}"
    with stack.http() as http:
        first = http.post("/jobs", json=stack.job(prompt=prompt)).json()
        [first] = stack.wait(http, [first["id"]])
        again = http.post("/jobs", json=stack.job(prompt=prompt)).json()
        forced = http.post("/jobs", json=stack.job(prompt=prompt, force=True)).json()
        other_prompt = http.post("/jobs", json=stack.job(prompt=prompt + " at night")).json()
        again, forced, other_prompt = stack.wait(http, [again["id"], forced["id"], other_prompt["id"]])
    assert first["status"] == "succeeded" and first["deduplicated_from"] is None, stack.worker.log()[-3000:]
    assert again["status"] == "succeeded" and again["deduplicated_from"] == first["id"]
    assert again["scores"] == first["scores"] and again["frame_indices"] == first["frame_indices"]
    assert again["forward_s"] == 0 and again["decode_s"] == 0 and again["stand_in_model"] is True
    assert forced["deduplicated_from"] is None and forced["forward_s"] > 0
    assert forced["scores"] == pytest.approx(first["scores"], abs=1e-4)  # same input, same (stand-in) model
    assert other_prompt["deduplicated_from"] is None


def test_the_worker_that_finishes_a_batch_fires_its_webhook_once(stack: Stack) -> None:
    receiver = WebhookReceiver()
    batch = f"hooked-{uuid.uuid4().hex[:6]}"
    try:
        with stack.http() as http:
            http.post(f"/batches/{batch}/webhook", json={"url": receiver.url}).raise_for_status()
            submitted = http.post("/jobs", json=[stack.job(batch=batch, prompt=f"webhook {i}") for i in range(2)])
            ids = [j["id"] for j in submitted.json()["jobs"]]
            stack.wait(http, ids)
            received = receiver.wait_for(1)
            time.sleep(1.0)  # a second, wrong delivery would arrive in this time
            summary = http.get(f"/batches/{batch}").json()
    finally:
        receiver.close()
    assert len(receiver.received) == 1, [r.body for r in receiver.received]
    [delivery] = received
    delivery_id = verify_signature(WEBHOOK_SECRET, delivery.headers, delivery.body)
    assert delivery_id == delivery.headers["x-videoscore-delivery"]
    assert delivery.json()["counts"] == {"succeeded": 2} and delivery.json()["stand_in_model"] is True
    assert summary["webhook"]["sent_at"] is not None


def test_a_high_priority_job_goes_to_its_own_queue_which_the_worker_reads(stack: Stack) -> None:
    with stack.http() as http:
        job = http.post("/jobs", json=stack.job("other.mp4", priority="high", prompt="urgent")).json()
        [done] = stack.wait(http, [job["id"]])
    assert done["queue"] == f"{stack.settings.queue}.high"
    assert done["status"] == "succeeded", done["error_message"]


def test_a_manifest_submitted_with_the_cli_is_consumed_by_the_worker(stack: Stack) -> None:
    batch = f"manifest-{uuid.uuid4().hex[:6]}"
    manifest = stack.workdir / f"{batch}.jsonl"
    rows = [stack.job(prompt=f"manifest row {i}", idempotency_key=f"{batch}/{i}") for i in range(3)]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = {**os.environ, **stack.settings.to_env(), "COLUMNS": "200"}
    run = subprocess.run([sys.executable, "-m", "videoscore", "submit", str(manifest), "--batch", batch],
                         capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "submitted 3 jobs" in run.stderr and "3 new" in run.stderr  # stdout: the job ids
    rerun = subprocess.run([sys.executable, "-m", "videoscore", "submit", str(manifest), "--batch", batch],
                           capture_output=True, text=True, env=env, timeout=120)
    assert "0 new, 3 already known" in rerun.stderr
    with stack.http() as http:
        ids = [j["id"] for j in http.get("/jobs", params={"batch": batch}).json()["jobs"]]
        done = stack.wait(http, ids)
    assert len(done) == 3 and {j["status"] for j in done} == {"succeeded"}
