"""Model fixtures: untrained stand-in checkpoints (VideoScore-v1.1, VideoScore-Qwen2-VL), built once per test session.

Registered by tests/conftest.py; test modules may also import the fixture directly.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def stand_in_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seed-0 stand-in for TIGER-Lab/VideoScore-v1.1 (48 frames), loadable like the real weights."""
    from videoscore.worker.testing.stand_in import (
        build_stand_in_checkpoint,  # torch + transformers: only for tests that ask
    )

    return build_stand_in_checkpoint(tmp_path_factory.mktemp("stand-in") / "videoscore-v1.1", seed=0)


@pytest.fixture(scope="session")
def qwen2_vl_stand_in(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seed-0 stand-in for TIGER-Lab/VideoScore-Qwen2-VL (the checkpoint its golden was made with)."""
    from videoscore.worker.testing.stand_in_qwen2_vl import build_qwen2_vl_stand_in

    return build_qwen2_vl_stand_in(tmp_path_factory.mktemp("stand-in") / "videoscore-qwen2-vl", seed=0)
