"""The catalogue of bad inputs a worker must turn into a `failed` job with a readable reason.

One table (`BAD_INPUTS`) and one writer (`write_bad_media`) that the suites share: what each bad input
is, which object it needs in S3, and the error kind plus a fragment of the message it must end with.
`MALFORMED_JOB_IDS` are messages that name no job: they are dropped, not failed (there is no row to fail).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tests import media

MAX_VIDEO_BYTES = 3_000_000
MAX_PIXELS = 640 * 480


@dataclass(frozen=True)
class BadInput:
    label: str
    uri: str  # {bucket} is replaced by the suite's bucket
    kind: str
    fragment: str
    prompt: str | None = None  # None: a short prompt naming the label
    model: str | None = None  # None: the suite's model
    # Bytes another program writes into the prompt column after the row is inserted: SQLite keeps them as they
    # are, PostgreSQL could not store them (the producer refuses such a prompt at submit).
    raw_prompt: bytes | None = None


BAD_INPUTS = [
    BadInput("missing key", "s3://{bucket}/nope.mp4", "video_not_found", "does not exist"),
    BadInput("missing bucket", "s3://absent-bucket/a.mp4", "video_not_found", "bucket 'absent-bucket' does not exist"),
    BadInput("bucket not allowed", "s3://someone-elses-bucket/a.mp4", "video_access_denied", "allowlist"),
    BadInput("file:// not allowed", "file:///etc/hostname", "video_access_denied", "file:// videos are disabled"),
    BadInput("not a video", "s3://{bucket}/not-a-video.mp4", "video_decode_error", "not a media file"),
    BadInput("truncated video", "s3://{bucket}/truncated.mp4", "video_decode_error", "truncated"),
    BadInput("audio only", "s3://{bucket}/audio-only.m4a", "video_decode_error", "video stream"),
    BadInput("zero frames", "s3://{bucket}/zero-frames.mkv", "video_decode_error", "no frames"),
    BadInput("huge resolution", "s3://{bucket}/huge-resolution.mp4", "video_too_large", "1280"),
    BadInput("huge file", "s3://{bucket}/huge-file.mp4", "video_too_large", "VIDEOSCORE_MAX_VIDEO_BYTES"),
    BadInput("over-long prompt", "s3://{bucket}/good.mp4", "prompt_too_long", "tokens", prompt="word " * 60_000),
    BadInput("unknown model", "s3://{bucket}/good.mp4", "unknown_model", "nobody/NoSuchModel",
             model="nobody/NoSuchModel"),
    BadInput("non-UTF-8 prompt", "s3://{bucket}/good.mp4", "invalid_job", "cannot be read",
             raw_prompt=b"caf\xe9 au lait"),
]

MALFORMED_JOB_IDS = ["not-a-job-id", None]  # None: a message sent with no arguments at all


def write_bad_media(folder: Path) -> dict[str, Path]:
    """The objects the catalogue points at (plus one good clip), by S3 key."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "good.mp4": media.make_video(folder / "good.mp4", frames=20, size=(160, 120)),
        "truncated.mp4": media.make_truncated_video(folder / "truncated.mp4"),
        "not-a-video.mp4": media.make_not_a_video(folder / "not-a-video.mp4"),
        "audio-only.m4a": media.make_audio_only(folder / "audio-only.m4a"),
        "zero-frames.mkv": media.make_zero_frame_video(folder / "zero-frames.mkv"),
        "huge-resolution.mp4": media.make_video(folder / "huge-resolution.mp4", frames=2, size=(1280, 720)),
    }
    huge = folder / "huge-file.mp4"
    huge.write_bytes(b"\0" * (MAX_VIDEO_BYTES + 1))
    files["huge-file.mp4"] = huge
    return files
