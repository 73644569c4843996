"""Scenario 2: Redis is killed and restarted mid-run. With appendonly on, every message it acknowledged to a
producer, and every unacknowledged delivery, is in the AOF and comes back; the workers reconnect."""

from __future__ import annotations

import signal
import time

from tests.chaos.cluster import Cluster

JOBS = 200


def test_redis_killed_and_restarted_mid_run_loses_no_job(cluster: Cluster, report) -> None:
    workers = [cluster.start_worker(f"w{i}", concurrency=4) for i in range(2)]
    for worker in workers:
        worker.wait_ready()
    started = time.monotonic()
    ids = cluster.submit(JOBS, tag="redis")
    assert cluster.wait_until(JOBS // 4, timeout_s=180), cluster.logs()

    cluster.redis.stop(signal.SIGKILL)
    time.sleep(3)
    cluster.redis.start()  # same port, same directory: replays the AOF
    restarted_at = time.monotonic()

    assert cluster.wait_until(JOBS, timeout_s=240), cluster.logs()
    figures = cluster.figures("2 Redis killed and restarted (AOF on)", ids, seconds=time.monotonic() - started,
                              note=f"(all done {time.monotonic() - restarted_at:.1f}s after Redis was back)")
    report(figures)
    assert (figures.lost, figures.scored_twice, figures.failed) == (0, 0, 0)
    assert figures.succeeded == JOBS
    assert all(worker.alive() for worker in workers)
