"""The retry policy: how many attempts a job gets, and backoff that grows exponentially with jitter."""

from __future__ import annotations

import random

import pytest

from videoscore.worker.service.retry import RetryPolicy


def test_attempts_are_allowed_until_the_budget_is_spent() -> None:
    policy = RetryPolicy(max_attempts=3)
    assert [policy.should_retry(n) for n in (1, 2, 3, 4)] == [True, True, False, False]


def test_backoff_doubles_per_attempt_and_stops_at_the_cap_without_jitter() -> None:
    policy = RetryPolicy(base_delay_s=2.0, max_delay_s=20.0, jitter=0.0)
    assert [policy.delay_s(n) for n in range(1, 7)] == [2.0, 4.0, 8.0, 16.0, 20.0, 20.0]


@pytest.mark.parametrize("attempt", [1, 3, 8])
def test_jitter_spreads_delays_within_half_either_side(attempt: int) -> None:
    policy = RetryPolicy(base_delay_s=1.0, max_delay_s=60.0, jitter=0.5)
    nominal = min(60.0, 2.0 ** (attempt - 1))
    rng = random.Random(7)
    delays = [policy.delay_s(attempt, rng) for _ in range(500)]
    assert min(delays) >= nominal * 0.5 and max(delays) <= nominal * 1.5
    assert max(delays) - min(delays) > nominal * 0.5, "a fleet must not retry in lockstep"
