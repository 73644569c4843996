"""Retry policy as a value object: how many attempts a job gets and how long to wait between them."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 3
    base_delay_s: float = 1.0
    max_delay_s: float = 60.0
    jitter: float = 0.5  # ± this fraction of the delay, so a fleet does not retry in lockstep

    def should_retry(self, attempts_made: int) -> bool:
        return attempts_made < self.max_attempts

    def delay_s(self, attempts_made: int, rng: random.Random | None = None) -> float:
        """Exponential backoff with jitter after the given number of attempts (1 → base delay)."""
        base = min(self.max_delay_s, self.base_delay_s * 2 ** max(0, attempts_made - 1))
        spread = (rng or random).uniform(1 - self.jitter, 1 + self.jitter)
        return round(base * spread, 3)
