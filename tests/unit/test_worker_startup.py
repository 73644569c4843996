"""What a worker says at start-up about its own configuration."""

from __future__ import annotations

import logging

import pytest

from videoscore.worker.service.main import warn_if_concurrency_starves_batches


@pytest.mark.parametrize(("concurrency", "batch_size", "warns"), [
    (4, 4, True),  # while a batch of 4 runs, no thread is left to prepare the next one
    (7, 4, True),
    (8, 4, False),  # the default: 2 x batch size
    (2, 1, False),  # batches of one never wait to fill
    (1, 1, False),
])
def test_a_worker_warns_when_its_concurrency_is_below_twice_the_batch_size(
    concurrency: int, batch_size: int, warns: bool, caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="videoscore.worker.service.main"):
        assert warn_if_concurrency_starves_batches(concurrency, batch_size) is warns
    assert bool(caplog.records) is warns
    if warns:
        assert f"--concurrency {2 * batch_size}" in caplog.text
