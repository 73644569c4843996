"""Containers that make FFmpeg read other files or URLs are refused, whatever their name, from S3 or disk.

An HLS playlist or a concat script in an allowed bucket names a video on the worker's disk (a canary: a real
clip a worker would score); the worker must refuse the job as `video_decode_error` without reading the canary,
through the fetch + sample path and through `videoscore report`'s frame strips.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.security.conftest import Canary
from videoscore.core.errors import VideoDecodeError
from videoscore.core.settings import Settings
from videoscore.report import WorstVideo, _frame_strips
from videoscore.worker.model.recipes import recipe_for
from videoscore.worker.testing.media import make_not_a_video, make_video
from videoscore.worker.testing.servers import S3Server
from videoscore.worker.video.storage import VideoStore, make_s3_client

BUCKET = "pipelines"


@pytest.fixture(scope="module")
def world(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> dict:
    disk = tmp_path_factory.mktemp("worker-disk")
    segment = make_video(disk / "segment.ts", frames=24, size=(64, 48))
    local = make_video(disk / "local.mp4", frames=24, size=(64, 48))
    playlist = f"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1.0,\n{segment}\n#EXT-X-ENDLIST\n".encode()
    concat = f"ffconcat version 1.0\nfile '{local}'\n".encode()
    objects = {
        "playlist.m3u8": playlist,  # a name FFmpeg's HLS demuxer accepts
        "playlist.mp4": playlist,  # and one that hides it
        "list.ffconcat": concat,
        "list.mp4": concat,
        "frame%03d.png": make_video(disk / "x.mp4", frames=1, size=(64, 48)).read_bytes(),  # an image-sequence name
        "notes.txt": make_not_a_video(disk / "notes.txt", kind="text").read_bytes(),  # FFmpeg's tty demuxer
        "good.ts": segment.read_bytes(),
    }
    settings = Settings(s3_endpoint_url=s3_server.url, s3_access_key_id="test", s3_secret_access_key="test",  # type: ignore[arg-type]
                        allowed_buckets=[BUCKET], work_dir=str(tmp_path_factory.mktemp("scratch")))
    s3 = make_s3_client(settings)
    s3.create_bucket(Bucket=BUCKET)
    for key, body in objects.items():
        s3.put_object(Bucket=BUCKET, Key=key, Body=body)
    return {"settings": settings, "segment": segment, "local": local}


def fetch_and_sample(settings: Settings, key: str):
    with VideoStore(settings).fetch(f"s3://{BUCKET}/{key}") as fetched:
        return recipe_for("idefics2").sample(fetched.path, num_frames=4, max_pixels=settings.max_video_pixels)


@pytest.mark.usefixtures("canary_probe_works")
@pytest.mark.parametrize(
    "key, what",
    [
        ("playlist.m3u8", "an HLS playlist"),
        ("playlist.mp4", "an HLS playlist"),
        ("list.ffconcat", "an FFmpeg concat script"),
        ("list.mp4", "an FFmpeg concat script"),
    ],
)
def test_a_file_naming_other_files_is_refused_and_they_are_not_read(world: dict, key: str, what: str):
    canaries = [Canary(world["segment"]), Canary(world["local"])]
    with pytest.raises(VideoDecodeError) as caught:
        fetch_and_sample(world["settings"], key)
    assert caught.value.kind == "video_decode_error"
    assert caught.value.message.startswith(f"not a media file: {what}, which names other files or URLs to read")
    assert "workers open only self-contained video files (MP4/MOV, Matroska/WebM" in caught.value.message
    assert not any(canary.was_read() for canary in canaries)


@pytest.mark.parametrize("key", ["frame%03d.png", "notes.txt"])
def test_other_demuxers_are_refused(world: dict, key: str):
    with pytest.raises(VideoDecodeError, match="not a media file, or a container workers do not open"):
        fetch_and_sample(world["settings"], key)


def test_a_self_contained_container_is_still_read(world: dict):
    assert len(fetch_and_sample(world["settings"], "good.ts").frames) == 4


@pytest.mark.usefixtures("canary_probe_works")
def test_the_reports_frame_strips_refuse_a_playlist_too(world: dict, tmp_path: Path):
    canary = Canary(world["segment"])
    record = SimpleNamespace(id="a" * 32, video_uri=f"s3://{BUCKET}/playlist.mp4", frame_indices=[0, 1, 2])
    worst = [WorstVideo(record, 1.0)]  # type: ignore[arg-type]
    _frame_strips(SimpleNamespace(settings=world["settings"]), worst, tmp_path)  # type: ignore[arg-type]
    assert worst[0].strip is None
    assert "VideoDecodeError: not a media file: an HLS playlist" in (worst[0].strip_note or "")
    assert not canary.was_read()
