"""Queue names and pipelined sends: what lands in Redis is the message `send_task` would have sent."""

from __future__ import annotations

import base64
import json
import uuid

import pytest
import redis

from videoscore.core.queueing import (
    CeleryMessageTemplate,
    enqueue_jobs,
    enqueue_pipelined,
    make_celery_app,
    model_slug,
    queue_for,
    worker_queues,
)
from videoscore.core.settings import Settings
from videoscore.worker.testing.servers import RedisServer


def test_one_model_shares_one_queue_with_high_and_low_beside_it() -> None:
    settings = Settings(queue="vs")
    assert [queue_for(settings, "TIGER-Lab/VideoScore", p) for p in ("high", "normal", "low")] == [
        "vs.high", "vs", "vs.low"]
    assert worker_queues(settings) == ["vs.high", "vs", "vs.low"]
    assert worker_queues(Settings(queue="vs", worker_queues=["vs.low"])) == ["vs.low"]


def test_per_model_queues_are_named_after_the_model() -> None:
    settings = Settings(queue="vs", queue_per_model=True, model="TIGER-Lab/VideoScore-Qwen2-VL")
    assert queue_for(settings, "TIGER-Lab/VideoScore-v1.1", "high") == "vs.tiger-lab-videoscore-v1-1.high"
    assert worker_queues(settings) == ["vs.tiger-lab-videoscore-qwen2-vl.high", "vs.tiger-lab-videoscore-qwen2-vl",
                                       "vs.tiger-lab-videoscore-qwen2-vl.low"]
    # two local folders with the same name do not share a queue
    assert model_slug("/models/a/ckpt") != model_slug("/models/b/ckpt")
    assert model_slug("/models/a/ckpt").startswith("ckpt-")


def test_pipelined_messages_equal_send_task_messages_but_for_their_ids(redis_server: RedisServer) -> None:
    settings = Settings(broker_url=redis_server.url, queue=f"tmpl-{uuid.uuid4().hex[:6]}")
    app = make_celery_app(settings)
    job_a, job_b = uuid.uuid4().hex, uuid.uuid4().hex
    enqueue_jobs(app, [job_a], queue=settings.queue)
    enqueue_pipelined(app, [job_b], queue=settings.queue)
    client = redis.Redis.from_url(redis_server.url)
    sent, built = (json.loads(m) for m in client.lrange(settings.queue, 0, -1)[::-1])  # oldest first

    def comparable(message: dict, job_id: str) -> dict:
        task_id = message["headers"]["id"]
        assert message["headers"]["root_id"] == message["properties"]["correlation_id"] == task_id
        body = json.loads(base64.b64decode(message["body"]))
        assert body[0] == [job_id]
        text = json.dumps({**message, "body": body}).replace(task_id, "TASK").replace(job_id, "JOB")
        out = json.loads(text)
        out["properties"]["delivery_tag"] = "TAG"
        return out

    assert comparable(built, job_b) == comparable(sent, job_a)


def test_pipelined_sends_keep_submission_order_across_chunks(redis_server: RedisServer) -> None:
    settings = Settings(broker_url=redis_server.url, queue=f"order-{uuid.uuid4().hex[:6]}")
    ids = [uuid.uuid4().hex for _ in range(25)]
    enqueue_pipelined(make_celery_app(settings), ids, queue=settings.queue, chunk=7)
    client = redis.Redis.from_url(redis_server.url)
    popped = [json.loads(client.rpop(settings.queue))["headers"]["argsrepr"] for _ in ids]  # as a worker pops
    assert popped == [f"['{i}']" for i in ids]


def test_a_pipelined_template_refuses_what_is_not_a_job_id() -> None:
    template = CeleryMessageTemplate(make_celery_app(Settings()), "q")
    with pytest.raises(ValueError, match="not a job id"):
        template.wire('"}, "injected": 1')


def test_a_worker_takes_high_priority_messages_before_earlier_normal_and_low_ones(redis_server: RedisServer) -> None:
    """The broker side of priorities, with the transport options workers use: consuming the three queues in
    order (queue_order_strategy=priority) yields every .high message first even when they were sent last."""
    from kombu import Consumer, Queue

    settings = Settings(broker_url=redis_server.url, queue=f"prio-{uuid.uuid4().hex[:6]}")
    app = make_celery_app(settings)
    low, normal, high, later_high = (uuid.uuid4().hex for _ in range(4))
    enqueue_pipelined(app, [low], queue=queue_for(settings, settings.model, "low"))
    enqueue_pipelined(app, [normal], queue=queue_for(settings, settings.model, "normal"))
    enqueue_pipelined(app, [high, later_high], queue=queue_for(settings, settings.model, "high"))
    received: list[str] = []
    with app.connection_for_read() as connection:
        queues = [Queue(name, routing_key=name) for name in worker_queues(settings)]
        with Consumer(connection, queues=queues, accept=["json"], prefetch_count=1,
                      callbacks=[lambda _body, message: (received.append(message.headers["argsrepr"]),
                                                         message.ack())]):
            while len(received) < 4:
                connection.drain_events(timeout=5)
    # round robin (kombu's default) would give high, normal, low, high
    assert received == [f"['{high}']", f"['{later_high}']", f"['{normal}']", f"['{low}']"]
