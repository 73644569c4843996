"""The producer is light and strict: it imports no model stack, and rejects bad requests before queueing."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from videoscore.core.errors import InvalidJobError, PromptTooLongError, UnknownModelError
from videoscore.core.jobspec import validate_job

HEAVY = {"torch", "transformers", "av", "numpy", "PIL", "cv2"}


def test_importing_the_producer_pulls_in_no_model_stack() -> None:
    code = (
        "import sys, json, videoscore.producer, videoscore.cli, videoscore.producer.client;"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = set(json.loads(out))
    assert "videoscore" in loaded and "celery" in loaded  # the check would see a heavy import if there were one
    assert loaded & HEAVY == set()


def _job(**fields: object) -> dict[str, object]:
    return {"video_uri": "s3://videos/clip.mp4", "prompt": "a cat on a skateboard", **fields}


def test_a_well_formed_request_validates_with_the_default_model() -> None:
    job = validate_job(_job(), max_prompt_chars=100)
    assert job.model == "TIGER-Lab/VideoScore-v1.1"


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"video_uri": "http://example.com/a.mp4"}, "s3:// or file://"),
        ({"video_uri": "s3://bucket-only"}, "s3://bucket/key"),
        ({"prompt": "   "}, "prompt must not be empty"),
        ({"prompt": "a\x00b"}, "NUL"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_malformed_requests_are_rejected_with_a_reason(fields: dict[str, object], fragment: str) -> None:
    with pytest.raises(InvalidJobError, match="invalid job") as caught:
        validate_job(_job(**fields), max_prompt_chars=100)
    assert fragment in caught.value.message


def test_an_over_long_prompt_is_rejected() -> None:
    with pytest.raises(PromptTooLongError, match="101 characters; the limit is 100"):
        validate_job(_job(prompt="x" * 101), max_prompt_chars=100)


def test_an_unknown_model_is_rejected_listing_the_known_ones() -> None:
    with pytest.raises(UnknownModelError, match="TIGER-Lab/VideoScore-v1.1"):
        validate_job(_job(model="someone/SomethingElse"), max_prompt_chars=100)


def test_the_cli_lists_every_documented_command() -> None:
    out = subprocess.run([sys.executable, "-m", "videoscore", "--help"], capture_output=True, text=True,
                         check=True, env={"COLUMNS": "200", "PATH": ""}).stdout
    for command in ("submit", "status", "wait", "results", "worker", "demo", "db"):
        assert command in out
