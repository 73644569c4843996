"""The VideoScore-Qwen2-VL inference recipe: which frames, at what size, in which prompt, as which tensors.

The published recipe is ``examples/run_videoscore_qwen2_vl.py`` in TIGER-AI-Lab/VideoScore (added 2024-11-18,
commit 226608c; ``FPS`` named in 194736f). It does, for one video:

1. ``messages = [{"role": "user", "content": [{"type": "video", "video": path, "fps": 8.0},
   {"type": "text", "text": REGRESSION_QUERY_PROMPT.format(text_prompt=prompt)}]}]`` -- the same regression
   prompt as the Idefics2 model card (``videoscore.worker.model.prompt``), with no ``<image>`` tokens: the video is one
   message part placed *before* the text;
2. ``text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)`` -- the
   checkpoint's own chat template (Qwen2-VL-Instruct's: a default system turn, then
   ``<|vision_start|><|video_pad|><|vision_end|>`` + the text, then ``<|im_start|>assistant\\n``);
3. ``image_inputs, video_inputs = qwen_vl_utils.process_vision_info(messages)`` -- qwen-vl-utils, the release
   of that time (0.0.8; 0.0.9 came with Qwen2.5-VL in 2025 and changed the frame-count rounding). Its
   ``fetch_video`` with the default (torchvision) reader decodes every frame with PyAV, then samples
   ``nframes = round_to_2(clamp(total_frames / video_fps * 8, 4, floor_to_2(min(768, total_frames))))``
   frames at ``torch.linspace(0, total_frames - 1, nframes).round()`` (``video_fps`` is the stream's average
   rate), and resizes them all to one size, ``smart_resize(h, w, 28, min_pixels=128*28*28,
   max_pixels=max(min(768*28*28, 24576*28*28 / nframes * 2), int(128*28*28 * 1.05)))``, with
   ``torchvision.transforms.functional.resize(..., BICUBIC, antialias=True)`` on the uint8 tensor (float
   bicubic interpolation with antialiasing, clamped, rounded back to uint8), returned as float;
4. ``processor(text=[text], videos=video_inputs, padding=True, return_tensors="pt")`` -- transformers 4.46's
   ``Qwen2VLImageProcessor`` video path: each frame back to uint8, resized again with PIL bicubic to the
   processor's own ``smart_resize`` bounds (``min_pixels``/``max_pixels`` from ``preprocessor_config.json``;
   a no-op when step 3's size already fits), rescaled by 1/255 and CLIP-normalised in float32, and cut into
   ``temporal_patch_size`` x 14 x 14 patches grouped by the 2x2 merge; the single ``<|video_pad|>`` is
   expanded to ``t * h * w / 4`` copies;
5. ``model(**inputs).logits[0]`` (see ``videoscore.worker.model.qwen2_vl.modeling`` for the model's side), rounded to
3 digits
   for display only.

This module re-implements steps 3-4 in torch/numpy/PIL, because transformers 5's Qwen2-VL *video* processor
needs torchvision, whose PyPI wheels cannot load next to the CPU torch wheel this project runs on (and whose
current releases no longer have ``io.read_video``). Every operation is the same one on the same values:
the parity test (``tests/unit/test_qwen2_vl.py``) checks the sampled indices, the decoded and resized
frames, the input ids and the pixel tensor against the recipe run by mantis-vl on transformers 4.46.

Memory: the recipe decodes every frame at full size (up to 768 of them) before resizing. We decode only the
sampled ones, and where qwen-vl-utils' size (step 3) is smaller than the video's, resize each frame as it is
decoded, so a job holds at most its resized frames -- what ``VIDEO_TOTAL_PIXELS``/``VIDEO_MIN_PIXELS`` bound
(about 100k pixels a frame at 768 frames) -- plus one full-size frame in flight. Such frames are
``ResizedFrame``s, which ``resize_video`` passes through as they are (resizing them again would not always be a
no-op: at the ``VIDEO_MIN_PIXELS`` floor a second pass scales them up); the operation is the same on the same
values, so the model's inputs are bit-identical. Frames that qwen-vl-utils scales *up* are kept as decoded. The
job's memory budget (``videoscore.worker.video.frames.MemoryBudget``) is checked on the frames kept, before decoding.

Sampling is by frame *rate*, not by a fixed count: ``Variant.num_frames`` (48) does not apply to this family;
``VIDEOSCORE_NUM_FRAMES``, when set, is passed as qwen-vl-utils' ``nframes`` (rounded to an even count). A
video needs at least 2 frames (the recipe raises below that; so do we, as ``VideoDecodeError``). Scoring
frames that did not come from this sampler (``Scorer.score`` with any list of frames) still applies steps
3-4; an odd frame count is padded by repeating the last frame, as the processor does for a single image.
"""

from __future__ import annotations

import ctypes
import functools
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch
from PIL import Image
from transformers import AutoTokenizer, BatchFeature

from videoscore.core.errors import InvalidJobError, VideoDecodeError
from videoscore.worker.model.prompt import REGRESSION_QUERY_PROMPT
from videoscore.worker.video import frames as frames_module
from videoscore.worker.video.frames import MemoryBudget, SampledVideo

log = logging.getLogger(__name__)

# --- examples/run_videoscore_qwen2_vl.py -------------------------------------------------------------------------
FPS = 8.0

# --- qwen-vl-utils 0.0.8, vision_process.py ----------------------------------------------------------------------
IMAGE_FACTOR = 28
VIDEO_MIN_PIXELS = 128 * 28 * 28
VIDEO_MAX_PIXELS = 768 * 28 * 28
VIDEO_TOTAL_PIXELS = 24576 * 28 * 28
FRAME_FACTOR = 2
FPS_MIN_FRAMES = 4
FPS_MAX_FRAMES = 768
MAX_RATIO = 200

# The tokens Qwen2-VL's chat template and processor give meaning to; a prompt spelling one would move the video
# or the scored position, so it is refused.
VIDEO_PAD = "<|video_pad|>"
RESERVED_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", VIDEO_PAD,
)


# --- step 3: which frames, at what size (qwen-vl-utils) ----------------------------------------------------------


def _round_by(number: float, factor: int) -> int:
    return round(number / factor) * factor


def _ceil_by(number: float, factor: int) -> int:
    return math.ceil(number / factor) * factor


def _floor_by(number: float, factor: int) -> int:
    return math.floor(number / factor) * factor


def num_sampled_frames(total_frames: int, video_fps: float, *, fps: float = FPS, nframes: int | None = None) -> int:
    """qwen-vl-utils 0.0.8's ``smart_nframes``: how many frames the model sees (always even)."""
    if nframes is not None:
        count = _round_by(nframes, FRAME_FACTOR)
    else:
        if not video_fps or video_fps <= 0:
            raise VideoDecodeError("the video stream declares no frame rate, which fps-based sampling needs")
        min_frames = _ceil_by(FPS_MIN_FRAMES, FRAME_FACTOR)
        max_frames = _floor_by(min(FPS_MAX_FRAMES, total_frames), FRAME_FACTOR)
        wanted = total_frames / video_fps * fps
        wanted = min(max(wanted, min_frames), max_frames)
        count = _round_by(wanted, FRAME_FACTOR)
    if not FRAME_FACTOR <= count <= total_frames:
        raise VideoDecodeError(
            f"cannot sample {count} frames from a video of {total_frames} (the Qwen2-VL recipe needs at least "
            f"{FRAME_FACTOR} frames)"
        )
    return count


def sample_indices(total_frames: int, video_fps: float, *, fps: float = FPS, nframes: int | None = None) -> list[int]:
    """The frame numbers the recipe reads: ``nframes`` evenly spaced from the first to the last frame.

    ``torch.linspace`` in float32 then ``round`` (half to even), exactly as qwen-vl-utils computes them.
    """
    count = num_sampled_frames(total_frames, video_fps, fps=fps, nframes=nframes)
    return [int(i) for i in torch.linspace(0, total_frames - 1, count).round().long().tolist()]


def qwen_vl_utils_smart_resize(
    height: int, width: int, factor: int, min_pixels: int, max_pixels: float
) -> tuple[int, int]:
    """qwen-vl-utils' ``smart_resize`` (never below one factor per side; unlike transformers' own)."""
    if max(height, width) / min(height, width) > MAX_RATIO:
        raise VideoDecodeError(f"aspect ratio {max(height, width) / min(height, width):.0f} is over {MAX_RATIO}")
    h_bar = max(factor, _round_by(height, factor))
    w_bar = max(factor, _round_by(width, factor))
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = _floor_by(height / beta, factor)
        w_bar = _floor_by(width / beta, factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = _ceil_by(height * beta, factor)
        w_bar = _ceil_by(width * beta, factor)
    return h_bar, w_bar


def video_frame_size(num_frames: int, height: int, width: int) -> tuple[int, int]:
    """The (height, width) qwen-vl-utils resizes a video of ``num_frames`` frames of ``height`` x ``width`` to."""
    max_pixels = max(
        min(VIDEO_MAX_PIXELS, VIDEO_TOTAL_PIXELS / num_frames * FRAME_FACTOR), int(VIDEO_MIN_PIXELS * 1.05)
    )
    return qwen_vl_utils_smart_resize(height, width, IMAGE_FACTOR, VIDEO_MIN_PIXELS, max_pixels)


def resize_video(frames: Sequence[np.ndarray]) -> torch.Tensor:
    """Stack H x W x 3 uint8 frames and resize them as qwen-vl-utils does: a (T, 3, H', W') uint8 tensor.

    torchvision's tensor resize is ``interpolate(float32, bicubic, align_corners=False, antialias=True)``,
    clamped to 0..255 and rounded back to uint8 (and nothing at all when the size does not change). It works
    on each frame alone, so we resize one frame at a time (bit-identical to the whole stack at once, without a
    float32 copy of the whole video).
    """
    if len({frame.shape for frame in frames}) != 1:
        raise InvalidJobError("all frames of a video must have the same size")
    height, width = frames[0].shape[:2]
    resized_already = all(getattr(frame, "resized_for_frames", None) == len(frames) for frame in frames)
    size = (height, width) if resized_already else video_frame_size(len(frames), height, width)
    if size == (height, width):
        return torch.from_numpy(np.stack([np.asarray(frame) for frame in frames])).permute(0, 3, 1, 2)
    resized = torch.empty((len(frames), 3, *size), dtype=torch.uint8).to(memory_format=torch.channels_last)
    for position, frame in enumerate(frames):
        resized[position] = resize_frame(frame, size)
    return resized


def resize_frame(frame: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """One H x W x 3 uint8 frame resized as ``resize_video`` resizes each: a (3, H', W') uint8 tensor."""
    video = torch.from_numpy(frame).permute(2, 0, 1)[None]  # channels-last, as a permuted stack is
    resized = torch.nn.functional.interpolate(
        video.to(torch.float32), size=list(size), mode="bicubic", align_corners=False, antialias=True
    )
    return resized.clamp(min=0, max=255).round().to(torch.uint8)[0]


class ResizedFrame(np.ndarray):
    """A frame already resized as ``resize_video`` resizes a video of ``resized_for_frames`` frames.

    ``resize_video`` passes a video made only of these, with that many frames, through unchanged. Made by
    ``sample_video`` (a view, no copy); any other array is an ordinary frame.
    """

    resized_for_frames: int | None

    def __array_finalize__(self, obj: Any) -> None:
        self.resized_for_frames = getattr(obj, "resized_for_frames", None)


def shrinking_size(num_frames: int, height: int, width: int) -> tuple[int, int] | None:
    """The size qwen-vl-utils resizes these frames to, when it is smaller than theirs; else None."""
    size = video_frame_size(num_frames, height, width)
    return size if size[0] * size[1] < height * width else None


def sample_video(
    path: Path, *, nframes: int | None = None, max_pixels: int | None = None, budget: MemoryBudget = MemoryBudget()
) -> SampledVideo:
    """Probe ``path`` and read the frames the Qwen2-VL recipe samples (``fps=8``, or ``nframes`` if given).

    ``total_frames`` is the number of frames in the stream (what torchvision's reader decodes), ``video_fps``
    the stream's declared average rate (what it reports as ``video_fps``). Probing and reading are
    ``videoscore.worker.video.frames``' (one demux pass, the keyframe-guided reader, pixel-identical to decoding
    every frame).
    Frames are resized as they are decoded where ``resizes_once`` says so (module docstring); ``budget`` is
    checked on the frames kept, before decoding (``VideoTooLargeError``).
    """
    started = time.perf_counter()
    path = Path(path)
    info, frame_index = frames_module._probe(path, max_pixels=max_pixels)
    indices = sample_indices(info.total_frames, declared_fps(path, max_pixels=max_pixels), nframes=nframes)
    size = shrinking_size(len(indices), info.height, info.width)
    kept_frame_bytes = None if size is None else size[0] * size[1] * 3
    budget.check(len(set(indices)), info.width, info.height, kept_frame_bytes=kept_frame_bytes)
    convert = frames_module._to_rgb if size is None else _ResizeInto(indices, size, (info.width, info.height))
    frames, frames_decoded = frames_module._read_frames(
        path, indices, method="indexed", frame_index=frame_index, max_pixels=max_pixels, convert=convert
    )
    return SampledVideo(
        info=info, indices=indices, frames=frames, decode_s=time.perf_counter() - started,
        frames_decoded=frames_decoded,
    )


class _ResizeInto:
    """A reader's frame converter: each decoded frame resized into its slot of one array made up front.

    The full-size frame and the resize's float32 buffers live for one frame each, but glibc keeps the heap
    space they leave (768 frames of 640x360 resized to 224x420 raised peak RSS by 1.2-2.2 GB, depending on
    which library was imported first); handing it back every `_TRIM_EVERY` frames holds the job to its frames
    (+225-260 MB).
    """

    _TRIM_EVERY = 16

    def __init__(self, indices: Sequence[int], size: tuple[int, int], decoded_size: tuple[int, int]) -> None:
        self._slot = {number: slot for slot, number in enumerate(sorted(set(indices)))}
        self._decoded_size = decoded_size
        self._size = size
        self.frames = np.empty((len(self._slot), *size, 3), dtype=np.uint8).view(ResizedFrame)
        self.frames.resized_for_frames = len(indices)

    def __call__(self, frame: av.VideoFrame, number: int) -> np.ndarray:
        if (frame.width, frame.height) != self._decoded_size:  # resize_video refuses mixed sizes; so do we
            raise InvalidJobError("all frames of a video must have the same size")
        slot = self.frames[self._slot[number]]
        slot[...] = resize_frame(frame.to_ndarray(format="rgb24"), self._size).permute(1, 2, 0).numpy()
        if self._slot[number] % self._TRIM_EVERY == self._TRIM_EVERY - 1:
            _release_freed_heap()
        return slot


@functools.cache
def _malloc_trim() -> Any:
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc; elsewhere there is nothing to call
    except (OSError, AttributeError):
        return None


def _release_freed_heap() -> None:
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def declared_fps(path: Path, *, max_pixels: int | None = None) -> float:
    """The video stream's average frame rate from its header (0.0 when it declares none)."""
    try:
        with frames_module.open_video(path, max_pixels=max_pixels) as (_, stream):
            rate = stream.average_rate
    except av.FFmpegError as exc:
        raise VideoDecodeError(f"cannot read the video's frame rate: {exc}") from exc
    return float(rate) if rate else 0.0


# --- step 4: the Qwen2-VL image processor's video path (transformers 4.46) ------------------------------------


def hf_smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """transformers' Qwen2-VL ``smart_resize`` (as in 4.46)."""
    if height < factor or width < factor:
        raise InvalidJobError(f"frames of {height}x{width} are smaller than the {factor}-pixel patch grid")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


@dataclass(frozen=True)
class VisionSettings:
    """The checkpoint's ``preprocessor_config.json``: what the Qwen2-VL image processor does to each frame."""

    min_pixels: int
    max_pixels: int
    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    image_mean: tuple[float, ...] = (0.48145466, 0.4578275, 0.40821073)
    image_std: tuple[float, ...] = (0.26862954, 0.26130258, 0.27577711)
    rescale_factor: float = 1 / 255
    resample: int = 3  # PIL bicubic
    do_resize: bool = True
    do_rescale: bool = True
    do_normalize: bool = True

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> VisionSettings:
        """Read a preprocessor config as transformers 4.x writes it (``min_pixels``/``max_pixels``) or 5.x does
        (``size: {shortest_edge, longest_edge}``)."""
        size = config.get("size") or {}
        min_pixels = config.get("min_pixels", size.get("shortest_edge", size.get("min_pixels", 56 * 56)))
        max_pixels = config.get("max_pixels", size.get("longest_edge", size.get("max_pixels", 28 * 28 * 1280)))
        defaults = cls(min_pixels=int(min_pixels), max_pixels=int(max_pixels))
        fields = {}
        for name in ("patch_size", "temporal_patch_size", "merge_size", "rescale_factor", "resample",
                     "do_resize", "do_rescale", "do_normalize"):
            fields[name] = config.get(name, getattr(defaults, name))
        for name in ("image_mean", "image_std"):
            fields[name] = tuple(float(x) for x in config.get(name, getattr(defaults, name)))
        return cls(min_pixels=int(min_pixels), max_pixels=int(max_pixels), **fields)


def preprocess_video(video: torch.Tensor, settings: VisionSettings) -> tuple[np.ndarray, tuple[int, int, int]]:
    """One (T, 3, H, W) uint8 video -> (patches, (grid_t, grid_h, grid_w)), as ``Qwen2VLImageProcessor`` does.

    Per frame: PIL bicubic resize to the processor's bounds (skipped when the size already fits: PIL would
    return a copy), ``uint8 -> float64 * rescale_factor -> float32``, ``(x - mean) / std`` in float32; then the
    frames are grouped ``temporal_patch_size`` at a time and cut into ``patch_size`` squares ordered by the
    ``merge_size`` x ``merge_size`` blocks the vision tower merges. Rows of the result are float32 patches of
    ``3 * temporal_patch_size * patch_size**2`` values. The worker does the same in two halves:
    ``processor_resize`` in the task thread, the value table and ``patchify`` on the device (``collate_patches``).
    """
    frames = processor_resize(video, settings)
    table = torch.from_numpy(value_table(settings))
    values = torch.stack([table[channel][frames[..., channel].long()] for channel in range(3)], dim=1)
    return patchify(values, settings).numpy(), video_grid(frames, settings)


def processor_resize(video: torch.Tensor, settings: VisionSettings) -> torch.Tensor:
    """The image processor's per-frame resize of a (T, 3, H, W) uint8 video: (T', H', W', 3) uint8, T' the frame
    count padded up to whole ``temporal_patch_size`` groups by repeating the last frame, as the processor pads."""
    _, _, height, width = video.shape
    factor = settings.patch_size * settings.merge_size
    if settings.do_resize:
        new_h, new_w = hf_smart_resize(height, width, factor, settings.min_pixels, settings.max_pixels)
    else:
        new_h, new_w = height, width
    count = len(video) + (-len(video) % settings.temporal_patch_size)
    out = torch.empty((count, new_h, new_w, 3), dtype=torch.uint8)
    target = out.numpy()
    for position, frame in enumerate(video.permute(0, 2, 3, 1).numpy()):  # H x W x 3 uint8
        if (new_h, new_w) != (height, width):
            frame = np.asarray(Image.fromarray(frame).resize((new_w, new_h), resample=settings.resample))
        target[position] = frame
    target[len(video):] = target[len(video) - 1]
    return out


def value_table(settings: VisionSettings) -> np.ndarray:
    """What the processor turns each uint8 value of each channel into after its resize: (3, 256) float32."""
    values = np.broadcast_to(np.arange(256, dtype=np.uint8), (3, 256)).T  # 256 pixels of 3 channels
    pixels: np.ndarray = values.astype(np.float32)
    if settings.do_rescale:
        pixels = (values.astype(np.float64) * settings.rescale_factor).astype(np.float32)
    if settings.do_normalize:
        mean = np.array(settings.image_mean, dtype=np.float32)
        std = np.array(settings.image_std, dtype=np.float32)
        pixels = ((pixels - mean) / std).astype(np.float32)  # float32 throughout, as the processor computes
    return np.ascontiguousarray(pixels.T)


def video_grid(frames: torch.Tensor, settings: VisionSettings) -> tuple[int, int, int]:
    """The (t, h, w) patch grid of ``processor_resize``'s output."""
    count, height, width, _ = frames.shape
    return count // settings.temporal_patch_size, height // settings.patch_size, width // settings.patch_size


def patchify(values: torch.Tensor, settings: VisionSettings) -> torch.Tensor:
    """(T', 3, H', W') processed values -> the processor's patch rows, a pure rearrangement (any device, dtype)."""
    count, channels, height, width = values.shape
    tps, ps, ms = settings.temporal_patch_size, settings.patch_size, settings.merge_size
    grid_t, grid_h, grid_w = count // tps, height // ps, width // ps
    patches = values.reshape(grid_t, tps, channels, grid_h // ms, ms, ps, grid_w // ms, ms, ps)
    patches = patches.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return patches.reshape(grid_t * grid_h * grid_w, channels * tps * ps * ps)


# --- steps 1-2 and the batch: the processor-side of the Scorer -----------------------------------------------


def recipe_messages(prompt: str) -> list[dict[str, Any]]:
    """The recipe's chat messages for one video (the video part carries no data: the template only needs its type)."""
    return [
        {
            "role": "user",
            "content": [
                {"type": "video", "video": "video", "fps": FPS},
                {"type": "text", "text": REGRESSION_QUERY_PROMPT.format(text_prompt=prompt)},
            ],
        }
    ]


class Qwen2VLInputs:
    """The checkpoint's tokenizer, chat template and image-processor settings, turning requests into tensors.

    Stands where ``Qwen2VLProcessor`` stands in the recipe (see the module docstring for why it is not used).
    """

    def __init__(self, tokenizer, chat_template: str, vision: VisionSettings) -> None:
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.vision = vision

    @classmethod
    def from_pretrained(cls, source: str) -> Qwen2VLInputs:
        tokenizer = AutoTokenizer.from_pretrained(source)
        chat_template = _load_chat_template(source, tokenizer)
        preprocessor_config = json.loads(_checkpoint_file(source, "preprocessor_config.json").read_text())
        vision = VisionSettings.from_config(preprocessor_config)
        return cls(tokenizer, chat_template, vision)

    def chat_text(self, prompt: str) -> str:
        """Step 2: the checkpoint's chat template around the recipe's messages, with one ``<|video_pad|>``."""
        self.check_prompt_text(prompt)
        return self.tokenizer.apply_chat_template(
            recipe_messages(prompt), chat_template=self.chat_template, tokenize=False, add_generation_prompt=True
        )

    @staticmethod
    def check_prompt_text(prompt: str) -> None:
        for token in RESERVED_TOKENS:
            if token in prompt:
                raise InvalidJobError(f"prompt contains the reserved token {token!r}")

    def text_ids(self, prompt: str) -> list[int]:
        """The prompt's tokens with the video left out (one pad token): a lower bound on what scoring needs."""
        return list(self.tokenizer(self.chat_text(prompt))["input_ids"])

    def video_patches(self, frames: Sequence[np.ndarray], *, pin_memory: bool = False) -> VideoPatches:
        """Steps 3-4 for one video up to the processor's resize (per video, so in the task's thread): the resized
        frames, still uint8, and the patch grid; ``collate_patches`` finishes them on the device."""
        resized = processor_resize(resize_video(frames), self.vision)
        return VideoPatches(frames=resized.pin_memory() if pin_memory else resized,
                            grid=video_grid(resized, self.vision), vision=self.vision)

    def video_ids(self, prompt: str, grid: tuple[int, int, int]) -> list[int]:
        """Step 2's text with the video's ``<|video_pad|>`` expanded to its ``t * h * w / merge²`` tokens, tokenized."""
        text = self.chat_text(prompt)
        if text.count(VIDEO_PAD) != 1:
            raise InvalidJobError("the chat template must place exactly one video in the prompt")
        text = text.replace(VIDEO_PAD, VIDEO_PAD * (math.prod(grid) // self.vision.merge_size**2))
        return list(self.tokenizer(text)["input_ids"])

    def encode(self, prompts: Sequence[str], videos: Sequence[Sequence[np.ndarray]]) -> BatchFeature:
        """Steps 2-4 for a batch on the CPU: input ids (right-padded), attention mask, video patches and grids."""
        patches = [self.video_patches(frames) for frames in videos]
        ids = [self.video_ids(prompt, video.grid) for prompt, video in zip(prompts, patches, strict=True)]
        encoded = self.tokenizer.pad({"input_ids": ids}, padding="longest", return_tensors="pt")
        return BatchFeature({"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"],
                             **collate_patches(patches, device=torch.device("cpu"), dtype=torch.float32)})


@dataclass(frozen=True)
class VideoPatches:
    """One video after the processor's resize: (T', H', W', 3) uint8 frames, its (t, h, w) grid, the settings."""

    frames: torch.Tensor
    grid: tuple[int, int, int]
    vision: VisionSettings


def collate_patches(videos: Sequence[VideoPatches], *, device: torch.device,
                    dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """A batch's ``pixel_values_videos`` (every video's patch rows, in order, in ``dtype``) and ``video_grid_thw``,
    made on ``device``: each uint8 value looked up in the processor's value table, then cut into patches. The
    vision tower takes the rows unpadded: nothing of a batch's pixels is padding."""
    rows = []
    for video in videos:
        table = torch.from_numpy(value_table(video.vision)).to(device=device, dtype=dtype)
        frames = video.frames.to(device, non_blocking=True)
        values = torch.empty((frames.shape[0], 3, *frames.shape[1:3]), dtype=dtype, device=device)
        for channel in range(3):
            values[:, channel] = table[channel][frames[..., channel].long()]
        rows.append(patchify(values, video.vision))
    grids = torch.tensor([video.grid for video in videos], dtype=torch.long).to(device, non_blocking=True)
    return {"pixel_values_videos": torch.cat(rows), "video_grid_thw": grids}


def _checkpoint_file(source: str, name: str) -> Path:
    folder = Path(source).expanduser()
    if folder.is_dir():
        return folder / name
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(source, name))


def _load_chat_template(source: str, tokenizer) -> str:
    """The processor's chat template (``chat_template.json``/``.jinja``, as Qwen2-VL checkpoints ship it), else the
    tokenizer's."""
    for name in ("chat_template.jinja", "chat_template.json"):
        try:
            path = _checkpoint_file(source, name)
        except Exception as exc:  # noqa: BLE001 - absent on the hub: try the next place
            log.debug("%s: no %s (%s)", source, name, exc)
            continue
        if path.is_file():
            text = path.read_text()
            return json.loads(text)["chat_template"] if name.endswith(".json") else text
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.chat_template
    raise ValueError(f"{source} has no chat template")
