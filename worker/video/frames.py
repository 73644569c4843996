"""Frame sampling: which frames of a video the model sees, and getting exactly those frames out fast.

Owns four things, and nothing else touches PyAV for them:

* `sample_indices` — the model card's rule for picking N frame numbers, bit for bit.
* `probe_video` — what a file is (frame count, rate, size, codec), or why it is not a usable video.
* `read_frames` — the RGB pixels of chosen frame numbers, by the model card's decode-everything loop
  ("decode_all", the reference) or by the fast keyframe-guided reader ("indexed", the default), which
  returns pixel-identical frames.
* `sample_video` — the one call a worker makes: probe, pick indices, check the memory budget, read.

Every file is opened the same locked-down way (`open_video`): only the `file` protocol, only demuxers of
containers that carry their media in the file itself (`ALLOWED_DEMUXERS`), and a cap on the pixels a decoder may
allocate that holds before FFmpeg decodes anything. The README's Security section lists the attacks these stop.

A "frame number" here means what the model card means: the position of a frame in the order the decoder
outputs it (its presentation order), counting from 0.

Decision: how many frames a video has when its header lies
----------------------------------------------------------
The model card takes `streams.video[0].frames`, the count written in the container header. Headers lie
in two ways, so we always make one demux-only pass (packets, no decoding: about 0.03 ms per frame, 40 ms
for a minute at 24 fps, against about 1.5 ms per frame to decode; and the fast reader needs its keyframe
map anyway) to count the frames actually there:

* header equals the demuxed count (every well-formed MP4/MOV/AVI): both agree; nothing changes.
* header is 0 (ordinary MKV/WebM, fragmented MP4, MPEG-TS): the reference cannot sample at all; we use
  the demuxed count.
* header is below the demuxed count (a writer that never finalised its header): we use the demuxed
  count, so sampling spans the whole video; the reference would silently sample only the first part.
* header is above the demuxed count: we reject the file as truncated (`VideoDecodeError`). In MP4/MOV,
  which is most uploads, the header count *is* the sample table the demuxer walks, so a shortfall means
  the bytes ran out (an interrupted upload); scoring the surviving prefix would silently score a
  different video. The rare complete file whose header merely overstates its length (a hand-patched AVI)
  is rejected too; the message names both counts.

`VideoInfo` carries both numbers (`total_frames` is the one used, `header_frames` the header's) so the
caller can log the disagreement. Known limit: a headerless (MKV/WebM) file cut at a block boundary looks
exactly like a shorter video at the demux level and is sampled as one.

Frames before the stream's first keyframe (in decode order) are not frames of the video: a segment cut
mid-GOP starts with pictures whose references are missing, which the decoder drops. They are left out of the
count, so frame 0 is the first frame that decodes, for the indices, the truncation check and both readers
(FFmpeg's own count in a header still includes them; it is compared with every packet).

Decision: how much memory a job may take
----------------------------------------
A tiny file can expand into gigabytes of frames (a few KB of black 4K frames; a header declaring
16384x8192). So the frame size is read from the stream header, and checked, before any frame is decoded
(FFmpeg's probe is held to about twice the pixel limit meanwhile, and each decoder to the header's size), and a
job's sampled frames times their RGB size times the copies its model family makes of them while preprocessing
(`MemoryBudget.copies`, measured per recipe) must fit `MemoryBudget.max_bytes` (VIDEOSCORE_MAX_DECODE_BYTES), or
the job is refused as `video_too_large` before decoding starts.

Frames are numbered by presentation timestamp rank (so B-frames, stored out of order, map correctly). If
a stream's timestamps cannot name frames (missing or repeated), or the decoder is caught emitting a
sequence that disagrees with the timestamp ranks (it skipped a frame), or the container cannot seek, the
fast reader falls back to the reference loop rather than risk returning different frames.

Decision: frames no target needs are not decoded (H.264 non-reference pictures)
-------------------------------------------------------------------------------
Walking from a keyframe to a target, the fast reader feeds the decoder packet by packet and decides for each
one, before sending it, whether the decoder may drop it: `skip_frame = "NONREF"` for a packet whose frame
(named by its timestamp, through the index) is neither a wanted frame nor a keyframe, `"DEFAULT"` for every
other packet (wanted frames, keyframes, packets without a timestamp or with one the index does not know).
FFmpeg's H.264 decoder then drops only NAL units with nal_ref_idc == 0, pictures that by the standard no
other picture predicts from, so every picture it does decode, every wanted frame among them, is bit for bit
what the reference loop decodes. The decision is per packet in decode order, taken with the frame's
presentation number in hand, so B-frame reordering and the decoder's delay (reordering plus frame threads)
need no safety window: a wanted frame is never sent under "NONREF", however early it is sent. With frame
threading the setting travels with each packet to its thread (FFmpeg copies skip_frame at submission).
Only H.264 skips: HEVC's "non-reference" pictures are non-reference only within their temporal sub-layer
(a higher sub-layer may still predict from them), and other codecs are not measured.

A dropped picture produces no frame, so the consecutive-output check allows a gap only over frame numbers
whose packets went to the decoder under "NONREF" in the current run; any other gap, or a frame out of order,
falls back as before. When a run that skipped hits a decode error or ends early, it is decoded again from
its keyframe without skipping, so errors (and their messages) are those of the reader without skipping.
On x264 clips with B-frames (bench/frames.py, 720p, superfast, keyframes every 12 or 250 frames, 16 or 48
sampled) this decodes 25-42% fewer frames than the reader without skipping and takes 16-30% less CPU.

Every container is opened through a context manager and closed on every path, errors included: live
decoder threads were measured to slow the next model forward from 0.05 s to 1-2 s. Closing is not enough
on its own: PyAV frees a decoder (and its threads) only when the last Python reference to its stream
goes, and an exception's traceback holds such references; see `_drops_decoders_on_error`.
"""

from __future__ import annotations

import bisect
import collections
import errno
import functools
import logging
import math
import operator
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Literal, ParamSpec, TypeVar

import av
import numpy as np

from videoscore.core.errors import VideoDecodeError, VideoTooLargeError

log = logging.getLogger(__name__)

ReadMethod = Literal["indexed", "decode_all"]

# FFmpeg errors from av.open that describe the path, not the bytes in it
_FILE_SYSTEM_ERRNOS = frozenset({errno.ENOENT, errno.EACCES, errno.EISDIR, errno.ENOTDIR})

_P = ParamSpec("_P")
_T = TypeVar("_T")

# FFmpeg's "tty" demuxer accepts any text file as ANSI art and "decodes" it into frames; these codecs
# mean the file is text, not video.
_TEXT_ART_CODECS = frozenset({"ansi", "bintext", "xbin", "idf"})

# Demuxers of containers that hold their media in the file itself. The rest are refused before their header
# is parsed: HLS/DASH playlists, concat scripts and image sequences make FFmpeg open other files or URLs, and
# the "tty" demuxer turns any text into frames. Names as FFmpeg's format_whitelist matches them (any one name
# of a demuxer's comma-separated list).
ALLOWED_DEMUXERS = (
    "mov", "mp4", "matroska", "webm", "avi", "mpegts", "flv", "mpeg", "ivf", "ogg", "asf", "gif",
)
_DEMUXER_OPTIONS = {
    "protocol_whitelist": "file",  # the one path we were given, nothing it names
    "format_whitelist": ",".join(ALLOWED_DEMUXERS),
    "enable_drefs": "0",  # MOV data references to other files: FFmpeg's default, pinned
}
# What the first bytes of a refused file say it is, for a message a person can act on.
_REFERENCING_FORMATS = (
    (b"#EXTM3U", "an HLS playlist"),
    (b"ffconcat", "an FFmpeg concat script"),
    (b"<?xml", "an XML manifest (DASH?)"),
    (b"<MPD", "a DASH manifest"),
)

# The default of VIDEOSCORE_MAX_DECODE_BYTES (core.settings.Settings.max_decode_bytes).
DEFAULT_MAX_DECODE_BYTES = 2 * 1024**3
# Full-size RGB frames' worth of memory a decoder holds besides the frames we keep: up to 16 reference pictures
# (H.264/HEVC, 4:2:0, half an RGB frame each), one more per frame thread, and the frame being converted.
DECODER_FRAMES = 16
# Slack between a stream header's frame size and what its decoder may allocate: FFmpeg checks the width
# rounded up to its stride alignment (up to 64), and coded heights round up to whole macroblocks.
_DECODER_SLACK = 64

# Frame threading decodes several frames at once (one thread per core, plus one); PyAV's default, slice
# threading, leaves x264's single-slice streams on one core. Frames are bit-identical either way.
_DECODER_THREAD_TYPE = "AUTO"

# Decoders (codec context names) whose skip_frame="NONREF" drops only pictures no other picture is predicted
# from, so the indexed reader may let them drop frames no target needs (module docstring).
_NONREF_SKIPPING_CODECS = frozenset({"h264"})


# --- public API ------------------------------------------------------------------------------------------


def sample_indices(total_frames: int, num_frames: int) -> list[int]:
    """The model card's frame numbers: N evenly strided frames from 0, or every frame of a short video.

    Kept as the card writes it, numpy float arithmetic included, so rounding matches it exactly
    (e.g. 100 frames, N=16: step 6.25 gives 0, 6, 12, 18, 25, ...).
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}")
    if total_frames < 0:
        raise ValueError(f"total_frames must not be negative, got {total_frames}")
    if total_frames > num_frames:
        indices = np.arange(0, total_frames, total_frames / num_frames).astype(int)
    else:
        indices = np.arange(total_frames)
    return [int(i) for i in indices]


@dataclass(frozen=True)
class MemoryBudget:
    """How much memory one job's frames may take: checked from the stream header, before decoding.

    `copies` is how many times a job holds each sampled frame's bytes at its peak (the frames themselves
    included): the model family's preprocessing copies them (`ScoringRecipe.frame_copies`). `max_bytes=None`
    checks nothing.
    """

    max_bytes: int | None = DEFAULT_MAX_DECODE_BYTES
    copies: float = 1.0

    def needed(self, frames: int, width: int, height: int, *, kept_frame_bytes: int | None = None) -> int:
        """Bytes a job needs for `frames` frames of `width` x `height`, kept as `kept_frame_bytes` each.

        Decoding holds the kept frames plus the decoder's own pictures (`DECODER_FRAMES` full-size frames);
        preprocessing, later, the kept frames `copies` times: the larger of the two.
        """
        full = width * height * 3
        holding = frames * (full if kept_frame_bytes is None else kept_frame_bytes)
        return max(math.ceil(holding * self.copies), holding + DECODER_FRAMES * full)

    def check(self, frames: int, width: int, height: int, *, kept_frame_bytes: int | None = None) -> None:
        """Raise `VideoTooLargeError` (needed vs budget) when the frames do not fit."""
        if self.max_bytes is None:
            return
        needed = self.needed(frames, width, height, kept_frame_bytes=kept_frame_bytes)
        if needed > self.max_bytes:
            raise VideoTooLargeError(
                f"{frames} frames of {width}x{height} need about {_mib(needed)} of memory to sample and preprocess "
                f"(RGB frames x {self.copies:g} copies, or while decoding {DECODER_FRAMES} more frames), over the "
                f"budget of {_mib(self.max_bytes)} (VIDEOSCORE_MAX_DECODE_BYTES = {self.max_bytes})"
            )


def _mib(size: int) -> str:
    return f"{size / 2**20:,.{1 if size < 10 * 2**20 else 0}f} MiB"


@dataclass(frozen=True)
class VideoInfo:
    """What `probe_video` learned. `total_frames` is the count sampling uses; see the module docstring."""

    total_frames: int
    header_frames: int
    fps: float
    duration_s: float
    width: int
    height: int
    codec: str


@dataclass(frozen=True)
class SampledVideo:
    """The frames a model scores, with where they came from and what getting them cost.

    `decode_s` covers the whole call (probe included); `frames_decoded` counts frames the decoder
    produced, wanted or not (a load-independent measure of the work, worth logging next to `decode_s`).
    """

    info: VideoInfo
    indices: list[int]
    frames: list[np.ndarray]
    decode_s: float
    frames_decoded: int


def _drops_decoders_on_error(function: Callable[_P, _T]) -> Callable[_P, _T]:
    """Make an exception leaving `function` hold no PyAV object, so decoder threads end with the call.

    Closing a PyAV container frees the demuxer but not the codec contexts: those (and their decoder
    threads) live until the last Python reference to the stream goes. An exception's traceback keeps
    every frame it passed through alive, locals included, for as long as a caller keeps the exception
    (a retry loop, a log record, a test). Clearing those frames' locals lets the streams go at once.
    """

    @functools.wraps(function)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return function(*args, **kwargs)
        except BaseException as exc:
            _clear_traceback_locals(exc)
            raise

    return wrapper


def _clear_traceback_locals(exc: BaseException | None) -> None:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:  # the chain of causes shares and adds frames
        seen.add(id(exc))
        traceback.clear_frames(exc.__traceback__)  # skips frames still running, such as the caller's
        exc = exc.__cause__ or exc.__context__


@_drops_decoders_on_error
def probe_video(path: Path, *, max_pixels: int | None = None) -> VideoInfo:
    """Describe the video at `path`, or raise `VideoDecodeError` / `VideoTooLargeError` saying why not."""
    info, _ = _probe(path, max_pixels=max_pixels)
    return info


@_drops_decoders_on_error
def read_frames(
    path: Path,
    indices: Sequence[int],
    *,
    method: ReadMethod = "indexed",
    max_pixels: int | None = None,
    budget: MemoryBudget | None = None,
    skip_nonref: bool = True,
) -> list[np.ndarray]:
    """Decode the frames numbered `indices` as HxWx3 uint8 RGB arrays, in the order `indices` lists them.

    A repeated index returns the same array object twice. Raises `VideoDecodeError` when a needed
    frame cannot be decoded (truncated or corrupt file, or an index past the end), `VideoTooLargeError`
    before decoding when the frames are over `max_pixels` or do not fit `budget`. `skip_nonref=False` makes
    the indexed reader decode every frame on its way to a target (the same frames come back either way; see
    the module docstring).
    """
    path = Path(path)
    if budget is not None:
        with open_video(path, max_pixels=max_pixels) as (_, stream):
            width, height = stream.codec_context.width, stream.codec_context.height
        budget.check(len({operator.index(i) for i in indices}), width, height)
    frames, _ = _read_frames(
        path, indices, method=method, frame_index=None, max_pixels=max_pixels, skip_nonref=skip_nonref
    )
    return frames


@_drops_decoders_on_error
def sample_video(
    path: Path,
    num_frames: int,
    *,
    max_pixels: int | None = None,
    method: ReadMethod = "indexed",
    budget: MemoryBudget = MemoryBudget(),
    skip_nonref: bool = True,
) -> SampledVideo:
    """Probe `path`, pick `num_frames` frame numbers by the model card's rule, check `budget`, decode them.

    `skip_nonref` as for `read_frames`.
    """
    started = time.perf_counter()
    info, frame_index = _probe(Path(path), max_pixels=max_pixels)
    indices = sample_indices(info.total_frames, num_frames)
    budget.check(len(set(indices)), info.width, info.height)
    frames, frames_decoded = _read_frames(
        Path(path), indices, method=method, frame_index=frame_index, max_pixels=max_pixels, skip_nonref=skip_nonref
    )
    return SampledVideo(
        info=info,
        indices=indices,
        frames=frames,
        decode_s=time.perf_counter() - started,
        frames_decoded=frames_decoded,
    )


# --- opening ---------------------------------------------------------------------------------------------


@contextmanager
def open_video(
    path: Path, *, max_pixels: int | None = None
) -> Iterator[tuple[av.container.InputContainer, av.video.stream.VideoStream]]:
    """Open the local file `path` locked down and pick its video stream; closed however the block exits.

    Only the `file` protocol and `ALLOWED_DEMUXERS`. With `max_pixels`, the frame size is checked first in
    an open that decodes nothing (FFmpeg's probe otherwise decodes a few frames to fill in stream parameters),
    then FFmpeg's probe is held to about twice the limit (should the bitstream disagree with the container),
    and the decoder may allocate no frame larger than the header's size (a stream that switches to a larger
    size mid-way fails to decode).
    """
    if max_pixels is not None:
        with _open_container(path, {"skip_frame": "all"}) as container:
            stream = _video_stream(container)
            _check_frame_size(stream.codec_context.width, stream.codec_context.height, max_pixels)
    with _open_container(path, _probe_decoder_options(max_pixels)) as container:
        stream = _video_stream(container)
        width, height = stream.codec_context.width, stream.codec_context.height
        _check_frame_size(width, height, max_pixels)
        stream.codec_context.options = {"max_pixels": str((width + _DECODER_SLACK) * (height + _DECODER_SLACK))}
        yield container, stream


@contextmanager
def _open_container(path: Path, decoder_options: dict[str, str]) -> Iterator[av.container.InputContainer]:
    try:
        container = av.open(
            f"file:{path}", metadata_errors="ignore", container_options=_DEMUXER_OPTIONS, options=decoder_options
        )
    except av.FFmpegError as exc:
        if getattr(exc, "errno", None) in _FILE_SYSTEM_ERRNOS:
            raise  # a missing or unreadable file is the caller's problem, not a property of the video
        if getattr(exc, "errno", None) == errno.EINVAL or _names_other_files(Path(path)):
            raise _refused_container(Path(path)) from exc  # EINVAL: FFmpeg's answer to a demuxer off the whitelist
        raise VideoDecodeError(f"not a media file: {_ffmpeg_reason(exc)}") from exc
    with container:
        if not set(container.format.name.split(",")) & set(ALLOWED_DEMUXERS):
            raise _refused_container(Path(path))
        yield container


def _probe_decoder_options(max_pixels: int | None) -> dict[str, str]:
    # Twice the limit (plus stride slack): a frame at the limit still decodes, so the stream parameters FFmpeg
    # fills in by decoding are the ones it would find without a cap; a 16384x8192 header allocates nothing.
    return {} if max_pixels is None else {"max_pixels": str(2 * max_pixels + 2**20)}


def _refused_container(path: Path) -> VideoDecodeError:
    allowed = "MP4/MOV, Matroska/WebM, AVI, MPEG-TS/PS, FLV, IVF, Ogg, ASF, GIF"
    what = _names_other_files(path)
    if what:
        return VideoDecodeError(
            f"not a media file: {what}, which names other files or URLs to read, is refused; workers open "
            f"only self-contained video files ({allowed})"
        )
    return VideoDecodeError(f"not a media file, or a container workers do not open (they open {allowed})")


def _names_other_files(path: Path) -> str | None:
    """What kind of file that names other files `path` starts like (for messages only), or None."""
    try:
        with path.open("rb") as file:
            head = file.read(64).lstrip()
    except OSError:
        return None
    return next((what for magic, what in _REFERENCING_FORMATS if head.startswith(magic)), None)


def _video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream:
    # cover art in audio files shows up as a one-frame "video" stream; it is not a video
    streams = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
    if not streams:
        kinds: list[str] = sorted({s.type for s in container.streams}) or ["no streams"]
        detail = "audio only" if kinds == ["audio"] else "found: " + ", ".join(kinds)
        raise VideoDecodeError(f"no video stream ({detail})")
    stream = streams[0]
    if stream.codec_context is None or stream.codec_context.name in _TEXT_ART_CODECS:
        raise VideoDecodeError(f"not a media file: {container.format.name!r} is not a video format")
    stream.thread_type = _DECODER_THREAD_TYPE
    return stream


def _ffmpeg_reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc)


# --- the demux-only pass ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _FrameIndex:
    """What one pass over the packets (no decoding) learned about a video stream."""

    total: int  # frames: packets that carry one and that the decoder will not discard
    packets: int  # packets that carry data, discarded ones included (what a header counts)
    leading_pts: frozenset[int]  # timestamps of packets before the first keyframe: no frames (module docstring)
    frame_pts: list[int]  # presentation timestamps, ascending: frame number i has frame_pts[i]
    keyframes: list[int]  # frame numbers of keyframes, ascending
    keyframe_dts: dict[int, int]  # keyframe number -> decode timestamp, where the packet has one
    duration_s: float  # from the first frame's start to the last frame's end
    timestamps_name_frames: bool  # whether frame_pts/keyframes can be trusted to number frames

    def keyframe_at_or_before(self, frame: int) -> int:
        return self.keyframes[max(bisect.bisect_right(self.keyframes, frame) - 1, 0)]

    def keyframe_before(self, keyframe: int) -> int | None:
        position = bisect.bisect_left(self.keyframes, keyframe) - 1
        return self.keyframes[position] if position >= 0 else None


def _index_frames(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> _FrameIndex:
    """Walk every packet of `stream` once, without decoding, and number frames by presentation order."""
    timed: list[tuple[int, int, bool]] = []  # (pts, duration, keyframe) of each frame packet
    dts_of: dict[int, int] = {}  # pts -> dts of keyframe packets
    leading: list[tuple[int | None, int]] = []  # (pts, duration) of packets before the first keyframe
    packets = untimed = 0
    try:
        for packet in container.demux(stream):
            if packet.size == 0:
                continue  # PyAV's trailing flush packet carries no frame
            packets += 1
            if packet.is_discard:
                continue  # e.g. cut away by an MP4 edit list: the decoder drops it, so it is no frame
            if not timed and not untimed and not packet.is_keyframe:
                # its references are missing, so the decoder drops it: no frame (module docstring)
                leading.append((packet.pts, packet.duration or 0))
                continue
            if packet.pts is None:
                untimed += 1
            else:
                timed.append((packet.pts, packet.duration or 0, packet.is_keyframe))
                if packet.is_keyframe and packet.dts is not None:
                    dts_of[packet.pts] = packet.dts
    except av.FFmpegError as exc:
        raise VideoDecodeError(
            f"truncated or corrupt video: the container could not be read after {packets} packets "
            f"({_ffmpeg_reason(exc)})"
        ) from exc
    if not timed and not untimed:
        # no packet is flagged a keyframe: the flags say nothing about this stream, so every packet is a frame
        timed = [(pts, duration, False) for pts, duration in leading if pts is not None]
        untimed = sum(pts is None for pts, _ in leading)
        leading = []
    timed.sort()
    frame_pts = [pts for pts, _, _ in timed]
    keyframes = [number for number, (_, _, keyframe) in enumerate(timed) if keyframe]
    return _FrameIndex(
        total=len(timed) + untimed,
        packets=packets,
        leading_pts=frozenset(pts for pts, _ in leading if pts is not None),
        frame_pts=frame_pts,
        keyframes=keyframes or [0],
        keyframe_dts={number: dts_of[frame_pts[number]] for number in keyframes if frame_pts[number] in dts_of},
        duration_s=_span_s(timed, stream.time_base),
        # ranks name frames only when every frame has its own timestamp and decoding can start at frame 0
        timestamps_name_frames=(
            untimed == 0 and len(set(frame_pts)) == len(frame_pts) and bool(keyframes) and keyframes[0] == 0
        ),
    )


def _span_s(timed: list[tuple[int, int, bool]], time_base: Fraction | None) -> float:
    if not timed or time_base is None:
        return 0.0
    end = max(pts + duration for pts, duration, _ in timed)
    return float((end - timed[0][0]) * time_base)


# --- probing ---------------------------------------------------------------------------------------------


def _probe(path: Path, *, max_pixels: int | None) -> tuple[VideoInfo, _FrameIndex]:
    with open_video(path, max_pixels=max_pixels) as (container, stream):
        width, height = stream.codec_context.width, stream.codec_context.height
        header_frames = stream.frames
        frame_index = _index_frames(container, stream)
        codec = stream.codec_context.name
        declared_rate = stream.average_rate
    _check_frame_count(header_frames, frame_index)
    info = VideoInfo(
        total_frames=frame_index.total,
        header_frames=header_frames,
        fps=_average_fps(frame_index, declared_rate),
        duration_s=frame_index.duration_s,
        width=width,
        height=height,
        codec=codec,
    )
    return info, frame_index


def _check_frame_size(width: int, height: int, max_pixels: int | None) -> None:
    if width <= 0 or height <= 0:
        raise VideoDecodeError(f"video stream has no frame size ({width}x{height})")
    if max_pixels is not None and width * height > max_pixels:
        raise VideoTooLargeError(
            f"frames are {width}x{height} = {width * height} pixels, over the limit of {max_pixels}"
        )


def _check_frame_count(header_frames: int, frame_index: _FrameIndex) -> None:
    if frame_index.total == 0:
        raise VideoDecodeError("video stream has no frames")
    # see the module docstring: a header promising more than the file holds means missing bytes
    if header_frames > frame_index.packets:
        raise _header_overpromises(header_frames, frame_index.packets)


def _average_fps(frame_index: _FrameIndex, declared_rate: Fraction | None) -> float:
    # frames over the span they cover is right for constant and variable rates alike
    if frame_index.duration_s > 0:
        return frame_index.total / frame_index.duration_s
    return float(declared_rate) if declared_rate else 0.0


# --- reading ---------------------------------------------------------------------------------------------


_Opener = Callable[[], AbstractContextManager[tuple[av.container.InputContainer, av.video.stream.VideoStream]]]


class _IndexUnusable(Exception):
    """The fast reader cannot vouch for its frame numbering here; use the reference loop."""


@dataclass
class _Decoded:
    """Frames kept, by frame number, and how many frames the decoder produced to get them."""

    frames: dict[int, np.ndarray]
    frames_decoded: int = 0


# What a reader keeps of each wanted frame, given the frame and its number: by default its RGB pixels.
FrameConverter = Callable[[av.VideoFrame, int], np.ndarray]


def _to_rgb(frame: av.VideoFrame, number: int) -> np.ndarray:
    return frame.to_ndarray(format="rgb24")


def _read_frames(
    path: Path,
    indices: Sequence[int],
    *,
    method: ReadMethod,
    frame_index: _FrameIndex | None,
    max_pixels: int | None = None,
    convert: FrameConverter = _to_rgb,
    skip_nonref: bool = True,
) -> tuple[list[np.ndarray], int]:
    """The frames numbered `indices`, each as `convert` makes it, and how many frames were decoded.

    `frame_index` is the probe's, when there was one; `max_pixels` is checked again at each open.
    `skip_nonref`: whether the indexed reader may drop non-reference frames no target needs (module docstring).
    """
    if method not in ("indexed", "decode_all"):
        raise ValueError(f"unknown method {method!r}; expected 'indexed' or 'decode_all'")
    wanted = sorted({_checked_index(i) for i in indices})
    if not wanted:
        return [], 0
    opener = functools.partial(open_video, path, max_pixels=max_pixels)
    decoded = None
    if method == "indexed":
        try:
            decoded = _read_indexed(opener, wanted, frame_index, convert, skip_nonref=skip_nonref)
        except _IndexUnusable as why:
            log.warning("%s: reading every frame instead of seeking (%s)", path.name, why)
    if decoded is None:
        leading = frame_index.leading_pts if frame_index is not None else frozenset()
        decoded = _read_decode_all(opener, wanted, convert, leading)
    return [decoded.frames[i] for i in indices], decoded.frames_decoded


def _checked_index(index: int) -> int:
    number = operator.index(index)  # ints and numpy integers; a float frame number is a caller's bug
    if number < 0:
        raise ValueError(f"frame numbers start at 0, got {number}")
    return number


def _read_decode_all(
    opener: _Opener, wanted: list[int], convert: FrameConverter, leading_pts: frozenset[int]
) -> _Decoded:
    """The model card's loop: decode from frame 0, keep the wanted frames, stop after the last one.

    A frame from before the first keyframe (`leading_pts`; decoders drop those anyway) is not numbered.
    """
    wanted_set, last = set(wanted), wanted[-1]
    result = _Decoded(frames={})
    with opener() as (container, stream):
        header_frames = stream.frames
        try:
            frames = (f for f in container.decode(stream) if not leading_pts or f.pts not in leading_pts)
            for number, frame in enumerate(frames):
                result.frames_decoded = number + 1
                if number in wanted_set:
                    result.frames[number] = convert(frame, number)
                if number >= last:
                    break
        except av.FFmpegError as exc:
            raise _cannot_decode(result.frames_decoded, header_frames, exc) from exc
    if len(result.frames) < len(wanted):
        if header_frames and result.frames_decoded >= header_frames:
            raise _past_the_end(last, result.frames_decoded)
        raise _cannot_decode(result.frames_decoded, header_frames)
    return result


def _read_indexed(
    opener: _Opener,
    wanted: list[int],
    frame_index: _FrameIndex | None,
    convert: FrameConverter,
    *,
    skip_nonref: bool = True,
) -> _Decoded:
    """Decode forward, seeking only when the next wanted frame's keyframe lies ahead of the decoder.

    With `skip_nonref`, H.264 non-reference frames that are not wanted are dropped undecoded (module docstring).
    """
    if frame_index is None:
        with opener() as (container, stream):
            frame_index = _index_frames(container, stream)
    if not frame_index.timestamps_name_frames:
        raise _IndexUnusable("frame timestamps are missing or repeated, or the first frame is no keyframe")
    result = _Decoded(frames={})
    with opener() as (container, stream):
        header_frames = stream.frames
        if wanted[-1] >= frame_index.total:
            if header_frames > frame_index.packets:
                raise _header_overpromises(header_frames, frame_index.packets, needed=wanted[-1])
            raise _past_the_end(wanted[-1], frame_index.total)
        decoder = _ForwardDecoder(
            container, stream, frame_index, header_frames, wanted=wanted, skip_nonref=skip_nonref
        )
        for target in wanted:
            keyframe = frame_index.keyframe_at_or_before(target)
            if decoder.seek_pays_off(keyframe):
                decoder.seek(keyframe)
            result.frames[target] = convert(decoder.decode_until(target), target)
        result.frames_decoded = decoder.frames_decoded
    return result


class _ForwardDecoder:
    """Decodes one stream forward from the last seek, naming each frame by its presentation rank.

    It checks as it goes that the numbering it assumes is the decoder's own: within one run, frames
    must come out consecutively, but for frames it let the decoder drop (non-reference frames no target
    needs, see the module docstring); any other gap means the decoder skipped a frame, and the reference
    loop would then number later frames differently.
    """

    def __init__(
        self,
        container,
        stream,
        frame_index: _FrameIndex,
        header_frames: int,
        *,
        wanted: Sequence[int] = (),
        skip_nonref: bool = False,
    ) -> None:
        self._container = container
        self._stream = stream
        self._index = frame_index
        self._header_frames = header_frames
        self._number_of = {pts: number for number, pts in enumerate(frame_index.frame_pts)}
        # frames the decoder must not drop: every wanted one (a later target's packet may go in while the decoder
        # still works towards an earlier one) and every keyframe (a run starts there)
        self._needed = frozenset(wanted) | frozenset(frame_index.keyframes)
        # H.264 only (module docstring); the index must name frames, which the indexed reader checks before this
        self._skip_nonref = skip_nonref and stream.codec_context.name in _NONREF_SKIPPING_CODECS
        self._droppable: set[int] = set()  # frame numbers sent under "NONREF" in the current run
        # packets come from `demux`, frames wait in `_pending`: no generator of ours, which would hold `self` in a
        # reference cycle and keep the decoder (and its threads) alive until the garbage collector runs
        self._packets = container.demux(stream)
        self._pending: collections.deque[av.VideoFrame] = collections.deque()
        self._run_keyframe = 0  # the keyframe the current run started from
        self._run_by_dts = False  # whether the current run's seek used the keyframe's decode timestamp
        self._seek_by_dts = False  # learned per file: MPEG-TS and AVI index keyframes by decode time
        self._previous: int | None = None  # the last frame number output in this run, from its keyframe on
        self.next_frame = 0  # a fresh container starts at frame 0
        self.frames_decoded = 0

    def seek_pays_off(self, keyframe: int) -> bool:
        """Whether jumping to `keyframe` skips more frames than the decoder already has in flight.

        After outputting a frame, a decoder has already taken in the next few packets: its reordering
        depth (B-frames) plus one per frame thread. A seek throws that work away, so it only saves time
        when the keyframe lies beyond it.
        """
        if self._previous is None:
            in_flight = 0  # nothing decoded since the last seek: nothing to throw away
        else:
            context = self._stream.codec_context
            in_flight = max(context.thread_count, 1) + context.reorder_depth
        return keyframe - self.next_frame > in_flight

    def seek(self, keyframe: int, *, by_dts: bool | None = None) -> None:
        """Position the demuxer on `keyframe`, by its presentation timestamp unless told otherwise.

        Demuxers disagree on what a seek timestamp means: MP4 and Matroska look up presentation time,
        MPEG-TS decode time, where a presentation timestamp overshoots to the next keyframe. Where a
        keyframe has no decode timestamp we always use its presentation timestamp.
        """
        by_dts = (self._seek_by_dts if by_dts is None else by_dts) and keyframe in self._index.keyframe_dts
        timestamp = self._index.keyframe_dts[keyframe] if by_dts else self._index.frame_pts[keyframe]
        try:
            self._container.seek(timestamp, stream=self._stream)
        except av.FFmpegError as exc:
            raise _IndexUnusable(f"seeking failed: {_ffmpeg_reason(exc)}") from exc
        self._packets = self._container.demux(self._stream)
        self._pending.clear()
        self._droppable = set()  # the seek flushed the decoder: nothing sent before it comes out
        self._run_keyframe, self._run_by_dts, self._previous = keyframe, by_dts, None
        self.next_frame = keyframe

    def decode_until(self, target: int) -> av.VideoFrame:
        while True:
            frame = self._next_decoded()
            if frame is None:
                if self._previous is not None and self._redo_run_without_skipping():
                    continue  # the run ended early after dropping frames: see whether it does without dropping
                self._reland(ended=True)
                continue
            number = self._number(frame)
            if number < self._run_keyframe:
                continue  # leading pictures, or a seek that landed early: frames we do not need
            if self._previous is None and number != self._run_keyframe:
                self._reland(ended=False)  # the seek landed past the keyframe we asked for
                continue
            if self._previous is not None and not self._follows(number):
                if self._redo_run_without_skipping():
                    continue
                raise _IndexUnusable(f"decoder skipped from frame {self._previous} to {number}")
            self._previous = number
            self.next_frame = number + 1
            if number == target:
                return frame

    def _follows(self, number: int) -> bool:
        """Whether frame `number` may come out next: the next frame, or one after frames we let the decoder drop."""
        assert self._previous is not None
        return number > self._previous and all(
            skipped in self._droppable for skipped in range(self._previous + 1, number)
        )

    def _may_drop(self, packet: av.Packet) -> bool:
        """Whether the decoder may drop `packet`'s frame if it is non-reference; such frames are recorded."""
        number = None if packet.pts is None else self._number_of.get(packet.pts)
        if number is None or number in self._needed or packet.is_keyframe:
            return False
        self._droppable.add(number)
        return True

    def _redo_run_without_skipping(self) -> bool:
        """After a decode error, an early end or an unexpected gap in a run that let frames drop: decode that run
        again without dropping anything (from here on), so that what happens is what happens without skipping.

        Returns False (nothing to redo) when no packet of the run went to the decoder under "NONREF".
        """
        if not self._skip_nonref or not self._droppable:
            return False
        log.info("decoding again from frame %d without skipping non-reference frames", self._run_keyframe)
        self._skip_nonref = False
        self._stream.codec_context.skip_frame = "DEFAULT"
        self.seek(self._run_keyframe, by_dts=self._run_by_dts)
        return True

    def _next_decoded(self) -> av.VideoFrame | None:
        """The decoder's next frame (None at the end of the stream), as `container.decode(stream)` yields it.

        Before each packet goes in, the decoder is told whether it may drop that packet's frame: "NONREF" lets
        FFmpeg's H.264 decoder drop the picture if no other picture references it, and is set only for a packet
        whose timestamp names a frame that is neither wanted nor a keyframe. The setting in force when a packet
        is sent is the one it is decoded with (frame threads copy it when the packet is handed to them).
        """
        while not self._pending:
            try:
                packet = next(self._packets, None)  # the last packets are PyAV's flush packets
                if packet is None:
                    return None
                if self._skip_nonref:
                    self._stream.codec_context.skip_frame = "NONREF" if self._may_drop(packet) else "DEFAULT"
                self._pending.extend(packet.decode())
            except av.FFmpegError as exc:
                if self._redo_run_without_skipping():
                    continue
                raise _cannot_decode(self.next_frame, self._header_frames, exc) from exc
        self.frames_decoded += 1
        return self._pending.popleft()

    def _number(self, frame: av.VideoFrame) -> int:
        number = None if frame.pts is None else self._number_of.get(frame.pts)
        if number is None:
            raise _IndexUnusable(f"decoder produced a frame with unknown timestamp {frame.pts}")
        return number

    def _reland(self, *, ended: bool) -> None:
        """This run cannot reach the target: seek again by decode time, or from an earlier keyframe.

        Called when the stream ended or the first frame out was not the run's keyframe. Each retry
        lands strictly earlier, so this ends; decoding from before a keyframe is always correct.
        """
        if self._previous is not None:
            # the run decoded frames up to `next_frame`, then the stream ran out: the rest is missing
            raise _cannot_decode(self.next_frame, self._header_frames)
        if not self._run_by_dts and self._run_keyframe in self._index.keyframe_dts:
            self._seek_by_dts = True  # this demuxer overshoots on presentation time: stop using it
            self.seek(self._run_keyframe, by_dts=True)
            return
        earlier = self._index.keyframe_before(self._run_keyframe)
        if earlier is not None:
            self.seek(earlier)
        elif ended:
            raise _cannot_decode(0, self._header_frames)
        else:
            raise _IndexUnusable("the decoder does not start at the first frame's timestamp")


# --- errors ----------------------------------------------------------------------------------------------


def _cannot_decode(decoded: int, header_frames: int, cause: BaseException | None = None) -> VideoDecodeError:
    of = f" of {header_frames}" if header_frames else ""
    reason = f" ({_ffmpeg_reason(cause)})" if cause is not None else ""
    return VideoDecodeError(f"truncated or corrupt video: could only decode {decoded}{of} frames{reason}")


def _header_overpromises(header_frames: int, packets: int, *, needed: int | None = None) -> VideoDecodeError:
    detail = f" (frame {needed} was needed)" if needed is not None else ""
    return VideoDecodeError(
        f"truncated or corrupt video: the header promises {header_frames} frames but the file holds {packets}{detail}"
    )


def _past_the_end(frame: int, total: int) -> VideoDecodeError:
    return VideoDecodeError(f"frame {frame} is past the end: the video has {total} frames")
