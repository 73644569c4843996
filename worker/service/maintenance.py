"""Background duties of a worker process: heartbeat the jobs it holds, and re-send jobs nobody will run.

The heartbeat (every `heartbeat_interval_s`) keeps the claims of this process's jobs alive. The reaper (every
`reap_interval_s`) finds running jobs whose worker stopped heartbeating for `lease_s` (it was killed, crashed
or lost its host) and queued jobs whose message was never sent (the producer died between commit and send),
puts them back to queued and sends their messages again. Each orphan is taken by one reaper only (row locks,
see `videoscore.db.jobs.requeue_orphans`), so 64 workers reaping at once do not send 64 copies.

Recovery after a worker is killed therefore takes at most lease_s + reap_interval_s, plus the wait behind
the jobs already queued. The same round also reconciles the database with Redis (worker.reconcile): after
Redis restarts or a worker dies, queued jobs whose message was lost are sent again. After the database was
unreachable, the reaper first waits one lease with the database reachable: every worker's heartbeats failed
during the outage, and reaping at once would hand every live worker's jobs to others (safe, but each would
be scored twice).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy.exc import SQLAlchemyError

from videoscore.core.errors import WorkerLostError
from videoscore.core.queueing import enqueue_jobs
from videoscore.db import jobs as job_queries
from videoscore.worker.service import metrics
from videoscore.worker.service.reconcile import BrokerReconciler
from videoscore.worker.service.runtime import Runtime

log = logging.getLogger(__name__)

UNSENT_GRACE = timedelta(seconds=60)  # a producer commits, then sends: give it this long before sending for it


class Maintenance:
    def __init__(self, runtime: Runtime, celery_app: object) -> None:
        self.runtime = runtime
        self.celery_app = celery_app
        settings = runtime.settings
        self.heartbeat_interval_s = settings.heartbeat_interval_s
        self.reap_interval_s = settings.reap_interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="videoscore-maintenance", daemon=True)
        self._db_ok_since: float | None = None  # monotonic time the database last became reachable
        self.reconciler = BrokerReconciler(runtime.db, celery_app, settings.broker_url,
                                           interval_s=settings.reconcile_interval_s,
                                           worker_id=runtime.worker_id, member_ttl_s=settings.lease_s)
        self._broker_down_logged = False
        self._db_down_logged = False

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._broker(self.reconciler.leave)

    def _loop(self) -> None:
        next_reap = time.monotonic() + self.reap_interval_s
        while not self._stop.wait(self.heartbeat_interval_s):
            try:
                self._broker(self.reconciler.observe)  # before the database: an outage there must not look like
                self.beat()                            # this worker leaving the fleet
                self._database_is_up()
                if time.monotonic() >= next_reap:
                    next_reap = time.monotonic() + self.reap_interval_s
                    if self._reaping_is_safe():
                        self.reap()
                        self._broker(self.reconciler.maybe_run)
            except SQLAlchemyError as exc:
                self._database_is_down(exc)
            except Exception:  # noqa: BLE001 - never let maintenance kill the worker (e.g. broker down)
                log.exception("maintenance round failed")

    def beat(self) -> None:
        held = self.runtime.held()
        with self.runtime.db.transaction() as session:
            if held:
                job_queries.heartbeat(session, held, worker_host=self.runtime.worker_id)

    def reap(self) -> int:
        """Re-send orphaned and unsent jobs; returns how many. Send and mark happen in one transaction."""
        sent = 0
        with self.runtime.db.transaction() as session:
            orphans = job_queries.requeue_orphans(session, lease=self.runtime.lease, unsent_for=UNSENT_GRACE,
                                                  limit=500)
            by_queue: dict[str, list[str]] = {}
            for job in orphans:
                by_queue.setdefault(job.queue, []).append(job.id)
            for queue, ids in by_queue.items():
                enqueue_jobs(self.celery_app, ids, queue=queue)  # type: ignore[arg-type]
                sent += len(ids)
        if sent:
            metrics.REAPED.inc(sent)
            log.warning("re-sent %d jobs (orphaned by a dead worker or never sent)", sent)
        if any(job.error_kind == WorkerLostError.kind for job in orphans):
            # A dead worker may also have taken a message with BRPOP that kombu never recorded as unacknowledged:
            # only a reconciliation finds it, so run one now rather than at the next interval.
            self.reconciler.request("a worker died (its claimed jobs stopped heartbeating)",
                                    happened_s_ago=self.runtime.settings.lease_s)
        return sent

    def _broker(self, step: Callable[[], object]) -> None:
        """Run a reconciliation step; while Redis is down, log once and try again next round."""
        try:
            step()
        except SQLAlchemyError:
            raise
        except Exception as exc:  # noqa: BLE001 - the broker is down or restarting
            if not self._broker_down_logged:
                log.warning("broker unavailable to maintenance: %s: %s", type(exc).__name__, exc)
                self._broker_down_logged = True
            return
        self._broker_down_logged = False

    def _reaping_is_safe(self) -> bool:
        return self._db_ok_since is not None and time.monotonic() - self._db_ok_since >= self.runtime.settings.lease_s

    def _database_is_up(self) -> None:
        if self._db_ok_since is None:
            self._db_ok_since = time.monotonic()
            if self._db_down_logged:
                log.warning("database reachable again; reaping resumes after one lease (%.0fs)",
                            self.runtime.settings.lease_s)
                self._db_down_logged = False

    def _database_is_down(self, exc: SQLAlchemyError) -> None:
        self._db_ok_since = None
        if not self._db_down_logged:
            log.warning("maintenance paused: database unavailable (%s)", type(exc).__name__)
            self._db_down_logged = True
