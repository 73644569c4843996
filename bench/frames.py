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

"indexed" is the keyframe-guided reader decoding every frame on its way to a target (`skip_nonref=False`);
"+NONREF" is the same reader letting the H.264 decoder drop non-reference frames no target needs (the default).
The first table adds +NONREF's CPU and frame columns to the 640x360 clips; the second compares the two on 720p
clips (the same clip lengths and keyframe intervals; x264 superfast, so adaptive B-frames with a B-pyramid:
what share of frames are non-reference depends on the content): frames decoded and CPU milliseconds, medians
of --runs interleaved runs, and whether +NONREF's frames were pixel-identical to the model card's loop.
`--no-720p` leaves the second table out.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere: bench/ is not a package

import numpy as np

from videoscore.worker.testing.media import make_video
from videoscore.worker.video.frames import SampledVideo, sample_video

FPS = 24
SIZE = (640, 360)
NONREF_SIZE = (1280, 720)
CLIPS = [(10, 12), (10, 250), (60, 12), (60, 250)]  # (seconds, keyframe interval)
FRAME_COUNTS = (16, 48)

# how each reader is asked for (sample_video's keywords); runs interleave them in this order
READERS: dict[str, dict[str, Any]] = {
    "decode_all": {"method": "decode_all"},
    "indexed": {"method": "indexed", "skip_nonref": False},
    "nonref": {"method": "indexed", "skip_nonref": True},
}


@dataclass(frozen=True)
class Timing:
    """Medians over the runs of one reader on one cell, and what its last run returned."""

    wall_ms: float
    cpu_ms: float
    frames: int
    sampled: SampledVideo


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
    nonref_ms: float
    nonref_cpu_ms: float
    nonref_frames: int
    identical: bool  # indexed and +NONREF both returned the model card loop's pixels


def main() -> None:
    args = _arguments()
    cache = REPO / ".cache" / "bench-frames"
    print(f"machine: {os.cpu_count()} cores, load average {_load_average()} (other work on the box inflates ms)")
    clips = [_clip(cache, seconds, gop, SIZE, fresh=args.fresh) for seconds, gop in CLIPS]
    rows = [_measure(path, label, num_frames, args.runs) for path, label in clips for num_frames in FRAME_COUNTS]
    _print_table(rows, args.runs)
    if not args.no_720p:
        clips = [_clip(cache, seconds, gop, NONREF_SIZE, fresh=args.fresh) for seconds, gop in CLIPS]
        rows = [
            _measure(path, label, num_frames, args.runs, time_reference=False)
            for path, label in clips
            for num_frames in FRAME_COUNTS
        ]
        _print_nonref_table(rows, args.runs)
    print(f"load average after: {_load_average()}")


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per method and cell (median reported)")
    parser.add_argument("--fresh", action="store_true", help="re-encode the clips even if cached")
    parser.add_argument("--no-720p", action="store_true", help="leave out the 720p indexed vs +NONREF table")
    return parser.parse_args()


def _clip(cache: Path, seconds: int, gop: int, size: tuple[int, int], *, fresh: bool) -> tuple[Path, str]:
    path = cache / f"{seconds}s-gop{gop}-{size[0]}x{size[1]}.mp4"
    label = f"{seconds} s, keyframe every {gop}"
    if fresh or not path.exists():
        started = time.perf_counter()
        partial = path.with_suffix(".partial.mp4")
        # textured: realistic bitrate (about 1 Mbit/s) and decode cost; superfast still uses CABAC and B-frames
        make_video(partial, frames=seconds * FPS, fps=FPS, size=size, gop=gop, pattern="textured", preset="superfast")
        partial.rename(path)
        print(f"encoded {path.name} in {time.perf_counter() - started:.1f} s ({path.stat().st_size / 1e6:.1f} MB)")
    return path, label


def _measure(path: Path, label: str, num_frames: int, runs: int, *, time_reference: bool = True) -> Row:
    """Time the readers on one cell, interleaved; without `time_reference` the model card's loop runs once,
    untimed, only to check the pixels (its columns then read 0)."""
    timed = [name for name in READERS if time_reference or name != "decode_all"]
    times: dict[str, list[float]] = {name: [] for name in timed}
    cpu_times: dict[str, list[float]] = {name: [] for name in timed}
    results: dict[str, SampledVideo] = {}
    for _ in range(runs):
        for name in timed:  # interleaved, so a burst of background load lands on every reader alike
            started, started_cpu = time.perf_counter(), time.process_time()
            results[name] = sample_video(path, num_frames, **READERS[name])
            times[name].append((time.perf_counter() - started) * 1000)
            cpu_times[name].append((time.process_time() - started_cpu) * 1000)
    if not time_reference:
        results["decode_all"] = sample_video(path, num_frames, **READERS["decode_all"])
    reference = results["decode_all"]
    identical = all(
        reference.indices == results[name].indices
        and all(np.array_equal(a, b) for a, b in zip(reference.frames, results[name].frames, strict=True))
        for name in ("indexed", "nonref")
    )

    def median(samples: dict[str, list[float]], name: str) -> float:
        return statistics.median(samples[name]) if name in samples else 0.0

    return Row(
        clip=label,
        num_frames=num_frames,
        decode_all_ms=median(times, "decode_all"),
        indexed_ms=median(times, "indexed"),
        decode_all_cpu_ms=median(cpu_times, "decode_all"),
        indexed_cpu_ms=median(cpu_times, "indexed"),
        decode_all_frames=reference.frames_decoded,
        indexed_frames=results["indexed"].frames_decoded,
        nonref_ms=median(times, "nonref"),
        nonref_cpu_ms=median(cpu_times, "nonref"),
        nonref_frames=results["nonref"].frames_decoded,
        identical=identical,
    )


def _print_table(rows: list[Row], runs: int) -> None:
    print()
    print(f"sample_video on {SIZE[0]}x{SIZE[1]} H.264 at {FPS} fps, ms per video (median of {runs})")
    print()
    print(
        "| clip | N | decode_all ms | indexed ms | decode_all/indexed "
        "| CPU ms (all / indexed) | frames decoded (all / indexed) | identical "
        "| +NONREF CPU ms | +NONREF frames decoded |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|:---:|---:|---:|")
    for row in rows:
        print(
            f"| {row.clip} | {row.num_frames} | {row.decode_all_ms:.0f} | {row.indexed_ms:.0f} "
            f"| {row.decode_all_ms / row.indexed_ms:.2f}x | {row.decode_all_cpu_ms:.0f} / {row.indexed_cpu_ms:.0f} "
            f"| {row.decode_all_frames} / {row.indexed_frames} | {'yes' if row.identical else 'NO'} "
            f"| {row.nonref_cpu_ms:.0f} | {row.nonref_frames} |"
        )


def _print_nonref_table(rows: list[Row], runs: int) -> None:
    print()
    print(
        f"indexed vs indexed+NONREF, sample_video on {NONREF_SIZE[0]}x{NONREF_SIZE[1]} H.264 at {FPS} fps "
        f"(CPU and wall ms: median of {runs}, interleaved)"
    )
    print()
    print(
        "| clip | N | frames decoded (indexed / +NONREF) | fewer frames | CPU ms (indexed / +NONREF) | less CPU "
        "| wall ms (indexed / +NONREF) | identical |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|:---:|")
    for row in rows:
        print(
            f"| {row.clip} | {row.num_frames} | {row.indexed_frames} / {row.nonref_frames} "
            f"| {_saved(row.indexed_frames, row.nonref_frames)} "
            f"| {row.indexed_cpu_ms:.0f} / {row.nonref_cpu_ms:.0f} | {_saved(row.indexed_cpu_ms, row.nonref_cpu_ms)} "
            f"| {row.indexed_ms:.0f} / {row.nonref_ms:.0f} | {'yes' if row.identical else 'NO'} |"
        )


def _saved(before: float, after: float) -> str:
    return f"{(before - after) / before:.0%}" if before else "-"


def _load_average() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


if __name__ == "__main__":
    main()
