"""Celery's own tools against a real worker: `celery -A videoscore.worker.service.celery_app` loads and reaches
the fleet, and a worker started with `--events` reports a failed job as a failed task (task-failed, with the
job's error kind) and a scored one as succeeded, while the failed job's message is acknowledged, not redelivered.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from videoscore.core.jobspec import JobRequest
from videoscore.core.queueing import enqueue_jobs, make_celery_app
from videoscore.core.settings import Settings
from videoscore.db import jobs
from videoscore.db.migrate import upgrade
from videoscore.db.session import Database
from videoscore.worker.testing.fast_scorer import build_fast_stand_in
from videoscore.worker.testing.media import make_video
from videoscore.worker.testing.servers import RedisServer

pytestmark = pytest.mark.slow
CELERY = str(Path(sys.executable).with_name("celery"))
APP = "videoscore.worker.service.celery_app"


@dataclass
class Fleet:
    settings: Settings
    node: str
    video: Path
    log: Path


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("celery-tools")
    database_url = f"sqlite:///{root / 'videoscore.db'}"
    upgrade(database_url)
    model = build_fast_stand_in(root / "fast-stand-in")
    settings = Settings(database_url=database_url, broker_url=redis_server.url.rsplit("/", 1)[0] + "/9",
                        queue=f"tools-{uuid.uuid4().hex[:8]}", model=str(model), model_roots=[str(model)],
                        allow_file_uris=True, file_roots=[str(root)], metrics_port=0, batch_size=2,
                        batch_wait_ms=20)
    redis.Redis.from_url(settings.broker_url).flushdb()
    node = f"tools-{uuid.uuid4().hex[:6]}@localhost"
    log = root / "worker.log"
    worker = subprocess.Popen(
        [sys.executable, "-m", "videoscore.worker.testing.fleet_worker", "worker", "--events", "--concurrency", "2",
         "--hostname", node], env={**os.environ, **settings.to_env()}, stdout=log.open("ab"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while " ready." not in log.read_text(errors="replace"):
            assert worker.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.2)
        yield Fleet(settings, node, make_video(root / "good.mp4", frames=4, size=(64, 48)), log)
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def _celery(fleet: Fleet, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **fleet.settings.to_env()}
    return subprocess.run([CELERY, "-A", APP, *args], env=env, capture_output=True, text=True, timeout=120)


def test_celery_inspect_reaches_the_worker_and_lists_the_score_task(fleet: Fleet) -> None:
    ping = _celery(fleet, "inspect", "ping", "-d", fleet.node, "--timeout", "5")
    registered = _celery(fleet, "inspect", "registered", "-d", fleet.node, "--timeout", "5")
    assert ping.returncode == 0 and "pong" in ping.stdout, ping.stdout + ping.stderr
    assert registered.returncode == 0 and "videoscore.score_job" in registered.stdout, registered.stderr
    assert _celery(fleet, "purge", "--help").returncode == 0


def test_a_failed_job_is_a_failed_task_in_celery_events_and_its_message_is_acknowledged(fleet: Fleet) -> None:
    app = make_celery_app(fleet.settings)
    assert app.conf.task_acks_on_failure_or_timeout, "a raised JobFailed must ack the message"
    db = Database(fleet.settings.database_url)
    model = fleet.settings.model
    with db.transaction() as s:
        rows = jobs.insert_jobs(s, [JobRequest(video_uri=f"file://{fleet.video}", prompt="a good clip", model=model),
                                    JobRequest(video_uri=f"file://{fleet.video.parent}/missing.mp4",
                                               prompt="a clip that is not there", model=model)],
                                queue=fleet.settings.queue)
    good, missing = (job.id for job, _ in rows)
    events: dict[str, dict[str, Any]] = {}  # task uuid → its last event
    names: dict[str, str] = {}  # task uuid → its args
    done = threading.Event()

    def on_event(event: dict[str, Any]) -> None:
        if event["type"] == "task-received":
            names[event["uuid"]] = event["args"]
        elif event["type"] in ("task-succeeded", "task-failed", "task-retried"):
            events[event["uuid"]] = event
            if sum(e["type"] in ("task-succeeded", "task-failed") for e in events.values()) >= 2:
                done.set()

    with app.connection_for_read() as connection:
        receiver = app.events.Receiver(connection, handlers={"*": on_event})
        thread = threading.Thread(target=lambda: receiver.capture(limit=None, timeout=60), daemon=True)
        thread.start()
        time.sleep(1.0)  # the receiver's queue is bound before the tasks run
        enqueue_jobs(app, [good, missing], queue=fleet.settings.queue)
        assert done.wait(60), (events, fleet.log.read_text(errors="replace")[-3000:])
        receiver.should_stop = True
    outcome = {job: events[uuid] for uuid, args in names.items() for job in (good, missing)
               if job in args and uuid in events}  # a received event's args are their repr
    assert outcome[good]["type"] == "task-succeeded"
    assert outcome[missing]["type"] == "task-failed" and "video_not_found" in outcome[missing]["exception"]

    time.sleep(3.0)  # a message left unacknowledged would sit in Redis's unacked hash
    client = redis.Redis.from_url(fleet.settings.broker_url)
    assert client.hlen("unacked") == 0 and client.llen(fleet.settings.queue) == 0
    with db.transaction() as s:
        failed = jobs.get_job(s, missing)
    assert failed is not None and failed.status == "failed" and failed.error_kind == "video_not_found"
    assert failed.attempts == 1, "delivered once: the failure acknowledged its message"
    assert "raised unexpected" not in fleet.log.read_text(errors="replace"), "JobFailed is an expected end"
