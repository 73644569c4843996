"""What one delivery of a job's message comes to: the rule (`decide`, pure) and the task that persists it under
its claim, run in process on a real SQLite database with the fast stand-in (worker.testing.harness).

The multi-process versions of these stories (a worker killed mid-job, the database stopped under a fleet) are
tests/chaos; here each branch of the task gets its own test, in milliseconds.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from videoscore.core.errors import (
    AttemptsExhaustedError,
    DatabaseUnavailableError,
    DeviceError,
    InvalidJobError,
    JobTimeLimitError,
    ModelLoadError,
    PromptTooLongError,
    StorageUnavailableError,
    UnknownModelError,
    VideoAccessDeniedError,
    VideoDecodeError,
    VideoNotFoundError,
    VideoScoreError,
    VideoTooLargeError,
    WorkerLostError,
)
from videoscore.db import jobs as job_queries
from videoscore.db.records import ScoreResult
from videoscore.db.session import Database
from videoscore.worker.service.decision import (
    Dropped,
    Failed,
    Retry,
    Skipped,
    Succeeded,
    Superseded,
    decide,
)
from videoscore.worker.service.gate import DatabaseGate
from videoscore.worker.service.retry import RetryPolicy
from videoscore.worker.testing.harness import WorkerHarness
from videoscore.worker.testing.media import make_video

POLICY = RetryPolicy(max_attempts=3, base_delay_s=1.0, max_delay_s=8.0)


def _result() -> ScoreResult:
    return ScoreResult(
        scores={"visual_quality": 2.5, "temporal_consistency": 2.6, "dynamic_degree": 2.7,
                "text_to_video_alignment": 2.8, "factual_consistency": 2.9},
        model_revision="abc", stand_in_model=True, num_frames=2, frame_indices=[0, 1], video_etag=None,
        video_bytes=10, video_total_frames=2, video_fps=24.0, video_duration_s=0.1, video_width=32,
        video_height=32, download_s=0.0, decode_s=0.0, preprocess_s=0.0, forward_s=0.0,
    )


# --- the rule ------------------------------------------------------------------------------------------------


def test_scores_are_a_success() -> None:
    assert decide(_result(), attempt=1, policy=POLICY) == Succeeded()


@pytest.mark.parametrize("error", [
    VideoNotFoundError("s3://b/k does not exist"), VideoAccessDeniedError("bucket 'x' is not in the allowlist"),
    VideoTooLargeError("too big"), VideoDecodeError("not a media file"), PromptTooLongError("too long"),
    InvalidJobError("the job's row cannot be read"), UnknownModelError("unknown model 'x'"),
    ModelLoadError("no weights"), AttemptsExhaustedError("gave up after 3 attempts"),
], ids=lambda error: error.kind)
def test_a_permanent_error_fails_the_job_at_once_with_its_kind(error: VideoScoreError) -> None:
    assert decide(error, attempt=1, policy=POLICY) == Failed(error.kind, error.message)


def test_a_time_limit_fails_the_job_at_once_with_kind_time_limit() -> None:
    error = JobTimeLimitError("scoring did not finish within 600s (VIDEOSCORE_SCORE_TIMEOUT_S)")
    assert decide(error, attempt=1, policy=POLICY) == Failed("time_limit", error.message)


@pytest.mark.parametrize("error", [StorageUnavailableError("S3 unreachable"), DatabaseUnavailableError("gone"),
                                   WorkerLostError("worker w1 stopped heartbeating")], ids=lambda error: error.kind)
def test_a_transient_error_is_retried_after_the_policys_backoff_with_its_kind_and_reason(
    error: VideoScoreError,
) -> None:
    decision = decide(error, attempt=1, policy=POLICY, rng=random.Random(7))
    assert decision == Retry(POLICY.delay_s(1, random.Random(7)), error.message, kind=error.kind)


def test_the_backoff_doubles_with_each_attempt_within_its_jitter_up_to_its_cap() -> None:
    policy = RetryPolicy(max_attempts=10, base_delay_s=1.0, max_delay_s=8.0)
    for attempt, base in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 8.0)]:
        delays = [decide(StorageUnavailableError(), attempt=attempt, policy=policy, rng=random.Random(seed))
                  for seed in range(20)]
        assert all(isinstance(d, Retry) and 0.5 * base <= d.delay_s <= 1.5 * base for d in delays), (attempt, delays)


@pytest.mark.parametrize("error, reason", [
    (RuntimeError("CUDA kernel went sideways"), "RuntimeError: CUDA kernel went sideways"),
    (KeyError("frames"), "KeyError: 'frames'"),
    (VideoScoreError("an error of no kind"), "VideoScoreError: an error of no kind"),
])
def test_an_unexpected_exception_is_retried_as_an_internal_error_naming_its_type(error: Exception,
                                                                                reason: str) -> None:
    decision = decide(error, attempt=2, policy=POLICY)
    assert isinstance(decision, Retry) and (decision.kind, decision.reason) == ("internal_error", reason)


def test_a_device_error_is_retried_and_stops_the_worker() -> None:
    decision = decide(DeviceError("CUDA error: an illegal memory access"), attempt=1, policy=POLICY)
    assert isinstance(decision, Retry) and decision.stop_worker and decision.kind == "device_error"


def test_a_device_error_on_the_last_attempt_fails_the_job_and_still_stops_the_worker() -> None:
    decision = decide(DeviceError("CUDA error: an illegal memory access"), attempt=POLICY.max_attempts,
                      policy=POLICY)
    assert isinstance(decision, Failed) and decision.kind == "attempts_exhausted" and decision.stop_worker


def test_only_a_device_error_stops_the_worker() -> None:
    for error in (StorageUnavailableError(), RuntimeError("boom")):
        decision = decide(error, attempt=1, policy=POLICY)
        assert isinstance(decision, Retry) and not decision.stop_worker


@pytest.mark.parametrize("error, last", [
    (StorageUnavailableError("S3 unreachable"), "storage_unavailable: S3 unreachable"),
    (RuntimeError("boom"), "internal_error: RuntimeError: boom"),
    (DeviceError("CUDA error"), "device_error: CUDA error"),
])
def test_an_error_on_the_last_attempt_fails_the_job_as_attempts_exhausted_naming_the_last_error(
    error: Exception, last: str,
) -> None:
    decision = decide(error, attempt=3, policy=POLICY)
    assert isinstance(decision, Failed)
    assert (decision.kind, decision.message) == ("attempts_exhausted", f"gave up after 3 attempts; last error: {last}")


def test_every_attempt_within_the_budget_is_retried_and_the_one_that_spends_it_fails() -> None:
    decisions = [decide(RuntimeError("boom"), attempt=n, policy=POLICY) for n in (1, 2, 3)]
    assert [type(d) for d in decisions] == [Retry, Retry, Failed]


# --- the task, in process --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_video(tmp_path_factory.mktemp("videos") / "good.mp4", frames=4, size=(64, 48))


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerHarness]:
    # the harness reads file:// videos; they live in this run's temporary folders
    with WorkerHarness(tmp_path_factory.mktemp("harness"), file_roots=[str(tmp_path_factory.getbasetemp())]) as harness:
        yield harness


@pytest.fixture
def make_worker(tmp_path: Path) -> Iterator[Callable[..., WorkerHarness]]:
    """A worker of the test's own, for settings or a database that other tests must not share."""
    made: list[WorkerHarness] = []

    def make(**settings: object) -> WorkerHarness:
        harness = WorkerHarness(tmp_path / f"worker-{len(made)}", **{"file_roots": [str(tmp_path.parent)], **settings})
        harness.start()
        made.append(harness)
        return harness

    yield make
    for harness in made:
        harness.close()


def _in_background(run: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    out: list[object] = []
    thread = threading.Thread(target=lambda: out.append(run()))
    thread.start()
    return thread, out


def _wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_good_job_succeeds_and_its_scores_are_saved_under_its_claim(worker: WorkerHarness, video: Path) -> None:
    job_id = worker.submit(f"file://{video}", "a good clip")
    assert worker.run(job_id) == Succeeded()
    job = worker.job(job_id)
    assert (job.status, job.attempts, job.worker_host) == ("succeeded", 1, worker.runtime.worker_id)
    assert job.visual_quality is not None and job.stand_in_model is True and job.num_frames


def test_a_permanent_error_fails_the_job_at_once_with_its_kind_and_reason(worker: WorkerHarness,
                                                                           tmp_path: Path) -> None:
    job_id = worker.submit(f"file://{tmp_path}/missing.mp4", "a clip that is not there")
    assert worker.run(job_id) == Failed("video_not_found", f"no such file: {tmp_path}/missing.mp4")
    state = worker.state(job_id)
    assert (state.status, state.attempts, state.error_kind) == ("failed", 1, "video_not_found")
    assert worker.retries_of(job_id) == []


def test_a_video_over_the_workers_decode_budget_fails_as_too_large_before_any_frame_is_decoded(
    make_worker: Callable[..., WorkerHarness], video: Path,
) -> None:
    worker = make_worker(max_decode_bytes=64 * 48 * 3)  # one 64x48 frame: the clip's 4 sampled frames do not fit
    decision = worker.run(worker.submit(f"file://{video}", "a clip over the budget"))
    assert isinstance(decision, Failed) and decision.kind == "video_too_large"
    assert "budget" in decision.message


def test_a_failing_attempt_hands_the_job_back_and_asks_for_a_re_send_after_the_backoff(
    worker: WorkerHarness, video: Path,
) -> None:
    job_id = worker.submit(f"file://{video}", "fails in the forward pass #stand-in:fail")
    decision = worker.run(job_id)
    assert isinstance(decision, Retry) and decision.kind == "internal_error"
    assert 0.5 <= decision.delay_s <= 1.5  # the first backoff: base 1 s, ±50 %
    assert worker.retries_of(job_id) == [decision]
    state = worker.state(job_id)
    assert (state.status, state.attempts, state.error_kind) == ("queued", 1, "internal_error")
    assert "asked to fail" in (state.error_message or "")


def test_a_job_that_fails_on_every_attempt_ends_attempts_exhausted_naming_its_last_error(
    worker: WorkerHarness, video: Path,
) -> None:
    job_id = worker.submit(f"file://{video}", "fails every time #stand-in:fail")
    decisions = [worker.run(job_id) for _ in range(3)]
    assert [type(d) for d in decisions] == [Retry, Retry, Failed]
    second = decisions[1]
    assert isinstance(second, Retry) and 1.0 <= second.delay_s <= 3.0  # the second backoff doubles
    assert decisions[2] == Failed("attempts_exhausted", "gave up after 3 attempts; last error: internal_error: "
                                  "RuntimeError: the fast stand-in was asked to fail (#stand-in:fail)")
    state = worker.state(job_id)
    assert (state.status, state.attempts, state.error_kind) == ("failed", 3, "attempts_exhausted")


def test_a_job_whose_workers_died_on_every_attempt_fails_when_delivered_past_its_budget(
    make_worker: Callable[..., WorkerHarness], video: Path,
) -> None:
    worker = make_worker(max_attempts=2)
    job_id = worker.submit(f"file://{video}", "a clip whose workers keep dying")
    for _ in range(2):  # a worker claims it and dies; the reaper puts it back
        with worker.runtime.db.transaction() as s:
            assert job_queries.claim_job(s, job_id, worker_host="doomed/1", lease=timedelta(seconds=30))
        with worker.runtime.db.transaction() as s:
            job_queries.requeue_orphans(s, lease=timedelta(seconds=-1), unsent_for=timedelta(days=1))
    assert worker.run(job_id) == Failed(
        "attempts_exhausted",
        "gave up after 2 attempts; last error: worker_lost: worker doomed/1 stopped heartbeating during attempt 2")


def test_a_scoring_time_limit_fails_the_job_with_kind_time_limit(make_worker: Callable[..., WorkerHarness],
                                                                 video: Path) -> None:
    worker = make_worker(score_timeout_s=1)
    job_id = worker.submit(f"file://{video}", "a slow forward pass #stand-in:sleep=1.5")
    assert worker.run(job_id) == Failed("time_limit", "scoring did not finish within 1s (VIDEOSCORE_SCORE_TIMEOUT_S)")


def test_a_stale_attempts_result_is_dropped_as_superseded(worker: WorkerHarness, video: Path) -> None:
    job_id = worker.submit(f"file://{video}", "scored while another worker takes over #stand-in:sleep=0.5")
    thread, decisions = _in_background(lambda: worker.run(job_id))
    _wait_for(lambda: worker.state(job_id).status == "running")
    with worker.runtime.db.transaction() as s:  # our lease looks expired to another worker: it takes the job
        assert job_queries.claim_job(s, job_id, worker_host="other/1", lease=timedelta(seconds=-1))
    thread.join()
    assert decisions == [Superseded()]
    state = worker.state(job_id)
    assert (state.status, state.attempts, state.worker_host) == ("running", 2, "other/1")


def test_a_duplicate_delivery_while_the_job_runs_here_is_skipped(worker: WorkerHarness, video: Path) -> None:
    job_id = worker.submit(f"file://{video}", "delivered twice at once #stand-in:sleep=0.3")
    thread, decisions = _in_background(lambda: worker.run(job_id))
    _wait_for(lambda: worker.state(job_id).status == "running")
    assert worker.run(job_id) == Skipped("duplicate delivery: the job is already running in this worker")
    thread.join()
    assert decisions == [Succeeded()] and worker.state(job_id).attempts == 1


def test_a_redelivered_message_of_a_finished_job_is_skipped(worker: WorkerHarness, video: Path) -> None:
    job_id = worker.submit(f"file://{video}", "delivered again after it finished")
    assert worker.run(job_id) == Succeeded()
    assert isinstance(worker.run(job_id), Skipped)
    assert (worker.state(job_id).status, worker.state(job_id).attempts) == ("succeeded", 1)


@pytest.mark.parametrize("job_id", ["not-a-job-id", None, 42, "0" * 31, "Z" * 32])
def test_a_message_without_a_job_id_is_dropped(worker: WorkerHarness, job_id: object) -> None:
    assert worker.run(job_id) == Dropped(f"job id {job_id!r} is not a job id")


# --- the database gate ----------------------------------------------------------------------------------------


def _select_one(session) -> int:  # type: ignore[no-untyped-def]
    return int(session.execute(text("SELECT 1")).scalar_one())


def test_the_gate_waits_in_place_while_the_database_is_unreachable_and_carries_on_once_it_is_back(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "not-yet"  # SQLite cannot open a file in a folder that does not exist
    gate = DatabaseGate(Database(f"sqlite:///{folder / 'videoscore.db'}"), wait_s=10.0)
    threading.Timer(0.5, folder.mkdir).start()
    started = time.monotonic()
    assert gate.run(_select_one, what="probing") == 1
    assert time.monotonic() - started >= 0.5


def test_the_gate_gives_up_with_database_unavailable_once_its_wait_runs_out(tmp_path: Path) -> None:
    gate = DatabaseGate(Database(f"sqlite:///{tmp_path / 'gone' / 'videoscore.db'}"), wait_s=1.0)
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailableError,
                       match=r"database unreachable for 1s while probing \(OperationalError: unable to open"):
        gate.run(_select_one, what="probing")
    assert 0.2 <= time.monotonic() - started <= 1.5


def test_the_gate_raises_a_statements_own_error_when_the_database_answers(tmp_path: Path) -> None:
    gate = DatabaseGate(Database(f"sqlite:///{tmp_path / 'videoscore.db'}"), wait_s=10.0)
    started = time.monotonic()
    with pytest.raises(OperationalError, match="no such table"):
        gate.run(lambda s: s.execute(text("SELECT * FROM no_such_table")), what="reading")
    assert time.monotonic() - started < 1.0  # three tries, no waiting for an outage


def test_a_claim_that_finds_the_database_gone_re_sends_the_message_without_spending_an_attempt(
    worker: WorkerHarness, video: Path,
) -> None:
    job_id = worker.submit(f"file://{video}", "claimed during an outage")
    with worker.database_down():
        decision = worker.run(job_id)
    assert isinstance(decision, Retry) and decision.kind == "database_unavailable"
    assert decision.reason.startswith(f"database unreachable for 1s while claiming {job_id}")
    assert (worker.state(job_id).status, worker.state(job_id).attempts) == ("queued", 0)
    assert worker.run(job_id) == Succeeded() and worker.state(job_id).attempts == 1


def test_a_short_database_outage_costs_neither_a_re_send_nor_an_attempt(make_worker: Callable[..., WorkerHarness],
                                                                        video: Path) -> None:
    worker = make_worker(db_wait_s=10.0)
    job_id = worker.submit(f"file://{video}", "claimed across a short outage")
    with worker.database_down():
        thread, decisions = _in_background(lambda: worker.run(job_id))
        time.sleep(0.5)
    thread.join()
    assert decisions == [Succeeded()] and worker.state(job_id).attempts == 1


def test_a_result_that_cannot_be_saved_is_re_sent_and_the_redelivery_takes_its_own_claim_back(
    worker: WorkerHarness, video: Path,
) -> None:
    job_id = worker.submit(f"file://{video}", "scored while the database goes away #stand-in:sleep=0.3")
    thread, decisions = _in_background(lambda: worker.run(job_id))
    _wait_for(lambda: worker.state(job_id).status == "running")
    with worker.database_down():  # the engine is scoring: no statement is running
        thread.join()
    [decision] = decisions
    assert isinstance(decision, Retry)
    assert decision.reason.startswith(f"database unreachable for 1s while saving {job_id}")
    assert (worker.state(job_id).status, worker.state(job_id).worker_host) == ("running", worker.runtime.worker_id)
    assert worker.run(job_id) == Succeeded()  # reclaim_own: our own abandoned claim, not another worker's
    assert worker.state(job_id).attempts == 2
