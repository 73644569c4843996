"""The Celery application both sides share: broker settings, delivery guarantees and queue names.

The producer uses it only to *send* (`send_task` by name, so it never imports the worker); the worker
registers its task on the same configuration. Delivery is at-least-once: a message is acknowledged after
the job's outcome is in the database (`acks_late`), and the database's claim makes redeliveries harmless.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import uuid
from collections.abc import Sequence

from celery import Celery

from videoscore.core.names import JOBS_PER_CHUNK, TASK_SCORE_JOB, is_job_id
from videoscore.core.settings import Settings
from videoscore.core.variants import VARIANTS

PRIORITY_SUFFIX = {"high": ".high", "normal": "", "low": ".low"}


def make_celery_app(settings: Settings, *, name: str = "videoscore") -> Celery:
    app = Celery(name, broker=settings.broker_url)
    app.conf.update(
        task_ignore_result=True,  # the database, not a result backend, holds job state
        result_backend=None,
        task_serializer="json",
        accept_content=["json"],
        task_acks_late=True,  # ack after the outcome is persisted: a crash mid-job redelivers it
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=settings.queue,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            # Redis hands an unacked message out again only after this, and only in a consuming worker's periodic
            # restore sweep (kombu 5.7: every unacked_restore_interval s, scanning on every Nth sweep, N =
            # unacked_restore_throttle, default 10). Throttle 1 makes the interval the sweep period, so a dead
            # worker's unclaimed message is back in the queue within visibility_timeout + interval. Claimed jobs
            # do not wait for this: the database reaper (worker.maintenance) re-sends them after lease_s.
            "visibility_timeout": settings.visibility_timeout_s,
            "unacked_restore_interval": settings.redis_restore_interval_s,
            "unacked_restore_throttle": 1,
            # The sweep's lock; a worker killed inside a sweep would otherwise block sweeps for kombu's 5 minutes.
            "unacked_mutex_expire": max(30, 3 * settings.redis_restore_interval_s),
            # Read a worker's queues in the order given (high before normal before low), not round robin.
            "queue_order_strategy": "priority",
        },
        worker_hijack_root_logger=False,
        # The threads pool cannot terminate a task (Celery would log NotImplementedError from kill_job for each
        # one), and need not: a task that outlives its broker connection still saves under its claim, and the
        # redelivery of its unacknowledged message finds the job finished and is skipped.
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    return app


def enqueue_jobs(app: Celery, job_ids: Sequence[str], *, queue: str) -> None:
    """Send one message per job id over a single broker connection. Messages carry ids, never data."""
    with app.producer_or_acquire() as producer:
        for job_id in job_ids:
            app.send_task(TASK_SCORE_JOB, args=[job_id], queue=queue, producer=producer)


# --- queue names: one per model (optional) and priority -----------------------------------------------


def model_slug(model: str) -> str:
    """A queue-safe name for a model: the hub id lowercased, or a local folder's name plus a short hash."""
    if model in VARIANTS:
        return re.sub(r"[^a-z0-9]+", "-", model.lower()).strip("-")
    name = re.sub(r"[^a-z0-9]+", "-", model.rstrip("/").rsplit("/", 1)[-1].lower()).strip("-") or "model"
    return f"{name}-{hashlib.sha256(model.encode()).hexdigest()[:8]}"


def queue_for(settings: Settings, model: str, priority: str = "normal") -> str:
    """The broker queue of a job: `<queue>[.<model-slug>][.high|.low]`; normal priority has no suffix.

    With `queue_per_model` off (the default) every model shares `<queue>`, so a one-model fleet runs on the
    same single queue as before, plus `.high` and `.low` beside it.
    """
    base = f"{settings.queue}.{model_slug(model)}" if settings.queue_per_model else settings.queue
    return base + PRIORITY_SUFFIX[priority]


def worker_queues(settings: Settings) -> list[str]:
    """What a worker reads, most urgent first: `worker_queues` if set, else the default model's three."""
    if settings.worker_queues:
        return list(settings.worker_queues)
    return [queue_for(settings, settings.model, p) for p in ("high", "normal", "low")]


# --- pipelined sending: thousands of Celery messages per second over one Redis connection --------------


def enqueue_pipelined(app: Celery, job_ids: Sequence[str], *, queue: str, chunk: int = JOBS_PER_CHUNK) -> None:
    """Send one ordinary Celery (protocol 2) message per job id, `chunk` messages per Redis LPUSH.

    `send_task` costs about a millisecond a message in Celery's Python; this builds the JSON that kombu's
    Redis transport stores for the same call (see `CeleryMessageTemplate`) and pushes many per round trip.
    One LPUSH of many values equals that many LPUSHes in order, so the queue stays first in, first out.
    Brokers other than Redis fall back to `enqueue_jobs`.
    """
    if not job_ids:
        return
    with app.connection_for_write() as connection:
        if connection.transport_cls not in ("redis", "rediss"):
            enqueue_jobs(app, job_ids, queue=queue)
            return
        template = CeleryMessageTemplate(app, queue)
        client = connection.default_channel.client
        for start in range(0, len(job_ids), chunk):
            client.lpush(queue, *[template.wire(job_id) for job_id in job_ids[start:start + chunk]])




class CeleryMessageTemplate:
    """The JSON that kombu's Redis transport stores for `send_task(TASK_SCORE_JOB, args=[job_id])`.

    Headers and properties are Celery's own (`app.amqp.as_task_v2`), serialised once around placeholders;
    per message only the task id, the argument and the delivery tag change. A test compares it with what
    `send_task` stores, and the end-to-end tests have a real worker consume it.
    """

    def __init__(self, app: Celery, queue: str) -> None:
        message = app.amqp.as_task_v2("@TASK@", TASK_SCORE_JOB, args=["@JOB@"], kwargs={}, ignore_result=None,
                                      reply_to=app.thread_oid)
        headers = {**message.headers, "argsrepr": "@ARGSREPR@"}
        properties = {
            **message.properties,
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": "@TAG@",
        }
        wire = json.dumps({"body": "@BODY@", "content-encoding": "utf-8", "content-type": "application/json",
                           "headers": headers, "properties": properties})
        self._parts = re.split(r"@(TASK|JOB|ARGSREPR|TAG|BODY)@", wire)
        body = json.dumps([["@JOB@"], {}, message.body[2]])
        self._body_head, self._body_tail = body.split("@JOB@")

    def wire(self, job_id: str) -> str:
        if not is_job_id(job_id):
            raise ValueError(f"not a job id: {job_id!r}")
        raw = uuid.UUID(bytes=os.urandom(16), version=4)
        task_id = str(raw)
        values = {
            "TASK": task_id,
            "JOB": job_id,
            "ARGSREPR": f"['{job_id}']",
            "TAG": raw.hex[::-1],  # unique per message, like kombu's uuid() tags
            "BODY": base64.b64encode(f"{self._body_head}{job_id}{self._body_tail}".encode()).decode(),
        }
        parts = self._parts
        return "".join(part if i % 2 == 0 else values[part] for i, part in enumerate(parts))
