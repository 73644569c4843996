"""Generate the VideoScore-Qwen2-VL golden: the published recipe, run with mantis-vl on transformers 4.46.3.

Run with the project's venv (it builds the inputs with project code), after
``bash reference/qwen2_vl/setup_env.sh``::

    .venv/bin/python reference/qwen2_vl/generate.py          # part of `make reference`

It

1. builds the untrained VideoScore-Qwen2-VL stand-in (``videoscore.worker.testing.stand_in_qwen2_vl``, seed 0) into a
work
   folder, and copies the golden's videos there from ``reference/golden/videos/<case id>.mp4``;
2. writes a transformers-4 view of the checkpoint (``write_transformers4_view``: the same weights, tokenizer
   and processor files; ``config.json`` flattened to the layout 4.46 reads) and ``cases.json``;
3. runs ``reference/qwen2_vl/recipe.py`` in ``.venv-reference-qwen`` on them, in float32;
4. writes ``reference/golden/qwen2_vl_fp32.json``: the recipe's results plus fingerprints of the checkpoint
   and the videos, so a test that rebuilds the checkpoint and reads the committed videos can tell "the inputs
   drifted" from "the model drifted".

The videos are committed, not encoded here: x264 in PyAV does not write the same bytes on every machine (nor
always twice on one), and the golden's ``video_sha256``, decoded frames, resized frames and logits all follow
from those bytes. The checkpoint, rebuilt from a seed, is reproducible and is not committed.

Options: ``--golden-dir`` (default ``reference/golden``, or ``$VIDEOSCORE_REFERENCE_OUT`` when set: CI
regenerates into a scratch folder that way and tests/unit/test_qwen2_vl.py compares it with the committed file),
``--work-dir`` (default ``build/reference-qwen2-vl``, or ``$VIDEOSCORE_REFERENCE_OUT/work-qwen2-vl``),
``--python`` (the reference venv's interpreter), ``--check`` (compare with the committed golden instead of
overwriting it; exit 1 on drift), ``--encode-videos``.

``--encode-videos`` is for adding or changing a case: it first re-encodes every case's video from its ``CASES``
entry (``write_clip``) into ``reference/golden/videos/``, overwriting the committed ones. That changes the
golden's inputs, so the golden no longer matches them until it is regenerated (this run does that unless
``--check`` or another ``--golden-dir`` is given) and the videos and ``reference/golden/qwen2_vl_fp32.json`` are
committed together; tests/unit/test_qwen2_vl.py fails on any mismatch.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `python reference/qwen2_vl/generate.py` puts reference/qwen2_vl/ first
    sys.path.insert(0, str(ROOT))

SEED = 0
GOLDEN_DIR = ROOT / "reference" / "golden"
GOLDEN_FILE = "qwen2_vl_fp32.json"
VIDEOS_DIR = GOLDEN_DIR / "videos"  # the golden's input videos, committed (shared with reference/generate.py)
RECIPE = ROOT / "reference" / "qwen2_vl" / "recipe.py"
REFERENCE_PYTHON = ROOT / ".venv-reference-qwen" / "bin" / "python"
OUT_ENV = "VIDEOSCORE_REFERENCE_OUT"
FP32_LOGITS_TOLERANCE = 1e-5  # between two runs of the same recipe on the same kind of machine


@dataclass(frozen=True)
class Case:
    """One golden case: a synthetic video and its text prompt.

    The video is committed as ``reference/golden/videos/<id>.mp4``; ``frames``, ``fps``, ``size`` and ``gop``
    are the ``write_clip`` arguments it was encoded with (``--encode-videos``).
    """

    id: str
    prompt: str
    frames: int
    fps: int
    size: tuple[int, int]
    why: str
    gop: int | None = None

    @property
    def video(self) -> str:
        return f"{self.id}.mp4"


# Short, small clips: qwen-vl-utils scales every frame up to >= 128*28*28 pixels anyway, and the stand-in's
# processor then down to <= 16*28*28. Frame counts and rates are chosen to exercise the fps rule's corners.
CASES: tuple[Case, ...] = (
    Case(
        "f48_24fps_card_prompt",
        "Near the Elephant Gate village, they approach the haunted house at night. Rajiv feels anxious, but "
        "Bhavesh encourages him. As they reach the house, a mysterious sound in the air adds to the suspense.",
        frames=48, fps=24, size=(160, 120),
        why="2 s at 24 fps -> 16 frames, linspace(0, 47, 16) rounds several .5-ish positions; the card's prompt",
    ),
    Case(
        "f39_24fps_half_to_even",
        "A panda eats bamboo in a misty forest, cinematic lighting, slow motion.",
        frames=39, fps=24, size=(96, 128),
        why="39/24*8 = 13 -> round(6.5) = 6 (half to even) -> 12 frames, not 14; portrait frames",
    ),
    Case(
        "f5_8fps_min_frames",
        'A robot says "hello" to {everyone} at 50% speed; then it spins around {0} times.',
        frames=5, fps=8, size=(128, 72),
        why="5 frames: at least 4 wanted, at most floor_to_2(5) = 4 -> 4 frames; quotes and braces in the prompt",
    ),
    Case(
        "f75_25fps_non_ascii",
        "Ein Fuchs läuft durch den verschneiten Wald — 雪の森を走る狐 🦊, «naïve» café at dawn",
        frames=75, fps=25, size=(176, 96), gop=30,
        why="3 s at 25 fps -> 24 frames; keyframes every 30 frames; wide frames; non-ASCII prompt",
    ),
)


# --- fingerprints (the recipe has the same sha256_array) -------------------------------------------------------


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def sha256_array(array) -> str:
    """sha256 of a numpy array's dtype, shape and C-order bytes (same definition as the recipe's)."""
    import numpy as np

    array = np.ascontiguousarray(array)
    digest = hashlib.sha256(f"{array.dtype.str}|{list(array.shape)}|".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


def weights_sha256(folder: Path) -> str:
    """Names, dtypes, shapes and bytes of every tensor in ``folder``'s safetensors files (not header layout)."""
    digest = hashlib.sha256()
    for path in sorted(Path(folder).glob("*.safetensors")):
        data = path.read_bytes()
        (header_len,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + header_len])
        header.pop("__metadata__", None)
        base = 8 + header_len
        for name in sorted(header):
            info = header[name]
            start, end = info["data_offsets"]
            digest.update(f"{name}|{info['dtype']}|{info['shape']}|".encode())
            digest.update(data[base + start : base + end])
    return digest.hexdigest()


def checkpoint_fingerprint(folder: Path) -> dict:
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    config.pop("transformers_version", None)
    return {
        "weights_sha256": weights_sha256(folder),
        "config_sha256": hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest(),
        **{f"{name}_sha256": sha256_file(folder / name) for name in PROCESSOR_FILES},
    }


PROCESSOR_FILES = ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json", "chat_template.json")


# --- inputs ----------------------------------------------------------------------------------------------------


def build_checkpoint(folder: Path) -> Path:
    """The stand-in checkpoint the golden is made with (transformers 5 layout)."""
    from videoscore.worker.testing.stand_in_qwen2_vl import build_qwen2_vl_stand_in

    return build_qwen2_vl_stand_in(Path(folder), seed=SEED)


def draw_frame(index: int, size: tuple[int, int]) -> "np.ndarray":
    """Frame ``index`` of a golden clip: a colour ramp that shifts with time, a moving bright square, and a fixed
    fine texture (so resizing and normalising have real detail to work on). RGB, H x W x 3 uint8."""
    import numpy as np

    width, height = size
    ys, xs = np.mgrid[0:height, 0:width]
    picture = np.stack(
        [(xs * 255 // max(width - 1, 1) + 9 * index) % 256,
         (ys * 255 // max(height - 1, 1) + 5 * index) % 256,
         np.full_like(xs, (40 + 23 * index) % 256)],
        axis=-1,
    )
    texture = np.random.default_rng(7).integers(-24, 25, (height, width, 1))
    picture = np.clip(picture + texture, 0, 255)
    side = max(height // 4, 4)
    top = (index * 3) % max(height - side, 1)
    left = (index * 5) % max(width - side, 1)
    picture[top : top + side, left : left + side] = (250, 240, 40)
    return picture.astype(np.uint8)


def write_clip(path: Path, *, frames: int, fps: int, size: tuple[int, int], gop: int | None = None) -> Path:
    """An H.264 MP4 of ``draw_frame(0..frames-1)`` at a constant ``fps`` (one encoder thread). The same
    arguments give the same pictures, but not always the same bytes on another machine: only
    ``--encode-videos`` calls this, and the golden is made from the committed result."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"threads": "1"}
    if gop is not None:
        options["x264-params"] = "scenecut=0"  # keyframes exactly every `gop` frames
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps, options=options)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        if gop is not None:
            stream.codec_context.gop_size = gop
        for index in range(frames):
            frame = av.VideoFrame.from_ndarray(draw_frame(index, size), format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def committed_videos(folder: Path = VIDEOS_DIR) -> dict[str, Path]:
    """The golden's videos, by case id: the committed files the golden was made from (never re-encoded)."""
    return {case.id: Path(folder) / case.video for case in CASES}


def copy_videos(folder: Path, source: Path = VIDEOS_DIR) -> dict[str, Path]:
    """Copy the committed videos into ``folder`` (next to the ``cases.json`` the recipe reads), by case id."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    videos = {}
    for case_id, path in committed_videos(source).items():
        if not path.is_file():
            raise SystemExit(
                f"{path} missing: the golden's videos are committed under {source}; restore them from git, or "
                "encode them with --encode-videos (which changes the golden's inputs: regenerate and commit both)"
            )
        videos[case_id] = Path(shutil.copy2(path, folder / path.name))
    return videos


def encode_videos(folder: Path = VIDEOS_DIR) -> dict[str, Path]:
    """Encode every case's video with ``write_clip`` into ``folder`` (``--encode-videos`` only).

    Not bit-reproducible across machines or runs: run it to add or change a case, then regenerate the golden
    from the result and commit the videos and the golden together.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return {
        case.id: write_clip(folder / case.video, frames=case.frames, fps=case.fps, size=case.size, gop=case.gop)
        for case in CASES
    }


# The text-model fields transformers 4.46's flat Qwen2VLConfig takes at the top level.
_TEXT_FIELDS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "hidden_act", "max_position_embeddings", "initializer_range", "rms_norm_eps",
    "use_cache", "use_sliding_window", "sliding_window", "max_window_layers", "attention_dropout",
    "bos_token_id", "eos_token_id",
)
_VISION_FIELDS = (
    "depth", "embed_dim", "hidden_size", "hidden_act", "mlp_ratio", "num_heads", "in_channels", "patch_size",
    "spatial_merge_size", "temporal_patch_size", "initializer_range",
)


def transformers4_config(config: dict) -> tuple[dict, list[str]]:
    """transformers 5's nested Qwen2-VL config as 4.46's flat one (the layout the published checkpoint has)."""
    text = config["text_config"]
    rope = text["rope_parameters"]
    flat = {
        "architectures": ["Qwen2VLForSequenceClassification"],
        "model_type": "qwen2_vl",
        **{key: text[key] for key in _TEXT_FIELDS if key in text},
        "rope_theta": rope["rope_theta"],
        "rope_scaling": {"type": "mrope", "mrope_section": list(rope["mrope_section"])},
        "vision_config": {
            key: config["vision_config"][key] for key in _VISION_FIELDS if key in config["vision_config"]
        },
        "pad_token_id": config.get("pad_token_id", text.get("pad_token_id")),
        "torch_dtype": config.get("dtype", "float32"),
    }
    for key in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id",
                "tie_word_embeddings", "id2label", "label2id", "problem_type"):
        if key in config:
            flat[key] = config[key]
    changes = [
        "config.json: text_config fields moved to the top level (transformers 4.46's flat Qwen2VLConfig)",
        "config.json: text_config.rope_parameters -> rope_theta + rope_scaling {type: mrope, mrope_section}",
        (
            "config.json: vision_config.rope_parameters dropped (4.46's vision RoPE is fixed at theta 10000, "
            f"the same as {config['vision_config'].get('rope_parameters')})"
        ),
        "config.json: architectures -> [Qwen2VLForSequenceClassification] (mantis' class, as published)",
    ]
    return flat, changes


def write_transformers4_view(src: Path, dst: Path) -> list[str]:
    """Copy ``src`` to ``dst`` with only ``config.json`` translated; returns what changed."""
    src, dst = Path(src), Path(dst)
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    for path in src.iterdir():
        if path.name != "config.json":
            shutil.copy2(path, dst / path.name)
    flat, changes = transformers4_config(json.loads((src / "config.json").read_text()))
    (dst / "config.json").write_text(json.dumps(flat, indent=2, sort_keys=True) + "\n")
    vision_rope = json.loads((src / "config.json").read_text())["vision_config"].get("rope_parameters", {})
    if vision_rope and (vision_rope.get("rope_type"), vision_rope.get("rope_theta")) != ("axial", 10000.0):
        raise SystemExit(f"vision RoPE {vision_rope} is not what transformers 4.46 hard-codes")
    return changes


def _versions_here() -> dict:
    import importlib.metadata

    import av
    import torch
    import transformers

    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": importlib.metadata.version("tokenizers"),
        "av": av.__version__,
    }


# --- generation -------------------------------------------------------------------------------------------------


def generate(golden_dir: Path, work_dir: Path, python: Path = REFERENCE_PYTHON, encode: bool = False) -> Path:
    """Build the checkpoint, take the committed videos (``encode``: re-encode them first), run the recipe and
    write the golden file."""
    if not Path(python).exists():
        raise SystemExit(f"{python} not found: run `bash reference/qwen2_vl/setup_env.sh` first")
    if encode:
        for path in encode_videos(VIDEOS_DIR).values():
            print(f"encoded {path} ({path.stat().st_size} bytes): commit it with the regenerated golden",
                  file=sys.stderr)
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    checkpoint = build_checkpoint(work_dir / "checkpoint")
    videos = copy_videos(work_dir / "videos")
    translation = write_transformers4_view(checkpoint, work_dir / "checkpoint-tf4")
    inputs_s = time.perf_counter() - t0
    cases_file = work_dir / "videos" / "cases.json"
    cases_file.write_text(
        json.dumps({"cases": [{"id": c.id, "video": c.video, "prompt": c.prompt} for c in CASES]},
                   indent=1, ensure_ascii=False) + "\n"
    )
    raw = work_dir / "recipe_float32.json"
    t0 = time.perf_counter()
    subprocess.run(
        [str(python), str(RECIPE), "--checkpoint", str(work_dir / "checkpoint-tf4"), "--cases", str(cases_file),
         "--out", str(raw), "--dtype", "float32"],
        check=True,
    )
    recipe_s = time.perf_counter() - t0
    result = json.loads(raw.read_text())
    by_id = {c.id: c for c in CASES}
    cases = []
    for entry in result.pop("cases"):
        case = by_id[entry["id"]]
        if entry["video_sha256"] != sha256_file(videos[case.id]):
            raise SystemExit(f"{case.id}: the recipe read different video bytes than were copied")
        cases.append({"id": case.id, "why": case.why,
                      "write_clip": {"frames": case.frames, "fps": case.fps, "size": list(case.size), "gop": case.gop},
                      **entry})
    golden = {
        "about": (
            "Golden VideoScore-Qwen2-VL logits: the published example's recipe (mantis-vl "
            "Qwen2VLForSequenceClassification on transformers 4.46.3, qwen-vl-utils 0.0.8) on an untrained "
            "stand-in checkpoint and the synthetic videos committed in reference/golden/videos. Regenerate with "
            "`make reference`; compared by tests/unit/test_qwen2_vl.py."
        ),
        "generator": {
            "command": "bash reference/qwen2_vl/setup_env.sh && .venv/bin/python reference/qwen2_vl/generate.py",
            "variant": "TIGER-Lab/VideoScore-Qwen2-VL",
            "seed": SEED,
            "inputs_built_with": _versions_here(),
            "seconds": {"build_inputs": round(inputs_s, 1), "recipe": round(recipe_s, 1)},
        },
        "checkpoint": {**checkpoint_fingerprint(checkpoint), "transformers4_translation": translation},
        **result,
        "cases": cases,
    }
    golden_dir = Path(golden_dir)
    golden_dir.mkdir(parents=True, exist_ok=True)
    out = golden_dir / GOLDEN_FILE
    out.write_text(json.dumps(golden, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {out} (inputs {inputs_s:.1f} s, recipe {recipe_s:.1f} s)", file=sys.stderr)
    return out


def compare_goldens(fresh: dict, committed: dict) -> list[str]:
    """Every difference between a fresh golden and the committed one that matters, as readable lines."""
    problems = []
    for key in ("checkpoint", "dtype", "fps", "prompt_template_sha256", "model", "processor"):
        if fresh.get(key) != committed.get(key):
            problems.append(f"{key}: fresh {fresh.get(key)!r} != committed {committed.get(key)!r}")
    fresh_cases = {c["id"]: c for c in fresh["cases"]}
    for case in committed["cases"]:
        other = fresh_cases.get(case["id"])
        if other is None:
            problems.append(f"{case['id']}: missing from the fresh golden")
            continue
        for key in ("video_sha256", "indices", "frames", "resized_frames", "chat_text", "inputs"):
            if other.get(key) != case.get(key):
                problems.append(f"{case['id']}.{key}: fresh and committed differ")
        for i, (x, y) in enumerate(zip(other["logits"], case["logits"])):
            if abs(x - y) > FP32_LOGITS_TOLERANCE:
                problems.append(f"{case['id']}.logits[{i}]: fresh {x!r} vs committed {y!r}")
    return problems


def main(argv: list[str] | None = None) -> int:
    env_out = os.environ.get(OUT_ENV)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--golden-dir", type=Path, default=Path(env_out) if env_out else GOLDEN_DIR)
    parser.add_argument("--work-dir", type=Path,
                        default=Path(env_out) / "work-qwen2-vl" if env_out else ROOT / "build" / "reference-qwen2-vl")
    parser.add_argument("--python", type=Path, default=REFERENCE_PYTHON, help="the reference venv's python")
    parser.add_argument("--check", action="store_true", help="compare with the committed golden; exit 1 on drift")
    parser.add_argument("--encode-videos", action="store_true",
                        help="re-encode reference/golden/videos from CASES first (to add or change a case): this "
                        "changes the golden's inputs; regenerate the golden and commit it with the videos")
    args = parser.parse_args(argv)
    if args.check:
        fresh = generate(args.work_dir / "golden", args.work_dir, python=args.python, encode=args.encode_videos)
        problems = compare_goldens(json.loads(fresh.read_text()), json.loads((GOLDEN_DIR / GOLDEN_FILE).read_text()))
        for line in problems:
            print(f"DRIFT {GOLDEN_FILE}: {line}", file=sys.stderr)
        print(f"{GOLDEN_FILE}: {'fresh == committed' if not problems else f'{len(problems)} differences'}",
              file=sys.stderr)
        return 1 if problems else 0
    generate(args.golden_dir, args.work_dir, python=args.python, encode=args.encode_videos)
    return 0


if __name__ == "__main__":
    sys.exit(main())
