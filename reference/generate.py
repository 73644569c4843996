"""Generate the golden scores: the model card's recipe, run with mantis-vl on transformers 4.52.4.

Run with the project's venv (it builds inputs with project code), after ``bash reference/setup_env.sh``::

    .venv/bin/python reference/generate.py            # what `make reference` runs

It

1. builds the untrained stand-in checkpoint (``videoscore.worker.testing.stand_in``, TIGER-Lab/VideoScore-v1.1,
   seed 0) into a work folder, and copies the golden's videos there from ``reference/golden/videos/<case id>.mp4``;
2. writes a transformers-4 view of the checkpoint (``write_transformers4_view``: the same weights and
   tokenizer, with the few JSON files transformers 5.24 writes in a layout 4.52.4 cannot read translated)
   and ``cases.json``;
3. runs ``reference/model_card_recipe.py`` in ``.venv-reference`` on them, in float32 and in bfloat16;
4. writes ``reference/golden/idefics2_v1_1_{fp32,bf16}.json``: the recipe's results plus fingerprints of the
   checkpoint and the videos, so a test that rebuilds the checkpoint and reads the committed videos can tell
   "the inputs drifted" from "the model drifted".

The videos are committed, not encoded here: x264 in PyAV does not write the same bytes on every machine (nor
always twice on one), and the golden's ``video_sha256``, decoded frames and logits all follow from those bytes.
The checkpoint, rebuilt from a seed, is reproducible and is not committed.

Options: ``--golden-dir`` (default ``reference/golden``, or ``$VIDEOSCORE_REFERENCE_OUT`` when set: CI
regenerates into a temporary folder that way and compares with the committed files), ``--work-dir``
(checkpoint, videos, raw recipe output; default ``build/reference``), ``--no-bf16``, ``--check`` (after
generating, compare with the committed golden and exit 1 on any drift), and ``--encode-videos``.

``--encode-videos`` is for adding or changing a case: it first re-encodes every case's video from its
``CASES`` entry (``videoscore.worker.testing.media.make_video``) into ``reference/golden/videos/``, overwriting the
committed
ones. That changes the golden's inputs, so the golden JSON files no longer match them until they are
regenerated (this run does that when ``--golden-dir`` is the default) and both the videos and
``reference/golden/*.json`` are committed together; tests/unit/test_parity.py fails on any mismatch.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python reference/generate.py` puts reference/ first, not the repo root
    sys.path.insert(0, str(ROOT))

VARIANT = "TIGER-Lab/VideoScore-v1.1"
SEED = 0
GOLDEN_DIR = ROOT / "reference" / "golden"
GOLDEN_FILES = {"float32": "idefics2_v1_1_fp32.json", "bfloat16": "idefics2_v1_1_bf16.json"}
VIDEOS_DIR = GOLDEN_DIR / "videos"  # the golden's input videos, committed (shared with reference/qwen2_vl)
RECIPE = ROOT / "reference" / "model_card_recipe.py"
REFERENCE_PYTHON = ROOT / ".venv-reference" / "bin" / "python"
OUT_ENV = "VIDEOSCORE_REFERENCE_OUT"


@dataclass(frozen=True)
class Case:
    """One golden case: a synthetic video and its text prompt.

    The video is committed as ``reference/golden/videos/<id>.mp4``; ``frames``, ``size``, ``gop``, ``fps`` and
    ``video_kwargs`` are the ``videoscore.worker.testing.media.make_video`` arguments it was encoded with
    (``--encode-videos``).
    """

    id: str
    prompt: str
    frames: int
    size: tuple[int, int]
    gop: int | None = None
    fps: int = 24
    why: str = ""
    video_kwargs: dict = field(default_factory=dict)

    @property
    def video(self) -> str:
        return f"{self.id}.mp4"


# v1.1 samples 48 frames. Sizes are small (the processor resizes every frame to a 378-pixel short edge
# anyway); aspect ratios vary so the resize path is exercised in both orientations.
CASES: tuple[Case, ...] = (
    Case(
        "f16_card_prompt",
        "Near the Elephant Gate village, they approach the haunted house at night. Rajiv feels anxious, but "
        "Bhavesh encourages him. As they reach the house, a mysterious sound in the air adds to the suspense.",
        frames=16, size=(160, 120),
        why="fewer frames than 48: every frame, np.arange(16); the model card's own prompt",
    ),
    Case(
        "f47_portrait",
        "A panda eats bamboo in a misty forest, cinematic lighting, slow motion.",
        frames=47, size=(144, 192),
        why="one frame short of 48: every frame; portrait frames",
    ),
    Case(
        "f48_non_ascii",
        "Ein Fuchs läuft durch den verschneiten Wald — 雪の森を走る狐 🦊, «naïve» café at dawn",
        frames=48, size=(320, 240),
        why="exactly 48: every frame (the > test is strict); non-ASCII prompt (Latin-1, CJK, emoji)",
    ),
    Case(
        "f100_sparse_keyframes",
        'A robot says "hello" to {everyone} at 50% speed; then it spins around {0} times.',
        frames=100, size=(192, 144), gop=50,
        why="more than 48: np.arange(0, 100, 100/48) strides by 2.083; keyframes only at 0 and 50 (B-frames on); "
        "quotes and format braces in the prompt",
    ),
    Case(
        "f1_single_frame",
        "a cat",
        frames=1, size=(160, 120),
        why="a one-frame video: indices [0], a single <image>",
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
    """A fingerprint of the tensors in ``folder``'s safetensors files: names, dtypes, shapes and bytes.

    Independent of the file's header layout and metadata (which differ between safetensors/transformers
    releases), so it only changes when a weight does.
    """
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


def config_sha256(folder: Path) -> str:
    """sha256 of config.json as canonical JSON, without the ``transformers_version`` that wrote it."""
    config = json.loads((Path(folder) / "config.json").read_text())
    config.pop("transformers_version", None)
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def checkpoint_fingerprint(folder: Path) -> dict:
    return {
        "weights_sha256": weights_sha256(folder),
        "config_sha256": config_sha256(folder),
        "tokenizer_json_sha256": sha256_file(Path(folder) / "tokenizer.json"),
    }


# --- inputs ----------------------------------------------------------------------------------------------------


def build_checkpoint(folder: Path) -> Path:
    """The stand-in checkpoint the golden is made with (transformers 5 layout)."""
    from videoscore.worker.testing.stand_in import build_stand_in_checkpoint

    return build_stand_in_checkpoint(Path(folder), variant=VARIANT, seed=SEED)


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
    """Encode every case's video from its ``CASES`` entry into ``folder`` (``--encode-videos`` only).

    Not bit-reproducible across machines or runs: run it to add or change a case, then regenerate the golden
    from the result and commit the videos and the golden together.
    """
    from videoscore.worker.testing.media import make_video

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return {
        case.id: make_video(
            folder / case.video, frames=case.frames, fps=case.fps, size=case.size, gop=case.gop, **case.video_kwargs
        )
        for case in CASES
    }


def max_num_frames() -> int:
    from videoscore.core.variants import VARIANTS

    return VARIANTS[VARIANT].num_frames


def write_transformers4_view(src: Path, dst: Path) -> list[str]:
    """Copy checkpoint ``src`` (written by transformers 5) into ``dst`` in a layout transformers 4.52.4 reads.

    The weights (``*.safetensors``) and ``tokenizer.json`` are copied byte for byte. Only JSON bookkeeping
    moves; every change is returned as a line of text (the golden records them):

    * ``processor_config.json``: transformers 5 nests the image processor's settings in it; 4.52.4 reads
      them from ``preprocessor_config.json``. They are moved there unchanged.
    * ``tokenizer_config.json``: ``tokenizer_class: "TokenizersBackend"`` (5.x only) becomes
      ``"PreTrainedTokenizerFast"`` (the 4.x class for a plain tokenizer.json), told to return only
      ``input_ids`` and ``attention_mask`` like the real checkpoints' LlamaTokenizerFast (4.x's generic class
      adds ``token_type_ids``, which mantis' ``forward`` rejects); the 5.x list ``extra_special_tokens``
      becomes 4.x's ``additional_special_tokens``; ``backend`` is dropped.
    * ``config.json``: the text config's ``rope_parameters: {rope_theta, rope_type: default}`` becomes 4.x's
      ``rope_theta`` (4.52.4 would silently use its default otherwise); top-level ``dtype`` becomes
      ``torch_dtype``. Anything else 4.52.4 would ignore makes this function fail rather than guess.
    """
    src, dst = Path(src), Path(dst)
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    changes: list[str] = []
    for path in sorted(src.iterdir()):
        if path.suffix == ".safetensors" or path.name in ("tokenizer.json", "README.md", "videoscore.json"):
            shutil.copy2(path, dst / path.name)

    config = json.loads((src / "config.json").read_text())
    if "dtype" in config:
        config["torch_dtype"] = config.pop("dtype")
        changes.append("config.json: dtype -> torch_dtype")
    for sub in ("text_config", "vision_config", "perceiver_config"):
        rope = config.get(sub, {}).pop("rope_parameters", None)
        if rope is None:
            continue
        if set(rope) - {"rope_theta", "rope_type"} or rope.get("rope_type", "default") != "default":
            raise ValueError(f"{sub}.rope_parameters {rope} has no transformers 4 equivalent handled here")
        config[sub]["rope_theta"] = rope["rope_theta"]
        changes.append(f"config.json: {sub}.rope_parameters.rope_theta -> {sub}.rope_theta ({rope['rope_theta']})")
    (dst / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")

    tokenizer_config = json.loads((src / "tokenizer_config.json").read_text())
    if tokenizer_config.get("tokenizer_class") == "TokenizersBackend":
        tokenizer_config["tokenizer_class"] = "PreTrainedTokenizerFast"
        changes.append("tokenizer_config.json: tokenizer_class TokenizersBackend -> PreTrainedTokenizerFast")
    if "model_input_names" not in tokenizer_config:
        # 4.x's PreTrainedTokenizerFast would also return token_type_ids, which mantis' forward() rejects;
        # the real checkpoints' tokenizer (LlamaTokenizerFast) returns these two, as the 5.x one does here.
        tokenizer_config["model_input_names"] = ["input_ids", "attention_mask"]
        changes.append("tokenizer_config.json: model_input_names = [input_ids, attention_mask]")
    if tokenizer_config.pop("backend", None) is not None:
        changes.append("tokenizer_config.json: dropped backend")
    extra = tokenizer_config.pop("extra_special_tokens", None)
    if isinstance(extra, list):
        tokenizer_config["additional_special_tokens"] = extra
        changes.append("tokenizer_config.json: extra_special_tokens (list) -> additional_special_tokens")
    elif extra is not None:
        tokenizer_config["extra_special_tokens"] = extra
    (dst / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2, sort_keys=True) + "\n")

    processor_config = json.loads((src / "processor_config.json").read_text())
    image_processor = processor_config.pop("image_processor", None)
    if image_processor is not None:
        image_processor.setdefault("processor_class", processor_config.get("processor_class", "Idefics2Processor"))
        (dst / "preprocessor_config.json").write_text(json.dumps(image_processor, indent=2, sort_keys=True) + "\n")
        changes.append("processor_config.json: image_processor settings -> preprocessor_config.json")
    elif (src / "preprocessor_config.json").is_file():
        shutil.copy2(src / "preprocessor_config.json", dst / "preprocessor_config.json")
    (dst / "processor_config.json").write_text(json.dumps(processor_config, indent=2, sort_keys=True) + "\n")
    return changes


# --- generation ------------------------------------------------------------------------------------------------


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


def generate(
    golden_dir: Path, work_dir: Path, dtypes: list[str], python: Path = REFERENCE_PYTHON, encode: bool = False
) -> dict[str, Path]:
    """Build the checkpoint, take the committed videos (``encode``: re-encode them first), run the recipe once
    per dtype, and write one golden file per dtype."""
    if not Path(python).exists():
        raise SystemExit(f"{python} not found: run `bash reference/setup_env.sh` first")
    if encode:
        for path in encode_videos(VIDEOS_DIR).values():
            print(f"encoded {path} ({path.stat().st_size} bytes): commit it with the regenerated golden",
                  file=sys.stderr)
    work_dir = Path(work_dir)
    if work_dir.exists():
        shutil.rmtree(work_dir)
    work_dir.mkdir(parents=True)

    started = time.perf_counter()
    checkpoint = build_checkpoint(work_dir / "checkpoint")
    checkpoint_tf4 = work_dir / "checkpoint-tf4"
    translation = write_transformers4_view(checkpoint, checkpoint_tf4)
    videos = copy_videos(work_dir / "videos")
    inputs_s = time.perf_counter() - started

    cases_file = work_dir / "videos" / "cases.json"
    cases_file.write_text(
        json.dumps(
            {
                "max_num_frames": max_num_frames(),
                "cases": [{"id": c.id, "video": c.video, "prompt": c.prompt} for c in CASES],
            },
            indent=1,
            ensure_ascii=False,
        )
        + "\n"
    )
    fingerprint = checkpoint_fingerprint(checkpoint)
    if weights_sha256(checkpoint_tf4) != fingerprint["weights_sha256"]:
        raise SystemExit("the transformers-4 view's weights differ from the checkpoint's")

    written = {}
    golden_dir = Path(golden_dir)
    golden_dir.mkdir(parents=True, exist_ok=True)
    for dtype in dtypes:
        raw = work_dir / f"recipe_{dtype}.json"
        t0 = time.perf_counter()
        subprocess.run(
            [str(python), str(RECIPE), "--checkpoint", str(checkpoint_tf4), "--cases", str(cases_file),
             "--out", str(raw), "--dtype", dtype],
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
            cases.append({
                "id": case.id,
                "why": case.why,
                "make_video": {"frames": case.frames, "fps": case.fps, "size": list(case.size), "gop": case.gop,
                               **case.video_kwargs},
                **entry,
            })
        golden = {
            "about": (
                "Golden VideoScore logits: the model card's recipe (mantis-vl Idefics2ForSequenceClassification on "
                "transformers 4.52.4) on an untrained stand-in checkpoint and the synthetic videos committed in "
                "reference/golden/videos. Regenerate with `make reference`; compare with tests/unit/test_parity.py."
            ),
            "generator": {
                "command": "bash reference/setup_env.sh && .venv/bin/python reference/generate.py",
                "variant": VARIANT,
                "seed": SEED,
                "inputs_built_with": _versions_here(),
            },
            "checkpoint": {**fingerprint, "transformers4_translation": translation},
            **result,
            "cases": cases,
        }
        out = golden_dir / GOLDEN_FILES[dtype]
        out.write_text(json.dumps(golden, indent=1, ensure_ascii=False) + "\n")
        written[dtype] = out
        print(f"wrote {out} ({dtype}; inputs {inputs_s:.1f} s, recipe {recipe_s:.1f} s)", file=sys.stderr)
    return written


# --- comparison (used by --check and tests/unit/test_reference_generator.py) ----------------------------------

# The exact fields a regeneration must reproduce: anything that changes them is drift on one side or the other.
_EXACT_CASE_FIELDS = ("video", "video_sha256", "prompt", "make_video", "total_frames", "indices", "frames",
                      "eval_prompt", "inputs")
_EXACT_TOP_FIELDS = ("checkpoint", "dtype", "max_num_frames", "prompt_template_sha256", "model")


def logits_tolerance(dtype: str, value: float) -> float:
    """How far two runs of the same recipe on the same kind of machine may differ: fp32 1e-5 absolute, and one
    bf16 step (2**-7 relative) in bfloat16, where a single rounding flip moves a logit by a whole step."""
    if dtype == "bfloat16":
        return 2.0 ** (math.floor(math.log2(abs(value))) - 7) if value else 2.0**-7
    return 1e-5


def compare_goldens(fresh: dict, committed: dict) -> list[str]:
    """Every difference between a freshly generated golden and the committed one, as readable lines."""
    problems = []
    for key in _EXACT_TOP_FIELDS:
        if fresh.get(key) != committed.get(key):
            problems.append(f"{key}: fresh {fresh.get(key)!r} != committed {committed.get(key)!r}")
    for name in ("transformers", "mantis-vl", "torch"):
        a, b = fresh.get("versions", {}).get(name), committed.get("versions", {}).get(name)
        if a != b:
            problems.append(f"versions.{name}: fresh {a} != committed {b}")
    fresh_cases = {c["id"]: c for c in fresh.get("cases", [])}
    committed_cases = {c["id"]: c for c in committed.get("cases", [])}
    if sorted(fresh_cases) != sorted(committed_cases):
        problems.append(f"case ids: fresh {sorted(fresh_cases)} != committed {sorted(committed_cases)}")
    dtype = committed.get("dtype", "float32")
    for case_id in sorted(set(fresh_cases) & set(committed_cases)):
        a, b = fresh_cases[case_id], committed_cases[case_id]
        for key in _EXACT_CASE_FIELDS:
            if a.get(key) != b.get(key):
                problems.append(f"{case_id}.{key}: fresh and committed differ")
        for i, (x, y) in enumerate(zip(a["logits"], b["logits"])):
            if abs(x - y) > logits_tolerance(dtype, y):
                problems.append(f"{case_id}.logits[{i}]: fresh {x!r} vs committed {y!r} (|Δ| {abs(x - y):.3g})")
    return problems


def check_against_committed(written: dict[str, Path]) -> int:
    failures = 0
    for dtype, fresh_path in written.items():
        committed_path = GOLDEN_DIR / GOLDEN_FILES[dtype]
        if fresh_path.resolve() == committed_path.resolve():
            print(f"--check: {fresh_path} is the committed file; regenerate elsewhere (--golden-dir)", file=sys.stderr)
            return 2
        problems = compare_goldens(json.loads(fresh_path.read_text()), json.loads(committed_path.read_text()))
        for line in problems:
            print(f"DRIFT {GOLDEN_FILES[dtype]}: {line}", file=sys.stderr)
        failures += len(problems)
        if not problems:
            print(f"{GOLDEN_FILES[dtype]}: fresh == committed", file=sys.stderr)
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    env_out = os.environ.get(OUT_ENV)
    parser.add_argument("--golden-dir", type=Path, default=Path(env_out) if env_out else GOLDEN_DIR,
                        help=f"where the golden JSON files go (default: ${OUT_ENV} if set, else reference/golden)")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="checkpoint, videos and raw recipe output (default: build/reference, or "
                        f"${OUT_ENV}/work when that is set)")
    parser.add_argument("--no-bf16", action="store_true", help="skip the bfloat16 golden")
    parser.add_argument("--python", type=Path, default=REFERENCE_PYTHON, help="the reference venv's python")
    parser.add_argument("--check", action="store_true", help="compare with the committed golden; exit 1 on drift")
    parser.add_argument("--encode-videos", action="store_true",
                        help="re-encode reference/golden/videos from CASES first (to add or change a case): this "
                        "changes the golden's inputs; regenerate the golden and commit it with the videos")
    args = parser.parse_args(argv)
    work_dir = args.work_dir or (Path(env_out) / "work" if env_out else ROOT / "build" / "reference")
    dtypes = ["float32"] if args.no_bf16 else ["float32", "bfloat16"]
    started = time.perf_counter()
    written = generate(args.golden_dir, work_dir, dtypes, python=args.python, encode=args.encode_videos)
    print(f"reference: generated {', '.join(str(p) for p in written.values())} in "
          f"{time.perf_counter() - started:.1f} s", file=sys.stderr)
    if args.check:
        return check_against_committed(written)
    return 0


if __name__ == "__main__":
    sys.exit(main())
