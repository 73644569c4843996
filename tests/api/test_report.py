"""`videoscore report` as a person sees it: the HTML page rendered by headless Chromium, charts and frame
strips present, stand-in scores labelled, and the comparison and worst videos where they belong."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from PIL import Image

from videoscore.core.jobspec import JobRequest
from videoscore.core.settings import Settings
from videoscore.core.variants import ASPECTS
from videoscore.db import jobs as job_queries
from videoscore.db.migrate import upgrade
from videoscore.db.records import ScoreResult
from videoscore.db.session import Database
from videoscore.producer.client import Client
from videoscore.report import build_report, find_chromium, screenshot
from videoscore.worker.testing.media import make_video
from videoscore.worker.video.frames import sample_video


def _scored_batch(db: Database, video: Path, batch: str, bases: list[float], *, stand_in: bool,
                  model: str = "TIGER-Lab/VideoScore-v1.1") -> list[str]:
    sampled = sample_video(video, 16)
    requests = [JobRequest(video_uri=f"file://{video}", prompt=f"{batch} prompt number {i}", batch=batch,
                           model=model) for i in range(len(bases))]
    with db.transaction() as s:
        ids = [job.id for job, _ in job_queries.insert_jobs(s, requests, queue="q")]
    for job_id, base in zip(ids, bases, strict=True):
        result = ScoreResult(
            scores={a: base + 0.2 * i for i, a in enumerate(ASPECTS)}, model_revision="r", stand_in_model=stand_in,
            num_frames=len(sampled.indices), frame_indices=list(sampled.indices), video_etag=None,
            video_bytes=video.stat().st_size, video_total_frames=sampled.info.total_frames, video_fps=24.0,
            video_duration_s=1.0, video_width=sampled.info.width, video_height=sampled.info.height,
            download_s=0.0, decode_s=0.0, preprocess_s=0.0, forward_s=0.1)
        with db.transaction() as s:
            claimed = job_queries.claim_job(s, job_id, worker_host="t", lease=timedelta(seconds=60))
            assert claimed is not None
            job_queries.complete_job(s, job_id, result, worker_host="t", attempt=1)
    return ids


@pytest.fixture
def client(tmp_path: Path) -> Client:
    url = f"sqlite:///{tmp_path / 'report.db'}"
    upgrade(url)
    # the frame strips read the videos as a worker would: file:// only under the roots it is given
    settings = Settings(database_url=url, broker_url="redis://127.0.0.1:1/0", allow_file_uris=True,
                        file_roots=[str(tmp_path)])
    db = Database(url)
    video = make_video(tmp_path / "clip.mp4", frames=30, size=(128, 96))
    _scored_batch(db, video, "run-42", [1.0, 1.4, 2.2, 2.6, 3.0, 3.3], stand_in=True)
    _scored_batch(db, video, "run-41", [2.0, 2.5, 2.9], stand_in=True)
    with db.transaction() as s:  # a failure, to be listed by kind
        [(job, _)] = job_queries.insert_jobs(s, [JobRequest(video_uri="s3://b/gone.mp4", prompt="lost",
                                                            batch="run-42")], queue="q")
        job_queries.claim_job(s, job.id, worker_host="t", lease=timedelta(seconds=60))
        job_queries.fail_job(s, job.id, kind="video_not_found", message="s3://b/gone.mp4 does not exist",
                             worker_host="t", attempt=1)
    db.dispose()
    return Client(settings)


def test_the_report_has_charts_frame_strips_comparison_and_the_stand_in_warning(client: Client, tmp_path: Path) -> None:
    index = build_report(client, batch="run-42", out=tmp_path / "report", compare_batches=["run-41"], worst=3)
    page = index.read_text()
    assert "UNTRAINED STAND-IN MODEL" in page and "Stand-in scores: meaningless" in page
    assert 'src="distributions.png"' in page and 'src="comparison.png"' in page
    # the three lowest means, lowest first, each with a strip of the frames the model saw
    positions = [page.index(f"run-42 prompt number {i}") for i in (0, 1, 2)]
    assert positions == sorted(positions) and "run-42 prompt number 5" not in page
    strips = sorted((tmp_path / "report" / "frames").glob("*.png"))
    assert len(strips) == 3 and all(f'src="frames/{s.name}"' in page for s in strips)
    with Image.open(strips[0]) as strip:
        assert strip.height == 72 and strip.width > 4 * 72  # 8 frames side by side
    assert "video_not_found" in page and "run-41" in page


@pytest.mark.skipif(find_chromium() is None, reason="chromium is not installed (scripts/ensure-servers.sh installs it)")
def test_headless_chromium_renders_the_report_as_a_person_would_see_it(client: Client, tmp_path: Path) -> None:
    index = build_report(client, batch="run-42", out=tmp_path / "report", compare_batches=["run-41"], worst=3)
    png = screenshot(index, tmp_path / "report.png", width=1200, height=1800)
    with Image.open(png) as shot:
        image = shot.convert("RGB")
    assert image.size == (1200, 1800)
    banner = image.getpixel((600, 8))
    assert banner[0] > 150 and banner[1] < 80 and banner[2] < 80, f"the stand-in banner is not red: {banner}"
    colours = image.resize((60, 90)).getcolors(maxcolors=60 * 90)
    assert colours is not None and len(colours) > 50, "the page rendered nearly blank"
    # the charts' blue (the batch's colour) appears: the PNGs loaded into the page
    blue = sum(n for n, (r, g, b) in colours if b > 150 and r < 120)
    assert blue > 0


def test_the_report_command_writes_the_page_and_refuses_an_unknown_batch(client: Client, tmp_path: Path) -> None:
    env = {**os.environ, **client.settings.to_env(), "COLUMNS": "200"}
    ok = subprocess.run([sys.executable, "-m", "videoscore", "report", "--batch", "run-42", "--compare-batch",
                         "run-41", "--out", str(tmp_path / "cli-report"), "--no-thumbnails"],
                        capture_output=True, text=True, env=env, timeout=120)
    missing = subprocess.run([sys.executable, "-m", "videoscore", "report", "--batch", "nope", "--out",
                              str(tmp_path / "none")], capture_output=True, text=True, env=env, timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    page = (tmp_path / "cli-report" / "index.html").read_text()
    assert "frame strips were turned off" in page
    assert missing.returncode == 2 and "no job belongs to batch 'nope'" in missing.stderr


def test_without_the_worker_extra_the_report_has_no_frame_strips_and_says_why(client: Client, tmp_path: Path) -> None:
    # PyAV made unimportable in a child process: what a producer-only install (no worker extra) looks like
    code = (
        "import sys; sys.modules['av'] = None\n"
        "from pathlib import Path\n"
        "from videoscore.core.settings import Settings\nfrom videoscore.producer.client import Client\n"
        "from videoscore.report import build_report\n"
        f"client = Client(Settings(database_url={client.settings.database_url!r}, broker_url='redis://127.0.0.1:1/0'))\n"
        f"print(build_report(client, batch='run-42', out=Path({str(tmp_path / 'light')!r}), worst=2))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    page = (tmp_path / "light" / "index.html").read_text()
    assert "frame strips need the worker extra" in page and "av is missing" in page
    assert not (tmp_path / "light" / "frames").exists() and "distributions.png" in page


def test_models_are_compared_within_a_batch(client: Client, tmp_path: Path) -> None:
    db = Database(client.settings.database_url)
    video = make_video(tmp_path / "other.mp4", frames=20, size=(96, 64))
    _scored_batch(db, video, "run-42", [3.5, 3.7], stand_in=False, model="TIGER-Lab/VideoScore")
    db.dispose()
    index = build_report(client, batch="run-42", out=tmp_path / "models", thumbnails=False,
                         compare_models=["TIGER-Lab/VideoScore-v1.1", "TIGER-Lab/VideoScore"])
    page = index.read_text()
    assert "models compared within the batch" in page and 'src="comparison.png"' in page
    assert ">VideoScore-v1.1" in page and ">VideoScore<" in page
    with pytest.raises(ValueError, match="no job scored by nobody/Else"):
        build_report(client, batch="run-42", out=tmp_path / "x", compare_models=["nobody/Else"])
