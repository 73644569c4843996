"""Scenario 1: a worker is killed with SIGKILL in the middle of a batch while another keeps working.

The killed worker's claimed jobs stop heartbeating; after the lease the survivor's reaper puts them back
to queued (kind `worker_lost`) and re-sends them; Redis also hands the dead worker's unacknowledged messages
out again after the visibility timeout, and those duplicates find the jobs finished and are skipped.

A worker killed between kombu's BRPOP and its record of the message as unacknowledged takes a message with it
that neither Redis nor the reaper knows of. kill -9 hits that window only now and then, so the scenario opens
it on purpose: just before the kill it takes the next message off the queue itself, as the victim's BRPOP
would have. The survivor must re-send that job within lease + reap interval (its reaper finds the victim's
orphans and asks for a reconciliation at once), not at the next hourly-scale reconciliation.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

import redis
from sqlalchemy import text

from tests.chaos.cluster import Cluster, kill
from videoscore.worker.service.reconcile import CLOCK_MARGIN, SNAPSHOT_GAP_S

JOBS = 1000
SCHEDULING_SLACK_S = 10.0  # two loaded cores: threads wake late, but nowhere near a reconcile interval (300 s)


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
    lost_job = _take_next_message(cluster)  # the victim's BRPOP, never recorded as unacknowledged
    killed_at = datetime.now(timezone.utc)
    kill(victim)
    finished_at_kill = cluster.finished()

    assert cluster.wait_until(JOBS, timeout_s=240), cluster.logs()
    resent_s, recovered_s = _resent_and_finished_after(cluster, lost_job, killed_at)
    figures = cluster.figures("1 kill -9 a worker mid-batch", ids, seconds=time.monotonic() - started,
                              note=f"(victim held {held} claimed jobs when killed, {finished_at_kill} done by then; "
                                   f"its lost message was re-sent {resent_s:.1f}s and scored {recovered_s:.1f}s "
                                   "after the kill)")
    report(figures)
    settings = cluster.settings
    # a run covers jobs sent CLOCK_MARGIN before it: it waits what the lease has not already waited of that
    margin_s = max(0.0, CLOCK_MARGIN.total_seconds() - settings.lease_s)
    bound_s = settings.lease_s + settings.reap_interval_s + settings.heartbeat_interval_s + margin_s + SNAPSHOT_GAP_S
    assert resent_s <= bound_s + SCHEDULING_SLACK_S, (
        f"the lost message was re-sent {resent_s:.1f}s after the kill; lease + reap interval + one round + the rest "
        f"of the clock margin + the snapshot gap is {bound_s:.1f}s")

    assert (figures.lost, figures.scored_twice, figures.failed) == (0, 0, 0)
    assert figures.succeeded == JOBS
    assert held >= 1, "the kill was meant to land while the victim held claimed jobs"
    with cluster.client.db.transaction() as session:
        recovered = session.execute(text(
            "SELECT attempts, worker_host, error_kind FROM jobs WHERE error_kind = 'worker_lost'")).all()
    assert len(recovered) >= 1, "the victim's claimed jobs must have been recovered by the reaper"
    assert all(attempts == 2 and not host.endswith(f"/{victim.process.pid}") for attempts, host, _ in recovered)
    assert survivor.alive()


def _take_next_message(cluster: Cluster) -> str:
    """RPOP the message a worker would take next, as a BRPOP would; returns its job id."""
    from videoscore.worker.service.reconcile import job_id_of

    client = redis.Redis.from_url(cluster.settings.broker_url)
    try:
        payload = client.rpop(cluster.settings.queue)
    finally:
        client.close()
    assert payload is not None, "the queue ran dry before the kill"
    job_id = job_id_of(payload)
    assert job_id
    return job_id


def _resent_and_finished_after(cluster: Cluster, job_id: str, killed_at: datetime) -> tuple[float, float]:
    with cluster.client.db.transaction() as session:
        enqueued_at, finished_at = session.execute(
            text("SELECT enqueued_at, finished_at FROM jobs WHERE id = :id"), {"id": job_id}).one()
    return (enqueued_at - killed_at).total_seconds(), (finished_at - killed_at).total_seconds()
