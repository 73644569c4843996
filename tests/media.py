"""Test media: the synthetic good videos and the bad inputs a worker must reject (they live in worker.samples,
which the demo and the benchmarks use too), and ``layout_of``, what a written video holds."""

from pathlib import Path

import av
import numpy as np

from videoscore.worker.testing.media import (  # noqa: F401
    FRAME_NUMBER_BITS,
    draw_frame,
    frame_number_of,
    make_audio_only,
    make_not_a_video,
    make_truncated_video,
    make_variable_frame_rate_video,
    make_video,
    make_wrong_header_count_video,
    make_zero_frame_video,
    make_zero_header_count_video,
)


def layout_of(path: Path) -> dict:
    """What a video file holds, independent of its exact bytes: frame count, (width, height), declared frame
    rate, and the frame numbers of its keyframes (frames counted in presentation order)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        packets = sorted((packet.pts, packet.is_keyframe) for packet in container.demux(stream) if packet.size)
        return {
            "frames": len(packets),
            "size": (stream.codec_context.width, stream.codec_context.height),
            "fps": float(stream.average_rate),
            "keyframes": [number for number, (_, keyframe) in enumerate(packets) if keyframe],
        }


def assert_same_pixels(left: list[np.ndarray], right: list[np.ndarray]) -> None:
    assert len(left) == len(right)
    for position, (a, b) in enumerate(zip(left, right)):
        assert a.shape == b.shape and a.dtype == b.dtype == np.uint8, position
        assert np.array_equal(a, b), f"frame at position {position} differs"
