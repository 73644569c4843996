"""The VideoScore-Qwen2-VL inference recipe, run as published, to produce golden scores.

Runs in the Qwen2-VL reference environment (``.venv-reference-qwen``: transformers 4.46.3, mantis-vl 0.0.5,
qwen-vl-utils 0.0.8; built by ``reference/qwen2_vl/setup_env.sh``), never in the project's venv, and imports
nothing from this repository: it is the independent side of the parity proof. For each (video, prompt) in
``--cases`` it does what TIGER-AI-Lab/VideoScore ``examples/run_videoscore_qwen2_vl.py`` does, line for line:

* ``messages = [{"role": "user", "content": [{"type": "video", "video": video_path, "fps": FPS},
  {"type": "text", "text": REGRESSION_QUERY_PROMPT.format(text_prompt=video_prompt)}]}]`` with ``FPS = 8.0``;
* ``processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)``;
* ``image_inputs, video_inputs = process_vision_info(messages)`` (qwen-vl-utils);
* ``processor(text=[text], images=image_inputs, videos=video_inputs, padding=True, return_tensors="pt")``;
* ``Qwen2VLProcessor.from_pretrained(ckpt)``, ``mantis.models.qwen2_vl.Qwen2VLForSequenceClassification.
  from_pretrained(ckpt, torch_dtype=...)``, ``torch.no_grad()``, ``model(**inputs).logits[0]`` and the
  example's ``round(..., ROUND_DIGIT)``.

CLI::

    .venv-reference-qwen/bin/python reference/qwen2_vl/recipe.py \\
        --checkpoint DIR --cases cases.json --out out.json [--dtype float32|bfloat16]

Where this departs from the example, and why (none of it touches the math):

1. torchvision. qwen-vl-utils needs it (``torchvision.io.read_video`` to decode, ``transforms.functional.resize``
   to resize). The only torchvision that pairs with torch 2.13 (0.28.0) ships a CUDA-linked ``_C`` extension
   that cannot load next to the CPU torch wheel, and its import then fails registering fake kernels for two
   detection ops (``nms``, ``qnms``) it could not load; and 0.28 no longer has ``io.read_video`` at all.
   So, before importing it, this script declares those two op schemas (nothing here calls them), and it
   installs ``read_video_pyav`` as ``torchvision.io.read_video``: torchvision 0.20's PyAV reader for the
   call qwen-vl-utils makes (``start_pts=0.0, end_pts=None, pts_unit="sec", output_format="TCHW"``): every
   frame of the first video stream in presentation order, ``frame.to_rgb().to_ndarray()``, and
   ``info["video_fps"] = float(stream.average_rate)``. The resize is torchvision 0.28's own function.
   ``FORCE_QWENVL_VIDEO_READER=torchvision`` pins qwen-vl-utils to that reader (decord is not installed).
2. The checkpoint must be in a layout transformers 4.46 reads: ``reference/qwen2_vl/generate.py`` passes a
   translated copy (flat ``config.json``; same weights, tokenizer and processor files) and records the
   translation in the golden.
3. The example loads with ``device_map="auto", attn_implementation="flash_attention_2"`` on CUDA; the golden is
   made on CPU with ``--attn`` (default ``sdpa``; ``eager`` gives the same logits to float32 rounding).
4. ``from_pretrained`` is asked for its loading report: missing or unexpected keys abort the run.
5. It loops over several cases with one loaded model, and records fingerprints of each stage (sampled frames,
   resized frames, input ids, pixel values) so a mismatch can be traced to sampling, resizing, prompting,
   preprocessing or the model. The sampled frame numbers are recorded by wrapping qwen-vl-utils'
   ``smart_nframes`` and the resize call (both still run unchanged).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import platform
import sys
from pathlib import Path

import av
import numpy as np
import torch

# --- departure 1: make torchvision 0.28 importable next to the CPU torch wheel -----------------------------------
_torchvision_ops = torch.library.Library("torchvision", "DEF")  # kept alive for the process
_torchvision_ops.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
_torchvision_ops.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
os.environ.setdefault("FORCE_QWENVL_VIDEO_READER", "torchvision")

import torchvision
import torchvision.io


def read_video_pyav(filename, start_pts=0, end_pts=None, pts_unit="pts", output_format="THWC"):
    """torchvision 0.20's ``io.read_video`` (PyAV backend) for a whole video: all frames, in pts order."""
    if start_pts not in (0, 0.0) or end_pts is not None:
        raise NotImplementedError("only whole-video reads are needed by the recipe")
    output_format = output_format.upper()
    info = {}
    frames = {}
    with av.open(str(filename), metadata_errors="ignore") as container:
        stream = container.streams.video[0]
        container.seek(0, any_frame=False, backward=True, stream=stream)
        for frame in container.decode(video=0):
            if frame.pts is not None and frame.pts >= 0:
                frames[frame.pts] = frame
        if stream.average_rate is not None:
            info["video_fps"] = float(stream.average_rate)
        ordered = [frames[pts].to_rgb().to_ndarray() for pts in sorted(frames)]
    vframes = torch.as_tensor(np.stack(ordered)) if ordered else torch.empty((0, 1, 1, 3), dtype=torch.uint8)
    if output_format == "TCHW":
        vframes = vframes.permute(0, 3, 1, 2)
    return vframes, torch.empty((1, 0), dtype=torch.float32), info


torchvision.io.read_video = read_video_pyav

from mantis.models.qwen2_vl import Qwen2VLForSequenceClassification
from qwen_vl_utils import process_vision_info, vision_process
from transformers import Qwen2VLProcessor

# ----- from examples/run_videoscore_qwen2_vl.py, unchanged --------------------------------------------------------
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
ROUND_DIGIT = 3
FPS = 8.0
# ------------------------------------------------------------------------------------------------------------------

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def sha256_array(array: np.ndarray) -> str:
    """sha256 of an array's dtype, shape and C-order bytes (same definition as reference/qwen2_vl/generate.py)."""
    array = np.ascontiguousarray(array)
    digest = hashlib.sha256(f"{array.dtype.str}|{list(array.shape)}|".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class _Recorder:
    """Records what qwen-vl-utils computed (frame count, frames before and after resizing) without changing it."""

    def __init__(self) -> None:
        self.calls: list[dict] = []
        self._smart_nframes = vision_process.smart_nframes
        self._resize = vision_process.transforms.functional.resize
        vision_process.smart_nframes = self.smart_nframes
        vision_process.transforms.functional.resize = self.resize

    def smart_nframes(self, ele, total_frames, video_fps):
        nframes = self._smart_nframes(ele, total_frames=total_frames, video_fps=video_fps)
        self.calls.append({"total_frames": int(total_frames), "video_fps": float(video_fps), "nframes": int(nframes)})
        return nframes

    def resize(self, img, *args, **kwargs):
        out = self._resize(img, *args, **kwargs)
        self.calls[-1]["sampled"] = img
        self.calls[-1]["resized"] = out
        return out


def score_case(processor, model, recorder: _Recorder, video_path: str, video_prompt: str) -> dict:
    """The example's per-video code, verbatim apart from the bookkeeping it returns."""
    messages = [
        {
            "role": "user",
            "content": [
                {
                    "type": "video",
                    "video": video_path,
                    "fps": FPS,
                },
                {"type": "text", "text": REGRESSION_QUERY_PROMPT.format(text_prompt=video_prompt)},
            ],
        }
    ]

    text = processor.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    image_inputs, video_inputs = process_vision_info(messages)
    inputs = processor(
        text=[text],
        images=image_inputs,
        videos=video_inputs,
        padding=True,
        return_tensors="pt",
    )
    inputs = inputs.to(model.device)

    with torch.no_grad():
        outputs = model(**inputs)

    logits = outputs.logits
    num_aspects = logits.shape[-1]

    aspect_scores = []
    for i in range(num_aspects):
        aspect_scores.append(round(logits[0, i].item(), ROUND_DIGIT))

    record = recorder.calls[-1]
    total, nframes = record["total_frames"], record["nframes"]
    # The indices qwen-vl-utils' torchvision reader took (its own expression, evaluated again for the record).
    indices = torch.linspace(0, total - 1, nframes).round().long().tolist()
    sampled = np.ascontiguousarray(record["sampled"].numpy().transpose(0, 2, 3, 1))  # T x H x W x 3 uint8
    resized = video_inputs[0].numpy()  # T x C x H x W float32, what the processor received
    return {
        "total_frames": total,
        "video_fps": record["video_fps"],
        "indices": [int(i) for i in indices],
        "frames": {"shape": list(sampled.shape), "sha256": sha256_array(sampled)},
        "resized_frames": {"shape": list(resized.shape), "sha256": sha256_array(resized)},
        "chat_text": text,
        "inputs": {
            "input_ids": {
                "length": int(inputs["input_ids"].shape[-1]),
                "sha256": sha256_array(inputs["input_ids"].cpu().numpy().astype(np.int64)),
                "video_tokens": int((inputs["input_ids"] == model.config.video_token_id).sum()),
            },
            "pixel_values_videos": {
                "shape": list(inputs["pixel_values_videos"].shape),
                "sha256": sha256_array(inputs["pixel_values_videos"].cpu().float().numpy()),
                "sum": float(inputs["pixel_values_videos"].double().sum()),
            },
            "video_grid_thw": inputs["video_grid_thw"].cpu().tolist(),
        },
        "logits": [float(v) for v in logits[0].float().cpu().tolist()],
        "scores_rounded": aspect_scores,
    }


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint folder transformers 4.46 reads")
    parser.add_argument("--cases", required=True, type=Path, help="cases.json")
    parser.add_argument("--out", required=True, type=Path, help="where to write the results (JSON)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--attn", default="sdpa", help="attention implementation (the example: flash_attention_2)")
    args = parser.parse_args(argv)

    spec = json.loads(args.cases.read_text())
    torch_dtype = DTYPES[args.dtype]
    model_name = str(args.checkpoint)
    model, loading = Qwen2VLForSequenceClassification.from_pretrained(
        model_name, torch_dtype=torch_dtype, attn_implementation=args.attn, output_loading_info=True
    )
    model = model.eval()
    bad = {k: v for k, v in loading.items() if v}
    if bad:
        raise SystemExit(f"checkpoint {model_name} does not load cleanly into mantis' model: {bad}")
    processor = Qwen2VLProcessor.from_pretrained(model_name)
    recorder = _Recorder()

    results = []
    for case in spec["cases"]:
        video_path = (args.cases.parent / case["video"]).resolve()
        result = score_case(processor, model, recorder, str(video_path), case["prompt"])
        results.append({"id": case["id"], "video": Path(case["video"]).name, "video_sha256": sha256_file(video_path),
                        "prompt": case["prompt"], **result})
        print(f"{case['id']}: {len(result['indices'])} of {result['total_frames']} frames, "
              f"{result['inputs']['input_ids']['length']} tokens, logits {result['scores_rounded']}", file=sys.stderr)

    image_processor = processor.image_processor
    out = {
        "recipe": "TIGER-AI-Lab/VideoScore examples/run_videoscore_qwen2_vl.py (reference/qwen2_vl/recipe.py)",
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "transformers": _version("transformers"),
            "tokenizers": _version("tokenizers"),
            "mantis-vl": _version("mantis-vl"),
            "qwen-vl-utils": _version("qwen-vl-utils"),
            "av": av.__version__,
            "numpy": np.__version__,
            "pillow": _version("pillow"),
        },
        "dtype": args.dtype,
        "fps": FPS,
        "prompt_template_sha256": hashlib.sha256(REGRESSION_QUERY_PROMPT.encode()).hexdigest(),
        "model": {
            "class": f"{type(model).__module__}.{type(model).__name__}",
            "attn_implementation": model.config._attn_implementation,
            "loading_info": {k: sorted(v) if isinstance(v, (set, list)) else v for k, v in loading.items()},
            "score_bias": model.score.bias is not None,
            "pad_token_id": model.config.pad_token_id,
        },
        "processor": {
            "class": type(processor).__name__,
            "image_processor": type(image_processor).__name__,
            "min_pixels": image_processor.min_pixels,
            "max_pixels": image_processor.max_pixels,
            "tokenizer": type(processor.tokenizer).__name__,
            "video_reader": vision_process.get_video_reader_backend(),
        },
        "cases": results,
    }
    args.out.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
