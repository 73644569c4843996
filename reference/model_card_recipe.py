"""The VideoScore model card's inference recipe, run as published, to produce golden scores.

Runs in the reference environment (``.venv-reference``: transformers 4.52.4 + mantis-vl 0.0.5, built by
``reference/setup_env.sh``), never in the project's venv, and imports nothing from this repository: it is the
independent side of the parity proof. For each (video, prompt) in ``--cases`` it does what the model card
does, line for line:

* ``av.open``; ``total_frames = container.streams.video[0].frames``;
* ``indices = np.arange(0, total_frames, total_frames / MAX_NUM_FRAMES).astype(int)`` when
  ``total_frames > MAX_NUM_FRAMES``, else ``np.arange(total_frames)``;
* the card's ``_read_video_pyav(container, indices)`` decode loop, then ``Image.fromarray``;
* ``REGRESSION_QUERY_PROMPT.format(text_prompt=...)``, then ``"<image> "`` appended once per frame not
  already covered by an ``<image>`` in the prompt;
* ``AutoProcessor.from_pretrained(ckpt, torch_dtype=...)``,
  ``mantis.models.idefics2.Idefics2ForSequenceClassification.from_pretrained(ckpt, torch_dtype=...).eval()``,
  ``processor(text=eval_prompt, images=flatten_images, return_tensors="pt")``, ``torch.no_grad()``,
  ``outputs.logits[0]`` and the card's ``round(..., ROUND_DIGIT)``.

CLI::

    .venv-reference/bin/python reference/model_card_recipe.py \\
        --checkpoint DIR --cases cases.json --out out.json [--dtype float32|bfloat16]

``cases.json`` is ``{"max_num_frames": 48, "cases": [{"id": ..., "video": "file.mp4", "prompt": ...}, ...]}``
(video paths relative to the cases file). The output records the library versions, the dtype and, per case,
the video's file name and sha256, the prompt, the sampled indices, fingerprints of the decoded frames and of
the processor's tensors (so a mismatch can be traced to decoding, prompting, preprocessing or the model), the
full-precision logits and the card's 3-digit rounding.

Where this departs from the card, and why (none of it touches the math):

1. ``MAX_NUM_FRAMES`` comes from ``cases.json`` instead of being the card's literal 16: the VideoScore-v1.1
   card uses the same recipe with 48 frames, and v1.1 is the variant our golden imitates.
2. ``REGRESSION_QUERY_PROMPT`` is the card's text *as published* (VideoScore repository and the Hugging Face
   card's source): with the blank line after item (5), the blank line after the output example and the
   trailing space after "sub-score,". The HTML rendering we were handed (shared/reference/
   videoscore-model-card.md) dropped blank lines, trailing spaces and indentation from the whole code block
   (and ate the ``<image>`` tokens); every public copy of the recipe has them, and so does worker/prompt.py.
3. The checkpoint must be in a layout transformers 4.52.4 reads. The stand-in is written by transformers
   5.24, whose processor/tokenizer files 4.52.4 cannot load (image-processor settings nested inside
   processor_config.json instead of preprocessor_config.json; ``tokenizer_class: "TokenizersBackend"``; the
   text config's ``rope_parameters`` instead of ``rope_theta``). ``reference/generate.py`` therefore writes a
   translated copy (``checkpoint-tf4/``: same weights file byte for byte, same tokenizer.json, only those
   JSON keys moved/renamed; see ``write_transformers4_view`` there) and passes that folder here. The golden
   records input-id and pixel-value fingerprints, and the parity test checks that transformers 5's processor
   on the original folder produces the same ones.
4. The card does ``model.to(device)`` with cuda when available; the golden is made on CPU (``--device``).
5. The container is closed after decoding, and ``from_pretrained`` is asked for its loading report: a
   checkpoint with missing or unexpected keys aborts the run (mantis would silently keep random weights).
6. It loops over several cases with one loaded model instead of scoring one hard-coded video.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import platform
import sys
from pathlib import Path
from typing import List

import av
import numpy as np
import torch
from mantis.models.idefics2 import Idefics2ForSequenceClassification
from PIL import Image
from transformers import AutoProcessor


# ----- from the model card, unchanged ------------------------------------------------------------------------
def _read_video_pyav(
    container,
    indices,
):
    frames = []
    container.seek(0)
    start_index = indices[0]
    end_index = indices[-1]
    for i, frame in enumerate(container.decode(video=0)):
        if i > end_index:
            break
        if i >= start_index and i in indices:
            frames.append(frame)
    return np.stack([x.to_ndarray(format="rgb24") for x in frames])


MAX_NUM_FRAMES = 16  # the card's value for VideoScore; cases.json overrides it (48 for v1.1)
ROUND_DIGIT = 3
REGRESSION_QUERY_PROMPT = """
Suppose you are an expert in judging and evaluating the quality of AI-generated videos,
please watch the following frames of a given video and see the text prompt for generating the video,
then give scores from 5 different dimensions:
(1) visual quality: the quality of the video in terms of clearness, resolution, brightness, and color
(2) temporal consistency, both the consistency of objects or humans and the smoothness of motion or movements
(3) dynamic degree, the degree of dynamic changes
(4) text-to-video alignment, the alignment between the text prompt and the video content
(5) factual consistency, the consistency of the video content with the common-sense and factual knowledge

for each dimension, output a float number from 1.0 to 4.0,
the higher the number is, the better the video performs in that sub-score, 
the lowest 1.0 means Bad, the highest 4.0 means Perfect/Real (the video is like a real video)
Here is an output example:
visual quality: 3.2
temporal consistency: 2.7
dynamic degree: 4.0
text-to-video alignment: 2.3
factual consistency: 1.8

For this video, the text prompt is "{text_prompt}",
all the frames of video are as follows:
"""
# --------------------------------------------------------------------------------------------------------------

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def sha256_array(array: np.ndarray) -> str:
    """sha256 of an array's dtype, shape and C-order bytes (the same function lives in reference/generate.py)."""
    array = np.ascontiguousarray(array)
    digest = hashlib.sha256(f"{array.dtype.str}|{list(array.shape)}|".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def score_case(processor, model, video_path: str, video_prompt: str, max_num_frames: int) -> dict:
    """The card's per-video code, verbatim apart from MAX_NUM_FRAMES and the bookkeeping it returns."""
    container = av.open(video_path)
    total_frames = container.streams.video[0].frames
    if total_frames > max_num_frames:
        indices = np.arange(0, total_frames, total_frames / max_num_frames).astype(int)
    else:
        indices = np.arange(total_frames)

    video_frames = _read_video_pyav(container, indices)
    container.close()
    frames = [Image.fromarray(x) for x in video_frames]
    eval_prompt = REGRESSION_QUERY_PROMPT.format(text_prompt=video_prompt)
    num_image_token = eval_prompt.count("<image>")
    if num_image_token < len(frames):
        eval_prompt += "<image> " * (len(frames) - num_image_token)

    flatten_images = []
    for x in [frames]:
        if isinstance(x, list):
            flatten_images.extend(x)
        else:
            flatten_images.append(x)
    flatten_images = [Image.open(x) if isinstance(x, str) else x for x in flatten_images]
    inputs = processor(text=eval_prompt, images=flatten_images, return_tensors="pt")
    inputs = {k: v.to(model.device) for k, v in inputs.items()}

    with torch.no_grad():
        outputs = model(**inputs)

    logits = outputs.logits
    num_aspects = logits.shape[-1]

    aspect_scores = []
    for i in range(num_aspects):
        aspect_scores.append(round(logits[0, i].item(), ROUND_DIGIT))

    return {
        "total_frames": int(total_frames),
        "indices": [int(i) for i in indices],
        "frames": {"shape": list(video_frames.shape), "sha256": sha256_array(video_frames)},
        "eval_prompt": eval_prompt,
        "inputs": {
            "input_ids": {
                "length": int(inputs["input_ids"].shape[-1]),
                "sha256": sha256_array(inputs["input_ids"].cpu().numpy().astype(np.int64)),
                "image_tokens": int((inputs["input_ids"] == model.config.image_token_id).sum()),
            },
            "pixel_values": {
                "shape": list(inputs["pixel_values"].shape),
                "sha256": sha256_array(inputs["pixel_values"].cpu().float().numpy()),
                "sum": float(inputs["pixel_values"].double().sum()),
            },
            "pixel_attention_mask": {
                "shape": list(inputs["pixel_attention_mask"].shape),
                "sha256": sha256_array(inputs["pixel_attention_mask"].cpu().numpy().astype(np.bool_)),
            },
        },
        # float32/bfloat16 values widened to Python floats: exact, not rounded
        "logits": [float(v) for v in logits[0].float().cpu().tolist()],
        "scores_rounded": aspect_scores,
    }


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint folder transformers 4.x reads")
    parser.add_argument("--cases", required=True, type=Path, help="cases.json")
    parser.add_argument("--out", required=True, type=Path, help="where to write the results (JSON)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--device", default="cpu", help="torch device (the golden is made on cpu)")
    args = parser.parse_args(argv)

    spec = json.loads(args.cases.read_text())
    max_num_frames = int(spec.get("max_num_frames", MAX_NUM_FRAMES))
    torch_dtype = DTYPES[args.dtype]

    model_name = str(args.checkpoint)
    processor = AutoProcessor.from_pretrained(model_name, torch_dtype=torch_dtype)
    model, loading = Idefics2ForSequenceClassification.from_pretrained(
        model_name, torch_dtype=torch_dtype, output_loading_info=True
    )
    model = model.eval()
    bad = {k: v for k, v in loading.items() if v}
    if bad:
        raise SystemExit(f"checkpoint {model_name} does not load cleanly into mantis' model: {bad}")
    device = torch.device(args.device)
    model.to(device)

    results = []
    for case in spec["cases"]:
        video_path = (args.cases.parent / case["video"]).resolve()
        result = score_case(processor, model, str(video_path), case["prompt"], max_num_frames)
        results.append({"id": case["id"], "video": Path(case["video"]).name, "video_sha256": sha256_file(video_path),
                        "prompt": case["prompt"], **result})
        print(f"{case['id']}: {len(result['indices'])} frames, {result['inputs']['input_ids']['length']} tokens, "
              f"scores {result['scores_rounded']}", file=sys.stderr)

    config = model.config
    out = {
        "recipe": "VideoScore model card (regression), run by reference/model_card_recipe.py",
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": _version("transformers"),
            "mantis-vl": _version("mantis-vl"),
            "tokenizers": _version("tokenizers"),
            "av": av.__version__,
            "numpy": np.__version__,
            "pillow": _version("pillow"),
        },
        "dtype": args.dtype,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "max_num_frames": max_num_frames,
        "round_digit": ROUND_DIGIT,
        "prompt_template_sha256": hashlib.sha256(REGRESSION_QUERY_PROMPT.encode()).hexdigest(),
        "model": {
            "class": f"{type(model).__module__}.{type(model).__qualname__}",
            "attn_implementation": config._attn_implementation,
            "text_rms_norm_eps": config.text_config.rms_norm_eps,
            "perceiver_config_rms_norm_eps": config.perceiver_config.rms_norm_eps,
            # what mantis actually builds its perceiver norms with (it reads the text eps)
            "perceiver_norm_eps_used": model.model.connector.perceiver_resampler.norm.variance_epsilon,
            "pad_token_id": getattr(config, "pad_token_id", None),
            "loading_info": {k: list(v) for k, v in loading.items()},
        },
        "cases": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
