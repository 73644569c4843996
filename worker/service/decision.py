"""What one delivery of a score message comes to, as a value, and the one rule that decides it from an attempt.

A delivery ends in exactly one decision: `Succeeded`, `Failed`, `Retry`, `Superseded`, `Skipped` or `Dropped`.
`decide` turns an attempt's outcome (the scores, or the exception the attempt raised) into the decision for the
job's row and message, by error kind and attempt budget. It is pure: no database, no broker, no clock (the
backoff's jitter comes from the `rng` it is given). The task (worker.service.tasks) then persists the decision
under its claim, which can turn it into `Superseded` (another worker holds the job now) or into a `Retry` of the
message alone (the database is unreachable), and one adapter there applies the final decision to Celery.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from videoscore.core.errors import (
    AttemptsExhaustedError,
    DeviceError,
    PermanentError,
    RetryableError,
    VideoScoreError,
)
from videoscore.db.records import ScoreResult
from videoscore.worker.service.retry import RetryPolicy


@dataclass(frozen=True)
class Succeeded:
    """The attempt scored the video; once persisted, its scores are the job's."""


@dataclass(frozen=True)
class Failed:
    """The job fails for good with this kind and message (what the database stores).

    `stop_worker`: the last attempt's error was the device's, so this process stops too, to be restarted.
    """

    kind: str
    message: str
    stop_worker: bool = False


@dataclass(frozen=True)
class Retry:
    """Re-send the job's message after `delay_s`; `kind` and `reason` are recorded as the attempt's error.

    `stop_worker`: the error was the device's, so this process stops (warm shutdown) to be restarted.
    """

    delay_s: float
    reason: str
    kind: str = RetryableError.kind
    stop_worker: bool = False


@dataclass(frozen=True)
class Superseded:
    """Another worker took the job over before this attempt's end was saved; this attempt's end is dropped."""

    stop_worker: bool = False


@dataclass(frozen=True)
class Skipped:
    """This delivery does nothing: the job is already being run here, or is not claimable (finished, taken...)."""

    reason: str


@dataclass(frozen=True)
class Dropped:
    """The message names no job that can be run or failed; it is acknowledged and logged."""

    reason: str


Decision = Succeeded | Failed | Retry | Superseded | Skipped | Dropped


class InternalError(RetryableError):
    """An unexpected error inside the worker."""

    kind = "internal_error"


def decide(outcome: ScoreResult | Exception, *, attempt: int, policy: RetryPolicy,
           rng: random.Random | None = None) -> Succeeded | Failed | Retry:
    """The decision for an attempt that ended with `outcome`, the job's `attempt`-th (its claim's number).

    Scores: succeeded. A PermanentError (a time limit, a missing video, spent attempts...): failed at once with
    its kind. A RetryableError, a DeviceError or any unexpected exception: retried after the policy's backoff,
    or failed as `attempts_exhausted` naming the last error once the budget is spent. A device error also stops
    the worker, whether the job is retried or has spent its attempts (a broken CUDA context is not reused).
    """
    if not isinstance(outcome, Exception):
        return Succeeded()
    if isinstance(outcome, PermanentError):
        return Failed(outcome.kind, outcome.message)
    error: VideoScoreError
    if isinstance(outcome, (RetryableError, DeviceError)):
        error = outcome
    else:  # an unforeseen error: retried, but within the attempt budget
        error = InternalError(f"{type(outcome).__name__}: {outcome}")
    if not policy.should_retry(attempt):
        return Failed(AttemptsExhaustedError.kind,
                      f"gave up after {attempt} attempts; last error: {error.kind}: {error.message}",
                      stop_worker=isinstance(error, DeviceError))
    return Retry(policy.delay_s(attempt, rng), error.message, kind=error.kind,
                 stop_worker=isinstance(error, DeviceError))
