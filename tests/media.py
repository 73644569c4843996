"""Test media: the synthetic good videos and the bad inputs a worker must reject (they live in worker.samples,
which the demo and the benchmarks use too)."""

from worker.samples import (  # noqa: F401
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
