"""The Celery application both sides share: broker settings, delivery guarantees and queue names.

The producer uses it only to *send* (`send_task` by name, so it never imports the worker); the worker
registers its task on the same configuration. Delivery is at-least-once: a message is acknowledged after
the job's outcome is in the database (`acks_late`), and the database's claim makes redeliveries harmless.
"""

from __future__ import annotations

from collections.abc import Sequence

from celery import Celery

from core.names import TASK_SCORE_JOB
from core.settings import Settings


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
            # Redis redelivers an unacked message only after this; keep it short for jobs of seconds.
            "visibility_timeout": settings.visibility_timeout_s,
        },
        worker_hijack_root_logger=False,
        worker_cancel_long_running_tasks_on_connection_loss=True,
    )
    return app


def enqueue_jobs(app: Celery, job_ids: Sequence[str], *, queue: str) -> None:
    """Send one message per job id over a single broker connection. Messages carry ids, never data."""
    with app.producer_or_acquire() as producer:
        for job_id in job_ids:
            app.send_task(TASK_SCORE_JOB, args=[job_id], queue=queue, producer=producer)
