"""Scenario 5: messages that name no job reach a real worker process over Redis; it drops each one, logs it, and
keeps serving the good jobs around them.

Only what needs a broker and a Celery consumer is here: a raw message that is not even a Celery message (kombu
cannot decode it, so the task never runs), a task message with no arguments at all (the task's signature must
take it) and one whose job id is not a job id. Every bad *job* (missing objects, undecodable videos, limits, an
unknown model, a prompt that is not UTF-8...) fails with its kind and reason in tests/integration/test_bad_inputs.py,
through the same task code run in process.
"""

from __future__ import annotations

import time

from kombu import Connection

from tests.chaos.cluster import Cluster
from videoscore.core.names import TASK_SCORE_JOB
from videoscore.core.queueing import make_celery_app

GOOD_AROUND = 3  # good jobs before and after the malformed messages


def test_malformed_messages_are_dropped_and_logged_and_the_good_jobs_around_them_succeed(
    cluster: Cluster, report
) -> None:
    worker = cluster.start_worker("w1", concurrency=4)
    worker.wait_ready()
    started = time.monotonic()
    before = cluster.submit(GOOD_AROUND, tag="before")
    _send_malformed_messages(cluster)
    after = cluster.submit(GOOD_AROUND, tag="after")

    ids = before + after
    by_id = cluster.wait_rows(ids, timeout_s=120)

    assert [by_id[j].status for j in ids] == ["succeeded"] * (2 * GOOD_AROUND)
    log = worker.log()
    assert "dropping malformed message: job id 'not-a-job-id'" in log
    assert "dropping malformed message: job id None" in log
    assert "Can't decode message body" in log or "unknown message" in log.lower()
    assert worker.alive()

    figures = cluster.figures("5 malformed messages", ids, seconds=time.monotonic() - started,
                              note="(3 malformed messages dropped between the good jobs; the bad-job catalogue is "
                                   "tests/integration/test_bad_inputs.py)")
    report(figures)
    assert (figures.lost, figures.scored_twice) == (0, 0)
    assert (figures.succeeded, figures.failed) == (2 * GOOD_AROUND, 0)


def _send_malformed_messages(cluster: Cluster) -> None:
    app = make_celery_app(cluster.settings)
    app.send_task(TASK_SCORE_JOB, args=["not-a-job-id"], queue=cluster.settings.queue)
    app.send_task(TASK_SCORE_JOB, args=[], queue=cluster.settings.queue)
    with Connection(cluster.settings.broker_url) as connection:  # raw garbage, not even a Celery message
        connection.SimpleQueue(cluster.settings.queue).put(b"\xff\xfe garbage", serializer=None,
                                                            content_type="application/x-garbage")
