"""A worker in this process: the real task path on a real database and video store, without Celery or a fleet.

`WorkerHarness` builds what `videoscore worker` builds (a `Runtime` on SQLite migrated to head, a `VideoStore`
that reads file:// videos and, given an endpoint, S3 over HTTP, and an `Engine` whose loader serves the fast
stand-in scorer) and runs `run_score_job` for one delivery at a time, as the Celery task would. Where the task
hands its decision to Celery, the harness records it: a `Retry` is kept with its delay (and counts as one
redelivery of that job's message) instead of being sent. So every branch of the task (claim, score, persist,
fencing, the database gate) gets a test in milliseconds; tests/chaos keeps what needs worker processes.

    with WorkerHarness(tmp_path) as worker:
        job_id = worker.submit("file:///videos/cat.mp4", "a cat")
        assert worker.run(job_id) == Succeeded()
        assert worker.job(job_id).status == "succeeded"
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import text

from videoscore.core.errors import ModelLoadError
from videoscore.core.jobspec import JobRequest
from videoscore.core.settings import Settings
from videoscore.core.variants import ModelSpec
from videoscore.db import jobs as job_queries
from videoscore.db.migrate import upgrade
from videoscore.db.records import JobRecord
from videoscore.db.session import Database
from videoscore.worker.model.engine import Engine
from videoscore.worker.model.preprocess import PreprocessorProtocol
from videoscore.worker.model.scorer import ScorerProtocol
from videoscore.worker.service.decision import Decision, Retry
from videoscore.worker.service.runtime import Runtime
from videoscore.worker.service.tasks import run_score_job
from videoscore.worker.testing.fast_scorer import (
    FastPreprocessor,
    FastScorer,
    build_fast_stand_in,
    is_fast_stand_in,
)
from videoscore.worker.video.storage import VideoStore

QUEUE = "harness"

# Test-sized timings: a retry's delay is recorded, never waited for; the gate gives up on the database quickly.
DEFAULTS: dict[str, Any] = dict(
    queue=QUEUE,
    allow_file_uris=True,
    batch_size=2,
    batch_wait_ms=20,
    max_attempts=3,
    retry_base_delay_s=1.0,
    retry_max_delay_s=8.0,
    db_wait_s=1.0,
    score_timeout_s=30,
    job_timeout_s=60,
    metrics_port=0,
    max_prompt_chars=1_000_000,
)


@dataclass(frozen=True)
class JobState:
    """A job's state columns, read without its prompt (which may not even be readable)."""

    status: str
    attempts: int
    error_kind: str | None
    error_message: str | None
    worker_host: str | None


def load_fast_stand_in(spec: ModelSpec) -> ScorerProtocol:
    """The engine's loader: the fast stand-in for folders built by `build_fast_stand_in`, nothing else."""
    if not is_fast_stand_in(spec.source):
        raise ModelLoadError(f"{spec.name} is not a fast stand-in folder; the harness scores with no other model")
    return FastScorer.load(spec)


def load_fast_preprocessor(spec: ModelSpec) -> PreprocessorProtocol:
    """The engine's preprocessor loader, for the same folders."""
    if not is_fast_stand_in(spec.source):
        raise ModelLoadError(f"{spec.name} is not a fast stand-in folder; the harness scores with no other model")
    return FastPreprocessor.load(spec)


class WorkerHarness:
    """One worker's runtime, in process. Settings are `DEFAULTS` plus the keyword arguments given."""

    def __init__(self, root: Path, *, s3_endpoint_url: str | None = None, **settings: Any) -> None:
        self.root = Path(root)
        self.database_path = self.root / "database" / "videoscore.db"
        self.database_path.parent.mkdir(parents=True, exist_ok=True)
        (self.root / "scratch").mkdir(parents=True, exist_ok=True)
        self.model = str(build_fast_stand_in(self.root / "fast-stand-in"))
        s3: dict[str, Any] = {}
        if s3_endpoint_url is not None:  # moto accepts any key pair
            s3 = dict(s3_endpoint_url=s3_endpoint_url, s3_access_key_id="harness", s3_secret_access_key="harness")
        self.settings = Settings(**{**DEFAULTS, "database_url": f"sqlite:///{self.database_path}",
                                    "model": self.model, "work_dir": str(self.root / "scratch"), **s3, **settings})
        upgrade(self.settings.database_url)
        engine = Engine(load_fast_stand_in, load_fast_preprocessor, batch_size=self.settings.batch_size,
                        batch_wait_ms=self.settings.batch_wait_ms, switch_after_s=self.settings.model_switch_after_s,
                        load_retry_after_s=self.settings.model_load_retry_after_s, jobs_announce=True)
        self.runtime = Runtime(settings=self.settings, db=Database(self.settings.database_url),
                               store=VideoStore(self.settings), engine=engine, worker_id=f"harness/{os.getpid()}")
        self.decisions: list[tuple[str, Decision]] = []  # (job id as sent, decision), in the order they ended
        self._lock = threading.Lock()
        self._started = False

    # --- lifecycle ---

    def start(self) -> "WorkerHarness":
        if not self._started:
            self.runtime.engine.start()
            self._started = True
        return self

    def close(self) -> None:
        if self._started:
            self.runtime.engine.stop()
            self._started = False
        self.runtime.db.dispose()

    def __enter__(self) -> "WorkerHarness":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- jobs ---

    def submit(self, video_uri: str, prompt: str, *, model: str | None = None, **fields: Any) -> str:
        """Insert a queued job row, as the producer would after validating it (this does not), and return its id."""
        request = JobRequest(video_uri=video_uri, prompt=prompt, model=model or self.model, **fields)
        with self.runtime.db.transaction() as session:
            [(job, _)] = job_queries.insert_jobs(session, [request], queue=QUEUE)
        return job.id

    def run(self, job_id: Any, *, redeliveries: int | None = None) -> Decision:
        """Deliver the job's message once, as Celery would, and record the decision the task came to.

        `redeliveries` defaults to the number of Retry decisions recorded for this job id so far.
        """
        if redeliveries is None:
            redeliveries = len(self.retries_of(job_id))
        decision = run_score_job(self.runtime, job_id, redeliveries=redeliveries)
        with self._lock:
            self.decisions.append((job_id, decision))
        return decision

    def run_together(self, job_ids: Sequence[Any]) -> list[Decision]:
        """Deliver several messages at once, one task thread each (a worker's --concurrency), so they share batches."""
        results: dict[int, Decision] = {}
        errors: list[BaseException] = []

        def deliver(index: int, job_id: Any) -> None:
            try:
                results[index] = self.run(job_id)
            except BaseException as exc:  # noqa: BLE001 - raised again in the calling thread
                errors.append(exc)

        threads = [threading.Thread(target=deliver, args=(i, j), name=f"harness-task-{i}")
                   for i, j in enumerate(job_ids)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
        return [results[i] for i in range(len(job_ids))]

    def retries_of(self, job_id: Any) -> list[Retry]:
        """The re-sends the task asked for this job, in order (the recording stands in for Celery's retry)."""
        with self._lock:
            return [d for sent, d in self.decisions if sent == job_id and isinstance(d, Retry)]

    def job(self, job_id: str) -> JobRecord:
        with self.runtime.db.transaction() as session:
            record = job_queries.get_job(session, job_id)
        if record is None:
            raise KeyError(job_id)
        return record

    def state(self, job_id: str) -> JobState:
        with self.runtime.db.transaction() as session:
            row = session.execute(
                text("SELECT status, attempts, error_kind, error_message, worker_host FROM jobs WHERE id = :id"),
                {"id": job_id},
            ).one()
        return JobState(*row)

    # --- the database going away ---

    @contextmanager
    def database_down(self) -> Iterator[None]:
        """The database is unreachable inside the block: its folder is moved away and pooled connections closed.

        Connections a thread holds at that moment keep working; the task's are short, so start the block
        while no statement runs (e.g. while the engine scores).
        """
        folder = self.database_path.parent
        away = folder.with_name(folder.name + "-away")
        folder.rename(away)
        self.runtime.db.engine.dispose()
        try:
            yield
        finally:
            away.rename(folder)
