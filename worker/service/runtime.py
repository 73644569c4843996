"""What one worker process holds for its whole life: settings, database, video store and scoring engine.

Built once in `videoscore.worker.service.main` before Celery starts consuming; tasks reach it through
`current_runtime()`.
It also keeps the set of jobs the process is working on right now ("holds"): the maintenance thread
heartbeats exactly these, and a task takes a hold before claiming, so two deliveries of one job never run
side by side in one process (which is what makes re-claiming our own abandoned job safe; see db.jobs).
Nothing here runs at import time.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from videoscore.core.errors import ModelLoadError
from videoscore.core.settings import Settings
from videoscore.core.variants import STAND_IN_MARKER, ModelSpec
from videoscore.db.session import Database
from videoscore.worker.model.engine import Engine, PreprocessorLoader, ScorerLoader
from videoscore.worker.model.preprocess import PreparedRequest, Preprocessor, PreprocessorProtocol
from videoscore.worker.model.scorer import BatchResult, Scorer, ScorerProtocol, resolve_device
from videoscore.worker.service import metrics
from videoscore.worker.service.pipeline import StageLimits
from videoscore.worker.service.retry import RetryPolicy
from videoscore.worker.video.storage import VideoStore

if TYPE_CHECKING:
    import torch


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
            max_decode_bytes=self.settings.max_decode_bytes,
        )


class _MeteredScorer(ScorerProtocol):
    """The scorer it wraps, reporting each batch's size and timings to the metrics."""

    def __init__(self, inner: ScorerProtocol) -> None:
        self._inner = inner

    @property
    def spec(self) -> ModelSpec:
        return self._inner.spec

    @property
    def revision(self) -> str:
        return self._inner.revision

    @property
    def device(self) -> torch.device | str:
        return self._inner.device

    def warm_up(self) -> None:
        self._inner.warm_up()

    def score_prepared(self, batch: Sequence[PreparedRequest]) -> BatchResult:
        result = self._inner.score_prepared(batch)
        metrics.BATCH_SIZE.observe(len(batch))
        metrics.BATCH_PADDING.observe(result.padded_fraction)
        metrics.STAGE_SECONDS.labels("collate").observe(result.preprocess_s)
        metrics.STAGE_SECONDS.labels("forward").observe(result.forward_s)
        for request in batch:
            metrics.STAGE_SECONDS.labels("preprocess").observe(request.prepare_s)
        return result

    def close(self) -> None:
        self._inner.close()


@dataclass(frozen=True)
class ScorerKind:
    """How to load a scorer other than the model's own, and the preprocessor its requests go through."""

    load_scorer: ScorerLoader
    load_preprocessor: PreprocessorLoader


# Scorers other than the model's own, by the "scorer" a checkpoint folder's videoscore.json names. Empty in a
# production worker: the fast stand-in (and its fault injection) registers itself only in the test fleet's
# entry point, videoscore.worker.testing.fleet_worker. A job naming such a folder elsewhere fails to load.
ALTERNATIVE_SCORERS: dict[str, ScorerKind] = {}


def register_scorer(name: str, load: ScorerLoader, load_preprocessor: PreprocessorLoader) -> None:
    ALTERNATIVE_SCORERS[name] = ScorerKind(load, load_preprocessor)


def scorer_named_by(spec: ModelSpec) -> str | None:
    """The alternative scorer a stand-in folder asks for, or None for the model's own."""
    if not spec.stand_in:
        return None
    try:
        name = json.loads((Path(spec.source) / STAND_IN_MARKER).read_text()).get("scorer")
    except (OSError, ValueError, AttributeError):
        return None
    return str(name) if name else None


def _alternative(spec: ModelSpec, name: str) -> ScorerKind:
    if name not in ALTERNATIVE_SCORERS:
        raise ModelLoadError(f"{spec.name} asks for the {name!r} scorer, which this worker does not provide "
                             "(it is test scaffolding, served only by the test fleet's workers)")
    return ALTERNATIVE_SCORERS[name]


def load_scorer(spec: ModelSpec, settings: Settings) -> ScorerProtocol:
    """The model's scorer (or a registered alternative that a stand-in folder names), metered."""
    name = scorer_named_by(spec)
    if name is None:
        return _MeteredScorer(Scorer.load(spec, device=settings.device, dtype=settings.dtype))
    return _MeteredScorer(_alternative(spec, name).load_scorer(spec))


def load_preprocessor(spec: ModelSpec, settings: Settings) -> PreprocessorProtocol:
    """The preprocessor of the scorer ``load_scorer`` gives for ``spec``: runs in the task threads."""
    name = scorer_named_by(spec)
    if name is None:
        return Preprocessor.load(spec, pin_memory=resolve_device(settings.device).type == "cuda")
    return _alternative(spec, name).load_preprocessor(spec)


_runtime: Runtime | None = None


def build_runtime(settings: Settings) -> Runtime:
    engine = Engine(lambda spec: load_scorer(spec, settings), lambda spec: load_preprocessor(spec, settings),
                    batch_size=settings.batch_size, batch_wait_ms=settings.batch_wait_ms,
                    switch_after_s=settings.model_switch_after_s,
                    load_retry_after_s=settings.model_load_retry_after_s, jobs_announce=True)
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
