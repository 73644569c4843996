"""What the security suite shares: a canary file that shows whether anything read it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


class Canary:
    """A file whose access time moves when anything reads it (under relatime: set earlier than its mtime)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        stat = path.stat()
        os.utime(path, ns=(stat.st_mtime_ns - 10**11, stat.st_mtime_ns))
        self._atime = path.stat().st_atime_ns

    def was_read(self) -> bool:
        return self.path.stat().st_atime_ns != self._atime


@pytest.fixture
def canary_probe_works(tmp_path: Path) -> None:
    """Skip where the file system does not record reads (noatime): a canary could not tell."""
    probe = tmp_path / "probe"
    probe.write_bytes(b"x" * 100)
    canary = Canary(probe)
    probe.read_bytes()
    if not canary.was_read():
        pytest.skip("this file system does not update access times (noatime)")
