"""Synthetic sample videos: deterministic clips for the demo, the benchmarks and the tests.

They are generated, not downloaded: moving shapes over colour gradients, encoded with PyAV (H.264 by default),
so every frame differs visibly and pixel checks mean something.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def synthetic_frame(index: int, width: int, height: int, *, seed: int = 0) -> np.ndarray:
    """Frame `index` of a clip: a gradient whose hue drifts with time and a square that moves across it."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=3)
    ys, xs = np.mgrid[0:height, 0:width]
    frame = np.empty((height, width, 3), dtype=np.uint8)
    frame[..., 0] = (xs * 255 // max(1, width - 1) + base[0] + 3 * index) % 256
    frame[..., 1] = (ys * 255 // max(1, height - 1) + base[1]) % 256
    frame[..., 2] = (base[2] + 7 * index) % 256
    side = max(4, min(width, height) // 5)
    x0 = (index * 5 + int(base[0])) % max(1, width - side)
    y0 = (index * 3 + int(base[1])) % max(1, height - side)
    frame[y0 : y0 + side, x0 : x0 + side] = (255 - base).astype(np.uint8)
    return frame


def write_video(
    path: Path,
    *,
    frames: int,
    fps: int = 24,
    size: tuple[int, int] = (320, 240),
    codec: str = "libx264",
    gop: int | None = None,
    seed: int = 0,
) -> Path:
    """Encode `frames` synthetic frames of `size` (width, height) at `fps` into `path`."""
    width, height = size
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps, 1))
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        if gop is not None:
            stream.codec_context.gop_size = gop
        for index in range(frames):
            picture = av.VideoFrame.from_ndarray(synthetic_frame(index, width, height, seed=seed), format="rgb24")
            for packet in stream.encode(picture):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
