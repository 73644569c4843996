"""Claims and recovery in the database, on SQLite and PostgreSQL: a worker may take back its own abandoned job,
orphans go back to the queue exactly once however many reapers run, and the fleet's load is counted in SQL."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update

from tests.integration.test_job_state import _result
from videoscore.core.jobspec import JobRequest
from videoscore.db import fleet, jobs
from videoscore.db.models import Job, utcnow
from videoscore.db.session import Database

LEASE = timedelta(seconds=60)


def _insert(db: Database, n: int = 1, *, queue: str = "q") -> list[str]:
    with db.transaction() as s:
        rows = jobs.insert_jobs(s, [JobRequest(video_uri="s3://b/v.mp4", prompt=f"p{i}") for i in range(n)],
                                queue=queue)
    return [job.id for job, _ in rows]


def test_a_worker_may_reclaim_its_own_abandoned_job_and_only_the_new_attempt_may_finish_it(database_url: str) -> None:
    db = Database(database_url)
    [job_id] = _insert(db)
    with db.transaction() as s:
        first = jobs.claim_job(s, job_id, worker_host="w1", lease=LEASE)
    with db.transaction() as s:  # the redelivery of a message w1 re-sent while the database was away
        plain = jobs.claim_job(s, job_id, worker_host="w1", lease=LEASE)
        other = jobs.claim_job(s, job_id, worker_host="w2", lease=LEASE, reclaim_own=True)
        again = jobs.claim_job(s, job_id, worker_host="w1", lease=LEASE, reclaim_own=True)
    assert first is not None and first.attempts == 1 and first.prompt == "p0" and first.status == "running"
    assert plain is None and other is None, "a live worker's claim is not anyone else's to take"
    assert again is not None and again.attempts == 2
    with db.transaction() as s:
        assert not jobs.complete_job(s, job_id, _result(), worker_host="w1", attempt=1), "stale attempt"
        assert jobs.complete_job(s, job_id, _result(), worker_host="w1", attempt=2)
        assert not jobs.complete_job(s, job_id, _result(), worker_host="w1", attempt=2), "already finished"
        assert jobs.claim_job(s, job_id, worker_host="w1", lease=timedelta(0), reclaim_own=True) is None


def test_orphans_and_unsent_jobs_are_requeued_once_with_the_reason(database_url: str) -> None:
    db = Database(database_url)
    orphan, alive, unsent, sent = _insert(db, 4)
    with db.transaction() as s:
        jobs.mark_enqueued(s, [orphan, alive, sent])
        jobs.claim_job(s, orphan, worker_host="dead/1", lease=LEASE)
        jobs.claim_job(s, alive, worker_host="alive/2", lease=LEASE)
        s.execute(update(Job).where(Job.id == orphan).values(heartbeat_at=utcnow() - timedelta(minutes=5)))
        s.execute(update(Job).where(Job.id == unsent).values(created_at=utcnow() - timedelta(minutes=5)))
    with db.transaction() as s:
        taken = {j.id: j for j in jobs.requeue_orphans(s, lease=LEASE, unsent_for=timedelta(seconds=60))}
    with db.transaction() as s:
        second_round = jobs.requeue_orphans(s, lease=LEASE, unsent_for=timedelta(seconds=60))
        after = {j: jobs.get_job(s, j) for j in (orphan, alive, unsent, sent)}
    assert set(taken) == {orphan, unsent} and second_round == []
    assert (after[orphan].status, after[orphan].error_kind) == ("queued", "worker_lost")
    assert "dead/1" in (after[orphan].error_message or "") and after[orphan].attempts == 1
    assert after[alive].status == "running" and after[unsent].status == "queued"
    with db.transaction() as s:  # the requeued orphan is claimable again, as a new attempt
        reclaimed = jobs.claim_job(s, orphan, worker_host="w3", lease=LEASE)
    assert reclaimed is not None and reclaimed.attempts == 2


@pytest.mark.postgres
def test_concurrent_reapers_never_take_the_same_orphan(postgres_server) -> None:  # type: ignore[no-untyped-def]
    from videoscore.db.migrate import upgrade

    url = postgres_server.create_database()
    upgrade(url)
    db = Database(url)
    ids = _insert(db, 6)
    with db.transaction() as s:
        s.execute(update(Job).values(created_at=utcnow() - timedelta(minutes=5)))
    with db.transaction() as first:  # reaper A holds its rows (locked) while it sends their messages ...
        taken_a = jobs.requeue_orphans(first, lease=LEASE, unsent_for=timedelta(seconds=60), limit=4)
        with db.transaction() as second:  # ... and reaper B, at the same moment, skips them
            taken_b = jobs.requeue_orphans(second, lease=LEASE, unsent_for=timedelta(seconds=60))
    assert len(taken_a) == 4 and len(taken_b) == 2
    assert {j.id for j in taken_a} | {j.id for j in taken_b} == set(ids)
    assert not {j.id for j in taken_a} & {j.id for j in taken_b}


def test_queue_load_counts_queued_and_running_jobs_per_queue(database_url: str) -> None:
    db = Database(database_url)
    a1, a2, a3 = _insert(db, 3, queue="a")
    [b1] = _insert(db, 1, queue="b")
    with db.transaction() as s:
        jobs.claim_job(s, a1, worker_host="w1", lease=LEASE)
        claimed = jobs.claim_job(s, a2, worker_host="w1", lease=LEASE)
        assert claimed is not None
        jobs.complete_job(s, a2, _result(), worker_host="w1", attempt=claimed.attempts)
        jobs.cancel_job(s, b1)
    with db.transaction() as s:
        load = fleet.queue_load(s)
        snap = fleet.snapshot(s)
    assert load == {"a": 2}
    assert snap.load == {"a": 2} and snap.counts[("a", "succeeded")] == 1
    assert [(w.worker_host, w.running) for w in snap.workers] == [("w1", 1)]
    assert snap.finished_in_window == {"succeeded": 1}


def test_jobs_queued_too_long_can_be_sent_again_after_the_broker_lost_them(database_url: str, redis_server) -> None:  # type: ignore[no-untyped-def]
    import uuid

    import redis

    from videoscore.core.fleet import resend_long_queued
    from videoscore.core.settings import Settings

    db = Database(database_url)
    queue = f"lost-{uuid.uuid4().hex[:8]}"
    old1, old2, fresh = _insert(db, 3, queue=queue)
    with db.transaction() as s:
        jobs.mark_enqueued(s, [old1, old2, fresh])
        s.execute(update(Job).where(Job.id.in_([old1, old2])).values(enqueued_at=utcnow() - timedelta(hours=2)))
    settings = Settings(database_url=database_url, broker_url=redis_server.url)
    assert resend_long_queued(db, settings, sent_before_s=3600) == 2
    assert redis.Redis.from_url(redis_server.url).llen(queue) == 2
    assert resend_long_queued(db, settings, sent_before_s=3600) == 0, "their sending time was refreshed"


def test_reconciliation_resends_exactly_the_queued_jobs_whose_message_redis_lost(database_url: str,
                                                                                 redis_server) -> None:  # type: ignore[no-untyped-def]
    import base64
    import json
    import uuid

    import redis

    from videoscore.core.queueing import enqueue_jobs, make_celery_app
    from videoscore.core.settings import Settings
    from videoscore.worker.service.reconcile import BrokerReconciler

    db = Database(database_url)
    queue = f"rec-{uuid.uuid4().hex[:8]}"
    waiting, reserved, lost, running = _insert(db, 4, queue=queue)
    with db.transaction() as s:
        jobs.mark_enqueued(s, [waiting, reserved, lost, running])
        s.execute(update(Job).values(enqueued_at=utcnow() - timedelta(minutes=1)))
        jobs.claim_job(s, running, worker_host="w1", lease=LEASE)  # claimed: no longer queued
    settings = Settings(database_url=database_url, broker_url=redis_server.url.rsplit("/", 1)[0] + "/7")
    app = make_celery_app(settings)
    client = redis.Redis.from_url(settings.broker_url)  # a database of its own on the suite's Redis
    client.flushdb()
    try:
        enqueue_jobs(app, [waiting], queue=queue)  # still in the queue
        enqueue_jobs(app, [reserved], queue=f"{queue}-side")  # taken by a worker, recorded as unacknowledged
        message = json.loads(client.rpop(f"{queue}-side"))
        client.hset("unacked", "tag-1", json.dumps([message, "", queue]))
        # `lost`: a BRPOP removed it and the reply died with Redis; it is nowhere

        reconciler = BrokerReconciler(db, app, settings.broker_url, interval_s=3600)
        assert reconciler.run(client) == 1
        held = [json.loads(base64.b64decode(json.loads(m)["body"]))[0][0] for m in client.lrange(queue, 0, -1)]
        assert sorted(held) == sorted([waiting, lost])
        assert reconciler.run(client) == 0, "nothing is missing any more"
    finally:
        client.flushdb()


def test_the_chaos_suites_audit_counts_a_second_save_and_ignores_bookkeeping(database_url: str) -> None:
    """The "scored twice" figure of tests/chaos comes from this trigger: it must see a double save."""
    from sqlalchemy import text

    from tests.chaos.cluster import install_completion_audit

    install_completion_audit(database_url)
    db = Database(database_url)
    job_id, other = _insert(db, 2)
    with db.transaction() as s:
        claimed = jobs.claim_job(s, job_id, worker_host="w1", lease=LEASE)
        assert claimed is not None and jobs.complete_job(s, job_id, _result(), worker_host="w1", attempt=1)
    with db.transaction() as s:
        jobs.mark_enqueued(s, [job_id])  # bookkeeping on a finished row: not a completion
        audited_once = s.scalar(text("SELECT count(*) FROM completion_audit"))
        # what a broken claim rule would allow: a second save over the first
        s.execute(update(Job).where(Job.id == job_id).values(finished_at=utcnow() + timedelta(seconds=1),
                                                             visual_quality=1.0))
        rows = s.execute(text("SELECT job_id, count(*) FROM completion_audit GROUP BY job_id")).all()
    assert audited_once == 1
    assert [(r[0], r[1]) for r in rows] == [(job_id, 2)] and other not in {r[0] for r in rows}


# --- when reconciliation runs: promptly after a worker leaves the fleet, and until one has finished ----------


MARGIN = timedelta(seconds=0.5)  # BrokerReconciler's clock margin, shortened for these tests


def _wait_out(margin: timedelta) -> None:
    import time

    time.sleep(margin.total_seconds() + 0.1)


def _lost_message_fixture(database_url: str, redis_server):  # type: ignore[no-untyped-def]
    """A queued job whose message was sent and then taken with BRPOP by a worker that died before kombu
    recorded it: it is in no Redis list and not in the unacknowledged hash."""
    import uuid

    import redis

    from videoscore.core.queueing import enqueue_jobs, make_celery_app
    from videoscore.core.settings import Settings

    db = Database(database_url)
    queue = f"rec-{uuid.uuid4().hex[:8]}"
    [lost] = _insert(db, 1, queue=queue)
    with db.transaction() as s:
        jobs.mark_enqueued(s, [lost])
        s.execute(update(Job).values(enqueued_at=utcnow() - timedelta(minutes=1)))
    settings = Settings(database_url=database_url, broker_url=redis_server.url.rsplit("/", 1)[0] + "/8")
    app = make_celery_app(settings)
    client = redis.Redis.from_url(settings.broker_url)
    client.flushdb()
    enqueue_jobs(app, [lost], queue=queue)
    assert client.rpop(queue) is not None  # the dead worker's BRPOP
    return db, app, settings, client, queue, lost


def test_a_worker_leaving_the_fleet_triggers_a_reconciliation_that_resends_its_lost_message(
        database_url: str, redis_server) -> None:  # type: ignore[no-untyped-def]
    from videoscore.worker.service.reconcile import BrokerReconciler

    db, app, settings, client, queue, lost = _lost_message_fixture(database_url, redis_server)
    try:
        survivor = BrokerReconciler(db, app, settings.broker_url, interval_s=3600, worker_id="survivor",
                                    clock_margin=MARGIN)
        victim = BrokerReconciler(db, app, settings.broker_url, interval_s=3600, worker_id="victim",
                                  member_ttl_s=1)
        victim.observe()
        survivor.observe()
        assert not survivor.pending and survivor.maybe_run() == 0, "nobody left: the hourly interval decides"

        client.delete("videoscore:fleet:victim")  # its key expired: it stopped observing a lease ago
        survivor.observe()
        assert survivor.pending
        _wait_out(MARGIN)
        assert survivor.maybe_run() == 1
        assert not survivor.pending
        assert len(client.lrange(queue, 0, -1)) == 1, "the lost job's message is back in its queue"
    finally:
        client.flushdb()


def test_a_lock_left_by_a_reconciler_that_died_does_not_cancel_the_request(
        database_url: str, redis_server) -> None:  # type: ignore[no-untyped-def]
    from videoscore.worker.service.reconcile import LOCK_KEY, BrokerReconciler

    db, app, settings, client, queue, lost = _lost_message_fixture(database_url, redis_server)
    try:
        reconciler = BrokerReconciler(db, app, settings.broker_url, interval_s=3600, worker_id="w1",
                                      clock_margin=MARGIN)
        reconciler.request("a worker died")
        _wait_out(MARGIN)
        client.set(LOCK_KEY, "w2:gone", ex=60)  # w2 took the lock, then lost Redis before finishing
        assert reconciler.maybe_run() == 0 and reconciler.pending, "still asked for: nobody has finished one"
        client.delete(LOCK_KEY)  # the lock expires
        assert reconciler.maybe_run() == 1 and not reconciler.pending
    finally:
        client.flushdb()


def test_a_reconciliation_finished_by_another_worker_after_the_request_satisfies_it(
        database_url: str, redis_server) -> None:  # type: ignore[no-untyped-def]
    from videoscore.worker.service.reconcile import BrokerReconciler

    db, app, settings, client, queue, lost = _lost_message_fixture(database_url, redis_server)
    try:
        mine = BrokerReconciler(db, app, settings.broker_url, interval_s=3600, worker_id="w1", clock_margin=MARGIN)
        other = BrokerReconciler(db, app, settings.broker_url, interval_s=3600, worker_id="w2", clock_margin=MARGIN)
        mine.request("Redis restarted")
        other.request("Redis restarted")
        _wait_out(MARGIN)
        assert other.maybe_run() == 1
        assert mine.maybe_run() == 0 and not mine.pending, "w2's run started after w1 asked: nothing left to do"
    finally:
        client.flushdb()


def test_a_requested_run_waits_until_it_covers_the_jobs_sent_just_before_the_event(
        database_url: str, redis_server) -> None:  # type: ignore[no-untyped-def]
    """A run compares only jobs sent a clock margin before it starts: one started at once after Redis came back
    skipped the jobs sent in the seconds before the crash, and then counted as done (a stall until the
    hourly-scale interval, seen in the Redis-restart scenario)."""
    from videoscore.worker.service.reconcile import BrokerReconciler

    db, app, settings, client, queue, lost = _lost_message_fixture(database_url, redis_server)
    with db.transaction() as s:
        s.execute(update(Job).values(enqueued_at=utcnow()))  # sent a moment before Redis died
    try:
        reconciler = BrokerReconciler(db, app, settings.broker_url, interval_s=3600, worker_id="w1",
                                      clock_margin=MARGIN)
        reconciler.request("Redis restarted")
        assert reconciler.maybe_run() == 0 and reconciler.pending, "too soon: the job would not be compared yet"
        _wait_out(MARGIN)
        assert reconciler.maybe_run() == 1 and not reconciler.pending
    finally:
        client.flushdb()


def test_a_death_detected_a_lease_late_is_reconciled_at_once(database_url: str, redis_server) -> None:  # type: ignore[no-untyped-def]
    """A worker whose heartbeat lapsed a lease ago died a lease ago: when the lease outlasts the clock margin,
    every job it could have lost was sent long enough before, and the run need not wait."""
    from videoscore.worker.service.reconcile import BrokerReconciler

    db, app, settings, client, queue, lost = _lost_message_fixture(database_url, redis_server)
    try:
        reconciler = BrokerReconciler(db, app, settings.broker_url, interval_s=3600, worker_id="w1",
                                      clock_margin=MARGIN)
        reconciler.request("a worker died", happened_s_ago=2 * MARGIN.total_seconds())
        assert reconciler.maybe_run() == 1 and not reconciler.pending
    finally:
        client.flushdb()
