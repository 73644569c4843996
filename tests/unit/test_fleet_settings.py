"""Fleet timings are consistent and reach the broker: the lease outlives heartbeats, and the Redis transport
sweeps unacknowledged messages on the period we chose (kombu would otherwise scan only every 10th sweep)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from videoscore.core.queueing import make_celery_app
from videoscore.core.settings import Settings


def test_a_lease_shorter_than_two_heartbeats_is_refused() -> None:
    with pytest.raises(ValidationError, match="lease_s"):
        Settings(heartbeat_interval_s=10, lease_s=15)
    assert Settings(heartbeat_interval_s=5, lease_s=10).lease_s == 10


def test_defaults_bound_recovery_and_keep_redelivery_behind_the_database_reaper() -> None:
    s = Settings()
    # a killed worker's claimed jobs are re-sent by the reaper well before Redis would redeliver them
    assert s.lease_s + s.reap_interval_s < s.visibility_timeout_s
    # a task waiting in place for the database, or a retry held until its ETA, is not redelivered meanwhile
    assert s.db_wait_s < s.visibility_timeout_s
    assert s.retry_max_delay_s * 1.5 < s.visibility_timeout_s


def test_the_redis_transport_gets_the_visibility_timeout_and_an_unthrottled_restore_sweep() -> None:
    app = make_celery_app(Settings(visibility_timeout_s=42, redis_restore_interval_s=3))
    options = app.conf.broker_transport_options
    assert options["visibility_timeout"] == 42
    assert (options["unacked_restore_interval"], options["unacked_restore_throttle"]) == (3, 1)
    assert app.conf.task_acks_late and app.conf.task_reject_on_worker_lost
    assert app.conf.worker_prefetch_multiplier == 1


def test_the_task_never_runs_out_of_celery_retries_before_our_attempt_budget_does() -> None:
    from videoscore.core.names import TASK_SCORE_JOB
    from videoscore.worker.service.tasks import register_tasks

    app = make_celery_app(Settings())
    register_tasks(app)
    assert app.tasks[TASK_SCORE_JOB].max_retries is None
