"""Idefics2's processor, split in two: the per-video part in the task threads, the batch part on the device.

The checkpoint's image processor (PIL backend, as mantis used) does, per frame: RGB → (split into 4 crops plus
the frame, when ``do_image_splitting``) → PIL resize to ``shortest_edge``/``longest_edge`` → ``uint8 → float64
* rescale_factor → float32`` → ``(x - mean) / std`` in float32; then it zero-pads every image of the batch to
the largest height, width and image count, with a pixel mask, and stacks it all into one float32 array (48
frames of 720p: 311 MB, most of a second of CPU spent outside the resize).

Here ``prepare_video`` runs the resize with the processor's own resize and keeps the result as uint8 (a quarter
of the bytes). Everything after the resize works on each value alone, so it is a 256-entry table per channel,
built by the processor's own ``rescale`` and ``normalize`` (``value_table``): ``collate_videos`` pads on the
device and looks each pixel up there, already in the model's dtype. The table lookup is the processor's
arithmetic, not a re-derivation of it: the values are bit-identical on any device (tests/unit/test_inputs.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers.models.idefics2.image_processing_pil_idefics2 import get_resize_output_image_size

# Images per lookup on the device: bounds the int64 index tensor a lookup needs (16 images of 980×980: 46 MB).
_LOOKUP_CHUNK = 16
_NUMPY_DTYPES = (torch.float32, torch.float16)


@dataclass(frozen=True)
class Idefics2Video:
    """One video's images after the processor's resize: uint8, H×W×3, each in the top-left of ``pixels``."""

    pixels: torch.Tensor  # (images, max height, max width, 3) uint8; pinned when bound for a CUDA device
    sizes: tuple[tuple[int, int], ...]  # each image's (height, width)

    @property
    def padded_shape(self) -> tuple[int, int, int]:
        return (self.pixels.shape[0], self.pixels.shape[1], self.pixels.shape[2])


def prepare_video(image_processor: Any, frames: Sequence[np.ndarray], *, pin_memory: bool = False) -> Idefics2Video:
    """The processor's per-image work up to and including its resize, for one video's frames."""
    images = [image for frame in frames for image in _split(image_processor, frame)]
    resized = [_resize(image_processor, image) for image in images]
    sizes = tuple((image.shape[0], image.shape[1]) for image in resized)
    height = max(h for h, _ in sizes)
    width = max(w for _, w in sizes)
    pixels = torch.empty((len(resized), height, width, 3), dtype=torch.uint8, pin_memory=pin_memory)
    target = pixels.numpy()
    for index, image in enumerate(resized):
        h, w = image.shape[:2]
        target[index, :h, :w] = image
        target[index, h:, :] = 0  # only images smaller than the video's largest (splitting) have a margin
        target[index, :h, w:] = 0
    return Idefics2Video(pixels=pixels, sizes=sizes)


def value_table(image_processor: Any) -> torch.Tensor:
    """What the processor turns each uint8 value of each channel into, after its resize: (3, 256) float32."""
    values = np.broadcast_to(np.arange(256, dtype=np.uint8), (3, 1, 256)).copy()  # C×H×W, as the processor holds it
    table: np.ndarray = values
    if image_processor.do_rescale:
        table = image_processor.rescale(table, image_processor.rescale_factor)
    if image_processor.do_normalize:
        table = image_processor.normalize(table, image_processor.image_mean, image_processor.image_std)
    if table.dtype != np.float32:
        table = table.astype(np.float32)  # what BatchFeature's torch conversion would keep
    return torch.from_numpy(np.ascontiguousarray(table[:, 0, :]))


def collate_videos(videos: Sequence[Idefics2Video], table: torch.Tensor, *, device: torch.device,
                   dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """A batch's ``pixel_values`` (in ``dtype``) and ``pixel_attention_mask`` on ``device``, as the processor pads
    them: every image in the top-left of the batch's largest height × width, zeros elsewhere, and all-zero
    images (mask 0) after a video's last one up to the batch's largest image count."""
    count = max(len(video.sizes) for video in videos)
    height = max(video.pixels.shape[1] for video in videos)
    width = max(video.pixels.shape[2] for video in videos)
    lookup = table.to(device=device, dtype=dtype, non_blocking=True)
    pixel_values = torch.zeros((len(videos), count, 3, height, width), dtype=dtype, device=device)
    mask = torch.zeros((len(videos), count, height, width), dtype=torch.bool, device=device)
    for row, video in enumerate(videos):
        pixels = video.pixels.to(device, non_blocking=True)
        images = len(video.sizes)
        for start in range(0, images, _LOOKUP_CHUNK):
            end = min(start + _LOOKUP_CHUNK, images)
            _look_up(pixels[start:end], lookup, pixel_values[row, start:end])
        for index, (h, w) in enumerate(video.sizes):
            mask[row, index, :h, :w] = True
            if (h, w) != tuple(video.pixels.shape[1:3]):  # an image smaller than its video's largest (splitting)
                pixel_values[row, index, :, h:, :] = 0
                pixel_values[row, index, :, :, w:] = 0
    return {"pixel_values": pixel_values, "pixel_attention_mask": mask}


def padded_fraction(videos: Sequence[Idefics2Video]) -> float:
    """The share of the batch's pixel positions that are padding (the vision tower computes them all the same)."""
    count = max(len(video.sizes) for video in videos)
    height = max(video.pixels.shape[1] for video in videos)
    width = max(video.pixels.shape[2] for video in videos)
    real = sum(h * w for video in videos for h, w in video.sizes)
    return 1.0 - real / (len(videos) * count * height * width)


# --- internals -------------------------------------------------------------------------------------------------


def _split(image_processor: Any, frame: np.ndarray) -> list[np.ndarray]:
    """The frame, or (``do_image_splitting``) its four quarters then the frame, as the processor splits it."""
    if not image_processor.do_image_splitting:
        return [frame]
    height, width = frame.shape[:2]
    mid_h, mid_w = height // 2, width // 2
    return [frame[:mid_h, :mid_w], frame[:mid_h, mid_w:], frame[mid_h:, :mid_w], frame[mid_h:, mid_w:], frame]


def _resize(image_processor: Any, image: np.ndarray) -> np.ndarray:
    """The processor's resize of one H×W×3 uint8 image: its output size rule, then PIL with its resample filter
    (what ``np_resize`` does for a uint8 image), kept as H×W×3 uint8."""
    if not image_processor.do_resize:
        return image
    size = image_processor.size
    if size.shortest_edge and size.longest_edge:
        height, width = get_resize_output_image_size(image.transpose(2, 0, 1), size)
    else:
        height, width = size.height, size.width
    if (height, width) == image.shape[:2]:
        return image  # PIL's resize to the same size is a copy of the same values
    resized = Image.fromarray(np.ascontiguousarray(image)).resize((width, height), resample=image_processor.resample)
    return np.asarray(resized)


def _look_up(pixels: torch.Tensor, lookup: torch.Tensor, out: torch.Tensor) -> None:
    """``out[i, c, y, x] = lookup[c, pixels[i, y, x, c]]`` for the pixels' region of ``out`` (the rest untouched)."""
    height, width = pixels.shape[1], pixels.shape[2]
    if out.device.type == "cpu" and out.dtype in _NUMPY_DTYPES:
        # On a CPU device numpy's take gathers with the uint8 values as they are (4x torch's, which widens them).
        values, table, target = pixels.numpy(), lookup.numpy(), out.numpy()
        for channel in range(3):
            np.take(table[channel], values[..., channel], out=target[:, channel, :height, :width])
        return
    for channel in range(3):
        out[:, channel, :height, :width] = lookup[channel][pixels[..., channel].long()]
