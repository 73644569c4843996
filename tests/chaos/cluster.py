"""A small fleet on real servers, to break on purpose: Redis (AOF on), S3 (moto over HTTP, behind a TCP
proxy that can go dark), PostgreSQL, and `videoscore worker` processes scoring with the fast stand-in.

Figures are measured, not inferred:
* persisted completions come from an audit trigger on the jobs table (one row per UPDATE that leaves a job
  `succeeded`), so a second write of scores for one job would show as "scored twice";
* raw scoring calls come from the fast stand-in's call log (one line per scored request, written before the
  score is returned), so a job whose result was lost and scored again shows in "raw repeats".
"""

from __future__ import annotations

import collections
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import text

from tests import media
from tests.workers import WorkerProcess
from videoscore.core.names import TERMINAL_STATUSES
from videoscore.core.settings import Settings
from videoscore.db.migrate import upgrade
from videoscore.db.session import Database
from videoscore.producer.client import Client
from videoscore.worker.testing.fast_scorer import build_fast_stand_in, prompt_digest
from videoscore.worker.testing.servers import RedisServer, S3Server, free_port
from videoscore.worker.video.storage import make_s3_client

BUCKET = "chaos-videos"
TINY_VIDEOS = 16


# --- workers ----------------------------------------------------------------------------------------------


class FleetWorker(WorkerProcess):
    """`videoscore worker` with a log level and extra options (e.g. --gpus) of the test's choosing."""

    def __init__(self, settings: Settings, log_path: Path, *, concurrency: int = 4, name: str = "w1",
                 loglevel: str = "INFO", extra_args: tuple[str, ...] = ()) -> None:
        super().__init__(settings, log_path, concurrency=concurrency, name=name)
        self.loglevel = loglevel
        self.extra_args = extra_args

    def start(self) -> "FleetWorker":
        env = {**os.environ, **self.settings.to_env()}
        argv = [sys.executable, "-m", "videoscore.worker.testing.fleet_worker", "worker",
                "--concurrency", str(self.concurrency), "--hostname", f"{self.name}@%h",
                "--loglevel", self.loglevel, *self.extra_args]
        self.process = subprocess.Popen(argv, env=env, stdout=self.log_path.open("ab"), stderr=subprocess.STDOUT)
        return self

    def wait_ready(self, timeout_s: float = 180.0, *, nodes: int = 1) -> None:
        """Block until `nodes` Celery nodes in this log consume (a --gpus supervisor logs one per GPU)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited with {self.process.returncode}:\n{self.log()[-5000:]}")
            text_ = self.log()
            if text_.count(" ready.") >= nodes and text_.count("loaded ") >= nodes:
                return
            time.sleep(0.2)
        raise TimeoutError(f"worker not ready after {timeout_s}s:\n{self.log()[-5000:]}")


# --- a TCP proxy that can refuse connections, as an S3 endpoint that is down does -------------------------


class TcpProxy:
    """Forwards 127.0.0.1:port to a target port. `down()` closes the listener and every open connection (new
    connections are refused, as by a dead endpoint); `up()` listens again on the same port."""

    def __init__(self, target_port: int, port: int | None = None) -> None:
        self.target_port = target_port
        self.port = port or free_port()
        self._listener: socket.socket | None = None
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> "TcpProxy":
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def down(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with self._lock:
            connections, self._connections = self._connections, set()
        for conn in connections:
            _close(conn)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed by down()
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                _close(client)
                continue
            with self._lock:
                self._connections.update((client, upstream))
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while True:
                readable, _, _ = select.select([a, b], [], [], 1.0)
                for source in readable:
                    data = source.recv(65536)
                    if not data:
                        return
                    (b if source is a else a).sendall(data)
        except OSError:
            return
        finally:
            for conn in (a, b):
                _close(conn)
            with self._lock:
                self._connections.difference_update((a, b))


def _close(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    conn.close()


# --- figures ----------------------------------------------------------------------------------------------


@dataclass
class Figures:
    scenario: str
    submitted: int
    succeeded: int
    failed: int
    lost: int  # not finished when the scenario ended
    scored_twice: int  # jobs with two or more persisted completions (audit trigger)
    raw_calls: int | None  # scoring calls the fast stand-in logged (None: another model, no call log)
    raw_repeats: int | None  # jobs scored more than once (a result never saved, then scored again)
    seconds: float
    note: str = ""

    @property
    def jobs_per_s(self) -> float:
        return (self.succeeded + self.failed) / self.seconds if self.seconds else 0.0

    def line(self) -> str:
        return (
            f"{self.scenario}: submitted {self.submitted} / succeeded {self.succeeded} / failed {self.failed} / "
            f"lost {self.lost} / scored twice {self.scored_twice}  [{self._raw()}; "
            f"{self.seconds:.1f}s, {self.jobs_per_s:.1f} jobs/s]" + (f"  {self.note}" if self.note else "")
        )

    def _raw(self) -> str:
        if self.raw_calls is None:
            return "raw scoring calls: n/a (real stand-in model, no call log)"
        return (
            f"raw scoring calls {self.raw_calls}, jobs scored again after an unsaved result {self.raw_repeats}"
        )


# --- the cluster ----------------------------------------------------------------------------------------


AUDIT_SQL = {
    "postgresql": [
        "CREATE TABLE completion_audit (job_id text NOT NULL, worker_host text, attempts int, "
        "at timestamptz NOT NULL DEFAULT now())",
        "CREATE FUNCTION audit_completion() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "INSERT INTO completion_audit (job_id, worker_host, attempts) VALUES (NEW.id, NEW.worker_host, NEW.attempts); "
        "RETURN NEW; END $$",
        "CREATE TRIGGER audit_completion AFTER UPDATE ON jobs FOR EACH ROW "
        "WHEN (NEW.status = 'succeeded' AND NEW.finished_at IS DISTINCT FROM OLD.finished_at) "
        "EXECUTE FUNCTION audit_completion()",
    ],
    "sqlite": [
        "CREATE TABLE completion_audit (job_id text NOT NULL, worker_host text, attempts int, "
        "at text NOT NULL DEFAULT CURRENT_TIMESTAMP)",
        "CREATE TRIGGER audit_completion AFTER UPDATE ON jobs FOR EACH ROW "
        "WHEN NEW.status = 'succeeded' AND NEW.finished_at IS NOT OLD.finished_at BEGIN "
        "INSERT INTO completion_audit (job_id, worker_host, attempts) VALUES (NEW.id, NEW.worker_host, NEW.attempts); "
        "END",
    ],
}


def install_completion_audit(database_url: str) -> None:
    """Count every completion written to a job, in the database itself (test-only; not a migration).

    A completion is an UPDATE that leaves the job succeeded with a new `finished_at` (complete_job stamps it),
    so a second save of scores counts and bookkeeping on a finished row (e.g. the producer marking its
    message sent after a fast worker already finished the job) does not.
    """
    db = Database(database_url)
    try:
        with db.transaction() as session:
            for statement in AUDIT_SQL[session.get_bind().dialect.name]:
                session.execute(text(statement))
    finally:
        db.dispose()


def upload_tiny_videos(settings: Settings, folder: Path) -> list[str]:
    """Small clips (2 frames of 32×32) so that decoding is not what a fleet test measures."""
    folder.mkdir(parents=True, exist_ok=True)
    keys = []
    s3 = make_s3_client(settings)
    s3.create_bucket(Bucket=BUCKET)
    for i in range(TINY_VIDEOS):
        path = folder / f"tiny-{i:02d}.mp4"
        if not path.exists():
            media.make_video(path, frames=2, size=(32, 32))
        s3.upload_file(str(path), BUCKET, path.name)
        keys.append(path.name)
    return keys


@dataclass
class Cluster:
    root: Path
    settings: Settings
    redis: RedisServer
    s3: S3Server
    s3_proxy: TcpProxy | None  # only where S3 must go dark (it costs a thread per connection)
    video_keys: list[str]
    call_log_dir: Path
    workers: list[FleetWorker] = field(default_factory=list)
    prompts: dict[str, str] = field(default_factory=dict)  # prompt digest → job id

    @property
    def client(self) -> Client:
        if not hasattr(self, "_client"):
            self._client = Client(self.settings)
        return self._client

    def start_worker(self, name: str, *, concurrency: int = 4, loglevel: str = "INFO",
                     extra_args: tuple[str, ...] = (), **overrides: Any) -> FleetWorker:
        settings = Settings(**{**self.settings.model_dump(), **overrides}) if overrides else self.settings
        worker = FleetWorker(settings, self.root / f"worker-{name}.log", concurrency=concurrency, name=name,
                             loglevel=loglevel, extra_args=extra_args)
        worker.start()
        self.workers.append(worker)
        return worker

    def submit(self, n: int, *, tag: str, prompt_suffix: str = "") -> list[str]:
        """Submit `n` jobs with unique prompts (the call log maps prompts back to jobs)."""
        requests = []
        for i in range(n):
            prompt = f"{tag} job {i} {uuid.uuid4().hex[:8]}{prompt_suffix}"
            # force: these jobs test delivery, not content dedupe (unique prompts would never match anyway)
            requests.append({"video_uri": f"s3://{BUCKET}/{self.video_keys[i % len(self.video_keys)]}",
                             "prompt": prompt, "model": self.settings.model, "force": True})
        jobs = self.client.submit_many(requests)
        for request, job in zip(requests, jobs, strict=True):
            self.prompts[prompt_digest(request["prompt"])] = job.id
        return [job.id for job in jobs]

    def statuses(self, ids: list[str]) -> collections.Counter[str]:
        with self.client.db.transaction() as session:
            rows = session.execute(text("SELECT status, count(*) FROM jobs GROUP BY status")).all()
        return collections.Counter({status: n for status, n in rows})

    def finished(self) -> int:
        counts = self.statuses([])
        return sum(n for status, n in counts.items() if status in TERMINAL_STATUSES)

    def wait_until(self, done: int, *, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.finished() >= done:
                return True
            time.sleep(0.2)
        return False

    def wait_rows(self, ids: list[str], *, timeout_s: float) -> dict[str, Any]:
        """Poll until every job is finished; the state columns only (a prompt may not even be readable)."""
        deadline = time.monotonic() + timeout_s
        query = text("SELECT id, status, error_kind, error_message, attempts FROM jobs")
        while True:
            with self.client.db.transaction() as session:
                rows = {row.id: row for row in session.execute(query) if row.id in set(ids)}
            if all(rows.get(j) is not None and rows[j].status in TERMINAL_STATUSES for j in ids):
                return rows
            if time.monotonic() > deadline:
                raise TimeoutError(f"unfinished after {timeout_s}s: "
                                   f"{[(j, rows[j].status if j in rows else None) for j in ids][:20]}\n{self.logs()}")
            time.sleep(0.2)

    def figures(self, scenario: str, ids: list[str], *, seconds: float, note: str = "") -> Figures:
        with self.client.db.transaction() as session:
            rows = session.execute(text("SELECT id, status FROM jobs")).all()
            twice = session.scalar(text(
                "SELECT count(*) FROM (SELECT job_id FROM completion_audit GROUP BY job_id HAVING count(*) > 1) t"))
        wanted = set(ids)
        status = {job_id: s for job_id, s in rows if job_id in wanted}
        counts = collections.Counter(status.values())
        calls = self.scoring_calls() if self.call_log_dir.exists() else None
        return Figures(
            scenario=scenario,
            submitted=len(ids),
            succeeded=counts.get("succeeded", 0),
            failed=counts.get("failed", 0),
            lost=sum(1 for j in ids if status.get(j) not in TERMINAL_STATUSES),
            scored_twice=int(twice or 0),
            raw_calls=sum(calls.values()) if calls is not None else None,
            raw_repeats=sum(1 for n in calls.values() if n > 1) if calls is not None else None,
            seconds=seconds,
            note=note,
        )

    def scoring_calls(self) -> collections.Counter[str]:
        """Scoring calls per job id, from every worker's call log."""
        calls: collections.Counter[str] = collections.Counter()
        for path in self.call_log_dir.glob("calls-*.log"):
            for line in path.read_text().splitlines():
                _pid, digest = line.split()
                calls[self.prompts.get(digest, digest)] += 1
        return calls

    def logs(self) -> str:
        return "\n".join(f"--- {w.name} ---\n{w.log()[-4000:]}" for w in self.workers)

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop(signal.SIGKILL, timeout_s=10) if worker.alive() else None
        if hasattr(self, "_client"):
            self._client.close()
        if self.s3_proxy is not None:
            self.s3_proxy.down()
        self.s3.stop()
        self.redis.stop()


def chaos_settings(**overrides: Any) -> Settings:
    """Timings scaled down for tests: a killed worker's jobs come back within seconds, not a minute."""
    base: dict[str, Any] = dict(
        queue=f"chaos-{uuid.uuid4().hex[:8]}",
        s3_access_key_id="chaos",
        s3_secret_access_key="chaos-secret",
        allowed_buckets=[BUCKET, "absent-bucket"],
        allow_file_uris=False,
        batch_size=4,
        batch_wait_ms=20,
        max_attempts=6,
        retry_base_delay_s=0.5,
        retry_max_delay_s=8.0,
        heartbeat_interval_s=0.5,
        lease_s=3.0,
        reap_interval_s=1.0,
        visibility_timeout_s=15,
        redis_restore_interval_s=1,
        db_wait_s=45.0,
        metrics_port=0,
        poll_interval_s=0.2,
    )
    base.update(overrides)
    return Settings(**base)


def build_cluster(root: Path, database_url: str, *, s3_proxy: bool = False, **overrides: Any) -> Cluster:
    """Start Redis and S3 for one scenario and prepare the database, videos and fast stand-in model."""
    redis = RedisServer(root / "redis", appendonly=True).start()
    s3 = S3Server(root / "s3").start()
    proxy = TcpProxy(s3.port).up() if s3_proxy else None
    upgrade(database_url)
    install_completion_audit(database_url)
    call_log_dir = root / "calls"
    model = build_fast_stand_in(root / "fast-stand-in", call_log_dir=call_log_dir)
    settings = chaos_settings(**{"database_url": database_url, "broker_url": redis.url,
                                 "s3_endpoint_url": proxy.url if proxy else s3.url, "model": str(model),
                                 "model_roots": [str(model)], **overrides})
    keys = upload_tiny_videos(settings, root / "videos")
    return Cluster(root=root, settings=settings, redis=redis, s3=s3, s3_proxy=proxy, video_keys=keys,
                   call_log_dir=call_log_dir)


def restart_s3_behind_proxy(cluster: Cluster, *, outage_s: float) -> None:
    """Take S3 down for `outage_s`: refuse connections, stop moto, start a fresh moto, re-create the bucket and
    objects (moto keeps them in memory only), and only then accept connections again."""
    assert cluster.s3_proxy is not None, "build the cluster with s3_proxy=True"
    cluster.s3_proxy.down()
    started = time.monotonic()
    cluster.s3.stop()
    fresh = S3Server(cluster.root / "s3-again").start()
    cluster.s3 = fresh
    cluster.s3_proxy.target_port = fresh.port
    upload_tiny_videos(cluster.settings.model_copy(update={"s3_endpoint_url": fresh.url}), cluster.root / "videos")
    time.sleep(max(0.0, outage_s - (time.monotonic() - started)))
    cluster.s3_proxy.up()


def kill(worker: FleetWorker) -> None:
    assert worker.process is not None
    os.kill(worker.process.pid, signal.SIGKILL)
    worker.process.wait()
