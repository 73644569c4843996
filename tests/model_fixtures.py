"""Model fixtures: an untrained stand-in checkpoint of VideoScore-v1.1, built once per test session.

Registered by tests/conftest.py; test modules may also import the fixture directly.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def stand_in_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seed-0 stand-in for TIGER-Lab/VideoScore-v1.1 (48 frames), loadable like the real weights."""
    from worker.stand_in import build_stand_in_checkpoint  # torch + transformers: only for tests that ask

    return build_stand_in_checkpoint(tmp_path_factory.mktemp("stand-in") / "videoscore-v1.1", seed=0)
