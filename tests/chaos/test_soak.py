"""Scenario 6: a soak of 10,000 jobs across two workers, fast stand-in scorer, every job through the real
path (claim, S3 GET, frame sampling, engine batch, persist). Prints jobs/s; asserts nothing about speed."""

from __future__ import annotations

import time

from tests.chaos.cluster import Cluster

JOBS = 10_000


def test_a_soak_of_10000_jobs_on_two_workers_scores_each_exactly_once(cluster: Cluster, report) -> None:
    workers = [cluster.start_worker(f"w{i}", concurrency=4) for i in range(2)]
    for worker in workers:
        worker.wait_ready()
    started = time.monotonic()
    ids = cluster.submit(JOBS, tag="soak")
    submitted_s = time.monotonic() - started

    assert cluster.wait_until(JOBS, timeout_s=600), cluster.logs()
    figures = cluster.figures("6 soak, 2 workers", ids, seconds=time.monotonic() - started,
                              note=f"(submit took {submitted_s:.1f}s)")
    report(figures)
    assert (figures.lost, figures.scored_twice, figures.failed) == (0, 0, 0)
    assert figures.succeeded == JOBS
    assert figures.raw_calls == JOBS, "with nothing breaking, each job is scored exactly once"
