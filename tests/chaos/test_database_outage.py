"""Scenario 3: PostgreSQL is stopped for 30 s mid-run, longer than a task waits for it in place (db_wait_s).

Tasks that were running keep their result in hand while they wait, then re-send their message; the job row
stays `running` under the worker's claim, so the redelivery re-claims it (its own abandoned job) or another
worker takes it over once the lease has run out. The maintenance thread rides out the outage, and reaping
resumes one lease after the database is back. Exactly one completion per job is saved.
"""

from __future__ import annotations

import time
from pathlib import Path

from sqlalchemy import text

from tests.chaos.cluster import build_cluster
from videoscore.worker.testing.servers import PostgresServer

JOBS = 200
OUTAGE_S = 30


def test_database_down_for_30s_mid_run_loses_no_job(own_postgres: PostgresServer, tmp_path: Path, report) -> None:
    cluster = build_cluster(tmp_path, own_postgres.create_database(), db_wait_s=5.0)
    try:
        workers = [cluster.start_worker(f"w{i}", concurrency=4) for i in range(2)]
        for worker in workers:
            worker.wait_ready()
        started = time.monotonic()
        ids = cluster.submit(JOBS, tag="pg")
        assert cluster.wait_until(JOBS // 4, timeout_s=180), cluster.logs()

        own_postgres.restart(down_for_s=OUTAGE_S)
        back_at = time.monotonic()
        assert all(worker.alive() for worker in workers), cluster.logs()

        assert cluster.wait_until(JOBS, timeout_s=240), cluster.logs()
        with cluster.client.db.transaction() as session:
            retried = session.scalar(text("SELECT count(*) FROM jobs WHERE attempts > 1"))
        logs = "\n".join(worker.log() for worker in workers)
        figures = cluster.figures(
            f"3 PostgreSQL down {OUTAGE_S}s", ids, seconds=time.monotonic() - started,
            note=(
                f"({retried} jobs needed a second claim; "
                f"all done {time.monotonic() - back_at:.1f}s after it was back)"
            ),
        )
        report(figures)
        assert (figures.lost, figures.scored_twice, figures.failed) == (0, 0, 0)
        assert figures.succeeded == JOBS
        assert "database unreachable" in logs and "re-sending it" in logs, "the outage must have been felt"
        assert all(worker.alive() for worker in workers)
    finally:
        cluster.stop()
