"""Scenario 1: a worker is killed with SIGKILL in the middle of a batch while another keeps working.

The killed worker's claimed jobs stop heartbeating; after the lease the survivor's reaper puts them back
to queued (kind `worker_lost`) and re-sends them; Redis also hands the dead worker's unacknowledged messages
out again after the visibility timeout, and those duplicates find the jobs finished and are skipped.
"""

from __future__ import annotations

import time

from sqlalchemy import text

from tests.chaos.cluster import Cluster, kill

JOBS = 1000


def _running_on(cluster: Cluster, pid: int) -> int:
    with cluster.client.db.transaction() as session:
        return int(session.scalar(text("SELECT count(*) FROM jobs WHERE status = 'running' AND worker_host LIKE :w"),
                                  {"w": f"%/{pid}"}) or 0)


def test_a_worker_killed_mid_batch_loses_no_job_and_none_is_saved_twice(cluster: Cluster, report) -> None:
    survivor = cluster.start_worker("survivor", concurrency=4)
    victim = cluster.start_worker("victim", concurrency=4)
    survivor.wait_ready()
    victim.wait_ready()
    assert victim.process is not None
    started = time.monotonic()
    ids = cluster.submit(JOBS, tag="kill")

    assert cluster.wait_until(JOBS // 4, timeout_s=180), cluster.logs()
    deadline = time.monotonic() + 30
    while _running_on(cluster, victim.process.pid) < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    held = _running_on(cluster, victim.process.pid)
    kill(victim)
    finished_at_kill = cluster.finished()

    assert cluster.wait_until(JOBS, timeout_s=240), cluster.logs()
    figures = cluster.figures("1 kill -9 a worker mid-batch", ids, seconds=time.monotonic() - started,
                              note=f"(victim held {held} claimed jobs when killed, {finished_at_kill} done by then)")
    report(figures)

    assert (figures.lost, figures.scored_twice, figures.failed) == (0, 0, 0)
    assert figures.succeeded == JOBS
    assert held >= 1, "the kill was meant to land while the victim held claimed jobs"
    with cluster.client.db.transaction() as session:
        recovered = session.execute(text(
            "SELECT attempts, worker_host, error_kind FROM jobs WHERE error_kind = 'worker_lost'")).all()
    assert len(recovered) >= 1, "the victim's claimed jobs must have been recovered by the reaper"
    assert all(attempts == 2 and not host.endswith(f"/{victim.process.pid}") for attempts, host, _ in recovered)
    assert survivor.alive()
