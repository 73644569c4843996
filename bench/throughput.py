"""Videos per second: the model card's loop (batch 1) against our engine, same machine, same run, same model.

Baseline ("model-card loop"): for each video in turn, decode every frame up to the last sampled one
(the card's PyAV loop), build PIL images, run the processor, run the forward pass with eager attention at
batch 1, as the card does. Ours: the worker's path without the network: a thread pool samples frames with
the keyframe-guided reader while the engine thread batches requests (sdpa attention) onto the device.
Both use the same checkpoint, the same videos and the same device; the scores of the two paths are
compared too (they must agree to fp32/bf16 noise, since speed-ups may not change numbers).

    .venv/bin/python bench/throughput.py                      # CPU, tiny stand-in checkpoint
    .venv/bin/python bench/throughput.py --arch full --device cuda --frames 16 --size 640x480
                                                              # GPU, Mantis-8B-Idefics2 shape, random weights

With `--arch full`, the model is the full-size architecture (SigLIP 1152×27 at 980/14, perceiver 64 latents
× 3, Mistral-7B 4096×32, vocab 32003: 8.27 B parameters) built from its config with random bf16 weights;
MFU is reported from the field-note cost of one video (≈35 TFLOP for 16 frames at 378², ≈82 TFLOP at
720p; scaled linearly for 48 frames) and the device's dense bf16 peak (`--peak-tflops`, H100 SXM: 989).
Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from videoscore.core.variants import ModelSpec, resolve_model  # noqa: E402
from videoscore.worker.model.engine import Engine  # noqa: E402
from videoscore.worker.model.prompt import build_eval_prompt  # noqa: E402
from videoscore.worker.model.scorer import Scorer, ScoreRequest  # noqa: E402
from videoscore.worker.testing.media import make_video  # noqa: E402
from videoscore.worker.video.frames import probe_video, read_frames, sample_indices, sample_video  # noqa: E402

TFLOP_PER_VIDEO_16 = {"378": 35.0, "720p": 82.0}  # field notes: one 16-frame forward of the 8B model


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=["stand-in", "full"], default="stand-in")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--frames", type=int, default=None, help="frames per video (default: the variant's)")
    parser.add_argument("--video-frames", type=int, default=120, help="length of each clip (5 s at 24 fps)")
    parser.add_argument("--size", default="640x360", help="clip resolution WxH")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--decode-threads", type=int, default=4)
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    width, height = (int(x) for x in args.size.split("x"))
    with tempfile.TemporaryDirectory(prefix="videoscore-bench-") as tmp:
        workdir = Path(tmp)
        spec = stand_in_spec(workdir)
        num_frames = args.frames or spec.num_frames
        clips = [
            make_video(workdir / f"clip{i}.mp4", frames=args.video_frames, size=(width, height), pattern="textured")
            for i in range(args.videos)
        ]
        prompts = [f"benchmark clip {i}: a square moving over a gradient" for i in range(args.videos)]
        device = resolve_device(args.device)
        dtype = "bfloat16" if device == "cuda" else "float32"
        load = (lambda s, attn: load_full_size(s, device, attn)) if args.arch == "full" else (
            lambda s, attn: Scorer.load(s, device=device, dtype=dtype, attn_implementation=attn))

        print(f"device={device} dtype={dtype} arch={args.arch} videos={args.videos} frames/video={num_frames} "
              f"clip={width}x{height}x{args.video_frames} batch={args.batch_size} torch={torch.__version__}")
        base_s, base_scores = run_model_card_loop(load(spec, "eager"), clips, prompts, num_frames, device)
        ours_s, our_scores, peak_mem = run_engine(lambda s: load(s, None), spec, clips, prompts, num_frames, args)
        report(args, device, base_s, ours_s, base_scores, our_scores, peak_mem, num_frames, width, height)


def stand_in_spec(workdir: Path) -> ModelSpec:
    from videoscore.worker.testing.stand_in import build_stand_in_checkpoint

    return resolve_model(str(build_stand_in_checkpoint(workdir / "stand-in", seed=0)))


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_full_size(spec: ModelSpec, device: str, attn: str | None) -> Scorer:
    """The Mantis-8B-Idefics2 architecture with random bf16 weights, driven by the stand-in's processor."""
    from transformers import AutoProcessor

    from videoscore.worker.model.idefics2.modeling import VideoScoreForSequenceClassification
    from videoscore.worker.model.scorer import checkpoint_revision

    processor = AutoProcessor.from_pretrained(spec.source, backend="pil")
    config = full_size_config(processor.tokenizer)
    config._attn_implementation = attn or "sdpa"
    torch.set_default_dtype(torch.bfloat16)
    with torch.device(device):
        model = VideoScoreForSequenceClassification(config).eval()
    torch.set_default_dtype(torch.float32)
    params = sum(p.numel() for p in model.parameters())
    print(f"full-size model: {params:,} parameters")
    return Scorer(spec, processor, model, torch.device(device), torch.bfloat16, checkpoint_revision(spec.source))


def full_size_config(tokenizer):  # type: ignore[no-untyped-def]
    from transformers import Idefics2Config

    return Idefics2Config(
        vision_config={"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27,
                       "num_attention_heads": 16, "image_size": 980, "patch_size": 14},
        perceiver_config={"hidden_size": 4096, "resampler_n_latents": 64, "resampler_depth": 3,
                          "resampler_n_heads": 16, "resampler_head_dim": 96, "num_key_value_heads": 4,
                          "rms_norm_eps": 1e-6},
        text_config={"model_type": "mistral", "hidden_size": 4096, "intermediate_size": 14336,
                     "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                     "vocab_size": 32003, "rms_norm_eps": 1e-5, "max_position_embeddings": 32768,
                     "pad_token_id": tokenizer.pad_token_id},
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        num_labels=5, problem_type="regression", pad_token_id=tokenizer.pad_token_id,
    )


def run_model_card_loop(scorer: Scorer, clips: list[Path], prompts: list[str], num_frames: int,
                        device: str) -> tuple[float, list[list[float]]]:
    """The card's loop: decode-all, PIL, processor, eager forward at batch 1, one video after another."""
    model, processor = scorer._require_model(), scorer._processor  # noqa: SLF001 - the bench drives internals
    scores = []
    scorer.warm_up()
    sync(device)
    started = time.perf_counter()
    for clip, prompt in zip(clips, prompts, strict=True):
        total = probe_video(clip).total_frames
        frames = [Image.fromarray(x) for x in read_frames(clip, sample_indices(total, num_frames), method="decode_all")]
        inputs = processor(text=build_eval_prompt(prompt, len(frames)), images=frames, return_tensors="pt")
        inputs = {k: v.to(scorer.device) for k, v in inputs.items()}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(scorer.dtype)
        with torch.no_grad():
            logits = model(**inputs).logits
        scores.append([float(x) for x in logits[0].float().cpu()])
    sync(device)
    elapsed = time.perf_counter() - started
    scorer.close()
    return elapsed, scores


def run_engine(load, spec: ModelSpec, clips: list[Path], prompts: list[str], num_frames: int,  # type: ignore[no-untyped-def]
               args: argparse.Namespace) -> tuple[float, list[list[float]], float | None]:
    """The worker's path: decode threads feed the engine, which batches onto the device."""
    engine = Engine(load, batch_size=args.batch_size, batch_wait_ms=50)
    engine.start(preload=spec)
    engine.submit(spec, ScoreRequest(frames=[np.zeros((32, 32, 3), np.uint8)], prompt="warm")).result()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()

    def one(clip: Path, prompt: str) -> Future:  # type: ignore[type-arg]
        sampled = sample_video(clip, num_frames)
        return engine.submit(spec, ScoreRequest(frames=sampled.frames, prompt=prompt))

    with ThreadPoolExecutor(args.decode_threads) as pool:
        futures = list(pool.map(one, clips, prompts))
    outcomes = [f.result() for f in futures]
    elapsed = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    engine.stop()
    return elapsed, [o.scores.as_list() for o in outcomes], peak


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def report(args: argparse.Namespace, device: str, base_s: float, ours_s: float, base: list[list[float]],
           ours: list[list[float]], peak_mem: float | None, num_frames: int, width: int, height: int) -> None:
    n = args.videos
    max_delta = max(abs(a - b) for row_a, row_b in zip(base, ours, strict=True) for a, b in zip(row_a, row_b))
    print()
    print(f"{'path':<34}{'wall s':>9}{'videos/s':>10}")
    print(f"{'model-card loop (batch 1, eager)':<34}{base_s:>9.2f}{n / base_s:>10.3f}")
    print(f"{'engine (batched, sdpa, overlap)':<34}{ours_s:>9.2f}{n / ours_s:>10.3f}")
    print(f"speed-up: {base_s / ours_s:.2f}x   max |score difference|: {max_delta:.2e}"
          f"   mean score: {statistics.fmean(x for row in ours for x in row):.3f}")
    if peak_mem is not None:
        print(f"peak GPU memory (engine): {peak_mem:.1f} GiB")
    if args.arch == "full" and device.startswith("cuda"):
        per_video = TFLOP_PER_VIDEO_16["720p" if min(width, height) >= 720 else "378"] * num_frames / 16
        for label, seconds in (("model-card loop", base_s), ("engine", ours_s)):
            mfu = per_video * n / seconds / args.peak_tflops
            print(f"MFU {label}: {100 * mfu:.1f}% ({per_video:.0f} TFLOP/video, peak {args.peak_tflops} TFLOP/s)")
    print("(scores from random weights: a speed measurement, not a quality one)")


if __name__ == "__main__":
    main()
