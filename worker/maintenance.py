"""Background duties of a worker process: heartbeat the jobs it holds, and re-send jobs nobody will run.

The heartbeat keeps a long job's claim alive; the reaper re-enqueues queued jobs whose message was never
sent and running jobs whose worker died (stale heartbeat). Several workers may reap at once: a duplicate
message is harmless, because only one delivery can claim a job in the database.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from sqlalchemy.exc import SQLAlchemyError

from core.queueing import enqueue_jobs
from db import jobs as job_queries
from worker.runtime import Runtime

log = logging.getLogger(__name__)


class Maintenance:
    def __init__(self, runtime: Runtime, celery_app: object, *, interval_s: float) -> None:
        self.runtime = runtime
        self.celery_app = celery_app
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="videoscore-maintenance", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.beat()
                self.reap()
            except SQLAlchemyError as exc:
                log.warning("maintenance skipped a round: database unavailable (%s)", type(exc).__name__)
            except Exception:  # noqa: BLE001 - never let maintenance kill the worker
                log.exception("maintenance round failed")

    def beat(self) -> None:
        held = list(self.runtime.inflight)
        if held:
            with self.runtime.db.transaction() as session:
                job_queries.heartbeat(session, held, worker_host=self.runtime.worker_id)

    def reap(self) -> int:
        with self.runtime.db.transaction() as session:
            stuck = job_queries.stuck_jobs(
                session, unsent_for=timedelta(seconds=60), lease=self.runtime.lease, limit=500
            )
        if not stuck:
            return 0
        by_queue: dict[str, list[str]] = {}
        for job in stuck:
            by_queue.setdefault(job.queue, []).append(job.id)
        for queue, ids in by_queue.items():
            enqueue_jobs(self.celery_app, ids, queue=queue)  # type: ignore[arg-type]
            with self.runtime.db.transaction() as session:
                job_queries.mark_enqueued(session, ids)
        log.warning("re-sent %d stuck jobs", len(stuck))
        return len(stuck)
