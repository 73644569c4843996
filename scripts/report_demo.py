"""Build the README's report screenshot (docs/report.png) from a real run on one machine.

Synthetic clips (a few simple scenes, drawn with numpy, encoded with PyAV) go to a local S3 server; two
batches are submitted to a real Redis; a real worker scores them with an UNTRAINED STAND-IN checkpoint (so
the numbers are random-weight scores, and the report says so); then `videoscore report` writes the page and
headless Chromium photographs it.

    .venv/bin/python scripts/report_demo.py [--out docs/report.png] [--keep DIR]
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from videoscore.core.settings import Settings  # noqa: E402
from videoscore.db.migrate import upgrade  # noqa: E402
from videoscore.producer.client import Client  # noqa: E402
from videoscore.report import build_report, screenshot  # noqa: E402
from videoscore.worker.testing.servers import RedisServer, S3Server  # noqa: E402
from videoscore.worker.testing.stand_in import build_stand_in_checkpoint  # noqa: E402
from videoscore.worker.video.storage import make_s3_client  # noqa: E402

BUCKET = "gen-videos"
W, H, FRAMES = 192, 112, 24
SCENES = {
    "sunset": "a sun setting over a calm sea, warm colours",
    "ball": "a red ball bouncing across a green lawn",
    "stripes": "waves rolling onto a beach, seen from above",
    "orbit": "two moons circling a blue planet in space",
}


def draw(scene: str, variant: int, t: int) -> np.ndarray:
    y, x = np.mgrid[0:H, 0:W].astype(np.float32)
    phase = t / FRAMES
    if scene == "sunset":
        sky = np.stack([255 - y * 0.8, 120 + y * 0.6 - variant * 15, 60 + y * 0.3 + variant * 20], -1)
        cy, cx = 30 + phase * 40, W * (0.3 + 0.1 * variant)
        sun = ((y - cy) ** 2 + (x - cx) ** 2) < 160
        sky[sun] = (255, 220, 90)
        sky[y > 76] = (30 + variant * 10, 60, 120)
        return np.clip(sky, 0, 255).astype(np.uint8)
    if scene == "ball":
        img = np.zeros((H, W, 3), np.float32)
        img[:] = (70, 150 - variant * 10, 70)
        img[y < 40] = (150, 200, 250)
        cx = 20 + phase * (W - 40)
        cy = 80 - abs(math.sin(phase * math.pi * (2 + variant))) * 50
        img[((y - cy) ** 2 + (x - cx) ** 2) < 90 + 20 * variant] = (220, 40, 40)
        return img.astype(np.uint8)
    if scene == "stripes":
        wave = np.sin((x * 0.08 + y * 0.05) - phase * 6.28 * (1 + variant * 0.5))
        sea = np.stack([40 + 30 * wave, 110 + 50 * wave, 180 + 40 * wave], -1)
        sand = x > W * (0.65 + 0.05 * variant)
        sea[sand] = (225, 200, 150)
        return np.clip(sea, 0, 255).astype(np.uint8)
    img = np.zeros((H, W, 3), np.float32)
    img[:] = (8, 8, 24)
    img[((y - H / 2) ** 2 + (x - W / 2) ** 2) < 500] = (40, 90, 200)
    for k in range(2):
        angle = phase * 6.28 * (1 + variant * 0.3) + k * math.pi
        mx, my = W / 2 + math.cos(angle) * (50 + 8 * k), H / 2 + math.sin(angle) * 30
        img[((y - my) ** 2 + (x - mx) ** 2) < 30] = (220, 220, 200)
    return img.astype(np.uint8)


def make_clip(path: Path, scene: str, variant: int) -> Path:
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=12)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.options = {"threads": "1"}
        for t in range(FRAMES):
            for packet in stream.encode(av.VideoFrame.from_ndarray(draw(scene, variant, t), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "report.png")
    parser.add_argument("--keep", type=Path, default=None, help="keep the run (database, report) here")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="videoscore-report-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    redis, s3 = RedisServer(work / "redis"), S3Server(work / "s3")
    redis.start(), s3.start()
    worker = None
    try:
        checkpoint = build_stand_in_checkpoint(work / "stand-in", seed=0)
        settings = Settings(database_url=f"sqlite:///{work / 'videoscore.db'}", broker_url=redis.url,
                            s3_endpoint_url=s3.url, s3_access_key_id="demo", s3_secret_access_key="demo",  # type: ignore[arg-type]
                            model=str(checkpoint), poll_interval_s=0.3, batch_size=4)
        upgrade(settings.database_url)
        client_s3 = make_s3_client(settings)
        client_s3.create_bucket(Bucket=BUCKET)
        jobs = []
        for run, variants in (("run-41", (0, 1)), ("run-42", (2, 3))):
            for scene, prompt in SCENES.items():
                for variant in variants:
                    for take in range(3):
                        name = f"{run}/{scene}-{variant}-{take}.mp4"
                        clip = make_clip(work / f"{run}-{scene}-{variant}-{take}.mp4", scene, variant + take)
                        client_s3.upload_file(str(clip), BUCKET, name)
                        jobs.append({"video_uri": f"s3://{BUCKET}/{name}", "prompt": prompt, "batch": run,
                                     "model": str(checkpoint), "tags": {"scene": scene}})
        jobs.append({"video_uri": f"s3://{BUCKET}/run-42/lost.mp4", "prompt": "a clip that was never uploaded",
                     "batch": "run-42", "model": str(checkpoint)})
        env = {**os.environ, **settings.to_env()}
        worker = subprocess.Popen([sys.executable, "-m", "videoscore", "worker", "--concurrency", "4"], env=env,
                                  stdout=(work / "worker.log").open("ab"), stderr=subprocess.STDOUT)
        with Client(settings) as client:
            submitted = client.submit_many(jobs)
            started = time.monotonic()
            client.wait([j.id for j in submitted], timeout_s=1800,
                        on_progress=lambda done, total: print(f"\rscored {done}/{total}", end="", flush=True))
            print(f"\nscored {len(submitted)} jobs in {time.monotonic() - started:.0f}s")
            index = build_report(client, batch="run-42", out=work / "report", compare_batches=["run-41"], worst=5)
        screenshot(index, args.out, width=1500, height=2300)
        print(f"report: {index}\nscreenshot: {args.out}")
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=60)
        s3.stop()
        redis.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
