"""Operating a fleet: what a worker exposes and how it stops, on real servers and real worker processes.

* One worker with a password in its database URL and an S3 secret, at DEBUG: its /metrics endpoint
  (scraped over HTTP) counts jobs by outcome, stage latencies, batches and the queue load from the
  database; a poison job fails after its attempt budget with the last reason; a job past its time limit
  fails as `time_limit`; `videoscore fleet` prints the same picture; and no secret is in its log.
* Scale-in: SIGTERM stops a worker warm; the jobs it was running finish and nothing is lost or scored twice.
* `videoscore worker --gpus 0,1`: one child per GPU (CUDA_VISIBLE_DEVICES), a crashed child is restarted,
  a job that kills its worker fails as `attempts_exhausted` with `worker_lost` as its last reason once its
  attempts (one, here) are spent, and SIGTERM stops the lot.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from sqlalchemy import bindparam, text

from tests.chaos.cluster import Cluster, build_cluster
from videoscore.core.fleet import QUEUE_LOAD_METRIC
from videoscore.core.jobspec import JobRequest
from videoscore.db import jobs as job_queries
from videoscore.worker.testing.servers import PostgresServer, free_port

DB_PASSWORD = "PG-pa55word-NEVER-LOGGED"
S3_SECRET = "S3-secret-NEVER-LOGGED-42"


def _scrape(port: int) -> dict[str, float]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()  # noqa: S310
    samples = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def test_a_worker_exposes_metrics_fails_poison_and_overlong_jobs_and_never_logs_secrets(
    postgres_server: PostgresServer, tmp_path: Path, report
) -> None:
    url = postgres_server.create_database().replace("postgresql+psycopg://postgres@",
                                                     f"postgresql+psycopg://postgres:{DB_PASSWORD}@")
    port = free_port()
    cluster = build_cluster(tmp_path, url, s3_secret_access_key=S3_SECRET, metrics_port=port, max_attempts=3,
                            retry_base_delay_s=0.2, job_timeout_s=3)
    try:
        worker = cluster.start_worker("metrics", loglevel="DEBUG")
        worker.wait_ready()
        started = time.monotonic()
        good = cluster.submit(20, tag="metrics")
        [poison] = cluster.submit(1, tag="poison", prompt_suffix=" #stand-in:fail")
        with cluster.client.db.transaction() as session:  # waiting in a queue no worker here reads
            job_queries.insert_jobs(session, [JobRequest(video_uri="s3://b/k.mp4", prompt=f"w{i}") for i in range(3)],
                                    queue="elsewhere")
        cluster.wait_rows(good + [poison], timeout_s=120)
        [slow] = cluster.submit(1, tag="slow", prompt_suffix=" #stand-in:sleep=6")  # alone: it blocks the engine
        rows = cluster.wait_rows(good + [poison, slow], timeout_s=120)
        time.sleep(1.5)  # let the last persist be observed

        assert [rows[j].status for j in good] == ["succeeded"] * 20
        assert (rows[poison].status, rows[poison].error_kind, rows[poison].attempts) == (
            "failed", "attempts_exhausted", 3)
        assert (
            "last error: internal_error: RuntimeError: the fast stand-in was asked to fail"
            in rows[poison].error_message
        )
        assert (rows[slow].status, rows[slow].error_kind) == ("failed", "time_limit")
        assert "time limit of 3s" in rows[slow].error_message

        m = _scrape(port)
        assert m['videoscore_jobs_total{outcome="succeeded"}'] == 20
        assert m['videoscore_jobs_total{outcome="failed"}'] == 2
        assert m['videoscore_jobs_total{outcome="retried"}'] == 2  # the poison job's attempts 1 and 2
        assert m['videoscore_job_failures_total{kind="attempts_exhausted"}'] == 1
        assert m['videoscore_job_failures_total{kind="time_limit"}'] == 1
        for stage in ("download", "decode", "persist"):
            assert m[f'videoscore_stage_seconds_count{{stage="{stage}"}}'] == 20, stage
        assert m['videoscore_stage_seconds_count{stage="forward"}'] >= 1
        assert m["videoscore_batch_size_count"] >= 1 and m["videoscore_batch_size_sum"] >= 20
        assert "videoscore_model_load_seconds" in m
        assert m["videoscore_gpu_max_memory_allocated_bytes"] == 0  # no CUDA here
        assert m[f'{QUEUE_LOAD_METRIC}{{queue="elsewhere"}}'] == 3
        assert m["videoscore_database_up"] == 1

        env = {**os.environ, **cluster.settings.to_env()}
        fleet = subprocess.run([sys.executable, "-m", "videoscore", "fleet"], env=env, capture_output=True,
                               text=True, timeout=60, check=True).stdout
        assert cluster.settings.queue in fleet and "elsewhere" in fleet
        assert "attempts_exhausted" in fleet and "time_limit" in fleet and "jobs/s" in fleet

        worker.stop()
        log = worker.log()
        assert "DEBUG" in log and "videoscore_jobs" not in log  # it did log verbosely; nothing odd leaked
        for secret in (DB_PASSWORD, S3_SECRET):
            assert secret not in log, f"{secret} leaked into the worker log"
        assert worker.process is not None and worker.process.returncode == 0
        report(cluster.figures("ops: metrics, poison and time limit", good + [poison, slow],
                               seconds=time.monotonic() - started,
                               note="(poison failed after 3 attempts, slow job failed at its 3 s limit)"))
    finally:
        cluster.stop()


def test_sigterm_drains_a_worker_and_scale_in_loses_nothing(cluster: Cluster, report) -> None:
    leaving = cluster.start_worker("leaving", concurrency=4)
    staying = cluster.start_worker("staying", concurrency=4)
    leaving.wait_ready()
    staying.wait_ready()
    assert leaving.process is not None
    started = time.monotonic()
    ids = cluster.submit(16, tag="drain", prompt_suffix=" #stand-in:sleep=0.4")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not _running_on(cluster, leaving.process.pid):
        time.sleep(0.02)
    in_flight = _running_on(cluster, leaving.process.pid)
    code = leaving.stop(signal.SIGTERM, timeout_s=60)  # scale-in: the pod or process gets SIGTERM

    assert code == 0 and "Warm shutdown" in leaving.log()
    with cluster.client.db.transaction() as session:  # the leaving worker finished what it held, itself
        finished = session.execute(text("SELECT id, status, attempts, worker_host FROM jobs WHERE id IN :ids")
                                   .bindparams(bindparam("ids", expanding=True)), {"ids": in_flight}).all()
    assert in_flight and all(r.status == "succeeded" and r.attempts == 1 and
                             r.worker_host.endswith(f"/{leaving.process.pid}") for r in finished)
    rows = cluster.wait_rows(ids, timeout_s=120)
    figures = cluster.figures("ops: SIGTERM drains one of two workers", ids, seconds=time.monotonic() - started,
                              note=f"({len(in_flight)} jobs in flight at SIGTERM, all finished by the leaving worker)")
    report(figures)
    assert all(r.status == "succeeded" and r.attempts == 1 for r in rows.values())
    assert (figures.lost, figures.scored_twice, figures.raw_repeats) == (0, 0, 0)


def _running_on(cluster: Cluster, pid: int) -> list[str]:
    with cluster.client.db.transaction() as session:
        return list(session.scalars(text("SELECT id FROM jobs WHERE status = 'running' AND worker_host LIKE :w"),
                                    {"w": f"%/{pid}"}))


def test_gpus_flag_runs_one_child_per_gpu_restarts_crashes_and_fails_a_job_that_kills_its_worker(
    postgres_server: PostgresServer, tmp_path: Path, report
) -> None:
    cluster = build_cluster(tmp_path, postgres_server.create_database(), max_attempts=1)
    try:
        supervisor = cluster.start_worker("fleet", concurrency=2, extra_args=("--gpus", "0,1"))
        supervisor.wait_ready(timeout_s=240, nodes=2)
        started = time.monotonic()
        good = cluster.submit(20, tag="gpus")
        cluster.wait_rows(good, timeout_s=120)
        children = {gpu: int(pid) for gpu, pid in re.findall(r"GPU (\d): worker pid (\d+)", supervisor.log())}
        assert set(children) == {"0", "1"}
        for gpu, pid in children.items():
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            assert f"CUDA_VISIBLE_DEVICES={gpu}".encode() in environ
        with cluster.client.db.transaction() as session:
            hosts = {h.rsplit("/", 1)[1] for (h,) in session.execute(text("SELECT DISTINCT worker_host FROM jobs"))}
        assert hosts <= {str(p) for p in children.values()} and len(hosts) >= 1

        [crasher] = cluster.submit(1, tag="crash", prompt_suffix=" #stand-in:crash")
        rows = cluster.wait_rows([crasher], timeout_s=240)
        log = supervisor.log()
        assert (rows[crasher].status, rows[crasher].error_kind) == ("failed", "attempts_exhausted")
        assert "last error: worker_lost" in rows[crasher].error_message
        assert log.count("restarting in") >= 1, "a crashed child is restarted"

        code = supervisor.stop(signal.SIGTERM, timeout_s=90)
        assert code == 0 and "all GPU workers stopped" in supervisor.log()
        for pid in re.findall(r"GPU \d: worker pid (\d+)", supervisor.log()):
            assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
        report(cluster.figures("ops: --gpus 0,1 with a job that kills its worker", good + [crasher],
                               seconds=time.monotonic() - started,
                               note=f"({log.count('restarting in')} child restarts; the crashing job failed as "
                                    "attempts_exhausted, last error worker_lost)"))
    finally:
        cluster.stop()
