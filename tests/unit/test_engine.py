"""The scoring engine: one thread owns the scorer and turns queued requests into batches of one model each.

The scorer is the fast stand-in (worker.testing.fast_scorer), which records each batch it is handed, so what a
test asserts is what reached the "device".
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path

import numpy as np
import pytest

from videoscore.core.errors import DeviceError, ModelLoadError, PromptTooLongError
from videoscore.core.variants import ModelSpec, resolve_model
from videoscore.worker.model.engine import Engine, ScoreOutcome
from videoscore.worker.model.scorer import BatchResult, ScoreRequest
from videoscore.worker.testing.fast_scorer import FastScorer, build_fast_stand_in

DEVICE_FAULT = "#device-fault"
FRAMES = [np.full((32, 32, 3), 128, dtype=np.uint8)] * 2


class RecordingScorer(FastScorer):
    """The fast stand-in, keeping (model folder, prompts) per batch; a prompt with DEVICE_FAULT breaks the device."""

    def __init__(self, spec: ModelSpec, batches: list[tuple[str, list[str]]]) -> None:
        super().__init__(spec, max_tokens=1000, call_log_dir=None)
        self.batches = batches

    def score(self, requests: Sequence[ScoreRequest]) -> BatchResult:
        self.batches.append((self.spec.source, [r.prompt for r in requests]))
        if any(DEVICE_FAULT in r.prompt for r in requests):
            raise DeviceError("CUDA error: an illegal memory access was encountered")
        return super().score(requests)


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
        engine = Engine(lambda spec: RecordingScorer(spec, batches), batch_size=batch_size,
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


def test_a_request_for_another_model_waits_for_the_next_batch(make_engine, batches, models) -> None:
    a, b = models
    engine = make_engine(batch_size=4)
    futures = [engine.submit(a, _request("a 1")), engine.submit(a, _request("a 2")), engine.submit(b, _request("b 1")),
               engine.submit(a, _request("a 3"))]
    engine.start()
    outcomes = _results(futures)
    assert all(isinstance(o, ScoreOutcome) for o in outcomes), outcomes
    assert batches[0] == (a.source, ["a 1", "a 2"])  # the batch closes at the first request for another model
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

    engine = Engine(load, batch_size=2)
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
