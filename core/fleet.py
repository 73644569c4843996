"""The fleet at a glance, from the database: `videoscore fleet`, and the queue-load metric autoscalers read.

`videoscore fleet` prints jobs by queue and status, the workers holding running jobs with their last
heartbeat, throughput over the last five minutes and recent failures by kind. `videoscore fleet --serve
PORT` instead serves `videoscore_queue_load{queue=…}` (queued + running jobs per queue) for Prometheus: it
runs with no GPU worker up, which is what lets KEDA scale a worker Deployment from zero. Workers export the
same gauge (worker.metrics), so a query should take `max` over the series. It binds VIDEOSCORE_METRICS_HOST
(loopback unless set; the container recipes set 0.0.0.0). Light: no model stack.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily
from rich.console import Console, Group
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError

from videoscore.core.queueing import enqueue_pipelined, make_celery_app
from videoscore.core.settings import Settings
from videoscore.db import fleet as fleet_queries
from videoscore.db import jobs as job_queries
from videoscore.db.fleet import FleetSnapshot
from videoscore.db.session import Database

log = logging.getLogger(__name__)

QUEUE_LOAD_METRIC = "videoscore_queue_load"
# the queue published even when the database holds no job at all (Settings.queue's default)
DEFAULT_QUEUES: tuple[str, ...] = (str(Settings.model_fields["queue"].default),)


class QueueLoadCollector:
    """Counts queued + running jobs per queue in the database on every scrape.

    If the database does not answer, the last known values are served and `videoscore_database_up` is 0, so
    an autoscaler neither scales in nor to zero because of a database blip. `queues` are always published,
    at 0 when nothing is queued: an empty queue is a 0 series, never a missing one, so "no work" (0) and
    "exporter down" (no series: `absent(videoscore_queue_load)`, docker/prometheus-rules.yml) stay apart.
    Before the database first answers nothing is published: an unknown load is not a zero load.
    """

    def __init__(self, db: Database, queues: Iterable[str] = DEFAULT_QUEUES) -> None:
        self.db = db
        self._queues = tuple(queues)
        self._last: dict[str, int] = {}  # nothing until the database first answers: unknown is not 0
        self._up = 0

    def refresh(self) -> dict[str, int]:
        try:
            with self.db.transaction() as session:
                load = fleet_queries.queue_load(session)
        except SQLAlchemyError as exc:
            log.warning("queue load not refreshed: database unavailable (%s)", type(exc).__name__)
            self._up = 0
            return self._last
        # queues that drained keep a 0 series instead of vanishing (a vanished series is "no data" to KEDA)
        self._last = {**dict.fromkeys(self._queues, 0), **dict.fromkeys(self._last, 0), **load}
        self._up = 1
        return self._last

    def collect(self) -> Iterator[GaugeMetricFamily]:
        load = self.refresh()
        gauge = GaugeMetricFamily(QUEUE_LOAD_METRIC, "Queued + running jobs per queue, counted in the database",
                                  labels=["queue"])
        for queue, n in sorted(load.items()):
            gauge.add_metric([queue], n)
        yield gauge
        yield GaugeMetricFamily("videoscore_database_up", "1 if the last queue-load query succeeded", value=self._up)

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())  # no describe-time query: registering must not touch the database


def start_queue_load_server(db: Database, port: int, host: str = "127.0.0.1",
                            queues: Iterable[str] = DEFAULT_QUEUES) -> Any:
    """Start serving the queue-load gauge on `host`:`port` in a thread; the HTTP server (shutdown() stops it)."""
    registry = CollectorRegistry()
    registry.register(QueueLoadCollector(db, queues))
    server, _thread = start_http_server(port, addr=host, registry=registry)
    log.info("serving %s on %s:%d/metrics", QUEUE_LOAD_METRIC, host, port)
    return server


def serve_queue_load(db: Database, port: int, host: str = "127.0.0.1",
                     queues: Iterable[str] = DEFAULT_QUEUES) -> None:
    """Serve the queue-load gauge on `host`:`port` until interrupted (the exporter Deployment's entry point)."""
    start_queue_load_server(db, port, host, queues)
    while True:
        time.sleep(3600)


def resend_long_queued(db: Database, settings: Settings, *, sent_before_s: float, limit: int = 10_000) -> int:
    """Send again the messages of jobs queued for longer than `sent_before_s` (after a broker lost data)."""
    with db.transaction() as session:
        stale = fleet_queries.long_queued(session, sent_before=timedelta(seconds=sent_before_s), limit=limit)
    by_queue: dict[str, list[str]] = {}
    for job_id, queue in stale:
        by_queue.setdefault(queue, []).append(job_id)
    app = make_celery_app(settings, name="videoscore-fleet")
    for queue, ids in by_queue.items():
        enqueue_pipelined(app, ids, queue=queue)
        with db.transaction() as session:
            job_queries.mark_enqueued(session, ids)
    return len(stale)


def read_snapshot(db: Database) -> FleetSnapshot:
    with db.transaction() as session:
        return fleet_queries.snapshot(session)


def render(snap: FleetSnapshot) -> Group:
    statuses = ["queued", "running", "succeeded", "failed", "cancelled"]
    queues = sorted({q for q, _ in snap.counts})
    jobs = Table(title="jobs by queue", title_justify="left")
    jobs.add_column("queue")
    for status in statuses:
        jobs.add_column(status, justify="right")
    jobs.add_column("load (queued+running)", justify="right")
    for queue in queues:
        row = [snap.counts.get((queue, s), 0) for s in statuses]
        jobs.add_row(queue, *map(str, row), str(snap.load.get(queue, 0)))
    if not queues:
        jobs.add_row("(no jobs)", *[""] * (len(statuses) + 1))

    workers = Table(title="workers holding running jobs", title_justify="left")
    workers.add_column("worker (host/pid)")
    workers.add_column("running", justify="right")
    workers.add_column("last heartbeat", justify="right")
    for w in snap.workers:
        workers.add_row(w.worker_host or "?", str(w.running), _ago(snap.at, w.last_heartbeat))
    if not snap.workers:
        workers.add_row("(none)", "", "")

    minutes = snap.window.total_seconds() / 60
    done = snap.finished_in_window
    lines = [
        f"throughput, last {minutes:.0f} min: {snap.jobs_per_s:.2f} jobs/s "
        f"({done.get('succeeded', 0)} succeeded, {done.get('failed', 0)} failed)",
        f"oldest queued job: {_ago(snap.at, snap.oldest_queued)}",
    ]
    failures = Table(title=f"failures in the last {snap.failures_since.total_seconds() / 3600:.0f} h by kind",
                     title_justify="left")
    failures.add_column("error kind")
    failures.add_column("jobs", justify="right")
    for kind, n in snap.failures_by_kind.items():
        failures.add_row(kind, str(n))
    if not snap.failures_by_kind:
        failures.add_row("(none)", "")
    return Group(jobs, workers, *lines, failures)


def print_fleet(db: Database, console: Console) -> FleetSnapshot:
    snap = read_snapshot(db)
    console.print(render(snap))
    return snap


def _ago(now: datetime, then: datetime | None) -> str:
    if then is None:
        return "-"
    seconds = max(0.0, (now - then).total_seconds())
    return f"{seconds:.0f}s ago" if seconds < 120 else f"{seconds / 60:.0f} min ago"
