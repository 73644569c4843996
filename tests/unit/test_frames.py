"""Specification of worker.frames: which frames the model sees, and that the fast reader returns them exactly.

Every synthetic frame carries its own frame number (see tests.media), so "right frame" is checked against
ground truth, not only against the reference loop.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import av
import numpy as np
import pytest

import videoscore.worker.video.frames as frames_module
from tests.media import (
    assert_same_pixels,
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
from videoscore.core.errors import PermanentError, VideoDecodeError, VideoTooLargeError
from videoscore.worker.model.qwen2_vl import recipe as qwen2_vl_recipe
from videoscore.worker.testing.media import cut_mid_gop
from videoscore.worker.video.frames import (
    SampledVideo,
    VideoInfo,
    probe_video,
    read_frames,
    sample_indices,
    sample_video,
)

SMALL = (160, 120)
FAST = "superfast"  # x264 preset for the longer clips: quick to write, still CABAC and B-frames


def model_card_indices(total_frames: int, num_frames: int) -> list[int]:
    """The model card's expression, verbatim."""
    if total_frames > num_frames:
        indices = np.arange(0, total_frames, total_frames / num_frames).astype(int)
    else:
        indices = np.arange(total_frames)
    return indices.tolist()


# --- sample_indices: the model card's rule, bit for bit ----------------------------------------------------

# (total frames, frames wanted, expected indices or None to check only against the card's expression)
SAMPLING_CASES = [
    (0, 16, []),  # nothing to sample (probe rejects such videos before sampling)
    (1, 16, [0]),  # a single frame
    (5, 16, [0, 1, 2, 3, 4]),  # fewer frames than wanted: all of them, no repeats
    (16, 16, list(range(16))),  # exactly N: all of them
    (17, 16, list(range(16))),  # N+1: step 1.0625 truncates to 0..15, frame 16 is never seen
    (100, 16, [0, 6, 12, 18, 25, 31, 37, 43, 50, 56, 62, 68, 75, 81, 87, 93]),  # step 6.25, not divisible
    (240, 16, list(range(0, 240, 15))),  # 10 s at 24 fps, divisible
    (47, 48, list(range(47))),
    (48, 48, list(range(48))),
    (49, 48, None),
    (1440, 16, list(range(0, 1440, 90))),  # 60 s at 24 fps
    (1441, 48, None),
    (1799, 48, None),
    (123_457, 16, None),  # long videos: float steps with long fractions
    (10_000_019, 48, None),
]


@pytest.mark.parametrize("total, wanted, expected", SAMPLING_CASES)
def test_sample_indices_matches_the_model_card(total: int, wanted: int, expected: list[int] | None) -> None:
    indices = sample_indices(total, wanted)
    assert indices == model_card_indices(total, wanted)
    if expected is not None:
        assert indices == expected
    assert len(indices) == min(total, wanted)
    assert all(isinstance(i, int) for i in indices)  # plain ints, not numpy scalars


def test_sample_indices_matches_the_model_card_for_every_total_up_to_5000() -> None:
    for wanted in (16, 48):
        for total in range(5000):
            assert sample_indices(total, wanted) == model_card_indices(total, wanted), (total, wanted)


@pytest.mark.parametrize("total, wanted", [(10, 0), (-1, 16)])
def test_sample_indices_rejects_nonsense(total: int, wanted: int) -> None:
    with pytest.raises(ValueError):
        sample_indices(total, wanted)


# --- good videos: the fast reader is pixel-identical to the reference loop --------------------------------


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("clips")
    return {
        "short": make_video(folder / "short.mp4", frames=48, size=SMALL),
        "sparse keyframes (gop 250)": make_video(folder / "sparse.mp4", frames=520, size=SMALL, gop=250, preset=FAST),
        "dense keyframes (gop 1)": make_video(folder / "dense.mp4", frames=60, size=SMALL, gop=1),
        "B-frames (gop 24)": make_video(folder / "bframes.mp4", frames=240, size=SMALL, gop=24, bframes=3, preset=FAST),
        "no B-frames (gop 12)": make_video(folder / "nob.mp4", frames=240, size=SMALL, gop=12, bframes=0, preset=FAST),
        "variable frame rate": make_variable_frame_rate_video(folder / "vfr.mp4", frames=90, gop=20),
        "header count 0 (mkv)": make_zero_header_count_video(folder / "zero.mkv", frames=96, gop=24),
        "header count 0 (webm, vp9)": make_zero_header_count_video(folder / "zero.webm", frames=48),
        "header count too low (avi)": make_wrong_header_count_video(folder / "low.avi", frames=30, header_frames=10),
        "MPEG-TS (seeks by decode time)": make_video(folder / "clip.ts", frames=144, size=SMALL, gop=24, preset=FAST),
        "HEVC, open GOP (mkv)": make_video(folder / "hevc.mkv", frames=144, size=SMALL, codec="libx265", gop=24),
    }


CLIP_NAMES = [
    "short",
    "sparse keyframes (gop 250)",
    "dense keyframes (gop 1)",
    "B-frames (gop 24)",
    "no B-frames (gop 12)",
    "variable frame rate",
    "header count 0 (mkv)",
    "header count 0 (webm, vp9)",
    "header count too low (avi)",
    "MPEG-TS (seeks by decode time)",
    "HEVC, open GOP (mkv)",
]


@pytest.mark.parametrize("clip", CLIP_NAMES)
@pytest.mark.parametrize("num_frames", [16, 48])
def test_indexed_reader_returns_the_reference_frames(clips: dict[str, Path], clip: str, num_frames: int) -> None:
    path = clips[clip]
    indices = sample_indices(probe_video(path).total_frames, num_frames)

    reference = read_frames(path, indices, method="decode_all")
    fast = read_frames(path, indices, method="indexed")

    assert_same_pixels(fast, reference)
    assert [frame_number_of(frame) for frame in fast] == indices  # and they are the right frames


@pytest.mark.parametrize("clip", ["sparse keyframes (gop 250)", "B-frames (gop 24)", "header count 0 (mkv)"])
def test_indexed_reader_keeps_caller_order_and_repeats(clips: dict[str, Path], clip: str) -> None:
    path = clips[clip]
    total = probe_video(path).total_frames
    indices = [total - 1, 3, total // 2, 3, 0, total // 3 + 1]

    reference = read_frames(path, indices, method="decode_all")
    fast = read_frames(path, np.array(indices))  # numpy integers are frame numbers too

    assert_same_pixels(fast, reference)
    assert [frame_number_of(frame) for frame in fast] == indices


def test_clips_exercise_what_their_names_say(clips: dict[str, Path]) -> None:
    # guard the fixtures: a clip without B-frames or with a right header would make its tests vacuous
    def packets(name: str) -> list[av.Packet]:
        with av.open(str(clips[name])) as container:
            return [p for p in container.demux(container.streams.video[0]) if p.size]

    decode_order = [p.pts for p in packets("B-frames (gop 24)")]
    assert decode_order != sorted(decode_order), "no B-frames: packets are already in presentation order"
    assert sum(p.is_keyframe for p in packets("sparse keyframes (gop 250)")) == 3
    assert all(p.is_keyframe for p in packets("dense keyframes (gop 1)"))
    durations = {b.pts - a.pts for a, b in zip(packets("variable frame rate"), packets("variable frame rate")[1:])}
    assert len(durations) > 1
    assert probe_video(clips["header count 0 (mkv)"]).header_frames == 0


@pytest.mark.parametrize("clip", CLIP_NAMES)
def test_indexed_reader_never_decodes_more_than_the_reference(clips: dict[str, Path], clip: str) -> None:
    for num_frames in (16, 48):
        reference = sample_video(clips[clip], num_frames, method="decode_all")
        fast = sample_video(clips[clip], num_frames)
        assert fast.frames_decoded <= reference.frames_decoded


def test_indexed_reader_skips_whole_keyframe_intervals(clips: dict[str, Path]) -> None:
    # 240 frames, a keyframe every 12, 16 wanted (every 15th): each is at most 11 frames past a keyframe
    reference = sample_video(clips["no B-frames (gop 12)"], 16, method="decode_all")
    fast = sample_video(clips["no B-frames (gop 12)"], 16)

    assert reference.frames_decoded == 226  # 0..225, the last wanted frame
    assert fast.frames_decoded <= 100
    assert_same_pixels(fast.frames, reference.frames)


@pytest.mark.parametrize("clip", ["MPEG-TS (seeks by decode time)", "HEVC, open GOP (mkv)"])
def test_indexed_reader_seeks_in_containers_that_index_by_decode_time(
    clips: dict[str, Path], clip: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="videoscore.worker.video.frames"):
        fast = sample_video(clips[clip], 16)
    reference = sample_video(clips[clip], 16, method="decode_all")

    assert "reading every frame" not in caplog.text  # it did not give up and fall back
    assert fast.frames_decoded < reference.frames_decoded
    assert_same_pixels(fast.frames, reference.frames)


def test_indexed_reader_falls_back_to_the_reference_loop_when_timestamps_cannot_name_frames(
    clips: dict[str, Path], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real_index = frames_module._index_frames
    monkeypatch.setattr(
        frames_module,
        "_index_frames",
        lambda *a: dataclasses.replace(real_index(*a), timestamps_name_frames=False),
    )
    path = clips["B-frames (gop 24)"]
    indices = sample_indices(240, 16)

    with caplog.at_level(logging.WARNING, logger="videoscore.worker.video.frames"):
        fast = sample_video(path, 16)

    assert "reading every frame" in caplog.text
    assert fast.frames_decoded == indices[-1] + 1  # it decoded from the start, like the reference
    assert [frame_number_of(frame) for frame in fast.frames] == indices


# --- a stream cut mid-GOP: frames before its first keyframe are no frames ---------------------------------


@pytest.fixture(scope="module")
def mid_gop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MPEG-TS segment cut two packets before a keyframe: 52 frame packets, of which 50 decode."""
    folder = tmp_path_factory.mktemp("mid-gop")
    whole = make_video(folder / "whole.ts", frames=74, size=SMALL, gop=24, bframes=0)
    return cut_mid_gop(whole, folder / "segment.ts", leading=2)


def test_the_mid_gop_segment_is_what_its_name_says(mid_gop: Path) -> None:
    with av.open(str(mid_gop)) as container:
        packets = [p for p in container.demux(container.streams.video[0]) if p.size]
    assert len(packets) == 52 and [p.is_keyframe for p in packets[:3]] == [False, False, True]
    with av.open(str(mid_gop)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 50  # the decoder drops the two


def test_frames_before_the_first_keyframe_are_not_counted(mid_gop: Path) -> None:
    info = probe_video(mid_gop)
    assert (info.total_frames, info.header_frames) == (50, 0)


@pytest.mark.parametrize("method", ["indexed", "decode_all"])
@pytest.mark.parametrize("num_frames", [16, 48])
def test_a_segment_cut_mid_gop_is_sampled_from_its_first_keyframe(mid_gop: Path, method: str, num_frames: int) -> None:
    sampled = sample_video(mid_gop, num_frames, method=method)
    assert sampled.indices == model_card_indices(50, num_frames)
    # frame 0 is the whole clip's frame 24, its keyframe
    assert [frame_number_of(frame) for frame in sampled.frames] == [24 + i for i in sampled.indices]


def test_qwen2_vl_samples_a_segment_cut_mid_gop_over_the_frames_that_decode(mid_gop: Path) -> None:
    """As torchvision's reader (qwen-vl-utils) does: 50 frames at 24 fps, 16 of them at 8 fps."""
    sampled = qwen2_vl_recipe.sample_video(mid_gop)
    assert sampled.info.total_frames == 50 and sampled.indices == qwen2_vl_recipe.sample_indices(50, 24.0)
    assert [frame_number_of(frame) for frame in sampled.frames] == [24 + i for i in sampled.indices]


# --- probing -----------------------------------------------------------------------------------------------


def test_probe_describes_a_video(clips: dict[str, Path]) -> None:
    assert probe_video(clips["short"]) == VideoInfo(
        total_frames=48, header_frames=48, fps=24.0, duration_s=2.0, width=160, height=120, codec="h264"
    )


def test_probe_counts_frames_itself_when_the_header_has_no_count(clips: dict[str, Path]) -> None:
    info = probe_video(clips["header count 0 (mkv)"])
    assert (info.total_frames, info.header_frames) == (96, 0)
    assert info.duration_s == pytest.approx(4.0, abs=0.01)


def test_probe_counts_frames_itself_when_the_header_says_too_few(clips: dict[str, Path]) -> None:
    info = probe_video(clips["header count too low (avi)"])
    assert (info.total_frames, info.header_frames) == (30, 10)


def test_probe_rejects_a_header_promising_more_frames_than_the_file_holds(tmp_path: Path) -> None:
    path = make_wrong_header_count_video(tmp_path / "high.avi", frames=30, header_frames=60)
    with pytest.raises(VideoDecodeError, match="header promises 60 frames but the file holds 30"):
        probe_video(path)


def test_probe_reports_the_average_rate_of_a_variable_frame_rate_video(clips: dict[str, Path]) -> None:
    info = probe_video(clips["variable frame rate"])
    # durations cycle 20, 40, 33, 80, 50 ms, so the last of 90 frames starts at 17 * 223 + 173 ms;
    # how long it lasts is the muxer's guess
    last_start = (17 * 223 + 173) / 1000
    assert last_start < info.duration_s < last_start + 0.08
    assert info.fps == pytest.approx(90 / info.duration_s)


def test_probe_enforces_the_pixel_limit(clips: dict[str, Path]) -> None:
    assert probe_video(clips["short"], max_pixels=160 * 120).width == 160  # at the limit is fine
    with pytest.raises(VideoTooLargeError, match=r"160x120 = 19200 pixels, over the limit of 19199"):
        probe_video(clips["short"], max_pixels=160 * 120 - 1)
    with pytest.raises(VideoTooLargeError):
        sample_video(clips["short"], 16, max_pixels=100)
    with pytest.raises(VideoTooLargeError):
        read_frames(clips["short"], [0], max_pixels=100)


def test_a_video_at_the_pixel_limit_decodes_the_same_frames(clips: dict[str, Path]) -> None:
    # the limit also caps what FFmpeg may allocate while probing and decoding; at the limit nothing changes
    for clip in ("short", "B-frames (gop 24)", "HEVC, open GOP (mkv)"):
        limited = sample_video(clips[clip], 16, max_pixels=160 * 120)
        assert_same_pixels(limited.frames, sample_video(clips[clip], 16).frames)


def test_sampling_is_refused_before_decoding_when_the_frames_do_not_fit_the_budget(clips: dict[str, Path]) -> None:
    # 16 frames of 160x120 RGB are 0.9 MiB; with 5 copies 4.4 MiB
    budget = frames_module.MemoryBudget(max_bytes=4 * 2**20, copies=5)
    with pytest.raises(VideoTooLargeError, match=r"16 frames of 160x120 need about 4.4 MiB .* budget of 4.0 MiB"):
        sample_video(clips["short"], 16, budget=budget)
    with pytest.raises(VideoTooLargeError, match="budget"):
        read_frames(clips["short"], list(range(16)), budget=budget)
    assert len(sample_video(clips["short"], 14, budget=budget).frames) == 14  # 3.8 MiB fits


# --- bad inputs: the right error kind, with a reason a person can act on -------------------------------------


def _empty_file(path: Path) -> Path:
    path.write_bytes(b"")
    return path


BAD_INPUTS = [
    # (name, writer, message the error must contain)
    ("random bytes", lambda p: make_not_a_video(p / "noise.mp4"), "not a media file"),
    ("text file", lambda p: make_not_a_video(p / "notes.txt", kind="text"), "not a media file"),
    ("empty file", lambda p: _empty_file(p / "empty.mp4"), "not a media file"),
    ("audio only", lambda p: make_audio_only(p / "voice.m4a"), "no video stream (audio only)"),
    ("video stream without frames", lambda p: make_zero_frame_video(p / "empty.mkv"), "video stream has no frames"),
    (
        "mp4 cut in half",
        lambda p: make_truncated_video(p / "cut.mp4", frames=48),
        "truncated or corrupt video: the header promises 48 frames",
    ),
]


@pytest.mark.parametrize("name, writer, message", BAD_INPUTS, ids=[case[0] for case in BAD_INPUTS])
def test_bad_inputs_fail_permanently_with_a_reason(tmp_path: Path, name: str, writer, message: str) -> None:
    path = writer(tmp_path)
    for call in (lambda: probe_video(path), lambda: sample_video(path, 16)):
        with pytest.raises(VideoDecodeError) as caught:
            call()
        assert message in caught.value.message
        assert isinstance(caught.value, PermanentError) and caught.value.kind == "video_decode_error"


def test_reading_past_the_cut_of_a_truncated_video_says_how_far_it_got(tmp_path: Path) -> None:
    path = make_truncated_video(tmp_path / "cut.mp4", frames=48)
    cut_frame = _frame_cut_in_half(path)
    messages = {}

    for method in ("indexed", "decode_all"):
        with pytest.raises(
            VideoDecodeError, match=r"truncated or corrupt video: could only decode \d+ of 48"
        ) as caught:
            read_frames(path, [0, cut_frame], method=method)
        messages[method] = caught.value.message
        with pytest.raises(VideoDecodeError, match="truncated or corrupt video: .*48 frames"):
            read_frames(path, [0, 47], method=method)  # frame 47 is not in the file at all
        # the frames well before the cut are still readable, and right
        assert [frame_number_of(f) for f in read_frames(path, [0, 5], method=method)] == [0, 5]

    assert messages["indexed"] == messages["decode_all"]  # both got exactly as far


def _frame_cut_in_half(path: Path) -> int:
    """The frame number of the packet the cut went through (FFmpeg flags the short read as corrupt)."""
    with av.open(str(path)) as container:
        packets = [p for p in container.demux(container.streams.video[0]) if p.size]
    by_time = sorted(p.pts for p in packets)
    (cut,) = [by_time.index(p.pts) for p in packets if p.is_corrupt]
    return cut


@pytest.mark.parametrize("method", ["indexed", "decode_all"])
def test_reading_past_the_end_is_an_error(clips: dict[str, Path], method: str) -> None:
    with pytest.raises(VideoDecodeError, match="frame 48 is past the end: the video has 48 frames"):
        read_frames(clips["short"], [10, 48], method=method)


def test_reading_rejects_negative_indices_and_unknown_methods(clips: dict[str, Path]) -> None:
    with pytest.raises(ValueError):
        read_frames(clips["short"], [-1])
    with pytest.raises(TypeError):
        read_frames(clips["short"], [2.5])  # type: ignore[list-item]
    with pytest.raises(ValueError):
        read_frames(clips["short"], [0], method="fastest")  # type: ignore[arg-type]
    assert read_frames(clips["short"], []) == []


def test_a_missing_file_is_not_blamed_on_the_video(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        probe_video(tmp_path / "nowhere.mp4")
    with pytest.raises(IsADirectoryError):
        probe_video(tmp_path)


# --- the worker's call ---------------------------------------------------------------------------------------


def test_sample_video_returns_the_sampled_frames_and_what_it_cost(clips: dict[str, Path]) -> None:
    sampled = sample_video(clips["sparse keyframes (gop 250)"], 16)

    assert isinstance(sampled, SampledVideo)
    assert sampled.info.total_frames == 520
    assert sampled.indices == model_card_indices(520, 16)
    assert [frame_number_of(f) for f in sampled.frames] == sampled.indices
    assert all(f.shape == (120, 160, 3) and f.dtype == np.uint8 for f in sampled.frames)
    assert sampled.decode_s > 0
    assert 0 < sampled.frames_decoded <= 520


# --- containers are closed on every path -----------------------------------------------------------------------


def _os_thread_count() -> int:
    # FFmpeg's decoder threads are native threads: threading.active_count() cannot see them
    return len(os.listdir("/proc/self/task"))


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
@pytest.mark.parametrize("method", ["indexed", "decode_all"])
def test_no_decoder_threads_outlive_a_call(tmp_path: Path, clips: dict[str, Path], method: str) -> None:
    truncated = make_truncated_video(tmp_path / "cut.mp4", frames=48)
    read_frames(clips["short"], [0, 47], method=method)  # warm up: lazy one-time threads start here
    before = _os_thread_count()

    read_frames(clips["B-frames (gop 24)"], sample_indices(240, 48), method=method)
    # keep the exception, and so its traceback's frames, alive: a stream or decode generator left in
    # those frames keeps its decoder threads running even after the container is closed
    with pytest.raises(VideoDecodeError, match="could only decode") as caught:
        read_frames(truncated, [0, _frame_cut_in_half(truncated)], method=method)  # fails mid-decode

    assert caught.value is not None
    assert _os_thread_count() == before


def test_every_container_opened_is_closed(
    tmp_path: Path, clips: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    inputs = [clips["short"], clips["header count 0 (mkv)"]] + [writer(tmp_path) for _, writer, _ in BAD_INPUTS]
    truncated = make_truncated_video(tmp_path / "cut-mid-decode.mp4", frames=48)
    cut_frame = _frame_cut_in_half(truncated)
    opened: list[av.container.InputContainer] = []
    real_open = av.open

    def recording_open(*args, **kwargs):
        container = real_open(*args, **kwargs)
        opened.append(container)
        return container

    monkeypatch.setattr(av, "open", recording_open)
    errors = []
    for path in inputs:
        for method in ("indexed", "decode_all"):
            try:
                sample_video(path, 16, method=method)
            except VideoDecodeError as error:
                errors.append(error)  # held on purpose, as a caller logging it would
    for method in ("indexed", "decode_all"):
        try:
            read_frames(truncated, [0, cut_frame], method=method)  # fails mid-decode
        except VideoDecodeError as error:
            errors.append(error)

    assert opened and errors
    assert [c for c in opened if _is_open(c)] == []


def _is_open(container: av.container.InputContainer) -> bool:
    try:
        _ = container.duration
    except AssertionError:  # PyAV's "Container is not open"
        return False
    return True
