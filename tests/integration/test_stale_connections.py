"""Dead pooled connections on real PostgreSQL, without a `SELECT 1` before every transaction (db.session).

The server ends a worker's connections between two jobs (`pg_terminate_backend`, as an operator, a failover or
an idle timeout would): the next job still runs at its first attempt, with no failed job and no re-send. A
connection the server has closed is replaced at checkout; one that dies under a transaction makes the unit of
work run once more on a new connection (`Database.run`), and only a disconnect does.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, event, text
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from tests.workers import WorkerProcess
from videoscore.core.settings import Settings
from videoscore.db.migrate import upgrade
from videoscore.db.session import Database
from videoscore.producer.client import Client
from videoscore.worker.service.decision import Retry, Succeeded
from videoscore.worker.testing.fast_scorer import build_fast_stand_in
from videoscore.worker.testing.harness import WorkerHarness
from videoscore.worker.testing.media import make_video
from videoscore.worker.testing.servers import PostgresServer, RedisServer

pytestmark = pytest.mark.postgres


def terminate_backends(database_url: str, *, pid: int | None = None) -> int:
    """End every other client connection to this database (or the one `pid`); wait until they are gone."""
    which = "pid = :pid" if pid is not None else "pid <> pg_backend_pid()"
    engine = create_engine(database_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            others = (f"FROM pg_stat_activity WHERE datname = current_database() AND backend_type = 'client backend' "
                      f"AND {which}")
            ended = connection.execute(text(f"SELECT count(pg_terminate_backend(pid)) {others}"), {"pid": pid}).scalar()
            deadline = time.monotonic() + 10
            while connection.execute(text(f"SELECT count(*) {others}"), {"pid": pid}).scalar():
                assert time.monotonic() < deadline, "terminated backends did not go away"
                time.sleep(0.02)
                connection.rollback()  # a fresh snapshot of pg_stat_activity
    finally:
        engine.dispose()
    return int(ended or 0)


@pytest.fixture
def pg_url(postgres_server: PostgresServer) -> str:
    url = postgres_server.create_database()
    upgrade(url)
    return url


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    return make_video(tmp_path / "clip.mp4", frames=2, size=(32, 32))


@pytest.fixture
def harness(tmp_path: Path, pg_url: str) -> Iterator[WorkerHarness]:
    with WorkerHarness(tmp_path / "worker", database_url=pg_url, file_roots=[str(tmp_path)]) as worker:
        yield worker


def test_a_job_after_the_workers_connections_were_terminated_runs_at_its_first_attempt(
    harness: WorkerHarness, pg_url: str, clip: Path,
) -> None:
    replaced: list[object] = []
    event.listen(harness.runtime.db.engine, "invalidate", lambda *_args: replaced.append(True))
    first, second = (harness.submit(f"file://{clip}", f"clip {i}") for i in range(2))
    assert harness.run(first) == Succeeded()
    assert harness.runtime.db.engine.pool.checkedin() >= 1  # the next job would reuse these

    assert terminate_backends(pg_url) >= 1

    assert harness.run(second) == Succeeded()
    state = harness.state(second)
    assert (state.status, state.attempts, state.error_kind) == ("succeeded", 1, None)
    assert not [d for _, d in harness.decisions if isinstance(d, Retry)]
    assert replaced, "a dead pooled connection must have been found and replaced"


def test_a_unit_of_work_whose_connection_dies_under_it_runs_once_more_on_a_new_connection(pg_url: str) -> None:
    db = Database(pg_url)
    pids: list[int] = []

    def work(session: Session) -> int:
        pid = int(session.execute(text("SELECT pg_backend_pid()")).scalar_one())  # checked out and alive
        pids.append(pid)
        if len(pids) == 1:
            terminate_backends(pg_url, pid=pid)  # dies between two statements of this transaction
        return int(session.execute(text("SELECT 41 + 1")).scalar_one())

    try:
        assert db.run(work) == 42
    finally:
        db.dispose()
    assert len(pids) == 2 and pids[0] != pids[1]


def test_a_unit_of_work_that_fails_for_another_reason_is_not_run_again(pg_url: str) -> None:
    db = Database(pg_url)
    calls: list[int] = []

    def work(session: Session) -> None:
        calls.append(1)
        session.execute(text("SELECT * FROM no_such_table"))

    try:
        with pytest.raises(ProgrammingError):
            db.run(work)
    finally:
        db.dispose()
    assert calls == [1]


@pytest.mark.slow
def test_a_worker_process_whose_connections_are_terminated_between_two_jobs_runs_the_next_one_at_once(
    tmp_path: Path, pg_url: str, redis_server: RedisServer, clip: Path,
) -> None:
    model = build_fast_stand_in(tmp_path / "fast-stand-in")
    settings = Settings(database_url=pg_url, broker_url=redis_server.url, queue=f"stale-{uuid.uuid4().hex[:8]}",
                        model=str(model), model_roots=[str(model)], allow_file_uris=True, file_roots=[str(tmp_path)],
                        metrics_port=0, batch_wait_ms=10, work_dir=str(tmp_path))
    worker = WorkerProcess(settings, tmp_path / "worker.log", concurrency=2).start()
    try:
        worker.wait_ready()
        with Client(settings) as client:
            first = client.submit(f"file://{clip}", "the first clip").id
            [done] = client.wait([first], timeout_s=60)
            assert done.status == "succeeded", worker.log()[-3000:]
            client.db.engine.dispose()  # only the worker's connections are left to end
            assert terminate_backends(pg_url) >= 1

            second = client.submit(f"file://{clip}", "the second clip").id
            [done] = client.wait([second], timeout_s=60)
        log = worker.log()
        assert (done.status, done.attempts, done.error_kind) == ("succeeded", 1, None), log[-3000:]
        for sign_of_trouble in ("re-sending", "retrying in", "database unreachable", "maintenance paused",
                                "Traceback"):
            assert sign_of_trouble not in log, log[-3000:]
    finally:
        worker.stop()
