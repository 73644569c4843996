"""Videos per second: the model card's loop (batch 1) against the worker's path, same process, same model, same videos.

Two paths score the same clips with the same weights, one row each in a markdown table:

* **model-card loop**: one video after another on the main thread: decode every frame up to the last sampled
  one (the card's PyAV loop), PIL images, the checkpoint's processor, a forward pass at batch 1 with eager
  attention, as the card does.
* **worker path**: what a worker does, without the network: ``--concurrency`` task threads, each job wrapped in
  ``engine.expecting_request()``, sample the frames with the keyframe-guided reader and ``engine.submit`` them
  (which prepares the request in that thread with the model's ``Preprocessor``, pinned on CUDA), then wait for
  the future; the real ``Engine`` (``jobs_announce=True``, as ``worker.service.runtime.build_runtime`` builds it)
  collates and runs batches of up to ``--batch-size`` with SDPA attention on its own thread.

Both paths share one model in memory (its attention kernel is switched between them), so the max |score
difference| column is bf16/fp32 kernel and batching noise only, and the model loads once.

On a GPU host (the project installed with its ``worker`` extra; the full-size weights are never downloaded):

    .venv/bin/python bench/throughput.py --arch full --device cuda

builds the Mantis-8B-Idefics2 architecture that VideoScore uses (SigLIP 1152 x 27 layers at patch 14, perceiver
64 latents x 3, Mistral-7B 4096 x 32, vocab 32003: 8.27 B parameters, ~17 GB in bf16) from its config with random
bf16 weights, driven by the tokenizer and image processor of the tiny stand-in checkpoint that
``worker.testing.stand_in`` builds offline (the real processor settings: no image splitting, edges 378..980), and
runs the matrix: 16 and 48 frames x 854x480 and 1280x720 clips (``--matrix``, the default with ``--arch full``),
``--videos`` (16) timed clips per row, 5 s at 24 fps. Estimated 4-6 minutes on an H100/H200, model build
included (not measured yet: no GPU was lent to the session that wrote this). Peak memory is highest in the
worker rows at 48 frames of 720p (batch 4: 192 images through the vision tower and the connector at once); on an
80 GB card, ``--batch-size 2`` if that row runs out of memory. What the host needs: this repository and its
``worker`` extra (torch, transformers, PyAV, Pillow, numpy, tokenizers); nothing is downloaded.

It prints the device (``torch.cuda.get_device_name``), torch/transformers versions and CPU count; per frame count
and size, the resized image, patches per frame, tokens per video and TFLOP per video; then one table row per
(frames, size, path): videos/s, speed-up over the card loop, MFU, peak GPU memory
(``torch.cuda.max_memory_allocated``, reset before each row, weights included), device busy (the forward passes'
wall time over the row's wall time: ``BatchResult.forward_s`` summed by a wrapper around the engine's scorer;
for the card loop its own forward calls, up to the logits on the host), mean batch size, max |score difference|
against the card loop, and per-video seconds of decoding, of CPU preprocessing (card: its processor call;
worker: ``PreparedRequest.prepare_s`` in the task threads) and of the engine thread's collate. Each row comes
after a warm-up of the same shape (one video for the card loop, one batch for the worker path) that is not timed.

MFU: TFLOP per video over the device's dense bf16 peak (``--peak-tflops``, 989 for H100/H200 SXM). Two columns:
"notes" uses the estimates this script has always carried from the project's field notes (one 16-frame forward
of the 8B model: 35 TFLOP at 378x378, 82 at 720p, scaled linearly in frames; anything under 720 lines takes the
378 figure); they are kept for continuity, but are not derived in this repository. "counted" is ``count_tflop``:
2 x the multiply-adds of every matmul, the patch convolution and the attention products (each attention counted
over the full n x n, as the kernels are asked to; norms, softmax and the pixel lookup left out) for the input
shapes actually fed. It equals torch's ``FlopCounterMode`` on the eager path exactly (checked on the stand-in and
on the full widths with one layer) and agrees with the notes where they apply (16 frames: 34.3 at 378x378, 81.0
at 1280x720, which the processor resizes to 980x551); but the processor does not resize 854x480 (within its
378..980 edges), so those rows carry 2074 patches a frame, not 729: 63.9 TFLOP for 16 frames, and the notes'
MFU understates them about 1.8x. Read the counted column.

Nothing is asserted: figures are printed, and the scores come from random weights (a speed measurement, not a
quality one). CPU (tiny stand-in checkpoint; no MFU or GPU memory: "n/a"):

    .venv/bin/python bench/throughput.py --arch stand-in --device cpu --matrix --videos 2 --size 320x240 640x360
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from PIL import Image  # noqa: E402

from videoscore.core.variants import ModelSpec, resolve_model  # noqa: E402
from videoscore.worker.model.engine import Engine, ScoreOutcome  # noqa: E402
from videoscore.worker.model.preprocess import PreparedRequest, Preprocessor, ScoreRequest  # noqa: E402
from videoscore.worker.model.prompt import build_eval_prompt  # noqa: E402
from videoscore.worker.model.recipes import recipe_for  # noqa: E402
from videoscore.worker.model.scorer import BatchResult, Scorer, checkpoint_revision  # noqa: E402
from videoscore.worker.testing.media import make_video  # noqa: E402
from videoscore.worker.video.frames import probe_video, read_frames, sample_indices, sample_video  # noqa: E402

# The project's field notes: one 16-frame forward of the 8B model, in TFLOP (scaled linearly for other counts).
TFLOP_PER_VIDEO_16 = {"378": 35.0, "720p": 82.0}
MATRIX_FRAMES = (16, 48)
MATRIX_SIZES = ("854x480", "1280x720")
RESULT_TIMEOUT_S = 900.0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=["stand-in", "full"], default="stand-in",
                        help="stand-in: the tiny checkpoint itself; full: the 8B architecture, random weights")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", choices=["auto", "bfloat16", "float32"], default="auto",
                        help="auto: bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--matrix", action=argparse.BooleanOptionalAction, default=None,
                        help=f"frames {' '.join(map(str, MATRIX_FRAMES))} x sizes {' '.join(MATRIX_SIZES)} "
                             "(default with --arch full); --frames/--size override either axis")
    parser.add_argument("--frames", type=int, nargs="+", default=None,
                        help="frames per video (default: the matrix's, else the variant's)")
    parser.add_argument("--size", nargs="+", default=None, help="clip resolutions WxH (default: the matrix's, "
                                                                 "else 640x360)")
    parser.add_argument("--videos", type=int, default=None, help="timed videos per row (default 16 full, 4 stand-in)")
    parser.add_argument("--video-frames", type=int, default=120, help="length of each clip (5 s at 24 fps)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--batch-wait-ms", type=int, default=50, help="the worker's default")
    parser.add_argument("--concurrency", type=int, default=None,
                        help="task threads (default: 2 x batch size, as the worker picks)")
    parser.add_argument("--peak-tflops", type=float, default=989.0,
                        help="the device's dense bf16 peak (H100/H200 SXM: 989)")
    parser.add_argument("--full-layers", type=int, default=None,
                        help="smoke test only: --arch full with this many vision and text layers (MFU meaningless)")
    args = parser.parse_args(argv)
    if args.matrix is None:
        args.matrix = args.arch == "full"
    if args.videos is None:
        args.videos = 16 if args.arch == "full" else 4
    if args.concurrency is None:
        args.concurrency = max(2, 2 * args.batch_size)
    if args.size is None:
        args.size = list(MATRIX_SIZES) if args.matrix else ["640x360"]
    if args.frames is None and args.matrix:
        args.frames = list(MATRIX_FRAMES)
    return args


# --- the model ----------------------------------------------------------------------------------------------


@dataclass
class BenchModel:
    """One model in memory, shared by both paths, and the preprocessor its engine prepares requests with."""

    spec: ModelSpec
    model: Any
    preprocessor: Preprocessor
    device: torch.device
    dtype: torch.dtype
    revision: str

    def set_attention(self, implementation: str) -> None:
        self.model.set_attn_implementation(implementation)

    def attention(self) -> str:
        config = self.model.config
        found = {name: getattr(config, name)._attn_implementation
                 for name in ("vision_config", "perceiver_config", "text_config")}
        return ", ".join(f"{name.removesuffix('_config')} {impl}" for name, impl in found.items())


def load_bench_model(args: argparse.Namespace, spec: ModelSpec, device: torch.device, dtype: torch.dtype) -> BenchModel:
    pin = device.type == "cuda"
    if args.arch == "full":
        return load_full_size(spec, device, dtype, pin_memory=pin, layers=args.full_layers)
    scorer = Scorer.load(spec, device=str(device), dtype=str(dtype).removeprefix("torch."), attn_implementation="sdpa")
    # Scorer.load made a Preprocessor pinned on CUDA, as the worker's load_preprocessor does.
    return BenchModel(spec, scorer._require_model(), scorer.preprocessor, device, dtype, scorer.revision)  # noqa: SLF001


def load_full_size(spec: ModelSpec, device: torch.device, dtype: torch.dtype, *, pin_memory: bool,
                   layers: int | None = None) -> BenchModel:
    """The Mantis-8B-Idefics2 architecture with random weights, driven by the stand-in's processor.

    The Preprocessor gets the full-size config (its text config gives the position limit and the pad id), so it
    checks requests against the real model's limits.
    """
    from videoscore.worker.model.idefics2.modeling import VideoScoreForSequenceClassification

    recipe = recipe_for(spec.variant.family, num_frames=spec.num_frames)
    processor = recipe.load_processor(spec.source)
    config = full_size_config(processor.tokenizer, layers=layers)
    preprocessor = Preprocessor(spec, recipe, processor, config, pin_memory=pin_memory)
    started = time.perf_counter()
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # what from_pretrained(dtype=...) does while it builds the modules
    try:
        with torch.device(device):
            model = VideoScoreForSequenceClassification(config).eval()
    finally:
        torch.set_default_dtype(previous)
    model.set_attn_implementation("sdpa")
    params = sum(p.numel() for p in model.parameters())
    sync(device)
    print(f"full-size model: {params:,} parameters, built in {time.perf_counter() - started:.1f}s"
          + (f" (SMOKE TEST: {layers} vision and text layers)" if layers else ""), flush=True)
    return BenchModel(spec, model, preprocessor, device, dtype, checkpoint_revision(spec.source))


def full_size_config(tokenizer: Any, *, layers: int | None = None) -> Any:
    from transformers import Idefics2Config

    return Idefics2Config(
        vision_config={"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": layers or 27,
                       "num_attention_heads": 16, "image_size": 980, "patch_size": 14},
        perceiver_config={"hidden_size": 4096, "resampler_n_latents": 64, "resampler_depth": 3,
                          "resampler_n_heads": 16, "resampler_head_dim": 96, "num_key_value_heads": 4,
                          "rms_norm_eps": 1e-6},
        text_config={"model_type": "mistral", "hidden_size": 4096, "intermediate_size": 14336,
                     "num_hidden_layers": layers or 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                     "vocab_size": 32003, "rms_norm_eps": 1e-5, "max_position_embeddings": 32768,
                     "pad_token_id": tokenizer.pad_token_id},
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        num_labels=5, problem_type="regression", pad_token_id=tokenizer.pad_token_id,
    )


def count_tflop(config: Any, image_sizes: Sequence[tuple[int, int]], tokens: int) -> float:
    """One video's forward, in TFLOP: 2 x multiply-adds of the matmuls, the patch convolution and the attention
    products (q.k and p.v, over the full n x n), for images of ``image_sizes`` (after the processor's resize) and
    ``tokens`` text positions. Norms, softmax, rotary and the pixel lookup are left out."""
    vision, perceiver, text = config.vision_config, config.perceiver_config, config.text_config
    dv, ffv, patch = vision.hidden_size, vision.intermediate_size, vision.patch_size
    dt, fft = text.hidden_size, text.intermediate_size
    latents, kv_p = perceiver.resampler_n_latents, perceiver.num_key_value_heads
    heads_p, head_dim_p = perceiver.resampler_n_heads, perceiver.resampler_head_dim
    macs = 0
    for height, width in image_sizes:
        n = (height // patch) * (width // patch)
        macs += n * 3 * patch * patch * dv  # patch embedding
        macs += vision.num_hidden_layers * (n * (4 * dv * dv + 2 * dv * ffv) + 2 * n * n * dv)
        macs += n * (2 * dv * fft + fft * dt)  # connector: gate, up, down
        context = n + latents
        macs += perceiver.resampler_depth * (
            latents * dt * heads_p * head_dim_p  # q
            + 2 * context * dt * kv_p * head_dim_p  # k, v over context + latents
            + 2 * latents * context * heads_p * head_dim_p  # q.k, p.v
            + latents * heads_p * head_dim_p * dt  # o
            + latents * 3 * dt * 4 * dt  # MLP, 4 x hidden
        )
    head_dim_t = getattr(text, "head_dim", None) or dt // text.num_attention_heads
    kv_t = text.num_key_value_heads * head_dim_t
    q_t = text.num_attention_heads * head_dim_t
    macs += text.num_hidden_layers * (tokens * (dt * q_t + 2 * dt * kv_t + q_t * dt + 3 * dt * fft)
                                      + 2 * tokens * tokens * q_t)
    macs += dt * config.num_labels  # the head, on the pooled position
    return 2 * macs / 1e12


def notes_tflop(num_frames: int, width: int, height: int) -> float:
    """The field notes' estimate, as this script has always applied it (720p figure from 720 lines up)."""
    return TFLOP_PER_VIDEO_16["720p" if min(width, height) >= 720 else "378"] * num_frames / 16


# --- the paths ----------------------------------------------------------------------------------------------


@dataclass
class RowResult:
    path: str
    videos: int
    wall_s: float
    scores: list[list[float]]
    forward_s: float
    batch_sizes: list[int]
    decode_s: list[float]
    prep_s: list[float]
    collate_s: float | None
    peak_gib: float | None

    @property
    def videos_per_s(self) -> float:
        return self.videos / self.wall_s


class MeteredScorer:
    """The engine's scorer, recording each batch (a ``ScorerProtocol``: the engine thread alone calls it)."""

    def __init__(self, inner: Scorer) -> None:
        self.inner = inner
        self.batches: list[BatchResult] = []
        self.prepare_s: list[float] = []

    @property
    def spec(self) -> ModelSpec:
        return self.inner.spec

    @property
    def revision(self) -> str:
        return self.inner.revision

    @property
    def device(self) -> torch.device:
        return self.inner.device

    def warm_up(self) -> None:
        self.inner.warm_up()

    def score_prepared(self, batch: Sequence[PreparedRequest]) -> BatchResult:
        result = self.inner.score_prepared(batch)
        self.batches.append(result)
        self.prepare_s.extend(request.prepare_s for request in batch)
        return result

    def close(self) -> None:
        self.inner.close()

    def reset(self) -> None:
        self.batches = []
        self.prepare_s = []


def run_model_card_loop(bench: BenchModel, clips: list[Path], prompts: list[str], num_frames: int) -> RowResult:
    """The card's loop: decode-all, PIL, processor, eager forward at batch 1, one video after another."""
    bench.set_attention("eager")
    model, processor = bench.model, bench.preprocessor.processor
    scores: list[list[float]] = []
    decode_s: list[float] = []
    prep_s: list[float] = []
    forward_s = 0.0
    reset_peak(bench.device)
    sync(bench.device)
    started = time.perf_counter()
    for clip, prompt in zip(clips, prompts, strict=True):
        t0 = time.perf_counter()
        total = probe_video(clip).total_frames
        frames = [Image.fromarray(x) for x in read_frames(clip, sample_indices(total, num_frames), method="decode_all")]
        t1 = time.perf_counter()
        inputs = processor(text=build_eval_prompt(prompt, len(frames)), images=frames, return_tensors="pt")
        t2 = time.perf_counter()
        inputs = {k: v.to(bench.device) for k, v in inputs.items()}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(bench.dtype)
        t3 = time.perf_counter()
        with torch.no_grad():
            logits = model(**inputs).logits
        scores.append([float(x) for x in logits[0].float().cpu()])  # .cpu() waits for the device
        forward_s += time.perf_counter() - t3
        decode_s.append(t1 - t0)
        prep_s.append(t2 - t1)
    sync(bench.device)
    elapsed = time.perf_counter() - started
    return RowResult("model-card loop", len(clips), elapsed, scores, forward_s, [1] * len(clips), decode_s, prep_s,
                     None, peak_gib(bench.device))


def run_worker_path(engine: Engine, metered: MeteredScorer, bench: BenchModel, clips: list[Path],
                    prompts: list[str], num_frames: int, concurrency: int) -> RowResult:
    """The worker's path: task threads announce their job, sample, submit (preparing in their own thread) and wait
    for the engine's batch, as ``worker.service.pipeline.score_one_job`` does."""
    bench.set_attention("sdpa")
    decode_s: dict[int, float] = {}
    lock = threading.Lock()

    def task(index: int) -> ScoreOutcome:
        with engine.expecting_request():
            sampled = sample_video(clips[index], num_frames)
            with lock:
                decode_s[index] = sampled.decode_s
            future = engine.submit(bench.spec, ScoreRequest(frames=sampled.frames, prompt=prompts[index]))
            sampled.frames.clear()  # the prepared copy is what waits for the batch
            return future.result(timeout=RESULT_TIMEOUT_S)

    metered.reset()
    reset_peak(bench.device)
    sync(bench.device)
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency, thread_name_prefix="task") as pool:
        outcomes = list(pool.map(task, range(len(clips))))
    elapsed = time.perf_counter() - started
    batches = list(metered.batches)
    return RowResult(
        "worker path", len(clips), elapsed, [o.scores.as_list() for o in outcomes],
        forward_s=sum(b.forward_s for b in batches), batch_sizes=[len(b.scores) for b in batches],
        decode_s=[decode_s[i] for i in range(len(clips))], prep_s=list(metered.prepare_s),
        collate_s=sum(b.preprocess_s for b in batches), peak_gib=peak_gib(bench.device),
    )


# --- reporting ----------------------------------------------------------------------------------------------

COLUMNS = ("frames", "size", "path", "videos/s", "x card", "MFU notes", "MFU counted", "peak GiB", "device busy",
           "mean batch", "max abs score diff", "decode s/video", "CPU prep s/video", "collate s/video")


@dataclass
class Shape:
    frames: int
    width: int
    height: int
    image_size: tuple[int, int] = (0, 0)
    images: int = 0
    tokens: int = 0
    counted: float = 0.0
    notes: float = field(init=False)

    def __post_init__(self) -> None:
        self.notes = notes_tflop(self.frames, self.width, self.height)

    @property
    def label(self) -> str:
        return f"{self.width}x{self.height}"


def describe_shape(bench: BenchModel, shape: Shape, clip: Path, prompt: str) -> None:
    """Prepare one video of this shape (untimed) to learn the model's input size, and count its TFLOP."""
    sampled = sample_video(clip, shape.frames)
    prepared = bench.preprocessor.prepare(ScoreRequest(frames=sampled.frames, prompt=prompt))
    sizes = list(prepared.inputs.sizes)
    shape.image_size, shape.images, shape.tokens = sizes[0], len(sizes), len(prepared.input_ids)
    shape.counted = count_tflop(bench.model.config, sizes, len(prepared.input_ids))


def table_row(shape: Shape, row: RowResult, card: RowResult | None, args: argparse.Namespace,
              on_cuda: bool) -> str:
    seconds_per_video = row.wall_s / row.videos
    mfu = (lambda tflop: f"{100 * tflop / seconds_per_video / args.peak_tflops:.1f}%") if on_cuda else (lambda _: "n/a")
    diff = "ref" if card is None else f"{max_abs_diff(card.scores, row.scores):.2e}"
    speedup = "1.00" if card is None else f"{card.wall_s / row.wall_s:.2f}"
    cells = (
        str(shape.frames), shape.label, row.path, f"{row.videos_per_s:.3f}", speedup,
        mfu(shape.notes) if args.arch == "full" else "n/a", mfu(shape.counted),
        "n/a" if row.peak_gib is None else f"{row.peak_gib:.1f}",
        f"{100 * row.forward_s / row.wall_s:.0f}%",
        f"{statistics.fmean(row.batch_sizes):.2f}", diff,
        f"{statistics.fmean(row.decode_s):.3f}", f"{statistics.fmean(row.prep_s):.3f}",
        "-" if row.collate_s is None else f"{row.collate_s / row.videos:.3f}",
    )
    return "| " + " | ".join(cells) + " |"


def notes_cell(shape: Shape, args: argparse.Namespace) -> str:
    """The notes describe the 8B model only."""
    return f"{shape.notes:.0f}" if args.arch == "full" else "n/a"


def check_inputs_on_device(bench: BenchModel, clip: Path, frames: int) -> None:
    """The device check of the split processor: one video prepared in this thread and collated on the bench's
    device, against the checkpoint's processor on the CPU (cast to the model's dtype, as the model casts it).
    Prints the largest difference in units in the last place (0: bit-identical) per input."""
    pre = bench.preprocessor
    request = ScoreRequest(frames=sample_video(clip, frames).frames, prompt="a textured square over a gradient")
    theirs = pre.processor(text=[build_eval_prompt(request.prompt, len(request.frames))],
                           images=[[Image.fromarray(f) for f in request.frames]], padding="longest",
                           return_tensors="pt")
    table = pre.recipe.value_table(pre.processor)
    ours = pre.recipe.collate([pre.prepare(request)], pad_token_id=pre.pad_token_id or 0, table=table,
                              device=bench.device, dtype=bench.dtype)
    sync(bench.device)
    cells = []
    for key, value in theirs.items():
        got = ours[key].cpu()
        want = value.to(got.dtype)
        if got.shape != want.shape:
            cells.append(f"{key}: shape {tuple(got.shape)} vs {tuple(want.shape)}")
        elif got.is_floating_point():
            bits = torch.int16 if got.element_size() == 2 else torch.int32
            ulps = (got.view(bits).long() - want.view(bits).long()).abs().max().item()
            cells.append(f"{key}: max {ulps} ulp")
        else:
            cells.append(f"{key}: {'identical' if torch.equal(got, want) else 'DIFFERENT'}")
    print(f"inputs collated on {bench.device} ({str(bench.dtype).removeprefix('torch.')}) vs the processor on the "
          f"CPU, {frames} frames of {clip.stem}: " + "; ".join(cells), flush=True)


def max_abs_diff(a: list[list[float]], b: list[list[float]]) -> float:
    return max(abs(x - y) for row_a, row_b in zip(a, b, strict=True) for x, y in zip(row_a, row_b, strict=True))


# --- helpers ------------------------------------------------------------------------------------------------


def stand_in_spec(workdir: Path) -> ModelSpec:
    from videoscore.worker.testing.stand_in import build_stand_in_checkpoint

    return resolve_model(str(build_stand_in_checkpoint(workdir / "stand-in", seed=0)))


def resolve(device: str, dtype: str) -> tuple[torch.device, torch.dtype]:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    torch_device = torch.device(device)
    if dtype == "auto":
        return torch_device, torch.bfloat16 if torch_device.type == "cuda" else torch.float32
    return torch_device, getattr(torch, dtype)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def make_clips(workdir: Path, sizes: Sequence[tuple[int, int]], count: int,
               frames: int) -> dict[tuple[int, int], list[Path]]:
    """``count`` distinct textured clips per size (x264 superfast: B-frames and CABAC, like uploads), in parallel."""
    jobs: list[tuple[tuple[int, int], Path]] = [
        ((w, h), workdir / f"clip-{w}x{h}-{i}.mp4") for w, h in sizes for i in range(count)
    ]

    def make(job: tuple[tuple[int, int], Path]) -> Path:
        size, path = job
        return make_video(path, frames=frames, size=size, pattern="textured", preset="superfast")

    with ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool:
        paths = list(pool.map(make, jobs))
    clips: dict[tuple[int, int], list[Path]] = {size: [] for size in sizes}
    for (size, _), path in zip(jobs, paths, strict=True):
        clips[size].append(path)
    return clips


def parse_size(size: str) -> tuple[int, int]:
    width, height = size.lower().split("x")
    return int(width), int(height)


def timed(label: str, fn: Callable[[], Any]) -> Any:
    started = time.perf_counter()
    result = fn()
    print(f"{label}: {time.perf_counter() - started:.1f}s", flush=True)
    return result


# --- main ---------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    run_started = time.perf_counter()
    device, dtype = resolve(args.device, args.dtype)
    on_cuda = device.type == "cuda"
    sizes = [parse_size(size) for size in args.size]
    print(f"device: {torch.cuda.get_device_name(device) if on_cuda else 'cpu'} ({device})   torch {torch.__version__}"
          f"   transformers {transformers.__version__}   CPUs: {os.cpu_count()} "
          f"(usable {len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else '?'})"
          f"   torch threads: {torch.get_num_threads()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="videoscore-bench-") as tmp:
        workdir = Path(tmp)
        spec = timed("stand-in checkpoint (processor, tokenizer)", lambda: stand_in_spec(workdir))
        frame_counts = args.frames or [spec.num_frames]
        bench = timed("model", lambda: load_bench_model(args, spec, device, dtype))
        clips = timed(f"{args.videos + args.batch_size} clips x {len(sizes)} sizes",
                      lambda: make_clips(workdir, sizes, args.videos + args.batch_size, args.video_frames))
        prompts = [f"benchmark clip {i}: a textured square moving over a gradient" for i in range(args.videos)]
        warm_prompts = [f"warm-up clip {i}" for i in range(args.batch_size)]
        print(f"arch={args.arch} dtype={str(dtype).removeprefix('torch.')} videos/row={args.videos} "
              f"clip={args.video_frames} frames at 24 fps batch={args.batch_size} "
              f"batch_wait_ms={args.batch_wait_ms} concurrency={args.concurrency} peak={args.peak_tflops} TFLOP/s")

        check_inputs_on_device(bench, clips[sizes[-1]][0], max(frame_counts))
        shapes = [Shape(frames, w, h) for frames in frame_counts for w, h in sizes]
        print("\n| frames | size | model input per frame | images | tokens | TFLOP/video notes | TFLOP/video counted |")
        print("|---:|---|---|---:|---:|---:|---:|")
        for shape in shapes:
            describe_shape(bench, shape, clips[(shape.width, shape.height)][0], prompts[0])
            ih, iw = shape.image_size
            patch = bench.model.config.vision_config.patch_size
            print(f"| {shape.frames} | {shape.label} | {iw}x{ih} ({(ih // patch) * (iw // patch)} patches) | "
                  f"{shape.images} | {shape.tokens} | {notes_cell(shape, args)} | {shape.counted:.3g} |", flush=True)

        # The engine's scorer wraps the shared model; the engine loads it (and warms it up) on its own thread.
        metered = MeteredScorer(Scorer(spec, bench.preprocessor, bench.model, device, dtype, bench.revision))
        engine = Engine(lambda s: metered, lambda s: bench.preprocessor, batch_size=args.batch_size,
                        batch_wait_ms=args.batch_wait_ms, jobs_announce=True)
        engine.start(preload=spec)
        # Wait for the load and warm-up: from here on the engine thread touches the model only for our requests.
        warm = ScoreRequest(frames=[np.zeros((32, 32, 3), np.uint8)], prompt="warm up")
        engine.submit(spec, warm).result(timeout=RESULT_TIMEOUT_S)
        summaries: list[str] = []
        try:
            print(f"\nattention: card loop eager, worker path sdpa (now: {bench.attention()})\n")
            print("| " + " | ".join(COLUMNS) + " |")
            print("|" + "|".join("---:" if i not in (1, 2) else "---" for i in range(len(COLUMNS))) + "|", flush=True)
            for shape in shapes:
                row_clips = clips[(shape.width, shape.height)]
                timed_clips, warm_clips = row_clips[: args.videos], row_clips[args.videos:]
                row_started = time.perf_counter()
                run_model_card_loop(bench, warm_clips[:1], warm_prompts[:1], shape.frames)  # warm-up, untimed
                card = run_model_card_loop(bench, timed_clips, prompts, shape.frames)
                print(table_row(shape, card, None, args, on_cuda), flush=True)
                run_worker_path(engine, metered, bench, warm_clips, warm_prompts, shape.frames, args.concurrency)
                worker = run_worker_path(engine, metered, bench, timed_clips, prompts, shape.frames,
                                         args.concurrency)
                print(table_row(shape, worker, card, args, on_cuda), flush=True)
                summaries.append(f"{shape.frames} frames {shape.label}: row {time.perf_counter() - row_started:.1f}s "
                                 f"(card {card.wall_s:.1f}s, worker {worker.wall_s:.1f}s; worker batches "
                                 f"{worker.batch_sizes})")
        finally:
            engine.stop()
    print("", *summaries, sep="\n")
    print(f"\ntotal {time.perf_counter() - run_started:.0f}s; engine: {engine.batches_run} batches, "
          f"{engine.loads} load(s). Scores come from random weights: a speed measurement, not a quality one. "
          "Nothing is asserted.")


if __name__ == "__main__":
    main()
