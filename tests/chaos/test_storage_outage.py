"""Scenario 4: the S3 endpoint goes dark for 20 s. Connections are refused while the moto server is stopped,
started afresh and re-filled (it keeps objects in memory only); fetches fail as `storage_unavailable`, are
retried with exponential backoff and jitter, and succeed once the endpoint is back."""

from __future__ import annotations

import time
from pathlib import Path

from sqlalchemy import text

from tests.chaos.cluster import build_cluster, restart_s3_behind_proxy
from videoscore.worker.testing.servers import PostgresServer

JOBS = 200
OUTAGE_S = 20


def test_s3_down_for_20s_is_retried_then_every_job_succeeds(postgres_server: PostgresServer, tmp_path: Path,
                                                            report) -> None:
    # backoff 2, 4, 8, 8, 8 … s (±50%): the first eight waits add up to at least 27 s even with the unluckiest
    # jitter, so nine attempts outlast a 20 s outage; the 8 s cap keeps the wait after it short
    cluster = build_cluster(tmp_path, postgres_server.create_database(), s3_proxy=True, max_attempts=9,
                            retry_base_delay_s=2.0, retry_max_delay_s=8.0, visibility_timeout_s=20)
    try:
        workers = [cluster.start_worker(f"w{i}", concurrency=4) for i in range(2)]
        for worker in workers:
            worker.wait_ready()
        started = time.monotonic()
        ids = cluster.submit(JOBS, tag="s3")
        assert cluster.wait_until(JOBS // 4, timeout_s=180), cluster.logs()

        restart_s3_behind_proxy(cluster, outage_s=OUTAGE_S)
        back_at = time.monotonic()

        assert cluster.wait_until(JOBS, timeout_s=240), cluster.logs()
        with cluster.client.db.transaction() as session:
            retried = session.scalar(text(
                "SELECT count(*) FROM jobs WHERE attempts > 1 AND error_kind = 'storage_unavailable'"))
        figures = cluster.figures(
            f"4 S3 endpoint down {OUTAGE_S}s", ids, seconds=time.monotonic() - started,
            note=f"({retried} jobs retried after storage_unavailable; all done {time.monotonic() - back_at:.1f}s "
                 "after S3 was back)",
        )
        report(figures)
        assert (figures.lost, figures.scored_twice, figures.failed) == (0, 0, 0)
        assert figures.succeeded == JOBS
        assert retried and retried > 0, "the outage must have caused transient retries"
    finally:
        cluster.stop()
