"""The scoring engine: one thread owns the model and the device, and turns queued requests into batches.

Task threads fetch and decode videos concurrently, then hand a `ScoreRequest` to `Engine.submit`; the engine
thread collects up to `batch_size` requests for the same model (waiting at most `batch_wait_ms` for the batch
to fill), runs one forward pass and resolves each request's future. Only this thread touches CUDA, and it
loads each model once per process, on first use (or at start with `preload`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

from videoscore.core.errors import DeviceError, VideoScoreError
from videoscore.core.variants import ModelSpec
from videoscore.worker.model.scorer import AspectScores, ScoreRequest, ScorerProtocol

log = logging.getLogger(__name__)

ScorerLoader = Callable[[ModelSpec], ScorerProtocol]


@dataclass(frozen=True)
class ScoreOutcome:
    """One request's scores, with the batch's timings and the model's provenance."""

    scores: AspectScores
    batch_size: int
    preprocess_s: float
    forward_s: float
    model_revision: str
    stand_in: bool


@dataclass
class _Pending:
    spec: ModelSpec
    request: ScoreRequest
    future: Future[ScoreOutcome]


@dataclass(frozen=True)
class _Preload:
    spec: ModelSpec


_Item = _Pending | _Preload | None


class Engine:
    """Batches score requests onto the device from a single owner thread."""

    def __init__(self, load_scorer: ScorerLoader, *, batch_size: int = 1, batch_wait_ms: int = 50) -> None:
        self._load_scorer = load_scorer
        self.batch_size = max(1, batch_size)
        self.batch_wait_s = max(0, batch_wait_ms) / 1000
        self._inbox: queue.Queue[_Item] = queue.Queue()
        self._scorer: ScorerProtocol | None = None
        self._thread = threading.Thread(target=self._run, name="videoscore-engine", daemon=True)
        self._fatal: BaseException | None = None
        self.batches_run = 0
        self.model_load_s: float | None = None

    def start(self, preload: ModelSpec | None = None) -> None:
        self._thread.start()
        if preload is not None:
            self._inbox.put(_Preload(preload))

    def submit(self, spec: ModelSpec, request: ScoreRequest) -> Future[ScoreOutcome]:
        if self._fatal is not None:
            raise DeviceError(f"scoring engine stopped after a device error: {self._fatal}")
        future: Future[ScoreOutcome] = Future()
        self._inbox.put(_Pending(spec, request, future))
        return future

    def stop(self) -> None:
        self._inbox.put(None)
        self._thread.join(timeout=30)
        if self._scorer is not None:
            self._scorer.close()
            self._scorer = None

    # --- the engine thread ---

    def _run(self) -> None:
        while True:
            first = self._inbox.get()
            if first is None:
                return
            if isinstance(first, _Preload):
                self._preload(first.spec)
                continue
            batch = self._collect_batch(first)
            try:
                self._score_batch(batch)
            except DeviceError as exc:  # a broken CUDA context is not retried in place
                log.critical("device error, engine stops: %s", exc)
                self._fatal = exc
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                return

    def _collect_batch(self, first: _Pending) -> list[_Pending]:
        batch = [first]
        deadline = time.monotonic() + self.batch_wait_s
        while len(batch) < self.batch_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                item = self._inbox.get(timeout=remaining)
            except queue.Empty:
                break
            if not isinstance(item, _Pending) or item.spec != first.spec:
                self._inbox.put(item)  # a stop signal, or another model's request: handled after this batch
                break
            batch.append(item)
        return batch

    def _preload(self, spec: ModelSpec) -> None:
        try:
            self._scorer_for(spec)
        except VideoScoreError as exc:
            log.error("could not preload %s: %s", spec.label, exc)

    def _scorer_for(self, spec: ModelSpec) -> ScorerProtocol:
        if self._scorer is None or self._scorer.spec != spec:
            if self._scorer is not None:
                self._scorer.close()  # one model on the device at a time
                self._scorer = None
            started = time.perf_counter()
            scorer = self._load_scorer(spec)
            scorer.warm_up()
            self.model_load_s = time.perf_counter() - started
            log.info("loaded %s in %.1fs on %s", spec.label, self.model_load_s, scorer.device)
            self._scorer = scorer
        return self._scorer

    def _score_batch(self, batch: list[_Pending]) -> None:
        try:
            scorer = self._scorer_for(batch[0].spec)
        except VideoScoreError as exc:
            for item in batch:
                item.future.set_exception(exc)
            return
        runnable = [item for item in batch if self._prompt_fits(scorer, item)]
        if not runnable:
            return
        try:
            result = scorer.score([item.request for item in runnable])
        except DeviceError:
            raise
        except Exception as exc:  # noqa: BLE001 - isolate the bad request by scoring one by one
            if len(runnable) == 1:
                runnable[0].future.set_exception(exc)
                return
            log.warning("batch of %d failed (%s); scoring its requests one by one", len(runnable), exc)
            for item in runnable:
                self._score_batch([item])
            return
        self.batches_run += 1
        for item, scores in zip(runnable, result.scores, strict=True):
            item.future.set_result(
                ScoreOutcome(
                    scores=scores,
                    batch_size=len(runnable),
                    preprocess_s=result.preprocess_s,
                    forward_s=result.forward_s,
                    model_revision=scorer.revision,
                    stand_in=scorer.spec.stand_in,
                )
            )

    @staticmethod
    def _prompt_fits(scorer: ScorerProtocol, item: _Pending) -> bool:
        try:
            scorer.check_prompt(item.request.prompt, len(item.request.frames))
        except VideoScoreError as exc:
            item.future.set_exception(exc)
            return False
        return True
