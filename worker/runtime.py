"""What one worker process holds for its whole life: settings, database, video store and scoring engine.

Built once in `worker.main` before Celery starts consuming; tasks reach it through `current_runtime()`.
It also keeps the set of jobs the process is working on right now ("holds"): the maintenance thread
heartbeats exactly these, and a task takes a hold before claiming, so two deliveries of one job never run
side by side in one process (which is what makes re-claiming our own abandoned job safe; see db.jobs).
Nothing here runs at import time.
"""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from core.settings import Settings
from core.variants import ModelSpec
from db.session import Database
from worker import metrics
from worker.engine import Engine
from worker.fast_scorer import FastScorer, is_fast_stand_in
from worker.pipeline import StageLimits
from worker.retry import RetryPolicy
from worker.scorer import BatchResult, Scorer, ScoreRequest
from worker.storage import VideoStore


@dataclass
class Runtime:
    settings: Settings
    db: Database
    store: VideoStore
    engine: Engine
    worker_id: str
    _held: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # --- the jobs this process is working on ---

    def try_hold(self, job_id: str) -> bool:
        """Mark a job as worked on by this process; False if another thread of ours already is."""
        with self._lock:
            if job_id in self._held:
                return False
            self._held.add(job_id)
            return True

    def release(self, job_id: str) -> None:
        with self._lock:
            self._held.discard(job_id)

    def held(self) -> list[str]:
        with self._lock:
            return list(self._held)

    # --- policy, from settings ---

    @property
    def lease(self) -> timedelta:
        # A running job whose worker has not heartbeated for this long is presumed orphaned.
        return timedelta(seconds=self.settings.lease_s)

    @property
    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(
            max_attempts=self.settings.max_attempts,
            base_delay_s=self.settings.retry_base_delay_s,
            max_delay_s=self.settings.retry_max_delay_s,
        )

    @property
    def limits(self) -> StageLimits:
        return StageLimits(
            max_pixels=self.settings.max_video_pixels,
            num_frames_override=self.settings.num_frames,
            result_timeout_s=float(self.settings.score_timeout_s),
        )


class _MeteredScorer:
    """A scorer that reports each batch's size and timings to the metrics; everything else passes through."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def score(self, requests: list[ScoreRequest]) -> BatchResult:
        result: BatchResult = self._inner.score(requests)
        metrics.BATCH_SIZE.observe(len(requests))
        metrics.STAGE_SECONDS.labels("preprocess").observe(result.preprocess_s)
        metrics.STAGE_SECONDS.labels("forward").observe(result.forward_s)
        return result


def load_scorer(spec: ModelSpec, settings: Settings) -> Any:
    """The model's scorer; the fast stand-in when the folder asks for it (tests, never the default)."""
    if spec.stand_in and is_fast_stand_in(spec.source):
        return _MeteredScorer(FastScorer.load(spec))
    return _MeteredScorer(Scorer.load(spec, device=settings.device, dtype=settings.dtype))


_runtime: Runtime | None = None


def build_runtime(settings: Settings) -> Runtime:
    engine = Engine(lambda spec: load_scorer(spec, settings), batch_size=settings.batch_size,
                    batch_wait_ms=settings.batch_wait_ms)
    runtime = Runtime(
        settings=settings,
        db=Database(settings.database_url),
        store=VideoStore(settings),
        engine=engine,
        worker_id=f"{socket.gethostname()}/{os.getpid()}",
    )
    metrics.track_model_load(lambda: engine.model_load_s)
    metrics.track_in_flight(lambda: len(runtime.held()))
    return runtime


def install_runtime(runtime: Runtime) -> None:
    global _runtime
    _runtime = runtime


def current_runtime() -> Runtime:
    if _runtime is None:
        raise RuntimeError("the worker runtime is not installed; start workers with `videoscore worker`")
    return _runtime
