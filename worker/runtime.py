"""What one worker process holds for its whole life: settings, database, video store and scoring engine.

Built once in `worker.main` before Celery starts consuming; tasks reach it through `current_runtime()`.
Nothing here runs at import time.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from datetime import timedelta

from core.settings import Settings
from core.variants import ModelSpec
from db.session import Database
from worker.engine import Engine
from worker.pipeline import StageLimits
from worker.scorer import Scorer
from worker.storage import VideoStore


@dataclass
class Runtime:
    settings: Settings
    db: Database
    store: VideoStore
    engine: Engine
    worker_id: str
    inflight: set[str] = field(default_factory=set)  # job ids this process is working on (heartbeated)

    @property
    def lease(self) -> timedelta:
        # A running job whose worker has not heartbeated for this long is presumed orphaned.
        return timedelta(seconds=self.settings.visibility_timeout_s)

    @property
    def limits(self) -> StageLimits:
        return StageLimits(
            max_pixels=self.settings.max_video_pixels,
            num_frames_override=self.settings.num_frames,
            result_timeout_s=float(self.settings.score_timeout_s),
        )


_runtime: Runtime | None = None


def build_runtime(settings: Settings) -> Runtime:
    def load_scorer(spec: ModelSpec) -> Scorer:
        return Scorer.load(spec, device=settings.device, dtype=settings.dtype)

    engine = Engine(load_scorer, batch_size=settings.batch_size, batch_wait_ms=settings.batch_wait_ms)
    return Runtime(
        settings=settings,
        db=Database(settings.database_url),
        store=VideoStore(settings),
        engine=engine,
        worker_id=f"{socket.gethostname()}/{os.getpid()}",
    )


def install_runtime(runtime: Runtime) -> None:
    global _runtime
    _runtime = runtime


def current_runtime() -> Runtime:
    if _runtime is None:
        raise RuntimeError("the worker runtime is not installed; start workers with `videoscore worker`")
    return _runtime
