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
makes duplicates harmless. One worker reconciles at a time (a Redis lock that only its holder releases).

It runs every `reconcile_interval_s`, and promptly after the two events that can lose a message in BRPOP's
window: Redis restarted (its run id changed), or a worker died (the reaper found its claimed jobs orphaned,
or its fleet key in Redis disappeared: expired a lease after its last heartbeat, or removed as it shut
down). A worker that asked for a reconciliation keeps asking
until one has *finished* after it asked, by it or by another worker: a lock left behind by a reconciler that
failed half-way (Redis went away again) must not make everyone believe the work was done.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import time
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from videoscore.core.queueing import enqueue_jobs
from videoscore.db import fleet as fleet_queries
from videoscore.db import jobs as job_queries
from videoscore.db.models import utcnow
from videoscore.db.session import Database

log = logging.getLogger(__name__)

LOCK_KEY = "videoscore:reconcile:lock"
LAST_RUN_KEY = "videoscore:reconcile:last"  # Redis time at which the newest finished reconciliation started
MEMBER_PREFIX = "videoscore:fleet:"  # one key per live worker, refreshed every round, expiring a lease later
SEP = "\x06\x16"  # kombu's Redis priority sub-list separator; steps 0 (the list itself), 3, 6, 9
PRIORITY_STEPS = (3, 6, 9)
UNACKED_KEY = "unacked"
SNAPSHOT_GAP_S = 1.0
_DELETE_IF_OURS = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
_RENEW_IF_OURS = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('expire', KEYS[1], ARGV[2]) end return 0"
)
# Jobs sent this shortly before a run are not compared: their message may still be on its way (producers stamp
# enqueued_at with their own clocks). A requested run therefore waits this long after the request (maybe_run).
CLOCK_MARGIN = timedelta(seconds=5)


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
        ids.add(job_id_of(payload))
    for entry in unacked:
        try:
            ids.add(job_id_of(json.loads(entry)[0]))
        except (ValueError, TypeError, IndexError):
            continue
    ids.discard("")
    return ids


def job_id_of(message: Any) -> str:
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
    """Watches Redis every maintenance round and reconciles when asked to or when the interval has passed.

    It talks to Redis with a client of its own with short socket timeouts: kombu's connection would retry a
    dead broker for a long time, and the maintenance thread must keep heartbeating meanwhile.
    """

    def __init__(self, db: Database, celery_app: Any, broker_url: str, *, interval_s: float,
                 worker_id: str = "", member_ttl_s: float = 30.0, lock_s: float = 60.0,
                 clock_margin: timedelta = CLOCK_MARGIN) -> None:
        self.db = db
        self.clock_margin = clock_margin
        self.celery_app = celery_app
        self.interval_s = interval_s
        self.lock_s = lock_s
        self.worker_id = worker_id
        self.member_ttl_s = member_ttl_s
        self.client = _redis_client(broker_url)
        self._run_id: str | None = None
        self._members: set[str] | None = None  # the fleet as last seen; None until the first look
        self._asked_at: float | None = None  # Redis' clock at the latest event a reconciliation was asked for
        self._last = time.monotonic()
        self._lock_token = f"{worker_id}:{os.urandom(8).hex()}"

    @property
    def pending(self) -> bool:
        return self._asked_at is not None

    def request(self, reason: str, *, happened_s_ago: float = 0.0) -> None:
        """Ask for a reconciliation that covers an event (a worker died, Redis restarted) which happened at least
        `happened_s_ago` seconds ago: a worker whose heartbeat lapsed a lease ago died a lease ago, so the run
        need not wait the clock margin after the request (see maybe_run)."""
        if self.client is None:
            return
        if self._asked_at is None:
            log.warning("%s: queued jobs will be reconciled with the broker", reason)
        try:
            now = _redis_time(self.client)
        except Exception:  # noqa: BLE001 - Redis is away: our own clock, at worst one reconciliation too many
            now = time.time()
        event_at = now - happened_s_ago
        # the run must cover every event asked about: the latest one decides when it may start
        self._asked_at = event_at if self._asked_at is None else max(self._asked_at, event_at)

    def observe(self) -> None:
        """Note whether Redis restarted or a worker left the fleet since the last look (a few cheap commands)."""
        if self.client is None:
            return
        run_id = self.client.info("server").get("run_id")
        if self._run_id is not None and run_id != self._run_id:
            self.request("Redis restarted (run id changed)")
        self._run_id = run_id
        self._observe_fleet()

    def _observe_fleet(self) -> None:
        if self.worker_id:
            self.client.set(MEMBER_PREFIX + self.worker_id, "1", ex=max(1, math.ceil(self.member_ttl_s)))
        members = {_text(key)[len(MEMBER_PREFIX):] for key in self.client.scan_iter(MEMBER_PREFIX + "*", count=1000)}
        if self._members is not None and (gone := self._members - members):
            self.request(f"worker {sorted(gone)[0]} left the fleet" if len(gone) == 1
                         else f"{len(gone)} workers left the fleet", happened_s_ago=self.member_ttl_s)
        self._members = members

    def leave(self) -> None:
        """Remove this worker from the fleet (at shutdown); the others reconcile, in case it lost a message."""
        if self.client is not None and self.worker_id:
            self.client.delete(MEMBER_PREFIX + self.worker_id)

    def maybe_run(self) -> int:
        """Reconcile if asked to (and nobody has since) or if the interval has passed. Returns jobs re-sent."""
        if self.client is None:
            return 0
        if self._asked_at is not None:
            # A run looks only at jobs sent clock_margin before it started. To cover every job sent before the
            # event we were asked about, it must start at least that long after the request.
            covered_from = self._asked_at + self.clock_margin.total_seconds()
            if _float(self.client.get(LAST_RUN_KEY)) >= covered_from:
                self._asked_at = None  # another worker finished such a run after we asked: nothing left to do
            elif _redis_time(self.client) < covered_from:
                return 0  # too soon: a run now would skip the jobs sent just before the event
        if self._asked_at is None and time.monotonic() - self._last < self.interval_s:
            return 0
        if not self._take_lock():
            return 0  # another worker is reconciling; if we asked, we ask again next round
        started = _redis_time(self.client)
        resent = self.run(self.client)
        self.client.set(LAST_RUN_KEY, repr(started))
        self._asked_at = None
        self._last = time.monotonic()
        self._release_lock()  # if Redis fails before this, the lock stays ours: the next round takes it back
        return resent

    def _take_lock(self) -> bool:
        ttl = max(1, math.ceil(self.lock_s))
        if self.client.set(LOCK_KEY, self._lock_token, nx=True, ex=ttl):
            return True
        # Ours already: a run of ours failed before it could release it (Redis went away mid-run).
        return self.client.eval(_RENEW_IF_OURS, 1, LOCK_KEY, self._lock_token, ttl) == 1

    def _release_lock(self) -> None:
        # Only the holder deletes the lock: one that expired while we ran may already be another worker's.
        self.client.eval(_DELETE_IF_OURS, 1, LOCK_KEY, self._lock_token)

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
            sent = fleet_queries.queued_sent_before(session, started - self.clock_margin)
        missing = [(job_id, queue) for job_id, queue in sent if job_id not in first and job_id not in second]
        by_queue: dict[str, list[str]] = {}
        for job_id, queue in missing:
            by_queue.setdefault(queue, []).append(job_id)
        for queue, ids in by_queue.items():
            enqueue_jobs(self.celery_app, ids, queue=queue)
            with self.db.transaction() as session:
                job_queries.mark_enqueued(session, ids)
        if missing:
            log.warning("re-sent %d queued jobs whose message the broker no longer held: %s", len(missing),
                        " ".join(job_id for job_id, _ in missing[:20]) + (" …" if len(missing) > 20 else ""))
        return len(missing)


def _redis_time(client: Any) -> float:
    """Redis' own clock, so that workers on hosts with skewed clocks agree on before and after."""
    seconds, micros = client.time()
    return float(seconds) + float(micros) / 1e6


def _float(value: Any) -> float:
    try:
        return float(value) if value is not None else 0.0
    except (TypeError, ValueError):
        return 0.0


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _redis_client(broker_url: str) -> Any:
    if not broker_url.startswith(("redis://", "rediss://")):
        return None  # another broker: nothing to reconcile with this code
    import redis

    return redis.Redis.from_url(broker_url, socket_timeout=5, socket_connect_timeout=3)
