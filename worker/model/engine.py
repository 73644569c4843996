"""The scoring engine: one thread owns the model and the device, and turns queued requests into batches.

Task threads fetch and decode videos concurrently, then hand a `ScoreRequest` to `Engine.submit`, which prepares
it *in the calling thread* (`videoscore.worker.model.preprocess`: the processor's per-video work, in parallel
across cores) and queues the compact result. The engine thread sorts requests by model, collects up to
`batch_size` requests for one model whose pixels pad to the same shape, runs one collate and one forward pass
and resolves each request's future. Only this thread touches CUDA, and it holds one model at a time, loaded on
first use (or at start with `preload`).

A batch waits at most `batch_wait_ms` to fill, and not at all once no further request can arrive: when jobs
announce themselves (`expecting_request`, as the worker's tasks do, with `jobs_announce=True`), the engine
knows when every job in flight has submitted, and waiting longer would only leave the device idle.

Which model runs next (`_next_model`), so that a job naming another model neither starves the loaded model's
jobs nor makes the engine swap models per job:

* the loaded model's waiting requests come first;
* another model gets the device when the loaded one has nothing waiting, or when the loaded one has held the
  device for `switch_after_s` since it loaded *and* another model's oldest request has waited that long;
* models waiting for the device take it in the order of their oldest request.

So a request for another model waits at most about `switch_after_s` plus one batch and one load per model ahead
of it, and each load buys its model at least `switch_after_s` of service however requests interleave.

A model that fails to load is remembered for `load_retry_after_s`: requests naming it fail at once with
`ModelLoadError` and the reason, in `submit`, without reaching the engine thread (a hub that does not answer
costs minutes per attempt).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field

from videoscore.core.errors import DeviceError, ModelLoadError, PermanentError, VideoScoreError
from videoscore.core.variants import ModelSpec
from videoscore.worker.model.preprocess import PreparedRequest, PreprocessorProtocol, ScoreRequest
from videoscore.worker.model.scorer import AspectScores, ScorerProtocol

log = logging.getLogger(__name__)

ScorerLoader = Callable[[ModelSpec], ScorerProtocol]
PreprocessorLoader = Callable[[ModelSpec], PreprocessorProtocol]


@dataclass(frozen=True)
class ScoreOutcome:
    """One request's scores, with the batch's timings and the model's provenance."""

    scores: AspectScores
    batch_size: int
    preprocess_s: float  # this request's preparation plus its batch's collate
    forward_s: float
    model_revision: str
    stand_in: bool


@dataclass
class _Pending:
    spec: ModelSpec
    request: PreparedRequest
    future: Future[ScoreOutcome]
    arrived: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class _Preload:
    spec: ModelSpec


@dataclass(frozen=True)
class _FailedLoad:
    reason: str
    failed_at: float
    until: float

    def error(self, spec: ModelSpec, now: float) -> ModelLoadError:
        return ModelLoadError(f"{self.reason} (load failed {now - self.failed_at:.0f}s ago; jobs naming "
                              f"{spec.name} fail at once for another {max(0.0, self.until - now):.0f}s)")


class _Wake:
    """Sent when an announced job leaves without a request: the engine re-checks whether more can arrive."""


_Item = _Pending | _Preload | _Wake | None


class Engine:
    """Batches score requests onto the device from a single owner thread."""

    def __init__(self, load_scorer: ScorerLoader, load_preprocessor: PreprocessorLoader, *, batch_size: int = 1,
                 batch_wait_ms: int = 50, switch_after_s: float = 60.0, load_retry_after_s: float = 300.0,
                 jobs_announce: bool = False) -> None:
        self._load_scorer = load_scorer
        self._load_preprocessor = load_preprocessor
        self._preprocessors: dict[ModelSpec, PreprocessorProtocol] = {}
        self._preprocessors_lock = threading.Lock()
        self.jobs_announce = jobs_announce
        self._announced = 0  # announced jobs that have not submitted yet; under _announce_lock
        self._announce_lock = threading.Lock()
        self._announcing = threading.local()
        self.batch_size = max(1, batch_size)
        self.batch_wait_s = max(0, batch_wait_ms) / 1000
        self.switch_after_s = max(0.0, switch_after_s)
        self.load_retry_after_s = max(0.0, load_retry_after_s)
        self._inbox: queue.Queue[_Item] = queue.Queue()
        # Owned by the engine thread: requests by model, each in arrival order (dicts keep insertion order).
        self._waiting: dict[ModelSpec, deque[_Pending]] = {}
        self._failed: dict[ModelSpec, _FailedLoad] = {}  # read by submit's callers too, under the lock
        self._failed_lock = threading.Lock()
        self._scorer: ScorerProtocol | None = None
        self._loaded_at = 0.0
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="videoscore-engine", daemon=True)
        self._fatal: BaseException | None = None
        self.batches_run = 0
        self.loads = 0
        self.model_load_s: float | None = None

    def start(self, preload: ModelSpec | None = None) -> None:
        self._thread.start()
        if preload is not None:
            self._inbox.put(_Preload(preload))

    def submit(self, spec: ModelSpec, request: ScoreRequest) -> Future[ScoreOutcome]:
        """Prepare ``request`` in this thread and queue it for a batch. Whatever stops it -- a model that failed
        to load, a prompt too long, frames that are not RGB -- is the future's exception."""
        if self._fatal is not None:
            raise DeviceError(f"scoring engine stopped after a device error: {self._fatal}")
        future: Future[ScoreOutcome] = Future()
        try:
            prepared = self.preprocessor(spec).prepare(request)
        except Exception as exc:  # noqa: BLE001 - the request's own failure: its future carries it
            self._submitted()
            future.set_exception(exc)
            return future
        with self._announce_lock:  # queued before it stops counting as upcoming (see _more_can_arrive)
            self._inbox.put(_Pending(spec, prepared, future))
            self._submitted(locked=True)
        return future

    def preprocessor(self, spec: ModelSpec) -> PreprocessorProtocol:
        """``spec``'s preprocessor, loaded on first use (in the caller's thread); raises ModelLoadError when
        the model cannot load, and remembers that like a failed model load."""
        failed = self._failed_load(spec)
        if failed is not None:
            raise failed
        with self._preprocessors_lock:  # loads are rare and a few seconds: one at a time is fine
            preprocessor = self._preprocessors.get(spec)
            if preprocessor is None:
                try:
                    preprocessor = self._load_preprocessor(spec)
                except Exception as exc:
                    self._remember_failed_load(spec, exc)
                    raise
                self._preprocessors[spec] = preprocessor
            return preprocessor

    @contextmanager
    def expecting_request(self) -> Iterator[None]:
        """Announce that this thread's job will submit a request (or leave): while some announced job has not,
        a batch may wait for it to fill; once none is left, a batch runs at once."""
        with self._announce_lock:
            self._announced += 1
        self._announcing.pending = True
        try:
            yield
        finally:
            if getattr(self._announcing, "pending", False):
                self._submitted()
                self._inbox.put(_Wake())

    def _submitted(self, *, locked: bool = False) -> None:
        """This thread's announced job (if any) has submitted or will not."""
        if not getattr(self._announcing, "pending", False):
            return
        self._announcing.pending = False
        if locked:
            self._announced -= 1
        else:
            with self._announce_lock:
                self._announced -= 1

    def stop(self) -> None:
        self._inbox.put(None)
        self._thread.join(timeout=30)
        if self._scorer is not None:
            self._scorer.close()
            self._scorer = None

    # --- the engine thread ---

    def _run(self) -> None:
        batch: list[_Pending] = []
        try:
            while True:
                batch = []
                self._receive(block=not self._waiting and not self._stopping)
                spec = self._next_model()
                if spec is None:
                    if self._stopping:
                        return
                    continue
                if not self._ensure_loaded(spec):
                    continue
                self._receive(block=False)  # what arrived during the load joins this batch
                batch = self._take_batch(spec)
                self._score_batch(batch)
        except DeviceError as exc:  # a broken CUDA context is not retried in place
            log.critical("device error, engine stops: %s", exc)
            self._fatal = exc
            self._fail_everything(batch, exc)

    def _receive(self, *, block: bool, timeout: float | None = None) -> None:
        """Move requests from the inbox to the waiting lists: wait for one if `block`, then take what is there."""
        while True:
            try:
                item = self._inbox.get(block=block, timeout=timeout if block else None)
            except queue.Empty:
                return
            block = False
            if item is None:
                self._stopping = True  # serve what is waiting, then stop
            elif isinstance(item, _Wake):
                continue
            elif isinstance(item, _Preload):
                if self._scorer is None:  # a model in use already is the one that earns the device
                    self._ensure_loaded(item.spec)
            else:
                failed = self._failed_load(item.spec)
                if failed is not None:
                    item.future.set_exception(failed)
                else:
                    self._waiting.setdefault(item.spec, deque()).append(item)

    def _next_model(self) -> ModelSpec | None:
        """The model whose requests run next (see the module's docstring), or None when nothing waits."""
        if not self._waiting:
            return None
        oldest_first = sorted(self._waiting, key=lambda spec: self._waiting[spec][0].arrived)
        loaded = self._scorer.spec if self._scorer is not None else None
        if loaded not in self._waiting:
            return oldest_first[0]
        others = [spec for spec in oldest_first if spec != loaded]
        now = time.monotonic()
        if (others and now - self._loaded_at >= self.switch_after_s
                and now - self._waiting[others[0]][0].arrived >= self.switch_after_s):
            return others[0]
        return loaded

    def _take_batch(self, spec: ModelSpec) -> list[_Pending]:
        """Up to `batch_size` of `spec`'s requests that pad to the oldest one's shape, in arrival order, waiting at
        most `batch_wait_s` for the batch to fill and not at all once no more requests can arrive."""
        deadline = time.monotonic() + self.batch_wait_s
        while not self._stopping and len(self._same_shape(spec)) < self.batch_size:
            if not self._more_can_arrive():
                self._receive(block=False)
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._receive(block=True, timeout=remaining)
        batch = self._same_shape(spec)[: self.batch_size]
        taken = {id(item) for item in batch}
        waiting = deque(item for item in self._waiting[spec] if id(item) not in taken)
        if waiting:
            self._waiting[spec] = waiting
        else:
            del self._waiting[spec]
        return batch

    def _same_shape(self, spec: ModelSpec) -> list[_Pending]:
        """`spec`'s waiting requests whose pixels pad to the oldest one's shape (batching them pads nothing)."""
        waiting = self._waiting[spec]
        key = waiting[0].request.shape_key
        return [item for item in waiting if item.request.shape_key == key]

    def _more_can_arrive(self) -> bool:
        """False only when jobs announce themselves and every announced job has submitted (its request is then
        in the inbox already: submit queues it before it stops counting)."""
        if not self.jobs_announce:
            return True
        with self._announce_lock:
            return self._announced > 0

    def _ensure_loaded(self, spec: ModelSpec) -> bool:
        """Make `spec` the loaded model; False when it cannot load (its waiting requests then fail, and it is
        remembered). A DeviceError propagates: the engine stops."""
        if self._scorer is not None and self._scorer.spec == spec:
            return True
        failed = self._failed_load(spec)
        if failed is not None:
            self._fail_waiting(spec, failed)
            return False
        if self._scorer is not None:
            self._scorer.close()  # one model on the device at a time
            self._scorer = None
        started = time.perf_counter()
        scorer: ScorerProtocol | None = None
        try:
            self.loads += 1
            scorer = self._load_scorer(spec)
            scorer.warm_up()
        except (DeviceError, KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001 - whatever stops a model loading fails its jobs, not the engine
            if scorer is not None:
                scorer.close()
            self._load_failed(spec, exc, time.perf_counter() - started)
            return False
        self.model_load_s = time.perf_counter() - started
        log.info("loaded %s in %.1fs on %s", spec.label, self.model_load_s, scorer.device)
        self._scorer = scorer
        self._loaded_at = time.monotonic()
        return True

    def _load_failed(self, spec: ModelSpec, exc: Exception, took_s: float) -> None:
        error = self._remember_failed_load(spec, exc)
        log.error("could not load %s (%.1fs): %s", spec.label, took_s, error)
        self._fail_waiting(spec, error)

    def _remember_failed_load(self, spec: ModelSpec, exc: Exception) -> VideoScoreError:
        """The load error as a VideoScoreError; a permanent one is remembered for `load_retry_after_s`."""
        error = exc if isinstance(exc, VideoScoreError) else ModelLoadError(f"could not load {spec.label}: {exc}")
        if isinstance(error, PermanentError) and self.load_retry_after_s > 0:
            now = time.monotonic()
            with self._failed_lock:
                self._failed[spec] = _FailedLoad(error.message, now, now + self.load_retry_after_s)
        return error

    def _fail_waiting(self, spec: ModelSpec, error: BaseException) -> None:
        for item in self._waiting.pop(spec, ()):
            item.future.set_exception(error)

    def _failed_load(self, spec: ModelSpec) -> ModelLoadError | None:
        """The error for a request naming a model that failed to load lately, or None."""
        now = time.monotonic()
        with self._failed_lock:
            failed = self._failed.get(spec)
            if failed is not None and now >= failed.until:
                del self._failed[spec]  # time to try it again
                failed = None
        return None if failed is None else failed.error(spec, now)

    def _fail_everything(self, batch: list[_Pending], exc: BaseException) -> None:
        """After a device error: the batch, every waiting request and whatever the inbox still holds."""
        pending = [*batch, *(item for waiting in self._waiting.values() for item in waiting)]
        self._waiting.clear()
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _Pending):
                pending.append(item)
        for item in pending:
            if not item.future.done():
                item.future.set_exception(exc)

    def _score_batch(self, batch: list[_Pending]) -> None:
        scorer = self._scorer
        assert scorer is not None and scorer.spec == batch[0].spec, "the batch's model is the loaded one"
        try:
            result = scorer.score_prepared([item.request for item in batch])
        except DeviceError:
            raise
        except Exception as exc:  # noqa: BLE001 - isolate the bad request by scoring one by one
            if len(batch) == 1:
                batch[0].future.set_exception(exc)
                return
            log.warning("batch of %d failed (%s); scoring its requests one by one", len(batch), exc)
            for item in batch:
                self._score_batch([item])
            return
        self.batches_run += 1
        for item, scores in zip(batch, result.scores, strict=True):
            item.future.set_result(
                ScoreOutcome(
                    scores=scores,
                    batch_size=len(batch),
                    preprocess_s=item.request.prepare_s + result.preprocess_s,
                    forward_s=result.forward_s,
                    model_revision=scorer.revision,
                    stand_in=scorer.spec.stand_in,
                )
            )
