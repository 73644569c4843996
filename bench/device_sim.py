"""Does the CPU keep a GPU busy? The worker's path with the forward pass replaced by a simulated device.

Task threads do what a worker's tasks do -- sample the frames (``recipe.sample``, the keyframe-guided reader),
then ``Engine.submit``, which prepares the video in the task's thread -- inside ``engine.expecting_request()``,
and the real engine batches them. The scorer is a simulated device: on the engine's thread it runs the real
``collate`` onto PyTorch's ``meta`` device (the host-side work of building a batch, with no data moved), then
sleeps for what the forward pass would take on the device, from a per-frame cost model:

    forward_s(batch) = 15 ms + sum over frames of (3 ms + 7 ms x vision patches / 2730)

(2730 patches: a 720p frame resized to 980x551; about 10 ms a frame at 720p, 0.48 s for a 48-frame video, what
one H100 does at ~40% MFU on the 8B model; ``--frame-ms`` scales it). No network, no database: the stand-in
checkpoint's processor is the real VideoScore processor configuration.

``before`` replays the previous design in the same run: the task threads only decode, and the engine's
thread ran the checkpoint's processor on each batch before its forward (``Scorer.score`` of 0b5e40ba), with
batches that always waited ``batch_wait_ms`` to fill.

First, CPU seconds per 48-frame 720p video by stage, one video at a time (decode with and without skipping
non-reference frames; outside the forward pass before and after). Then per row: videos/s; device busy
(simulated forward time over wall time, and over the time from the first batch's start to the last one's end,
which leaves out the ramp-up while the first videos are decoded); mean batch size; the process's CPU seconds
per video (all threads: FFmpeg decodes on threads of its own), of which the task thread's preprocessing and
the engine thread's own work; the engine thread's non-forward time per batch; and the cores one such device
needs so that the CPU side keeps up (CPU-s per video x the device's videos/s at full batches). Nothing is
asserted.

    .venv/bin/python bench/device_sim.py                      # compare + the matrix (several minutes on 2 cores)
    .venv/bin/python bench/device_sim.py --only-compare       # before vs after at 720p, 48 frames
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from videoscore.core.variants import ModelSpec, resolve_model  # noqa: E402
from videoscore.worker.model.engine import Engine  # noqa: E402
from videoscore.worker.model.preprocess import (  # noqa: E402
    PreparedRequest,
    Preprocessor,
    ScoreRequest,
    validate,
)
from videoscore.worker.model.prompt import build_eval_prompt  # noqa: E402
from videoscore.worker.model.scorer import AspectScores, BatchResult  # noqa: E402
from videoscore.worker.testing.media import make_video  # noqa: E402

SIZES = {"480p": (854, 480), "720p": (1280, 720), "1080p": (1920, 1080)}
PATCHES_720P = 70 * 39  # 980x551 in 14-pixel patches
META = torch.device("meta")


@dataclass
class CostModel:
    fixed_ms: float = 15.0
    per_frame_ms: float = 3.0
    per_frame_vision_ms: float = 7.0
    scale: float = 1.0

    def forward_s(self, patches_per_frame: Sequence[int]) -> float:
        ms = self.fixed_ms + sum(self.per_frame_ms + self.per_frame_vision_ms * p / PATCHES_720P
                                 for p in patches_per_frame)
        return ms * self.scale / 1000


@dataclass
class DeviceLog:
    """What the simulated device did: its busy seconds and the engine thread's own CPU per batch."""

    busy_s: float = 0.0
    first_start: float | None = None  # perf_counter when the first batch reached the engine thread
    last_end: float = 0.0
    batches: list[int] = field(default_factory=list)
    host_cpu_s: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def started(self, at: float) -> None:
        with self.lock:
            if self.first_start is None:
                self.first_start = at


def resized_patches(width: int, height: int) -> int:
    """Vision patches of one frame after Idefics2's resize (longest edge 980, shortest 378)."""
    if width >= height and width > 980:
        width, height = 980, int(980 / (width / height))
    elif height > width and height > 980:
        height, width = 980, int(980 * (width / height))
    return (max(height, 378) // 14) * (max(width, 378) // 14)


class SimulatedDevice:
    """A ScorerProtocol whose forward pass is a sleep: the real collate on the meta device, then the cost model."""

    device = "simulated"
    revision = "simulated"

    def __init__(self, spec: ModelSpec, preprocessor: Preprocessor, cost: CostModel, log: DeviceLog) -> None:
        self.spec, self._pre, self._cost, self._log = spec, preprocessor, cost, log
        self._table = preprocessor.recipe.value_table(preprocessor.processor)

    def warm_up(self) -> None:
        pass

    def close(self) -> None:
        pass

    def score_prepared(self, batch: Sequence[PreparedRequest]) -> BatchResult:
        started_cpu, started = time.thread_time(), time.perf_counter()
        self._log.started(started)
        self._pre.recipe.collate(batch, pad_token_id=self._pre.pad_token_id or 0, table=self._table, device=META,
                                 dtype=torch.bfloat16)
        host_cpu, collated = time.thread_time() - started_cpu, time.perf_counter()
        return self._forward(batch, host_cpu, collated - started, [_patches(p) for p in batch])

    def _forward(self, batch: Sequence[PreparedRequest], host_cpu: float, host_s: float,
                 patches: list[list[int]]) -> BatchResult:
        forward_s = self._cost.forward_s([p for video in patches for p in video])
        time.sleep(forward_s)
        with self._log.lock:
            self._log.last_end = time.perf_counter()
            self._log.busy_s += forward_s
            self._log.batches.append(len(batch))
            self._log.host_cpu_s.append(host_cpu)
        return BatchResult([AspectScores.from_logits([2.5] * 5) for _ in batch], host_s, forward_s)


def _patches(prepared: PreparedRequest) -> list[int]:
    video = prepared.inputs
    return [(h // 14) * (w // 14) for h, w in video.sizes]


class BeforePreprocessor:
    """The previous design's task-side: frames checked and handed over as they are."""

    def __init__(self, preprocessor: Preprocessor) -> None:
        self._pre = preprocessor
        self.max_tokens = preprocessor.max_tokens

    def check_prompt(self, prompt: str, num_frames: int | None = None) -> None:
        self._pre.check_prompt(prompt, num_frames)

    def prepare(self, request: ScoreRequest) -> PreparedRequest:
        validate(request)
        return PreparedRequest(prompt=request.prompt, num_frames=len(request.frames), input_ids=[],
                               inputs=list(request.frames), shape_key=(), prepare_s=0.0)


class BeforeDevice(SimulatedDevice):
    """The previous design's engine thread: the checkpoint's processor on the whole batch, then the forward."""

    def score_prepared(self, batch: Sequence[PreparedRequest]) -> BatchResult:
        started_cpu, started = time.thread_time(), time.perf_counter()
        texts = [build_eval_prompt(p.prompt, p.num_frames) for p in batch]
        images = [[Image.fromarray(frame) for frame in p.inputs] for p in batch]
        self._log.started(started)
        inputs = self._pre.processor(text=texts, images=images, padding="longest", return_tensors="pt")
        inputs["pixel_values"].to(torch.bfloat16)  # the cast the old path did on the way to the device
        host_cpu, collated = time.thread_time() - started_cpu, time.perf_counter()
        sizes = inputs["pixel_attention_mask"].sum(dim=(-1, -2)) // 196  # real patches per image
        patches = [[int(n) for n in row if n > 0] for row in sizes]
        return self._forward(batch, host_cpu, collated - started, patches)


@dataclass
class Row:
    mode: str
    size: str
    frames: int
    concurrency: int
    batch_size: int
    videos: int
    wall_s: float
    process_cpu_s: float  # every thread of the process over the row: FFmpeg's decoding threads too
    busy_s: float
    steady_s: float  # from the first batch's start to the last batch's end: the row without its ramp-up
    batches: list[int]
    decode_cpu: list[float]
    prepare_cpu: list[float]
    host_cpu: list[float]

    @property
    def cpu_per_video(self) -> float:
        return self.process_cpu_s / self.videos

    def line(self, device_videos_per_s: float) -> str:
        cores = self.cpu_per_video * device_videos_per_s
        return (f"| {self.mode} | {self.size} | {self.frames} | {self.concurrency} | {self.videos / self.wall_s:.2f} "
                f"| {100 * self.busy_s / self.wall_s:.0f}% | {100 * self.busy_s / self.steady_s:.0f}% "
                f"| {statistics.fmean(self.batches):.1f} "
                f"| {self.cpu_per_video:.2f} | {statistics.fmean(self.prepare_cpu):.2f} "
                f"| {sum(self.host_cpu) / self.videos:.2f} | {1000 * statistics.fmean(self.host_cpu):.0f} "
                f"| {cores:.1f} |")


HEADER = ("| path | clip | frames | concurrency | videos/s | device busy | busy from the first batch | mean batch "
          "| CPU-s/video, all threads "
          "| preprocess CPU-s/video (task thread) | engine-thread CPU-s/video | engine-thread ms/batch outside "
          "the forward | cores to keep one device busy |\n"
          "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")


def run_row(mode: str, spec: ModelSpec, clip: Path, size: str, frames: int, concurrency: int, args: argparse.Namespace,
            preprocessor: Preprocessor) -> Row:
    log = DeviceLog()
    cost = CostModel(scale=args.frame_ms / 10.0)
    if mode == "after":
        engine = Engine(lambda s: SimulatedDevice(s, preprocessor, cost, log), lambda s: preprocessor,
                        batch_size=args.batch_size, batch_wait_ms=args.batch_wait_ms,
                        jobs_announce=not args.no_announce)
    else:
        engine = Engine(lambda s: BeforeDevice(s, preprocessor, cost, log), lambda s: BeforePreprocessor(preprocessor),
                        batch_size=args.batch_size, batch_wait_ms=args.batch_wait_ms)
    engine.start(preload=spec)
    recipe = preprocessor.recipe
    decode_cpu: list[float] = []
    prepare_cpu: list[float] = []
    cpu_lock = threading.Lock()

    def job(index: int) -> None:
        with engine.expecting_request():
            t0 = time.thread_time()
            sampled = recipe.sample(clip, num_frames=frames, max_pixels=None)
            t1 = time.thread_time()
            future = engine.submit(spec, ScoreRequest(frames=sampled.frames, prompt=f"clip {index}: a textured pan"))
            t2 = time.thread_time()
            sampled.frames.clear()
        future.result()
        with cpu_lock:
            decode_cpu.append(t1 - t0)
            prepare_cpu.append(t2 - t1)

    started, started_cpu = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(job, range(args.videos)))
    wall, cpu = time.perf_counter() - started, time.process_time() - started_cpu
    engine.stop()
    steady = log.last_end - (log.first_start if log.first_start is not None else started)
    return Row(mode, size, frames, concurrency, args.batch_size, args.videos, wall, cpu, log.busy_s, steady,
               log.batches, decode_cpu, prepare_cpu, log.host_cpu_s)


def stage_cpu(spec: ModelSpec, preprocessor: Preprocessor, clip: Path, frames: int, repeats: int) -> None:
    """CPU seconds per video by stage, one video at a time on one thread (no contention from the bench's own
    threads): decode with and without skipping non-reference frames, then what happens outside the forward pass
    before (the processor on the engine thread) and after (prepare in the task thread + collate)."""
    from videoscore.worker.video.frames import sample_video

    table = preprocessor.recipe.value_table(preprocessor.processor)
    sampled = sample_video(clip, frames)
    request = ScoreRequest(frames=sampled.frames, prompt="a textured pan")

    def processor() -> None:
        texts = [build_eval_prompt(request.prompt, frames)]
        preprocessor.processor(text=texts, images=[[Image.fromarray(f) for f in request.frames]],
                               padding="longest", return_tensors="pt")

    def prepare_and_collate() -> None:
        prepared = preprocessor.prepare(request)
        preprocessor.recipe.collate([prepared], pad_token_id=preprocessor.pad_token_id or 0, table=table,
                                    device=META, dtype=torch.bfloat16)

    stages = {
        "decode, indexed reader": lambda: sample_video(clip, frames, skip_nonref=False),
        "decode, indexed + skip non-reference frames": lambda: sample_video(clip, frames),
        "before: processor on the engine thread": processor,
        "after: prepare (task thread) + collate (engine thread)": prepare_and_collate,
    }
    times: dict[str, list[float]] = {name: [] for name in stages}
    for _ in range(repeats):  # interleaved, so drifting load hits every stage alike
        for name, stage in stages.items():
            started = time.process_time()
            stage()
            times[name].append(time.process_time() - started)
    print(f"CPU-s per video, {clip.stem} {frames} frames, median of {repeats} (one thread, one video at a time):")
    print()
    print("| stage | CPU-s |\n|---|---:|")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.3f} |")
    before = statistics.median(times["before: processor on the engine thread"])
    after = statistics.median(times["after: prepare (task thread) + collate (engine thread)"])
    print(f"\noutside the forward pass: {before:.2f} -> {after:.2f} CPU-s per video ({before / after:.1f}x less)")
    print()


def device_videos_per_s(size: str, frames: int, batch_size: int, frame_ms: float) -> float:
    """How many videos a second the simulated device scores at full batches: the demand on the CPU side."""
    width, height = SIZES[size]
    cost = CostModel(scale=frame_ms / 10.0)
    return batch_size / cost.forward_s([resized_patches(width, height)] * frames * batch_size)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="480p,720p,1080p")
    parser.add_argument("--frames", default="16,48")
    parser.add_argument("--concurrency", default="1,2,4,8")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--batch-wait-ms", type=int, default=200)
    parser.add_argument("--videos", type=int, default=8, help="videos per matrix row")
    parser.add_argument("--compare-videos", type=int, default=16, help="videos per before/after row")
    parser.add_argument("--clip-seconds", type=float, default=4.0)
    parser.add_argument("--frame-ms", type=float, default=10.0, help="device ms per 720p frame (cost model scale)")
    parser.add_argument("--stage-repeats", type=int, default=5, help="0: skip the per-stage CPU table")
    parser.add_argument("--no-announce", action="store_true",
                        help="the matrix's engine waits batch_wait_ms for every batch to fill, as it did before")
    parser.add_argument("--only-compare", action="store_true")
    parser.add_argument("--skip-compare", action="store_true")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    sizes = [s for s in args.sizes.split(",") if s]
    frame_counts = [int(x) for x in args.frames.split(",") if x]
    concurrencies = [int(x) for x in args.concurrency.split(",") if x]
    print(f"CPU cores: {os.cpu_count()}  torch threads: {torch.get_num_threads()}  batch size: {args.batch_size}  "
          f"batch wait: {args.batch_wait_ms} ms  device cost: {args.frame_ms} ms per 720p frame")
    with tempfile.TemporaryDirectory(prefix="videoscore-devsim-") as tmp:
        work = Path(tmp)
        from videoscore.worker.testing.stand_in import build_stand_in_checkpoint

        spec = resolve_model(str(build_stand_in_checkpoint(work / "stand-in", seed=0)))
        preprocessor = Preprocessor.load(spec)
        needed = sorted({*sizes, "720p"}, key=list(SIZES).index)
        clips = {size: make_video(work / f"{size}.mp4", frames=int(24 * args.clip_seconds), size=SIZES[size],
                                  pattern="textured", preset="superfast") for size in needed}
        print(f"clips: {args.clip_seconds:.0f} s at 24 fps, H.264 superfast (B-frames), textured pan")
        print()
        if args.stage_repeats:
            stage_cpu(spec, preprocessor, clips["720p"], 48, args.stage_repeats)
        print(HEADER)
        if not args.skip_compare:
            compare = argparse.Namespace(**{**vars(args), "videos": args.compare_videos})
            demand = device_videos_per_s("720p", 48, args.batch_size, args.frame_ms)
            for mode in ("before", "after"):
                row = run_row(mode, spec, clips["720p"], "720p", 48, 2 * args.batch_size, compare, preprocessor)
                print(row.line(demand), flush=True)
        if args.only_compare:
            return
        for size in sizes:
            for frames in frame_counts:
                demand = device_videos_per_s(size, frames, args.batch_size, args.frame_ms)
                for concurrency in concurrencies:
                    row = run_row("after", spec, clips[size], size, frames, concurrency, args, preprocessor)
                    print(row.line(demand), flush=True)


if __name__ == "__main__":
    main()
