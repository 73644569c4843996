"""Start a worker process: build its runtime, register the task, start the engine, consume the queue.

One process per GPU (pin it with CUDA_VISIBLE_DEVICES, or let `videoscore worker --gpus 0,1` start one child
per GPU). Celery runs with the threads pool: its threads fetch and decode videos concurrently while the
engine thread batches them onto the device, and nothing forks after CUDA is touched: `--gpus` starts each
child with subprocess (fork + exec of a fresh interpreter), never os.fork of a process that holds CUDA.

SIGTERM is Celery's warm shutdown: the worker stops taking messages, the jobs in flight finish (the engine
thread keeps running their batches until the pool has drained), their outcomes are saved and acknowledged,
and messages reserved but not started go back to Redis. A second SIGTERM (or SIGQUIT) is a cold shutdown.

This module imports no model stack at import time, so the `--gpus` supervisor stays a small process.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

from videoscore.core.settings import Settings

log = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def warn_if_concurrency_starves_batches(concurrency: int, batch_size: int) -> bool:
    """Log a warning when `concurrency` task threads cannot keep batches of `batch_size` coming: while a batch runs,
    its jobs wait for their scores, so only the other threads prepare the next batch. True when it warned."""
    if batch_size <= 1 or concurrency >= 2 * batch_size:
        return False
    log.warning("concurrency %d is below 2 x batch size %d: while one batch runs, at most %d videos can be prepared "
                "for the next, so the device will wait or run batches of fewer than %d; set --concurrency %d or more",
                concurrency, batch_size, max(0, concurrency - batch_size), batch_size, 2 * batch_size)
    return True


def run_worker(settings: Settings, *, concurrency: int | None = None, preload: bool = True,
               loglevel: str = "INFO", hostname: str | None = None, events: bool = False) -> None:
    """Run one worker in this process; `events` has Celery send task events (`-E`) for Flower and `celery events`."""
    logging.basicConfig(level=loglevel, format=LOG_FORMAT)
    from videoscore.worker.service import redact

    redact.install(settings)

    from videoscore.core.queueing import make_celery_app, worker_queues
    from videoscore.core.variants import resolve_model
    from videoscore.worker.service import metrics
    from videoscore.worker.service.maintenance import Maintenance
    from videoscore.worker.service.runtime import build_runtime, install_runtime
    from videoscore.worker.service.tasks import register_tasks

    runtime = build_runtime(settings)
    install_runtime(runtime)
    app = make_celery_app(settings)
    register_tasks(app)
    from videoscore.core.fleet import QueueLoadCollector

    metrics.register(QueueLoadCollector(runtime.db))
    metrics_server = metrics.serve(settings.metrics_port, settings.metrics_host)
    runtime.engine.start(preload=resolve_model(settings.model) if preload else None)
    maintenance = Maintenance(runtime, app)
    maintenance.start()
    # Enough download/decode/preprocess threads to keep the engine's batches full.
    threads = concurrency or max(2, 2 * settings.batch_size)
    warn_if_concurrency_starves_batches(threads, settings.batch_size)
    queues = worker_queues(settings)
    log.info("worker %s reads %s; lease %.0fs, heartbeat every %.0fs, visibility timeout %ds",
             runtime.worker_id, ",".join(queues), settings.lease_s, settings.heartbeat_interval_s,
             settings.visibility_timeout_s)
    argv = [
        "worker",
        "--pool=threads",
        f"--concurrency={threads}",
        f"--queues={','.join(queues)}",
        f"--loglevel={loglevel}",
        "--without-gossip",
        "--without-mingle",
    ]
    if hostname:
        argv.append(f"--hostname={hostname}")
    if events:
        argv.append("--task-events")
    from celery.platforms import EX_FAILURE
    from celery.signals import worker_init, worker_shutting_down

    controllers: list[object] = []  # Celery's WorkController: its exitcode says how it stopped
    asked_to_stop: list[str] = []  # a shutdown signal (SIGTERM, SIGINT, SIGQUIT) was received
    worker_init.connect(lambda sender=None, **_: controllers.append(sender), weak=False)
    worker_shutting_down.connect(lambda sig=None, **_: asked_to_stop.append(str(sig)), weak=False)
    try:
        app.worker_main(argv)
    finally:
        maintenance.stop()
        runtime.engine.stop()
        runtime.db.dispose()
        if metrics_server is not None:
            metrics_server.shutdown()
        log.info("worker %s stopped", runtime.worker_id)
    exit_code = getattr(controllers[-1], "exitcode", None) if controllers else None
    if exit_code == EX_FAILURE and not asked_to_stop:
        _restart_in_place(exit_code)


def _restart_in_place(exit_code: int | str) -> None:
    """Celery stopped on an "unrecoverable error" that nobody asked for: start this worker afresh.

    Seen with kombu 5.7's Redis transport when Redis dies: a task thread's ack races the consumer closing the
    broken connection, and the close raises AttributeError instead of a connection error, which ends the
    Celery worker. Jobs in flight have finished and been saved by then (their acknowledgements are lost, so
    Redis hands the messages out again and they are skipped). exec keeps the PID, so the fresh process takes
    back any job this worker still held (claim_job(reclaim_own=True)); it frees CUDA, as any exit does.
    """
    log.error("Celery stopped on an unrecoverable error (exit code %s); restarting this worker in place", exit_code)
    time.sleep(2)  # no tight loop if the error repeats at once
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


# --- one child process per GPU ------------------------------------------------------------------------------


def parse_gpus(spec: str) -> list[str]:
    """`"0,1,3"` → ["0", "1", "3"]; `"all"` → every GPU nvidia-smi lists."""
    if spec.strip() == "all":
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                             capture_output=True, text=True, check=True).stdout
        return [line.strip() for line in out.splitlines() if line.strip()]
    gpus = [part.strip() for part in spec.split(",") if part.strip()]
    if not gpus or len(set(gpus)) != len(gpus):
        raise ValueError(f"--gpus wants distinct GPU indices like 0,1,2 (got {spec!r})")
    return gpus


def child_command(gpu: str, *, concurrency: int | None, preload: bool, loglevel: str,
                  hostname: str | None, events: bool = False) -> list[str]:
    argv = [sys.executable, "-m", entry_module(), "worker", "--loglevel", loglevel,
            "--hostname", f"gpu{gpu}-{hostname or '%h'}" if hostname else f"gpu{gpu}@%h"]
    if concurrency:
        argv += ["--concurrency", str(concurrency)]
    if not preload:
        argv.append("--no-preload")
    if events:
        argv.append("--events")
    return argv


def entry_module() -> str:
    """The module this process was started as (`python -m …`), so children run the same entry point: the
    `videoscore` command, or the test fleet's worker (videoscore.worker.testing.fleet_worker)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    name = getattr(spec, "name", "") or ""
    name = name.removesuffix(".__main__")
    return name if name.startswith("videoscore") else "videoscore"


def child_env(settings: Settings, gpu: str, index: int) -> dict[str, str]:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpu}
    if settings.metrics_port > 0:
        env["VIDEOSCORE_METRICS_PORT"] = str(settings.metrics_port + index)  # one /metrics per child
    return env


def run_gpu_workers(settings: Settings, gpus: Sequence[str], *, concurrency: int | None = None,
                    preload: bool = True, loglevel: str = "INFO", hostname: str | None = None,
                    events: bool = False) -> int:
    """Supervise one worker process per GPU: restart one that dies, pass SIGTERM on and wait for all.

    Children are started with subprocess (a fresh interpreter each), so no process ever forks with CUDA
    initialised, and each sees exactly one GPU as cuda:0. A child that exits on its own (a device error
    makes a worker stop so it can be restarted) is started again after a backoff that grows while it keeps
    failing fast. On SIGTERM/SIGINT every child gets SIGTERM (warm shutdown) and the supervisor waits.
    """
    logging.basicConfig(level=loglevel, format=LOG_FORMAT)
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        if not stopping:
            log.info("signal %d: stopping %d GPU workers (warm shutdown)", signum, len(children))
        stopping = True
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    def start(gpu: str) -> subprocess.Popen[bytes]:
        argv = child_command(gpu, concurrency=concurrency, preload=preload, loglevel=loglevel, hostname=hostname,
                             events=events)
        child = subprocess.Popen(argv, env=child_env(settings, gpu, gpus.index(gpu)))
        log.info("GPU %s: worker pid %d (CUDA_VISIBLE_DEVICES=%s)", gpu, child.pid, gpu)
        started_at[gpu] = time.monotonic()
        return child

    children: dict[str, subprocess.Popen[bytes]] = {}
    started_at: dict[str, float] = {}
    backoff = {gpu: 1.0 for gpu in gpus}
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for gpu in gpus:
        children[gpu] = start(gpu)
    while True:
        if stopping:
            codes = [child.wait() for child in children.values()]
            log.info("all GPU workers stopped (exit codes %s)", codes)
            # -SIGTERM: a child still starting up (not yet in Celery) when our SIGTERM reached it
            return 0 if all(code in (0, -signal.SIGTERM) for code in codes) else 1
        for gpu, child in list(children.items()):
            code = child.poll()
            if code is None or stopping:
                continue
            lived = time.monotonic() - started_at[gpu]
            backoff[gpu] = 1.0 if lived > 60 else min(60.0, backoff[gpu] * 2)
            log.error("GPU %s: worker pid %d exited with %s after %.0fs; restarting in %.0fs",
                      gpu, child.pid, code, lived, backoff[gpu])
            deadline = time.monotonic() + backoff[gpu]
            while time.monotonic() < deadline and not stopping:
                time.sleep(0.2)
            if not stopping:
                children[gpu] = start(gpu)
        time.sleep(0.5)
