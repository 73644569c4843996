"""Benchmark of frame sampling: the model card's decode-everything loop against the keyframe-guided reader.

Run as `.venv/bin/python bench/frames.py`. It writes 640x360 H.264 clips (10 s and 60 s at 24 fps, with a
keyframe every 12 frames and every 250) under .cache/bench-frames/ (kept for the next run), then times
`videoscore.worker.video.frames.sample_video` with each method at 16 and 48 frames: the call a worker makes, probe
included.

Columns: wall milliseconds per video (median of --runs, the methods interleaved so background load hits
both alike), decode_all/indexed, CPU milliseconds (this process, decoder threads included: inflated less by
other work on the machine than wall time), frames each method had the decoder produce (a measure of work
that does not depend on load at all), and whether every sampled frame was pixel-identical. Figures, not
assertions.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere: bench/ is not a package

import numpy as np

from videoscore.worker.testing.media import make_video
from videoscore.worker.video.frames import SampledVideo, sample_video

FPS = 24
SIZE = (640, 360)
CLIPS = [(10, 12), (10, 250), (60, 12), (60, 250)]  # (seconds, keyframe interval)
FRAME_COUNTS = (16, 48)


@dataclass(frozen=True)
class Row:
    clip: str
    num_frames: int
    decode_all_ms: float
    indexed_ms: float
    decode_all_cpu_ms: float
    indexed_cpu_ms: float
    decode_all_frames: int
    indexed_frames: int
    identical: bool


def main() -> None:
    args = _arguments()
    cache = REPO / ".cache" / "bench-frames"
    print(f"machine: {os.cpu_count()} cores, load average {_load_average()} (other work on the box inflates ms)")
    clips = [_clip(cache, seconds, gop, fresh=args.fresh) for seconds, gop in CLIPS]
    rows = [_measure(path, label, num_frames, args.runs) for path, label in clips for num_frames in FRAME_COUNTS]
    _print_table(rows, args.runs)
    print(f"load average after: {_load_average()}")


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per method and cell (median reported)")
    parser.add_argument("--fresh", action="store_true", help="re-encode the clips even if cached")
    return parser.parse_args()


def _clip(cache: Path, seconds: int, gop: int, *, fresh: bool) -> tuple[Path, str]:
    path = cache / f"{seconds}s-gop{gop}-{SIZE[0]}x{SIZE[1]}.mp4"
    label = f"{seconds} s, keyframe every {gop}"
    if fresh or not path.exists():
        started = time.perf_counter()
        partial = path.with_suffix(".partial.mp4")
        # textured: realistic bitrate (about 1 Mbit/s) and decode cost; superfast still uses CABAC and B-frames
        make_video(partial, frames=seconds * FPS, fps=FPS, size=SIZE, gop=gop, pattern="textured", preset="superfast")
        partial.rename(path)
        print(f"encoded {path.name} in {time.perf_counter() - started:.1f} s ({path.stat().st_size / 1e6:.1f} MB)")
    return path, label


def _measure(path: Path, label: str, num_frames: int, runs: int) -> Row:
    times: dict[str, list[float]] = {"decode_all": [], "indexed": []}
    cpu_times: dict[str, list[float]] = {"decode_all": [], "indexed": []}
    results: dict[str, SampledVideo] = {}
    for _ in range(runs):
        for method, elapsed in times.items():  # interleaved, so a burst of background load lands on both
            started, started_cpu = time.perf_counter(), time.process_time()
            results[method] = sample_video(path, num_frames, method=method)  # type: ignore[arg-type]
            elapsed.append((time.perf_counter() - started) * 1000)
            cpu_times[method].append((time.process_time() - started_cpu) * 1000)
    reference, fast = results["decode_all"], results["indexed"]
    identical = reference.indices == fast.indices and all(
        np.array_equal(a, b) for a, b in zip(reference.frames, fast.frames, strict=True)
    )
    return Row(
        clip=label,
        num_frames=num_frames,
        decode_all_ms=statistics.median(times["decode_all"]),
        indexed_ms=statistics.median(times["indexed"]),
        decode_all_cpu_ms=statistics.median(cpu_times["decode_all"]),
        indexed_cpu_ms=statistics.median(cpu_times["indexed"]),
        decode_all_frames=reference.frames_decoded,
        indexed_frames=fast.frames_decoded,
        identical=identical,
    )


def _print_table(rows: list[Row], runs: int) -> None:
    print()
    print(f"sample_video on {SIZE[0]}x{SIZE[1]} H.264 at {FPS} fps, ms per video (median of {runs})")
    print()
    print(
        "| clip | N | decode_all ms | indexed ms | decode_all/indexed "
        "| CPU ms (all / indexed) | frames decoded (all / indexed) | identical |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|:---:|")
    for row in rows:
        print(
            f"| {row.clip} | {row.num_frames} | {row.decode_all_ms:.0f} | {row.indexed_ms:.0f} "
            f"| {row.decode_all_ms / row.indexed_ms:.2f}x | {row.decode_all_cpu_ms:.0f} / {row.indexed_cpu_ms:.0f} "
            f"| {row.decode_all_frames} / {row.indexed_frames} | {'yes' if row.identical else 'NO'} |"
        )


def _load_average() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


if __name__ == "__main__":
    main()
