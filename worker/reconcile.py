"""Broker reconciliation: find queued jobs whose message Redis no longer holds, and send them again.

Kombu's Redis transport takes a message with BRPOP, which removes it, and only then records it as
unacknowledged. If Redis dies between the two (kill -9, OOM, host loss), or loses its last second of writes
(appendfsync everysec on a host crash), or was run without AOF, a message is gone while its job stays
`queued` and `enqueued_at` says it was sent; no reaper that trusts `enqueued_at` would ever send it again.

So a worker compares the two sides: every job id held by Redis (the queue lists with their priority
sub-lists, and the unacknowledged hash, which also holds ETA retries waiting in workers) against the
database's queued jobs that were sent before the snapshot. Two snapshots a moment apart, each taken
atomically (MULTI), so a message caught between BRPOP and its unacknowledged record in one snapshot is seen
in the other. Missing jobs are sent again; a rare false positive only duplicates a message, and the claim
makes duplicates harmless. One worker reconciles at a time (a Redis lock). It runs when Redis' run id
changes (it restarted) and every `reconcile_interval_s`.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from core.queueing import enqueue_jobs
from db import fleet as fleet_queries
from db import jobs as job_queries
from db.models import utcnow
from db.session import Database

log = logging.getLogger(__name__)

LOCK_KEY = "videoscore:reconcile:lock"
SEP = "\x06\x16"  # kombu's Redis priority sub-list separator; steps 0 (the list itself), 3, 6, 9
PRIORITY_STEPS = (3, 6, 9)
UNACKED_KEY = "unacked"
SNAPSHOT_GAP_S = 1.0
CLOCK_MARGIN = timedelta(seconds=5)  # producers stamp enqueued_at with their own clocks


def held_job_ids(client: Any, queues: Iterable[str]) -> set[str]:
    """Job ids in the given queues' lists and in the unacknowledged hash, read in one MULTI."""
    keys = [key for queue in queues for key in (queue, *(f"{queue}{SEP}{p}" for p in PRIORITY_STEPS))]
    pipe = client.pipeline(transaction=True)
    for key in keys:
        pipe.lrange(key, 0, -1)
    pipe.hvals(UNACKED_KEY)
    *lists, unacked = pipe.execute()
    ids: set[str] = set()
    for payload in (p for values in lists for p in values):
        ids.add(_job_id(payload))
    for entry in unacked:
        try:
            ids.add(_job_id(json.loads(entry)[0]))
        except (ValueError, TypeError, IndexError):
            continue
    ids.discard("")
    return ids


def _job_id(message: Any) -> str:
    """The job id a Celery message carries (its only argument), or "" for anything else."""
    try:
        if isinstance(message, (bytes, str)):
            message = json.loads(message)
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return str(args[0]) if args else ""
    except (ValueError, TypeError, KeyError, IndexError):
        return ""


class BrokerReconciler:
    """Watches Redis' run id every maintenance round and reconciles when it changed or the interval passed.

    It talks to Redis with a client of its own with short socket timeouts: kombu's connection would retry a
    dead broker for a long time, and the maintenance thread must keep heartbeating meanwhile.
    """

    def __init__(self, db: Database, celery_app: Any, broker_url: str, *, interval_s: float,
                 lock_s: float = 120.0) -> None:
        self.db = db
        self.celery_app = celery_app
        self.interval_s = interval_s
        self.lock_s = lock_s
        self.client = _redis_client(broker_url)
        self._run_id: str | None = None
        self._pending = False  # Redis restarted and we have not reconciled since
        self._last = time.monotonic()

    def observe(self) -> None:
        """Note whether Redis restarted since the last look (cheap: one INFO)."""
        if self.client is None:
            return
        run_id = self.client.info("server").get("run_id")
        if self._run_id is not None and run_id != self._run_id:
            log.warning("Redis restarted (run id changed): queued jobs will be reconciled with the broker")
            self._pending = True
        self._run_id = run_id

    def maybe_run(self) -> int:
        if self.client is None or not (self._pending or time.monotonic() - self._last >= self.interval_s):
            return 0
        self._last = time.monotonic()
        if not self.client.set(LOCK_KEY, "1", nx=True, ex=int(self.lock_s)):
            self._pending = False  # another worker is reconciling this restart
            return 0
        try:
            resent = self.run(self.client)
            self._pending = False
            return resent
        finally:
            self.client.delete(LOCK_KEY)

    def run(self, client: Any) -> int:
        """Send again every queued job the database says was sent and Redis does not hold. Returns how many."""
        with self.db.transaction() as session:
            queues = fleet_queries.queues_with_queued_jobs(session)
        if not queues:
            return 0
        started = utcnow()
        first = held_job_ids(client, queues)
        time.sleep(SNAPSHOT_GAP_S)
        second = held_job_ids(client, queues)
        with self.db.transaction() as session:
            sent = fleet_queries.queued_sent_before(session, started - CLOCK_MARGIN)
        missing = [(job_id, queue) for job_id, queue in sent if job_id not in first and job_id not in second]
        by_queue: dict[str, list[str]] = {}
        for job_id, queue in missing:
            by_queue.setdefault(queue, []).append(job_id)
        for queue, ids in by_queue.items():
            enqueue_jobs(self.celery_app, ids, queue=queue)
            with self.db.transaction() as session:
                job_queries.mark_enqueued(session, ids)
        if missing:
            log.warning("re-sent %d queued jobs whose message the broker no longer held", len(missing))
        return len(missing)


def _redis_client(broker_url: str) -> Any:
    if not broker_url.startswith(("redis://", "rediss://")):
        return None  # another broker: nothing to reconcile with this code
    import redis

    return redis.Redis.from_url(broker_url, socket_timeout=5, socket_connect_timeout=3)
