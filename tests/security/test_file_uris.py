"""file:// videos: off by default; when on, only regular files under VIDEOSCORE_FILE_ROOTS, judged after
percent-decoding and resolving `..` and symlinks, and with one error for "missing" and "not yours".

Every case goes through the worker's fetch + sample path (``VideoStore.fetch``, then the default family's
``recipe.sample``), and a canary outside the roots -- a real video a worker would happily score -- shows by its
access time that nothing read it.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from tests.security.conftest import Canary
from videoscore.core.errors import VideoAccessDeniedError, VideoNotFoundError, VideoScoreError
from videoscore.core.settings import Settings
from videoscore.worker.model.recipes import recipe_for
from videoscore.worker.testing.media import make_video
from videoscore.worker.video.storage import VideoStore


@pytest.fixture
def disk(tmp_path: Path) -> dict[str, Path]:
    root = tmp_path / "videos"
    root.mkdir()
    secret = tmp_path / "secret"
    secret.mkdir()
    make_video(root / "clip.mp4", frames=8, size=(64, 48))
    make_video(secret / "canary.mp4", frames=8, size=(64, 48))
    (root / "link.mp4").symlink_to(secret / "canary.mp4")
    (root / "sub").mkdir()
    os.mkfifo(root / "pipe.mp4")
    return {"root": root, "canary": secret / "canary.mp4", "scratch": tmp_path / "scratch"}


def store_for(disk: dict[str, Path], **settings: object) -> VideoStore:
    disk["scratch"].mkdir(exist_ok=True)
    return VideoStore(Settings(work_dir=str(disk["scratch"]), **settings), s3_client=object())


def fetch_and_sample(store: VideoStore, uri: str):
    """What a worker does with a job's URI, up to the frames."""
    with store.fetch(uri) as fetched:
        return recipe_for("idefics2").sample(fetched.path, num_frames=4, max_pixels=None)


def refusal(store: VideoStore, uri: str) -> VideoScoreError:
    with pytest.raises(VideoScoreError) as caught:
        fetch_and_sample(store, uri)
    return caught.value


def test_file_uris_are_off_by_default(disk: dict[str, Path]):
    assert Settings().allow_file_uris is False and Settings().file_roots == []
    error = refusal(store_for(disk), f"file://{disk['root']}/clip.mp4")
    assert isinstance(error, VideoAccessDeniedError)
    assert error.message == "file:// videos are disabled on this worker (VIDEOSCORE_ALLOW_FILE_URIS)"


def test_a_video_under_a_root_is_read(disk: dict[str, Path]):
    store = store_for(disk, allow_file_uris=True, file_roots=[str(disk["root"])])
    assert len(fetch_and_sample(store, f"file://{disk['root']}/clip.mp4").frames) == 4


def test_with_no_roots_nothing_is_read(disk: dict[str, Path]):
    store = store_for(disk, allow_file_uris=True)
    uri = f"file://{disk['root']}/clip.mp4"
    error = refusal(store, uri)
    assert (error.kind, error.message) == ("video_not_found", f"no such file: {disk['root']}/clip.mp4")


@pytest.mark.usefixtures("canary_probe_works")
@pytest.mark.parametrize("trick", ["outside", "symlink", "dot-dot", "percent-encoded dot-dot", "double slash"])
def test_a_file_outside_the_roots_fails_like_a_missing_one_and_is_never_read(disk: dict[str, Path], trick: str):
    root, canary = disk["root"], Canary(disk["canary"])
    path = {
        "outside": str(canary.path),
        "symlink": f"{root}/link.mp4",
        "dot-dot": f"{root}/../secret/canary.mp4",
        "percent-encoded dot-dot": f"{root}/%2e%2e/secret/%63anary.mp4",
        "double slash": f"/{root}/sub/../../secret/canary.mp4",
    }[trick]
    store = store_for(disk, allow_file_uris=True, file_roots=[str(root)])

    forbidden = refusal(store, f"file://{path}")
    missing = refusal(store, f"file://{root}/nothing-here.mp4")

    decoded = path.replace("%2e", ".").replace("%63", "c")
    assert (forbidden.kind, forbidden.message) == ("video_not_found", f"no such file: {decoded}")
    assert (missing.kind, missing.message) == ("video_not_found", f"no such file: {root}/nothing-here.mp4")
    assert not canary.was_read()


def test_a_uri_naming_a_host_is_refused(disk: dict[str, Path]):
    store = store_for(disk, allow_file_uris=True, file_roots=[str(disk["root"])])
    error = refusal(store, f"file://evil.example.com{disk['root']}/clip.mp4")
    assert isinstance(error, VideoAccessDeniedError) and "name no host" in error.message
    assert "evil.example.com" in error.message


@pytest.mark.parametrize("roots", [["/tmp"], ["/"]], ids=["roots elsewhere", "root of everything"])
def test_the_kernels_files_are_never_videos(disk: dict[str, Path], roots: list[str]):
    store = store_for(disk, allow_file_uris=True, file_roots=roots)
    for path in ("/proc/self/environ", "/proc/self/cmdline", "/sys/kernel/notes", "/dev/zero"):
        error = refusal(store, f"file://{path}")
        assert (error.kind, error.message) == ("video_not_found", f"no such file: {path}")


def test_a_fifo_or_folder_under_a_root_is_not_opened(disk: dict[str, Path]):
    """A worker that opened the FIFO would block until a writer came: the refusal must come at once."""
    store = store_for(disk, allow_file_uris=True, file_roots=[str(disk["root"])])
    errors: list[VideoScoreError] = []
    fetching = threading.Thread(target=lambda: errors.append(refusal(store, f"file://{disk['root']}/pipe.mp4")))
    fetching.start()
    fetching.join(timeout=10)
    if fetching.is_alive():  # unblock it before failing, or the test run hangs
        os.close(os.open(disk["root"] / "pipe.mp4", os.O_WRONLY))
        pytest.fail("the worker opened the FIFO")
    assert isinstance(errors[0], VideoNotFoundError)
    assert errors[0].message == f"no such file: {disk['root']}/pipe.mp4"
    folder = refusal(store, f"file://{disk['root']}/sub")
    assert (folder.kind, folder.message) == ("video_not_found", f"no such file: {disk['root']}/sub")


def test_a_root_given_through_a_symlink_still_admits_its_files(disk: dict[str, Path], tmp_path: Path):
    (tmp_path / "mounted").symlink_to(disk["root"])
    store = store_for(disk, allow_file_uris=True, file_roots=[str(tmp_path / "mounted")])
    assert len(fetch_and_sample(store, f"file://{tmp_path}/mounted/clip.mp4").frames) == 4
