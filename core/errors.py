"""The error tree: every failure a job can meet, split into permanent and retryable kinds.

A worker catches `VideoScoreError` subclasses by kind: a `PermanentError` fails the job at once with its
reason; a `RetryableError` is retried with backoff until the attempt budget runs out. Each class's docstring
is its default message, and `kind` is the short name stored in the database next to the message.
"""

from __future__ import annotations

from typing import NamedTuple


class VideoScoreError(Exception):
    """A VideoScore Queue error."""

    kind: str = "error"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or self.kind).strip())

    @property
    def message(self) -> str:
        return str(self.args[0])


# --- permanent: the same input will fail the same way, so retrying wastes a GPU -------------------------


class PermanentError(VideoScoreError):
    """The job cannot succeed as submitted."""

    kind = "permanent"


class InvalidJobError(PermanentError):
    """The job request is malformed."""

    kind = "invalid_job"


class UnknownModelError(InvalidJobError):
    """The model is neither a known VideoScore variant nor a local checkpoint folder."""

    kind = "unknown_model"


class VideoNotFoundError(PermanentError):
    """The video object does not exist."""

    kind = "video_not_found"


class VideoAccessDeniedError(PermanentError):
    """The worker may not read this video (bucket not allowed, scheme not allowed or access denied)."""

    kind = "video_access_denied"


class VideoTooLargeError(PermanentError):
    """The video is larger than the configured limit."""

    kind = "video_too_large"


class VideoDecodeError(PermanentError):
    """The object is not a decodable video."""

    kind = "video_decode_error"


class PromptTooLongError(InvalidJobError):
    """The prompt is longer than the model accepts."""

    kind = "prompt_too_long"


class ModelLoadError(PermanentError):
    """The model checkpoint could not be loaded."""

    kind = "model_load_error"


class JobTimeLimitError(PermanentError):
    """The job ran past its time limit."""

    kind = "time_limit"


class AttemptsExhaustedError(PermanentError):
    """The job failed on every allowed attempt."""

    kind = "attempts_exhausted"


class IdempotencyConflict(NamedTuple):
    """One submitted job whose idempotency key already names a different job."""

    position: int  # the job's index in what was submitted (a list of jobs, or one)
    key: str
    job_id: str | None  # the job the key names (None: an earlier job of the same submission)
    fields: tuple[str, ...]  # the request fields that differ, e.g. ("force", "prompt")


class IdempotencyConflictError(PermanentError):
    """An idempotency key was reused for a different job: reuse a key only to resubmit the same job."""

    kind = "idempotency_conflict"

    def __init__(self, message: str | None = None, *, conflicts: tuple[IdempotencyConflict, ...] = ()) -> None:
        first = conflicts[0] if conflicts else None
        if message is None and first is not None:
            named = f"job {first.job_id}" if first.job_id else "an earlier job of this submission"
            more = f" (and {len(conflicts) - 1} more jobs)" if len(conflicts) > 1 else ""
            message = (f"idempotency key {first.key[:80]!r} names {named}, submitted with a different "
                       f"{', '.join(first.fields)}{more}: reuse a key only to resubmit the same job")
        super().__init__(message)
        self.conflicts = conflicts


# --- retryable: the world was briefly unwell; the same job can succeed later ----------------------------


class RetryableError(VideoScoreError):
    """A transient failure; the job will be retried."""

    kind = "transient"


class StorageUnavailableError(RetryableError):
    """The object store did not answer or throttled us."""

    kind = "storage_unavailable"


class DatabaseUnavailableError(RetryableError):
    """The database did not answer."""

    kind = "database_unavailable"


class WorkerLostError(RetryableError):
    """The worker running the job stopped heartbeating (it crashed, was killed or lost its host)."""

    kind = "worker_lost"


# --- fatal to the process: a broken CUDA context is not retried in place ---------------------------------


class DeviceError(VideoScoreError):
    """The accelerator failed; the worker process must restart."""

    kind = "device_error"
