"""`videoscore submit manifest --skip-invalid` sends the good rows to the database and the queue, and names
the bad ones; one video still submits as before. Real Redis, SQLite; the CLI runs in this process."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import redis
from typer.testing import CliRunner

from videoscore import cli
from videoscore.core.settings import Settings
from videoscore.db.migrate import upgrade
from videoscore.db.queries import JobFilter
from videoscore.producer.client import Client
from videoscore.worker.testing.servers import RedisServer


def test_skip_invalid_submits_the_good_rows_and_reports_the_bad_one(tmp_path: Path, redis_server: RedisServer) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    upgrade(url)
    queue = f"cli-{uuid.uuid4().hex[:6]}"
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in [
        {"video_uri": "s3://b/1.mp4", "prompt": "one", "tags": {"k": "v"}},
        {"video_uri": "s3://b/2.mp4", "prompt": ""},
        {"video_uri": "s3://b/3.mp4", "prompt": "three", "priority": "low"},
    ]) + "\n")
    env = {"VIDEOSCORE_DATABASE_URL": url, "VIDEOSCORE_BROKER_URL": redis_server.url, "VIDEOSCORE_QUEUE": queue,
           "COLUMNS": "200"}
    run = CliRunner().invoke(cli.app, ["submit", str(manifest), "--skip-invalid", "--batch", "cli"], env=env)
    single = CliRunner().invoke(cli.app, ["submit", "s3://b/4.mp4", "--prompt", "four", "--batch", "cli"], env=env)
    assert run.exit_code == 0, run.output
    assert f"{manifest}:2:" in run.output and "prompt must not be empty" in run.output
    assert "submitted 2 jobs" in run.output and "1 bad rows skipped" in run.output
    assert single.exit_code == 0 and len(single.output.strip()) == 32
    with Client(Settings(database_url=url)) as client:
        jobs = client.search(JobFilter(batch="cli")).jobs
    assert sorted(j.prompt for j in jobs) == ["four", "one", "three"]
    broker = redis.Redis.from_url(redis_server.url)
    assert (broker.llen(queue), broker.llen(f"{queue}.low")) == (2, 1)
