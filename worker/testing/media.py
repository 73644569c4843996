"""Synthetic media: deterministic sample videos for the demo and benchmarks, and the bad inputs tests need.

Generated, never downloaded, with PyAV only (no ffmpeg binary). Every frame drawn by `make_video` carries its
own frame number as a row of black/white blocks across the top quarter, so a test can ask
`frame_number_of(rgb)` instead of trusting timestamps. Below the blocks, a square moves and the background
colour changes with the frame number, so consecutive frames differ visibly and a pixel-identity check
between two decoders is meaningful.

Everything here draws deterministically: the same arguments hand the encoder the same pictures (x264/libvpx
run single-threaded). The encoded bytes are not guaranteed to be the same on another machine, so the reference
golden's videos, made here once, are committed (reference/golden/videos) and never re-encoded at test time;
changing a default here leaves them alone (`reference/generate.py --encode-videos` re-encodes them).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

# 12 blocks encode frame numbers up to 4095, enough for a 60 s clip at 60 fps.
FRAME_NUMBER_BITS = 12

_CONTAINER_FOR_SUFFIX = {
    ".mp4": "mp4",
    ".mov": "mov",
    ".mkv": "matroska",
    ".webm": "webm",
    ".avi": "avi",
    ".m4a": "mp4",
    ".ts": "mpegts",
}


# --- pictures --------------------------------------------------------------------------------------------


def draw_frame(index: int, size: tuple[int, int], pattern: str = "moving") -> np.ndarray:
    """The RGB picture for frame `index`: number blocks on top, a moving square on a changing colour below.

    `pattern="textured"` adds a fixed fine-grained texture that pans with the frame number, so the
    encoder produces realistic bitrates (about 1 Mbit/s at 640x360) and the decoder does realistic work;
    a flat synthetic clip decodes several times faster than camera footage and would flatter a benchmark.
    """
    width, height = size
    if pattern not in ("moving", "textured"):
        raise ValueError(f"unknown pattern {pattern!r}; expected 'moving' or 'textured'")
    colour = ((index * 7) % 256, (index * 13 + 80) % 256, (255 - index * 5) % 256)
    picture = np.empty((height, width, 3), dtype=np.uint8)
    if pattern == "textured":
        _paint_panning_texture(picture, colour, index)
    else:
        picture[:] = colour
    _draw_moving_square(picture, index)
    _draw_frame_number(picture, index)
    return picture


def frame_number_of(picture: np.ndarray) -> int:
    """Read back the frame number `draw_frame` wrote (robust to lossy compression: blocks are large)."""
    height, width, _ = picture.shape
    band = _number_band_height(height)
    bits = 0
    for bit in range(FRAME_NUMBER_BITS):
        left, right = _block_span(bit, width)
        # sample the block's centre, away from edges where chroma subsampling bleeds
        centre = picture[band // 4 : 3 * band // 4, left + (right - left) // 4 : right - (right - left) // 4]
        if centre.mean() > 127:
            bits |= 1 << bit
    return bits


def _number_band_height(height: int) -> int:
    return max(8, height // 4)


def _block_span(bit: int, width: int) -> tuple[int, int]:
    return bit * width // FRAME_NUMBER_BITS, (bit + 1) * width // FRAME_NUMBER_BITS


def _draw_frame_number(picture: np.ndarray, index: int) -> None:
    height, width, _ = picture.shape
    band = _number_band_height(height)
    if index >= 1 << FRAME_NUMBER_BITS:
        raise ValueError(f"frame {index} does not fit in {FRAME_NUMBER_BITS} bits")
    for bit in range(FRAME_NUMBER_BITS):
        left, right = _block_span(bit, width)
        picture[:band, left:right] = 255 if index >> bit & 1 else 0


def _draw_moving_square(picture: np.ndarray, index: int) -> None:
    height, width, _ = picture.shape
    top = _number_band_height(height)
    side = max(4, (height - top) // 4)
    x = (index * 5) % max(1, width - side)
    y = top + (index * 3) % max(1, height - top - side)
    picture[y : y + side, x : x + side] = (255, 255, 255) if index % 2 else (20, 20, 20)


def _paint_panning_texture(picture: np.ndarray, colour: tuple[int, int, int], index: int) -> None:
    height, width, _ = picture.shape
    tiled = _texture(height, width)  # twice the frame in each direction, so any shift is a plain slice
    dy, dx = (index * 2) % height, (index * 3) % width
    window = tiled[dy : dy + height, dx : dx + width]
    for channel, value in enumerate(colour):
        picture[:, :, channel] = np.clip(window + value, 0, 255)


@functools.lru_cache(maxsize=4)
def _texture(height: int, width: int) -> np.ndarray:
    # noise in 4x4 cells: detail like foliage or fabric, not the white noise no real camera produces
    cells = np.random.default_rng(1234).integers(-24, 24, size=(height // 4 + 1, width // 4 + 1), dtype=np.int16)
    texture = np.repeat(np.repeat(cells, 4, axis=0), 4, axis=1)[:height, :width]
    return np.tile(texture, (2, 2))


# --- good videos -----------------------------------------------------------------------------------------


def make_video(
    path: Path,
    *,
    frames: int,
    fps: int = 24,
    size: tuple[int, int] = (320, 240),
    codec: str = "libx264",
    gop: int | None = None,
    pattern: str = "moving",
    bframes: int | None = None,
    preset: str | None = None,
    container_options: dict[str, str] | None = None,
) -> Path:
    """Write a constant-frame-rate clip whose frame i is `draw_frame(i, size, pattern)`.

    The container comes from the suffix (.mp4 .mov .mkv .webm .avi .ts). `gop` fixes the keyframe
    interval (scene-cut keyframes are switched off so the interval is exact); `bframes` sets the B-frame
    count (x264 and x265 default to B-frames on, with open GOPs in x265). `preset` is x264's speed preset
    (None: x264's default, medium); "superfast" writes long clips several times faster and still uses
    CABAC and 3 B-frames, like real uploads.
    """
    return _write_video(
        path,
        (Fraction(i, fps) for i in range(frames)),
        Fraction(1, fps),
        frames=frames,
        rate=fps,
        size=size,
        codec=codec,
        gop=gop,
        pattern=pattern,
        bframes=bframes,
        preset=preset,
        container_options=container_options,
    )


def make_variable_frame_rate_video(
    path: Path,
    *,
    frames: int = 60,
    size: tuple[int, int] = (160, 120),
    durations_ms: tuple[int, ...] = (20, 40, 33, 80, 50),
    codec: str = "libx264",
    gop: int | None = None,
) -> Path:
    """Write a clip whose frame durations cycle through `durations_ms` (so no single frame rate fits)."""
    starts_ms = np.concatenate([[0], np.cumsum([durations_ms[i % len(durations_ms)] for i in range(frames - 1)])])
    timestamps = (Fraction(int(ms), 1000) for ms in starts_ms)
    return _write_video(path, timestamps, Fraction(1, 1000), frames=frames, rate=30, size=size, codec=codec, gop=gop)


def make_zero_header_count_video(path: Path, *, frames: int = 48, size: tuple[int, int] = (160, 120), **kwargs) -> Path:
    """Write a Matroska clip: its header carries no frame count, so `streams.video[0].frames` is 0.

    This is how ordinary .mkv/.webm uploads look; the model card's rule cannot sample them at all.
    """
    if path.suffix not in (".mkv", ".webm"):
        raise ValueError("the header count is 0 only in Matroska/WebM; use a .mkv or .webm path")
    if path.suffix == ".webm":
        kwargs.setdefault("codec", "libvpx-vp9")
    path = make_video(path, frames=frames, size=size, **kwargs)
    _expect_header_count(path, 0)
    return path


def make_wrong_header_count_video(
    path: Path, *, frames: int = 30, header_frames: int, size: tuple[int, int] = (160, 120)
) -> Path:
    """Write a complete AVI clip of `frames` frames whose stream header claims `header_frames`.

    AVI keeps the count in the stream header (`strh.dwLength`), apart from the data, so it can lie; we
    patch it in place. No B-frames: AVI stores no presentation timestamps, so keep the clip plain.
    """
    if path.suffix != ".avi":
        raise ValueError("the header count is patched in an AVI stream header; use a .avi path")
    make_video(path, frames=frames, size=size, bframes=0)
    data = bytearray(path.read_bytes())
    strh = data.find(b"strh")
    # strh chunk: fourcc, size, then fccType fccHandler dwFlags wPriority wLanguage dwInitialFrames
    # dwScale dwRate dwStart (32 bytes) before dwLength
    length_at = strh + 8 + 32
    data[length_at : length_at + 4] = header_frames.to_bytes(4, "little")
    path.write_bytes(bytes(data))
    _expect_header_count(path, header_frames)
    return path


# --- bad inputs ------------------------------------------------------------------------------------------


def make_truncated_video(
    path: Path, *, frames: int = 48, keep: float = 0.5, size: tuple[int, int] = (160, 120)
) -> Path:
    """Write a valid .mp4 and cut it to its first `keep` fraction of bytes, like an interrupted upload.

    The index (moov) is moved to the front ("faststart"), as streaming uploads have it, so the cut file
    still opens and its header still promises all `frames`; only the media data is missing. (Without
    faststart the index sits at the end, and a cut file does not open at all: "not a media file".)
    """
    make_video(path, frames=frames, size=size, pattern="textured", container_options={"movflags": "faststart"})
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def make_audio_only(path: Path, *, seconds: float = 1.0, sample_rate: int = 16000) -> Path:
    """Write an AAC-in-MP4 (.m4a-like) file with a sine tone and no video stream."""
    with av.open(str(path), "w", format=_container_format(path)) as container:
        stream = container.add_stream("aac", rate=sample_rate, layout="mono")
        _mux_tone(container, stream, seconds, sample_rate)
    return path


def make_not_a_video(path: Path, *, kind: str = "random") -> Path:
    """Write something that is not media: seeded random bytes (`kind="random"`) or a short text."""
    if kind == "random":
        path.write_bytes(np.random.default_rng(7).integers(0, 256, size=64 * 1024, dtype=np.uint8).tobytes())
    elif kind == "text":
        path.write_text("this is a shopping list, not a video\n" * 50)
    else:
        raise ValueError(f"unknown kind {kind!r}; expected 'random' or 'text'")
    return path


def make_zero_frame_video(path: Path, *, size: tuple[int, int] = (160, 120)) -> Path:
    """Write a Matroska file that declares an H.264 video stream but holds no video frame.

    PyAV writes no file at all for a container with no packets, and the MP4 muxer drops a track with no
    samples, so the stream is kept alive by one second of silent audio next to it. The video stream then
    has a codec and a size, and zero packets: exactly the case the worker must reject.
    """
    if path.suffix != ".mkv":
        raise ValueError("only Matroska keeps an empty video track; use a .mkv path")
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=24)
        video.width, video.height = size
        video.pix_fmt = "yuv420p"
        audio = container.add_stream("aac", rate=16000, layout="mono")
        container.start_encoding()
        _mux_tone(container, audio, 1.0, 16000, amplitude=0.0)
    return path


def make_black_video(
    path: Path, *, frames: int, size: tuple[int, int], fps: int = 24, gop: int | None = None
) -> Path:
    """Write a clip of black frames: a few KB that decode to `frames` full-size frames (a memory bomb's shape).

    The frames are made in YUV and reused, so even a 16384x8192 header costs one such frame to write; x264's
    fastest preset, and `gop=None` means one keyframe for the whole clip (x264's default interval of 250).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = size
    options = _encoder_options("libx264", gop, None, "ultrafast")
    with av.open(str(path), "w", format=_container_format(path)) as container:
        stream = container.add_stream("libx264", rate=fps, options=options)
        if not isinstance(stream, av.VideoStream):
            raise ValueError("libx264 is not a video encoder")
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        if gop is not None:
            stream.codec_context.gop_size = gop
        black = av.VideoFrame(width, height, "yuv420p")
        for plane, value in zip(black.planes, (16, 128, 128)):  # video-range black
            plane.update(bytes([value]) * plane.buffer_size)
        for index in range(frames):
            black.pts = index
            black.time_base = Fraction(1, fps)
            container.mux(stream.encode(black))
        container.mux(stream.encode(None))
    return path


def make_size_switching_video(
    path: Path, *, small: tuple[int, int] = (64, 64), large: tuple[int, int] = (3840, 2160), frames: int = 24
) -> Path:
    """Write an MPEG-TS whose H.264 stream starts at `small` and switches to `large` after `frames` frames.

    Its header (and its first keyframe) says `small`; the larger frames that follow are what a size check on
    the header alone would let through. Black frames, so the file stays a few KB.
    """
    path = Path(path)
    if path.suffix != ".ts":
        raise ValueError("a stream changes size mid-way in MPEG-TS; use a .ts path")
    with av.open(str(path), "w", format="mpegts") as container:
        stream = container.add_stream("h264", rate=24)
        stream.width, stream.height = small
        stream.pix_fmt = "yuv420p"
        for number, size in enumerate((small, large)):
            for packet in _encode_black(size, frames, start=number * frames):
                packet.stream = stream
                container.mux(packet)
    return path


def _encode_black(size: tuple[int, int], frames: int, *, start: int) -> list[av.Packet]:
    encoder = av.CodecContext.create("libx264", "w")
    if not isinstance(encoder, av.VideoCodecContext):
        raise ValueError("libx264 is not a video encoder")
    encoder.width, encoder.height = size
    encoder.pix_fmt = "yuv420p"
    encoder.time_base = Fraction(1, 24)
    encoder.options = {**_encoder_options("libx264", None, None, "ultrafast"), "x264-params": "repeat-headers=1"}
    black = av.VideoFrame(size[0], size[1], "yuv420p")
    for plane, value in zip(black.planes, (16, 128, 128)):
        plane.update(bytes([value]) * plane.buffer_size)
    packets: list[av.Packet] = []
    for index in range(start, start + frames):
        black.pts = index
        black.time_base = Fraction(1, 24)
        packets += encoder.encode(black)
    packets += encoder.encode(None)
    return packets


def cut_mid_gop(source: Path, path: Path, *, leading: int = 2) -> Path:
    """Write `source` (an MPEG-TS) cut so it starts `leading` packets before its second keyframe.

    Like an HLS segment cut mid-GOP: the container's tables (PAT/PMT) are kept, then the bytes from the
    start of that packet on; the `leading` pictures' references are gone, so a decoder drops them.
    """
    if Path(source).suffix != ".ts":
        raise ValueError("cut an MPEG-TS (.ts): it can start at any packet")
    with av.open(str(source)) as container:
        packets = [(p.pos, p.is_keyframe) for p in container.demux(container.streams.video[0]) if p.size]
    keyframes = [number for number, (_, keyframe) in enumerate(packets) if keyframe]
    if len(keyframes) < 2 or keyframes[1] < leading:
        raise ValueError(f"{source} needs a second keyframe at least {leading} packets in")
    data = Path(source).read_bytes()
    start = packets[keyframes[1] - leading][0]
    Path(path).write_bytes(data[: packets[0][0]] + data[start:])
    return Path(path)


# --- writing ---------------------------------------------------------------------------------------------


def _write_video(
    path: Path,
    timestamps: Iterable[Fraction],
    time_base: Fraction,
    *,
    frames: int,
    rate: int,
    size: tuple[int, int],
    codec: str,
    gop: int | None,
    pattern: str = "moving",
    bframes: int | None = None,
    preset: str | None = None,
    container_options: dict[str, str] | None = None,
) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format=_container_format(path), options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=rate, options=_encoder_options(codec, gop, bframes, preset))
        if not isinstance(stream, av.VideoStream):
            raise ValueError(f"{codec!r} is not a video encoder")
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = time_base
        if gop is not None:
            stream.codec_context.gop_size = gop
        for frame in _frames(timestamps, frames, size, pattern, time_base):
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def _frames(
    timestamps: Iterable[Fraction], count: int, size: tuple[int, int], pattern: str, time_base: Fraction
) -> Iterator[av.VideoFrame]:
    for index, start in zip(range(count), timestamps):
        frame = av.VideoFrame.from_ndarray(draw_frame(index, size, pattern), format="rgb24")
        frame.pts = int(start / time_base)
        frame.time_base = time_base
        yield frame


def _encoder_options(codec: str, gop: int | None, bframes: int | None, preset: str | None) -> dict[str, str]:
    # one encoder thread: multi-threaded x264/libvpx output depends on scheduling, and tests want
    # the same bytes on every run
    options = {"threads": "1"}
    if codec == "libx264":
        x264_params = ["scenecut=0"] if gop is not None else []  # exact keyframe interval
        if bframes is not None:
            x264_params.append(f"bframes={bframes}")
        if x264_params:
            options["x264-params"] = ":".join(x264_params)
        if preset is not None:
            options["preset"] = preset
    elif codec == "libx265":
        x265_params = ["log-level=error"]  # x265 otherwise prints a banner per clip
        if gop is not None:
            x265_params += ["scenecut=0", f"keyint={gop}", f"min-keyint={gop}"]
        if bframes is not None:
            x265_params.append(f"bframes={bframes}")
        options["x265-params"] = ":".join(x265_params)
    elif bframes is not None:
        options["bf"] = str(bframes)
    return options


def _mux_tone(container, stream, seconds: float, sample_rate: int, amplitude: float = 0.3) -> None:
    samples = int(seconds * sample_rate)
    tone = (amplitude * np.sin(2 * np.pi * 440 * np.arange(samples) / sample_rate)).astype(np.float32)
    frame = av.AudioFrame.from_ndarray(tone[None, :], format="fltp", layout="mono")
    frame.sample_rate = sample_rate
    frame.pts = 0
    container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


def _container_format(path: Path) -> str:
    try:
        return _CONTAINER_FOR_SUFFIX[Path(path).suffix]
    except KeyError:
        raise ValueError(f"no container for suffix {Path(path).suffix!r}") from None


def _expect_header_count(path: Path, expected: int) -> None:
    # the failure tests rely on the header looking exactly like this; stop early if FFmpeg changes
    with av.open(str(path)) as container:
        actual = container.streams.video[0].frames
    if actual != expected:
        raise RuntimeError(f"{path.name}: header frame count is {actual}, expected {expected}")
