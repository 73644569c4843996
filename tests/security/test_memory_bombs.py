"""Memory bombs: a few KB that would decode to gigabytes are refused from their stream header, before decoding.

Each bomb is made with worker.testing.media, put in S3, and sampled in a child process exactly as a worker
does it (``VideoStore.fetch``, then the model family's ``recipe.sample`` under the settings' limits). The child
reports how far its peak RSS rose above what it held after importing everything and sampling a small clip (on
Linux the peak is reset there through /proc/self/clear_refs and read as VmHWM; elsewhere ``ru_maxrss``), and how
the job ended. Run with ``-s`` to see the figures.

Copy factors behind the budget (``ScoringRecipe.frame_copies``), measured on CPU:
Idefics2 5 (frames, PIL copies, processor arrays before its resize), Qwen2-VL 3 of the frames it keeps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from videoscore.core.settings import Settings
from videoscore.worker.model.qwen2_vl import recipe as qwen2_vl_recipe
from videoscore.worker.testing.media import make_black_video, make_size_switching_video, make_video
from videoscore.worker.testing.servers import S3Server
from videoscore.worker.video.frames import DEFAULT_MAX_DECODE_BYTES, MemoryBudget, read_frames
from videoscore.worker.video.storage import make_s3_client

BUCKET = "bombs"
MiB = 2**20

# The child: a worker's fetch + sample for one job, then what it cost. Settings come from VIDEOSCORE_* variables.
CHILD = """
import json, resource, sys
from pathlib import Path
from videoscore.core.errors import VideoScoreError
from videoscore.core.settings import Settings
from videoscore.worker.model.recipes import recipe_for
from videoscore.worker.video.storage import VideoStore

def peak():
    # VmHWM once it can be reset: ru_maxrss also keeps the peak of every thread that exited (FFmpeg's decoder
    # threads, boto's), taken before the reset, so an import's passing peak would hide the job's
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

settings = Settings()
store = VideoStore(settings)
family, uri, warm_up = sys.argv[1:4]
recipe = recipe_for(family)

def sample(uri):
    with store.fetch(uri) as fetched:
        return recipe.sample(fetched.path, num_frames=None, max_pixels=settings.max_video_pixels,
                             max_decode_bytes=settings.max_decode_bytes)

sample(warm_up)  # codecs, threads and allocator pools a first decode sets up are not the bomb's
try:  # start the peak afresh (Linux), or an import's passing peak could hide the job's
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
except OSError:
    pass
baseline = peak()
out = {"kind": None, "message": None, "frames": None}
try:
    sampled = sample(uri)
    out["frames"] = [len(sampled.frames), *sampled.frames[0].shape]
except VideoScoreError as exc:
    out["kind"], out["message"] = exc.kind, exc.message
out["growth"] = peak() - baseline
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def bombs(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    folder = tmp_path_factory.mktemp("bombs")
    files = {
        "warm-up.mp4": make_video(folder / "warm-up.mp4", frames=24, size=(160, 120)),
        # the default model's 48 frames of 4K: 1.2 GB of RGB, 6 GB while preprocessing
        "4k-one-keyframe.mp4": make_black_video(folder / "4k.mp4", frames=60, size=(3840, 2160)),
        # a header far over the pixel limit: FFmpeg's probe used to decode its first frame (+310 MB)
        "16384x8192.mp4": make_black_video(folder / "huge.mp4", frames=1, size=(16384, 8192)),
        # 800 frames at 1 fps: the Qwen2-VL recipe samples 768 of them
        "640x360-800-frames.mp4": make_black_video(folder / "long.mp4", frames=800, size=(640, 360), fps=1),
        # a 64x64 header, then 4K frames
        "size-switch.ts": make_size_switching_video(folder / "switch.ts"),
    }
    settings = Settings(s3_endpoint_url=s3_server.url, s3_access_key_id="test", s3_secret_access_key="test",  # type: ignore[arg-type]
                        allowed_buckets=[BUCKET], work_dir=str(tmp_path_factory.mktemp("scratch")))
    s3 = make_s3_client(settings)
    s3.create_bucket(Bucket=BUCKET)
    for key, path in files.items():
        assert path.stat().st_size < 400_000, f"{key} should be a small file"
        s3.upload_file(str(path), BUCKET, key)
    return settings


def sample_in_child(settings: Settings, family: str, key: str, **overrides: object) -> dict:
    env = {**os.environ, **settings.model_copy(update=overrides).to_env()}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, family, f"s3://{BUCKET}/{key}", f"s3://{BUCKET}/warm-up.mp4"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"\n{family} {key} {overrides or ''}: peak RSS +{result['growth'] / MiB:.0f} MiB, "
          f"{result['kind'] or 'sampled ' + str(result['frames'])}: {result['message'] or ''}")
    return result


def test_the_settings_default_budget_is_the_samplers():
    assert Settings().max_decode_bytes == DEFAULT_MAX_DECODE_BYTES == 2 * 1024**3


def test_a_4k_clip_of_a_few_kb_is_refused_before_decoding_for_the_default_model(bombs: Settings):
    result = sample_in_child(bombs, "idefics2", "4k-one-keyframe.mp4")
    assert result["kind"] == "video_too_large"
    assert "48 frames of 3840x2160 need about 5,695 MiB" in result["message"]
    assert "budget of 2,048 MiB (VIDEOSCORE_MAX_DECODE_BYTES" in result["message"]
    assert result["growth"] < 32 * MiB  # decoding its 48 frames alone took +1,240 MB before


@pytest.mark.parametrize("family", ["idefics2", "qwen2_vl"])
def test_a_header_over_the_pixel_limit_is_refused_before_anything_is_decoded(bombs: Settings, family: str):
    result = sample_in_child(bombs, family, "16384x8192.mp4")
    assert result["kind"] == "video_too_large"
    assert "16384x8192 = 134217728 pixels, over the limit of 8294400" in result["message"]
    assert result["growth"] < 16 * MiB  # FFmpeg's probe decoded its first frame first: +310 MB


def test_768_small_frames_for_qwen2_vl_are_kept_at_the_size_the_model_sees(bombs: Settings):
    """qwen-vl-utils shrinks 768 frames of 640x360 to 224x420: they are resized while decoding, so the job
    holds 217 MB of frames instead of 531 MB (the recipe itself decodes all 800, 553 MB, before sampling)."""
    result = sample_in_child(bombs, "qwen2_vl", "640x360-800-frames.mp4")
    assert result["kind"] is None and result["frames"] == [768, 224, 420, 3]
    assert result["growth"] < 280 * MiB


def test_768_small_frames_for_qwen2_vl_are_refused_when_they_do_not_fit_the_budget(bombs: Settings):
    result = sample_in_child(bombs, "qwen2_vl", "640x360-800-frames.mp4", max_decode_bytes=256 * MiB)
    assert result["kind"] == "video_too_large"
    assert "768 frames of 640x360 need about 620 MiB" in result["message"]
    assert "budget of 256 MiB" in result["message"]
    assert result["growth"] < 16 * MiB


def test_a_stream_that_grows_past_its_header_fails_to_decode_instead_of_allocating(bombs: Settings):
    result = sample_in_child(bombs, "idefics2", "size-switch.ts")
    assert result["kind"] == "video_decode_error" and "could only decode 24 frames" in result["message"]
    assert result["growth"] < 32 * MiB  # its 4K frames are never allocated


# --- the budget's arithmetic and the Qwen2-VL resize it relies on ----------------------------------------------


def test_the_budget_counts_copies_or_the_decoders_frames_whichever_is_more():
    budget = MemoryBudget(max_bytes=None, copies=5)
    assert budget.needed(48, 1920, 1080) == 48 * 1920 * 1080 * 3 * 5
    assert budget.needed(1, 1920, 1080) == 17 * 1920 * 1080 * 3  # the frame kept + 16 the decoder holds
    assert MemoryBudget(copies=3).needed(768, 640, 360, kept_frame_bytes=224 * 420 * 3) == 768 * 224 * 420 * 9
    MemoryBudget(max_bytes=None).check(10**6, 8192, 8192)  # no budget: nothing is refused


def test_frames_resized_while_decoding_give_the_model_the_same_pixels(tmp_path: Path):
    """380 frames of 480x270 at 8 fps: qwen-vl-utils shrinks them to 224x420, which ``sample_video`` does while
    decoding. What it keeps goes through ``resize_video`` unchanged and equals the recipe's one resize of the
    full-size frames, bit for bit (a second resize would scale 224x420 up to 252x448)."""
    video = make_video(tmp_path / "long.mp4", frames=380, fps=8, size=(480, 270), preset="superfast")
    sampled = qwen2_vl_recipe.sample_video(video)
    assert len(sampled.indices) == 380 and sampled.frames[0].shape == (224, 420, 3)
    once = qwen2_vl_recipe.resize_video(read_frames(video, sampled.indices))
    assert qwen2_vl_recipe.resize_video(sampled.frames).equal(once)
    assert qwen2_vl_recipe.resize_video([np.asarray(frame) for frame in sampled.frames]).shape[2:] == (252, 448)
