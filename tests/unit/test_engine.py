"""The scoring engine: one thread owns the scorer and turns queued requests into batches of one model each.

The scorer is the fast stand-in (worker.testing.fast_scorer), which records each batch it is handed, so what a
test asserts is what reached the "device".
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from videoscore.core.errors import DeviceError, ModelLoadError, PromptTooLongError
from videoscore.core.variants import ASPECTS, DEFAULT_MODEL, VARIANTS, ModelSpec, resolve_model
from videoscore.worker.model.engine import Engine, ScoreOutcome
from videoscore.worker.model.preprocess import PreparedRequest, ScoreRequest
from videoscore.worker.model.scorer import AspectScores, BatchResult, ScorerProtocol
from videoscore.worker.testing.fast_scorer import FastPreprocessor, FastScorer, build_fast_stand_in

DEVICE_FAULT = "#device-fault"
FRAMES = [np.full((32, 32, 3), 128, dtype=np.uint8)] * 2


class RecordingScorer(FastScorer):
    """The fast stand-in, keeping (model folder, prompts) per batch; a prompt with DEVICE_FAULT breaks the device."""

    def __init__(self, spec: ModelSpec, batches: list[tuple[str, list[str]]]) -> None:
        super().__init__(spec, max_tokens=1000, call_log_dir=None)
        self.batches = batches

    def score_prepared(self, batch: Sequence[PreparedRequest]) -> BatchResult:
        self.batches.append((self.spec.source, [r.prompt for r in batch]))
        if any(DEVICE_FAULT in r.prompt for r in batch):
            raise DeviceError("CUDA error: an illegal memory access was encountered")
        return super().score_prepared(batch)


def fast_preprocessor(spec: ModelSpec) -> FastPreprocessor:
    """The fast stand-in's preprocessor, with the RecordingScorer's limit of 1000 tokens."""
    return FastPreprocessor(spec, max_tokens=1000)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelSpec, ModelSpec]:
    root = tmp_path_factory.mktemp("models")
    return (resolve_model(str(build_fast_stand_in(root / "a"))), resolve_model(str(build_fast_stand_in(root / "b"))))


@pytest.fixture
def batches() -> list[tuple[str, list[str]]]:
    return []


@pytest.fixture
def make_engine(batches: list[tuple[str, list[str]]]) -> Iterator[Callable[..., Engine]]:
    made: list[Engine] = []

    def make(batch_size: int = 4, batch_wait_ms: int = 50) -> Engine:
        engine = Engine(lambda spec: RecordingScorer(spec, batches), fast_preprocessor, batch_size=batch_size,
                        batch_wait_ms=batch_wait_ms)
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.stop()


def _request(prompt: str) -> ScoreRequest:
    return ScoreRequest(frames=FRAMES, prompt=prompt)


def _results(futures: list[Future[ScoreOutcome]]) -> list[ScoreOutcome | BaseException]:
    out: list[ScoreOutcome | BaseException] = []
    for future in futures:
        try:
            out.append(future.result(timeout=10))
        except Exception as exc:  # noqa: BLE001 - the test compares what each request got
            out.append(exc)
    return out


def test_requests_for_one_model_are_scored_in_batches_of_up_to_batch_size(make_engine, batches, models) -> None:
    a, _ = models
    engine = make_engine(batch_size=2)
    futures = [engine.submit(a, _request(f"clip {i}")) for i in range(5)]  # all queued before the engine runs
    engine.start()
    outcomes = _results(futures)
    assert [prompts for _, prompts in batches] == [["clip 0", "clip 1"], ["clip 2", "clip 3"], ["clip 4"]]
    assert [o.batch_size if isinstance(o, ScoreOutcome) else o for o in outcomes] == [2, 2, 2, 2, 1]
    assert engine.batches_run == 3


def test_a_batch_waits_at_most_batch_wait_for_more_requests(make_engine, batches, models) -> None:
    a, _ = models
    engine = make_engine(batch_size=4, batch_wait_ms=20)
    engine.start()
    [outcome] = _results([engine.submit(a, _request("alone"))])
    assert isinstance(outcome, ScoreOutcome) and outcome.batch_size == 1


def _announced_jobs(engine: Engine, spec: ModelSpec, jobs: list[tuple[str, float, bool]]) -> list[Future]:
    """Run jobs as the worker's tasks do, each in its own thread inside `engine.expecting_request()`: a job
    (prompt, seconds of download/decode before it submits, whether it submits at all) returns its future."""
    futures: list[Future] = [Future() for _ in jobs]
    ready = threading.Barrier(len(jobs) + 1)

    def job(index: int, prompt: str, work_s: float, submits: bool) -> None:
        with engine.expecting_request():
            ready.wait()
            time.sleep(work_s)
            if submits:
                engine.submit(spec, _request(prompt)).add_done_callback(
                    lambda done: futures[index].set_result(done.result()))
            else:
                futures[index].set_exception(ValueError(f"{prompt}: failed before scoring (say, a corrupt video)"))

    threads = [threading.Thread(target=job, args=(i, *spec_)) for i, spec_ in enumerate(jobs)]
    for thread in threads:
        thread.start()
    ready.wait()  # every job announced before any submits
    for thread in threads:
        thread.join(timeout=10)
    return futures


def _announcing_engine(make_engine, **options: Any) -> Engine:
    engine = make_engine(**options)
    engine.jobs_announce = True  # as the worker's runtime builds it
    engine.start()
    return engine


def test_once_every_job_in_flight_has_submitted_the_batch_runs_without_waiting_to_fill(
    make_engine, batches, models,
) -> None:
    a, _ = models
    engine = _announcing_engine(make_engine, batch_size=4, batch_wait_ms=30_000)
    started = time.monotonic()
    outcomes = _results(_announced_jobs(engine, a, [("first", 0.0, True), ("second", 0.0, True)]))
    assert [o.batch_size for o in outcomes] == [2, 2]  # one batch of the two, not two of one...
    assert time.monotonic() - started < 10  # ...and not after the 30 s the batch could wait to fill


def test_a_job_still_decoding_is_waited_for_so_the_batch_fills(make_engine, batches, models) -> None:
    a, _ = models
    engine = _announcing_engine(make_engine, batch_size=2, batch_wait_ms=30_000)
    outcomes = _results(_announced_jobs(engine, a, [("quick", 0.0, True), ("slow to decode", 0.5, True)]))
    assert [prompts for _, prompts in batches] == [["quick", "slow to decode"]]
    assert [o.batch_size for o in outcomes] == [2, 2]


def test_a_job_that_fails_before_submitting_releases_the_wait(make_engine, batches, models) -> None:
    a, _ = models
    engine = _announcing_engine(make_engine, batch_size=4, batch_wait_ms=30_000)
    started = time.monotonic()
    scored, failed = _results(_announced_jobs(engine, a, [("scored", 0.0, True), ("corrupt", 0.3, False)]))
    assert isinstance(scored, ScoreOutcome) and scored.batch_size == 1
    assert isinstance(failed, ValueError)
    assert time.monotonic() - started < 10


def test_a_batch_holds_only_videos_that_pad_to_the_same_shape_oldest_shape_first(make_engine, batches, models) -> None:
    a, _ = models
    engine = make_engine(batch_size=4)
    small, large = [np.zeros((32, 32, 3), np.uint8)] * 2, [np.zeros((64, 96, 3), np.uint8)] * 2
    order = [("small 1", small), ("large 1", large), ("small 2", small), ("large 2", large), ("small 3", small)]
    futures = [engine.submit(a, ScoreRequest(frames=frames, prompt=prompt)) for prompt, frames in order]
    engine.start()
    assert all(isinstance(o, ScoreOutcome) for o in _results(futures))
    assert [prompts for _, prompts in batches] == [["small 1", "small 2", "small 3"], ["large 1", "large 2"]]


def test_a_request_for_another_model_waits_for_the_next_batch(make_engine, batches, models) -> None:
    a, b = models
    engine = make_engine(batch_size=4)
    futures = [engine.submit(a, _request("a 1")), engine.submit(a, _request("a 2")), engine.submit(b, _request("b 1")),
               engine.submit(a, _request("a 3"))]
    engine.start()
    outcomes = _results(futures)
    assert all(isinstance(o, ScoreOutcome) for o in outcomes), outcomes
    assert batches[0] == (a.source, ["a 1", "a 2", "a 3"])  # the loaded model's requests first, batched together
    assert (b.source, ["b 1"]) in batches[1:]
    assert all(p.startswith(Path(source).name) for source, prompts in batches for p in prompts)  # none mixed
    assert sorted(p for _, prompts in batches for p in prompts) == ["a 1", "a 2", "a 3", "b 1"]  # each once


def test_a_device_error_fails_the_whole_batch_and_stops_the_engine(make_engine, batches, models) -> None:
    a, _ = models
    engine = make_engine(batch_size=2)
    futures = [engine.submit(a, _request(f"breaks the device {DEVICE_FAULT}")), engine.submit(a, _request("fine"))]
    engine.start()
    outcomes = _results(futures)
    assert all(isinstance(o, DeviceError) for o in outcomes), outcomes
    assert len(batches) == 1  # a broken device is not tried again, not even one request at a time
    with pytest.raises(DeviceError, match="scoring engine stopped after a device error"):
        engine.submit(a, _request("after the fault"))


def test_a_scorer_exception_in_a_batch_is_isolated_by_scoring_its_requests_one_by_one(
    make_engine, batches, models,
) -> None:
    a, _ = models
    engine = make_engine(batch_size=3)
    futures = [engine.submit(a, _request("good 1")), engine.submit(a, _request("bad #stand-in:fail")),
               engine.submit(a, _request("good 2"))]
    engine.start()
    good_1, bad, good_2 = _results(futures)
    assert isinstance(bad, RuntimeError) and "asked to fail" in str(bad)
    assert isinstance(good_1, ScoreOutcome) and isinstance(good_2, ScoreOutcome)
    assert (good_1.batch_size, good_2.batch_size) == (1, 1)
    assert [prompts for _, prompts in batches] == [
        ["good 1", "bad #stand-in:fail", "good 2"], ["good 1"], ["bad #stand-in:fail"], ["good 2"]]


def test_a_prompt_too_long_fails_its_own_request_only(make_engine, batches, models) -> None:
    a, _ = models
    engine = make_engine(batch_size=2)
    futures = [engine.submit(a, _request("word " * 5000)), engine.submit(a, _request("short"))]
    engine.start()
    too_long, short = _results(futures)
    assert isinstance(too_long, PromptTooLongError) and isinstance(short, ScoreOutcome)
    assert [prompts for _, prompts in batches] == [["short"]]  # refused before the forward pass


def test_a_model_that_cannot_load_fails_its_batch_and_the_engine_keeps_serving(models, tmp_path: Path) -> None:
    a, _ = models
    broken = ModelSpec(name="broken", source=str(tmp_path), variant=a.variant, stand_in=True)

    def load(spec: ModelSpec) -> FastScorer:
        if spec == broken:
            raise ModelLoadError("no weights in this folder")
        return FastScorer(spec, max_tokens=1000, call_log_dir=None)

    engine = Engine(load, fast_preprocessor, batch_size=2)
    engine.start()
    try:
        [failed] = _results([engine.submit(broken, _request("on the broken model"))])
        [scored] = _results([engine.submit(a, _request("on a good model"))])
    finally:
        engine.stop()
    assert isinstance(failed, ModelLoadError) and isinstance(scored, ScoreOutcome)


def test_a_caller_that_waits_past_its_result_timeout_gets_a_timeout_and_the_engine_carries_on(
    make_engine, batches, models,
) -> None:
    a, _ = models
    engine = make_engine(batch_size=1)
    engine.start()
    slow = engine.submit(a, _request("a slow forward pass #stand-in:sleep=0.4"))
    with pytest.raises(FutureTimeout):
        slow.result(timeout=0.1)  # what the pipeline's wait (VIDEOSCORE_SCORE_TIMEOUT_S) does
    [after] = _results([engine.submit(a, _request("the next request"))])
    assert isinstance(after, ScoreOutcome)
    assert isinstance(slow.result(timeout=0), ScoreOutcome)  # the slow one finished on its own, later


# --- switching models: fake scorers that record what was loaded, when, and what each batch held ----------------


class FakeScorer:
    """A ScorerProtocol in pure Python: loading takes `load_s`, a batch `batch_s`; both are written to `log`."""

    def __init__(self, spec: ModelSpec, log: list[tuple[str, str, tuple[str, ...]]], *, batch_s: float) -> None:
        self._spec, self._log, self._batch_s = spec, log, batch_s

    @property
    def spec(self) -> ModelSpec:
        return self._spec

    @property
    def revision(self) -> str:
        return "fake"

    @property
    def device(self) -> str:
        return "cpu"

    def warm_up(self) -> None:
        pass

    def score_prepared(self, batch: Sequence[PreparedRequest]) -> BatchResult:
        time.sleep(self._batch_s)
        self._log.append(("batch", self._spec.name, tuple(r.prompt for r in batch)))
        return BatchResult([AspectScores.from_logits([1.0] * len(ASPECTS)) for _ in batch], 0.0, self._batch_s)

    def close(self) -> None:
        self._log.append(("close", self._spec.name, ()))


class FakeLoader:
    """Loads FakeScorers, `load_s` each; a spec in `broken` fails to load after the same wait."""

    def __init__(self, *, load_s: float = 0.0, batch_s: float = 0.0, broken: Sequence[ModelSpec] = ()) -> None:
        self.load_s, self.batch_s, self.broken = load_s, batch_s, set(broken)
        self.log: list[tuple[str, str, tuple[str, ...]]] = []

    def __call__(self, spec: ModelSpec) -> ScorerProtocol:
        time.sleep(self.load_s)
        self.log.append(("load", spec.name, ()))
        if spec in self.broken:
            raise ModelLoadError(f"could not load {spec.name}: the hub did not answer")
        return FakeScorer(spec, self.log, batch_s=self.batch_s)

    @property
    def loads(self) -> list[str]:
        return [name for event, name, _ in self.log if event == "load"]

    @property
    def batches(self) -> list[tuple[str, tuple[str, ...]]]:
        return [(name, prompts) for event, name, prompts in self.log if event == "batch"]


def _fake(name: str) -> ModelSpec:
    return ModelSpec(name=name, source=name, variant=VARIANTS[DEFAULT_MODEL], stand_in=True)


FAKE_A, FAKE_B, FAKE_C = _fake("fake/a"), _fake("fake/b"), _fake("fake/c")


@pytest.fixture
def fake_engine() -> Iterator[Callable[..., Engine]]:
    made: list[Engine] = []

    def make(loader: FakeLoader, **options: Any) -> Engine:
        engine = Engine(loader, fast_preprocessor, **{"batch_size": 4, "batch_wait_ms": 0, **options})
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.stop()


def test_the_loaded_models_requests_run_first_and_other_models_then_load_in_arrival_order(fake_engine) -> None:
    loader = FakeLoader()
    engine = fake_engine(loader)
    order = [(FAKE_A, "a1"), (FAKE_B, "b1"), (FAKE_A, "a2"), (FAKE_C, "c1"), (FAKE_A, "a3"), (FAKE_B, "b2")]
    futures = [engine.submit(spec, _request(prompt)) for spec, prompt in order]  # all queued before it runs
    engine.start()
    assert all(isinstance(o, ScoreOutcome) for o in _results(futures))
    assert loader.batches == [("fake/a", ("a1", "a2", "a3")), ("fake/b", ("b1", "b2")), ("fake/c", ("c1",))]
    assert loader.loads == ["fake/a", "fake/b", "fake/c"]


def test_jobs_alternating_between_two_models_load_each_model_once_not_once_per_job(fake_engine) -> None:
    loader = FakeLoader(load_s=0.05)
    engine = fake_engine(loader, batch_size=2)
    futures = [engine.submit(FAKE_A if i % 2 == 0 else FAKE_B, _request(f"job {i}")) for i in range(20)]
    engine.start()
    assert all(isinstance(o, ScoreOutcome) for o in _results(futures))
    assert loader.loads == ["fake/a", "fake/b"]
    assert engine.batches_run == 10


def test_a_steady_stream_for_the_loaded_model_yields_to_a_waiting_model_after_switch_after_s(fake_engine) -> None:
    loader = FakeLoader(load_s=0.05, batch_s=0.01)
    engine = fake_engine(loader, batch_size=1, switch_after_s=0.3)
    engine.start(preload=FAKE_A)
    engine.submit(FAKE_A, _request("warm")).result(timeout=10)
    stop = threading.Event()

    def stream_of_a() -> None:  # always at least one request for the loaded model waiting
        pending: list[Future[ScoreOutcome]] = []
        while not stop.is_set():
            pending = [f for f in pending if not f.done()]
            while len(pending) < 3:
                pending.append(engine.submit(FAKE_A, _request("a")))
            time.sleep(0.002)

    feeder = threading.Thread(target=stream_of_a)
    feeder.start()
    try:
        time.sleep(0.05)
        asked = time.monotonic()
        engine.submit(FAKE_B, _request("b")).result(timeout=10)
        waited = time.monotonic() - asked
        time.sleep(0.4)  # long enough for the device to go back to the stream's model
    finally:
        stop.set()
        feeder.join()
    assert 0.2 <= waited < 1.5, waited  # served after about switch_after_s, not starved for the stream's length
    assert loader.loads[:3] == ["fake/a", "fake/b", "fake/a"]  # and A got the device back: no model starves
    assert ("fake/a", ("a",)) in loader.batches[loader.batches.index(("fake/b", ("b",))):]


def test_a_model_that_failed_to_load_fails_the_next_job_at_once_without_blocking_the_engine(fake_engine) -> None:
    loader = FakeLoader(load_s=0.3, broken=[FAKE_B])
    engine = fake_engine(loader, load_retry_after_s=300)
    engine.start()
    asked = time.monotonic()
    [first] = _results([engine.submit(FAKE_B, _request("b 1"))])
    first_s = time.monotonic() - asked
    asked = time.monotonic()
    second = engine.submit(FAKE_B, _request("b 2"))
    assert second.done(), "failed in submit, without queueing behind the engine"
    second_s = time.monotonic() - asked
    [again] = _results([second])
    assert isinstance(first, ModelLoadError) and first_s >= 0.3
    assert isinstance(again, ModelLoadError) and again.kind == "model_load_error" and second_s < 0.05
    assert "the hub did not answer" in again.message and "fail at once for another" in again.message
    assert loader.loads == ["fake/b"]  # tried once
    [good] = _results([engine.submit(FAKE_A, _request("a"))])
    assert isinstance(good, ScoreOutcome)


def test_every_request_waiting_for_a_model_fails_with_its_one_failed_load(fake_engine) -> None:
    loader = FakeLoader(load_s=0.05, broken=[FAKE_B])
    engine = fake_engine(loader, batch_size=2)
    futures = [engine.submit(FAKE_B, _request(f"b {i}")) for i in range(5)] + [engine.submit(FAKE_A, _request("a"))]
    engine.start()
    *failed, good = _results(futures)
    assert all(isinstance(f, ModelLoadError) for f in failed) and isinstance(good, ScoreOutcome)
    assert loader.loads == ["fake/b", "fake/a"]


def test_a_failed_load_is_tried_again_after_load_retry_after_s(fake_engine) -> None:
    loader = FakeLoader(broken=[FAKE_B])
    engine = fake_engine(loader, load_retry_after_s=0.2)
    engine.start()
    _results([engine.submit(FAKE_B, _request("b 1"))])
    _results([engine.submit(FAKE_B, _request("b 2"))])
    assert loader.loads == ["fake/b"]
    time.sleep(0.25)
    [third] = _results([engine.submit(FAKE_B, _request("b 3"))])
    assert isinstance(third, ModelLoadError) and loader.loads == ["fake/b", "fake/b"]


def test_a_loader_that_raises_any_exception_fails_its_jobs_with_model_load_error_and_the_engine_serves_on(
    fake_engine,
) -> None:
    def load(spec: ModelSpec) -> ScorerProtocol:
        if spec == FAKE_B:
            raise OSError("config.json: permission denied")
        return FakeScorer(spec, [], batch_s=0)

    engine = fake_engine(load)
    engine.start()
    [failed] = _results([engine.submit(FAKE_B, _request("b"))])
    [scored] = _results([engine.submit(FAKE_A, _request("a"))])
    assert isinstance(failed, ModelLoadError) and "permission denied" in failed.message
    assert isinstance(scored, ScoreOutcome)
