"""`videoscore demo`: the whole job on one machine, through the same code path as production.

It builds (once, cached) an untrained stand-in checkpoint, writes sample videos, starts a real S3 API (moto)
and a real Redis on loopback, creates a SQLite database, starts a worker process, submits jobs with the SDK,
waits with a progress bar and prints the results read back from the database. Only URLs differ from a
deployment; the scores are labelled as coming from the stand-in because they do.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console

from videoscore.core.settings import Settings
from videoscore.core.variants import DEFAULT_MODEL
from videoscore.db.migrate import upgrade
from videoscore.producer.client import Client
from videoscore.producer.render import STAND_IN_WARNING, results_table, wait_with_progress
from videoscore.worker.testing.media import make_video
from videoscore.worker.testing.servers import RedisServer, S3Server

DEMO_BUCKET = "demo-videos"
DEMO_PROMPTS = [
    "A red fox trotting through fresh snow at dawn, cinematic lighting",
    "Time-lapse of clouds rolling over a mountain ridge",
    "A paper boat drifting down a rain-soaked street",
    "An astronaut playing chess with a robot on the moon",
    "Close-up of a hummingbird hovering beside a purple flower",
    "Waves crashing on a rocky shore at sunset",
]


def stand_in_cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "videoscore" / "stand-in-videoscore-v1.1-seed0"


def ensure_stand_in(console: Console) -> Path:
    folder = stand_in_cache_dir()
    if not (folder / "videoscore.json").is_file():
        console.print(f"building the untrained stand-in checkpoint in {folder} …")
        subprocess.run(
            [sys.executable, "-m", "videoscore.worker.testing.stand_in",
             "--out", str(folder), "--variant", DEFAULT_MODEL, "--seed", "0"],
            check=True,
        )
    return folder


def run_demo(console: Console, *, videos: int = 4, workdir: Path | None = None) -> int:
    started = time.perf_counter()
    keep = workdir is not None
    root = workdir or Path(tempfile.mkdtemp(prefix="videoscore-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    checkpoint = ensure_stand_in(console)
    clips = _write_sample_videos(root / "videos", videos)
    s3, redis = S3Server(root / "s3"), RedisServer(root / "redis")
    worker: subprocess.Popen[bytes] | None = None
    try:
        s3.start()
        redis.start()
        settings = Settings(
            database_url=f"sqlite:///{root / 'videoscore.db'}",
            broker_url=redis.url,
            s3_endpoint_url=s3.url,
            s3_access_key_id="demo",
            s3_secret_access_key="demo-secret",  # type: ignore[arg-type]
            model=str(checkpoint),
            model_roots=[str(checkpoint)],  # the one folder jobs may name (the default model is allowed anyway)
            allowed_buckets=[DEMO_BUCKET],
            batch_size=2,
            poll_interval_s=0.2,
        )
        console.print(f"S3 API on {s3.url}, Redis on {redis.url}, database {settings.database_url}")
        upgrade(settings.database_url)
        uris = _upload(settings, clips)
        worker = _start_worker(settings, root / "worker.log")
        with Client(settings) as client:
            jobs = client.submit_many(_demo_requests(uris, checkpoint))
            records = wait_with_progress(client, [j.id for j in jobs], console=console, timeout_s=600)
        console.print(results_table(records, title="VideoScore demo: results read back from the database"))
        console.print(f"[bold red]{STAND_IN_WARNING}[/]")
        succeeded = sum(r.status == "succeeded" for r in records)
        console.print(f"{succeeded} scored, {len(records) - succeeded} failed with a recorded reason, "
                      f"in {time.perf_counter() - started:.1f}s; worker log: {root / 'worker.log'}")
        return 0 if succeeded >= min(3, videos) else 1
    finally:
        if worker is not None and worker.poll() is None:
            worker.terminate()
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
        redis.stop()
        s3.stop()
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def _write_sample_videos(folder: Path, count: int) -> list[Path]:
    lengths = [24, 60, 96, 150, 200, 300]
    return [
        make_video(folder / f"clip-{i:02d}.mp4", frames=lengths[i % len(lengths)], size=(320, 240))
        for i in range(count)
    ]


def _upload(settings: Settings, clips: list[Path]) -> list[str]:
    from videoscore.worker.video.storage import make_s3_client

    s3 = make_s3_client(settings)
    s3.create_bucket(Bucket=DEMO_BUCKET)
    for clip in clips:
        s3.upload_file(str(clip), DEMO_BUCKET, clip.name)
    return [f"s3://{DEMO_BUCKET}/{clip.name}" for clip in clips]


def _demo_requests(uris: list[str], checkpoint: Path) -> list[dict[str, object]]:
    requests: list[dict[str, object]] = [
        {"video_uri": uri, "prompt": DEMO_PROMPTS[i % len(DEMO_PROMPTS)], "model": str(checkpoint), "batch": "demo"}
        for i, uri in enumerate(uris)
    ]
    # One bad job on purpose: it must end as a recorded failure while the others are scored.
    requests.append({"video_uri": f"s3://{DEMO_BUCKET}/missing.mp4", "prompt": "a video that is not there",
                     "model": str(checkpoint), "batch": "demo"})
    return requests


def _start_worker(settings: Settings, log_path: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, **settings.to_env()}
    log = log_path.open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "videoscore", "worker", "--loglevel", "INFO"], env=env, stdout=log,
        stderr=subprocess.STDOUT,
    )
