"""The indexed reader's skipping of H.264 non-reference frames: fewer frames decoded, the same pixels.

The clips are H.264 with fixed B-frame patterns (x264 `b-adapt=0`), so what is tested does not hang on x264's
scene analysis: without a B-pyramid every B-frame is a non-reference picture (nal_ref_idc == 0), with one the
middle B-frame of each run is a reference. Every frame carries its own number (`frame_number_of`), so "the right
frame" is checked against ground truth as well as against the model card's decode loop, copied verbatim below.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

import videoscore.worker.video.frames as frames_module
from tests.media import assert_same_pixels
from videoscore.core.errors import VideoDecodeError
from videoscore.worker.testing.media import draw_frame, frame_number_of, make_video
from videoscore.worker.video.frames import probe_video, read_frames, sample_indices, sample_video

SMALL = (160, 120)
FIXED_B = "scenecut=0:bframes=3:b-adapt=0"
LOGGER = "videoscore.worker.video.frames"
REDONE = "without skipping non-reference frames"  # the reader's log line when a run is decoded again
FELL_BACK = "reading every frame"  # ... and when it gives up on the index

# name -> (file name, frames, x264 parameters)
CLIPS = {
    "gop 12, B-frames, no pyramid": ("gop12.mp4", 240, f"keyint=12:min-keyint=12:{FIXED_B}:b-pyramid=none"),
    "gop 48, B-pyramid": ("gop48.mp4", 300, f"keyint=48:min-keyint=48:{FIXED_B}:b-pyramid=normal"),
    "open GOP, keyframe every 250": (
        "open.mp4",
        620,
        f"keyint=250:min-keyint=250:{FIXED_B}:b-pyramid=none:open-gop=1",
    ),
    "MPEG-TS, gop 24": ("gop24.ts", 144, f"keyint=24:min-keyint=24:{FIXED_B}:b-pyramid=none"),
    "Matroska, gop 24": ("gop24.mkv", 144, f"keyint=24:min-keyint=24:{FIXED_B}:b-pyramid=strict"),
}
CLIP_NAMES = list(CLIPS)


def write_h264(path: Path, frames: int, x264_params: str, *, options: dict[str, str] | None = None) -> Path:
    """A clip whose frame i is `draw_frame(i)`, encoded by x264 with exactly `x264_params` (one thread)."""
    formats = {".mp4": "mp4", ".ts": "mpegts", ".mkv": "matroska"}
    with av.open(str(path), "w", format=formats[path.suffix], options=options or {}) as container:
        stream = container.add_stream("libx264", rate=24, options={"threads": "1", "x264-params": x264_params})
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height = SMALL
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = Fraction(1, 24)
        for index in range(frames):
            frame = av.VideoFrame.from_ndarray(draw_frame(index, SMALL), format="rgb24")
            frame.pts, frame.time_base = index, Fraction(1, 24)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("nonref")
    return {name: write_h264(folder / file, frames, params) for name, (file, frames, params) in CLIPS.items()}


# --- the model card's loop, verbatim, and what a clip holds --------------------------------------------------


def _read_video_pyav(container, indices):  # the card's function, unchanged
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


def model_card_frames(path: Path, indices: list[int]) -> list[np.ndarray]:
    """The card's frames for sorted, distinct `indices`."""
    with av.open(str(path)) as container:
        return list(_read_video_pyav(container, np.array(indices)))


def _nal_headers(data: bytes, length_prefixed: bool) -> Iterator[int]:
    """The first byte of each NAL unit in a packet: nal_ref_idc (2 bits) and nal_unit_type (5 bits)."""
    if length_prefixed:  # MP4/Matroska: 4-byte NAL unit lengths
        position = 0
        while position + 4 < len(data):
            size = int.from_bytes(data[position : position + 4], "big")
            yield data[position + 4]
            position += 4 + size
    else:  # MPEG-TS: Annex B start codes
        for part in data.split(b"\x00\x00\x01")[1:]:
            if part:
                yield part[0]


def nal_ref_idc_by_frame(path: Path) -> dict[int, int]:
    """Frame number (presentation order) -> nal_ref_idc of its first slice, read from the bitstream itself."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        length_prefixed = container.format.name != "mpegts"
        packets = [p for p in container.demux(stream) if p.size]
    number_of = {pts: number for number, pts in enumerate(sorted(p.pts or 0 for p in packets))}
    refs = {}
    for packet in packets:
        for header in _nal_headers(bytes(packet), length_prefixed):
            if header & 0x1F in (1, 5):  # a slice, non-IDR or IDR
                refs[number_of[packet.pts or 0]] = header >> 5
                break
    return refs


def non_reference_frames(path: Path) -> list[int]:
    return sorted(number for number, ref_idc in nal_ref_idc_by_frame(path).items() if ref_idc == 0)


@pytest.mark.parametrize("clip", CLIP_NAMES)
def test_clips_are_what_their_names_say(clips: dict[str, Path], clip: str) -> None:
    # guard the fixtures: a clip without non-reference frames would make every test below vacuous
    path = clips[clip]
    refs = nal_ref_idc_by_frame(path)
    assert len(refs) == probe_video(path).total_frames == CLIPS[clip][1]
    assert 0.3 < sum(ref == 0 for ref in refs.values()) / len(refs) < 0.8  # non-reference B-frames, and others
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.name == "h264"


def test_the_open_gop_clip_has_keyframes_that_are_not_idr(clips: dict[str, Path]) -> None:
    with av.open(str(clips["open GOP, keyframe every 250"])) as container:
        stream = container.streams.video[0]
        keyframes = [bytes(p) for p in container.demux(stream) if p.size and p.is_keyframe]
    nal_types = [{header & 0x1F for header in _nal_headers(data, length_prefixed=True)} for data in keyframes]
    assert len(keyframes) == 3 and 5 in nal_types[0]
    assert all(5 not in types and 1 in types for types in nal_types[1:])  # I-frames that B-frames reach across


# --- exactness ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("clip", CLIP_NAMES)
@pytest.mark.parametrize("num_frames", [8, 16, 48])
def test_skipping_returns_the_model_card_frames(
    clips: dict[str, Path], clip: str, num_frames: int, caplog: pytest.LogCaptureFixture
) -> None:
    path = clips[clip]
    indices = sample_indices(probe_video(path).total_frames, num_frames)

    with caplog.at_level(logging.INFO, logger=LOGGER):
        skipping = sample_video(path, num_frames)

    assert skipping.indices == indices
    assert_same_pixels(skipping.frames, model_card_frames(path, indices))
    assert [frame_number_of(frame) for frame in skipping.frames] == indices
    # exact by itself, not rescued by decoding a run again or by the reference loop
    assert REDONE not in caplog.text and FELL_BACK not in caplog.text


@pytest.mark.parametrize("clip", CLIP_NAMES)
def test_targets_that_are_non_reference_frames_are_decoded(
    clips: dict[str, Path], clip: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = clips[clip]
    targets = non_reference_frames(path)[::5]  # every one a frame the decoder would drop if told it may
    assert len(targets) >= 6

    with caplog.at_level(logging.INFO, logger=LOGGER):
        frames = read_frames(path, targets)

    assert_same_pixels(frames, model_card_frames(path, targets))
    assert [frame_number_of(frame) for frame in frames] == targets
    assert REDONE not in caplog.text and FELL_BACK not in caplog.text


def test_sampled_targets_include_non_reference_frames(clips: dict[str, Path]) -> None:
    # so the exactness test above covers a wanted frame that the decoder could have dropped
    for clip in CLIP_NAMES:
        path = clips[clip]
        dropped_if_allowed = set(non_reference_frames(path))
        for num_frames in (16, 48):
            assert dropped_if_allowed & set(sample_indices(probe_video(path).total_frames, num_frames)), clip


def test_caller_order_and_repeats_are_kept(clips: dict[str, Path]) -> None:
    path = clips["gop 48, B-pyramid"]
    nonref = non_reference_frames(path)
    indices = [nonref[-1], 3, nonref[10], 3, 0, nonref[10] + 1]

    frames = read_frames(path, np.array(indices))  # type: ignore[arg-type]  # numpy integers name frames too

    assert [frame_number_of(frame) for frame in frames] == indices
    assert frames[1] is frames[3]
    assert_same_pixels(frames, read_frames(path, indices, method="decode_all"))


# --- it does less work ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("clip", CLIP_NAMES)
def test_skipping_decodes_fewer_frames(clips: dict[str, Path], clip: str) -> None:
    path = clips[clip]
    for num_frames in (8, 16, 48):
        skipping = sample_video(path, num_frames)
        every_frame = sample_video(path, num_frames, skip_nonref=False)

        assert skipping.frames_decoded < every_frame.frames_decoded, num_frames
        assert_same_pixels(skipping.frames, every_frame.frames)


def test_skipping_saves_at_least_a_third_of_the_frames_without_a_b_pyramid(clips: dict[str, Path]) -> None:
    # 3 of every 4 frames are non-reference B-frames; targets and the keyframes still decode
    path = clips["gop 12, B-frames, no pyramid"]
    skipping = sample_video(path, 16)
    every_frame = sample_video(path, 16, skip_nonref=False)
    assert skipping.frames_decoded <= every_frame.frames_decoded * 2 / 3


def test_the_reference_loop_never_skips(clips: dict[str, Path]) -> None:
    path = clips["gop 12, B-frames, no pyramid"]
    indices = sample_indices(240, 16)
    assert sample_video(path, 16, method="decode_all").frames_decoded == indices[-1] + 1


def test_codecs_other_than_h264_do_not_skip(tmp_path: Path) -> None:
    # HEVC's non-reference pictures may still be referenced from a higher temporal sub-layer
    path = make_video(tmp_path / "hevc.mkv", frames=96, size=SMALL, codec="libx265", gop=24, bframes=3)
    skipping = sample_video(path, 16)
    every_frame = sample_video(path, 16, skip_nonref=False)
    assert skipping.frames_decoded == every_frame.frames_decoded
    assert_same_pixels(skipping.frames, every_frame.frames)


# --- the checks behind it still catch what they must ------------------------------------------------------------


def test_a_frame_dropped_without_the_reader_allowing_it_still_falls_back(
    clips: dict[str, Path], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A decoder dropping frames the reader did not record as droppable is a gap the reader must refuse."""

    def drops_without_recording(decoder, packet: av.Packet) -> bool:
        return not packet.is_keyframe  # the decoder may drop anything, the reader knows of nothing

    monkeypatch.setattr(frames_module._ForwardDecoder, "_may_drop", drops_without_recording)
    path = clips["gop 12, B-frames, no pyramid"]
    indices = sample_indices(240, 16)

    with caplog.at_level(logging.INFO, logger=LOGGER):
        sampled = sample_video(path, 16)

    assert FELL_BACK in caplog.text and "decoder skipped from frame" in caplog.text
    assert sampled.frames_decoded == indices[-1] + 1  # the reference loop's count: it read from frame 0
    assert_same_pixels(sampled.frames, model_card_frames(path, indices))


def test_a_wanted_frame_the_decoder_dropped_is_decoded_again_without_skipping(
    clips: dict[str, Path], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Were a wanted frame ever let drop, its run would end without it; the run is then decoded again."""
    real_may_drop = frames_module._ForwardDecoder._may_drop

    def may_drop_anything(decoder, packet: av.Packet) -> bool:
        decoder._needed = frozenset(decoder._index.keyframes)  # forget the wanted frames
        return real_may_drop(decoder, packet)

    monkeypatch.setattr(frames_module._ForwardDecoder, "_may_drop", may_drop_anything)
    path = clips["gop 12, B-frames, no pyramid"]
    targets = non_reference_frames(path)[5:8]

    with caplog.at_level(logging.INFO, logger=LOGGER):
        frames = read_frames(path, targets)

    assert REDONE in caplog.text and FELL_BACK not in caplog.text
    assert [frame_number_of(frame) for frame in frames] == targets
    assert_same_pixels(frames, model_card_frames(path, targets))


# --- a truncated file fails the same way with and without skipping ---------------------------------------------


def test_reading_past_the_cut_of_a_truncated_b_frame_clip_says_what_the_reference_says(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Skipping, the decoder gets past frames the reference loop fails on (a cut non-reference frame is dropped
    # unread) and would report fewer frames; the run is decoded again without skipping and fails where it must.
    path = write_h264(
        tmp_path / "cut.mp4", 96, f"keyint=24:min-keyint=24:{FIXED_B}:b-pyramid=none", options={"movflags": "faststart"}
    )
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # moov first: the cut file opens and promises 96 frames
    with av.open(str(path)) as container:
        packets = [p for p in container.demux(container.streams.video[0]) if p.size]
    in_presentation_order = sorted(p.pts or 0 for p in packets)
    (cut_frame,) = [in_presentation_order.index(p.pts or 0) for p in packets if p.is_corrupt]
    messages = {}

    for name, options in {"reference": {"method": "decode_all"}, "indexed": {"skip_nonref": False}}.items():
        with pytest.raises(VideoDecodeError) as caught:
            read_frames(path, [2, cut_frame], **options)  # type: ignore[arg-type]
        messages[name] = caught.value.message
    with caplog.at_level(logging.INFO, logger=LOGGER), pytest.raises(VideoDecodeError) as caught:
        read_frames(path, [2, cut_frame])

    assert "truncated or corrupt video: could only decode" in messages["reference"]
    assert caught.value.message == messages["indexed"] == messages["reference"]
    assert REDONE in caplog.text
