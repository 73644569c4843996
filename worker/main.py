"""Start a worker process: build its runtime, register the task, start the engine, consume the queue.

One process per GPU (pin it with CUDA_VISIBLE_DEVICES). Celery runs with the threads pool: its threads fetch
and decode videos concurrently while the engine thread batches them onto the device, and nothing forks
after CUDA is touched. SIGTERM is a warm shutdown: in-flight jobs finish (or go back unacknowledged).
"""

from __future__ import annotations

import logging

from core.queueing import make_celery_app, worker_queues
from core.settings import Settings
from core.variants import resolve_model
from worker.maintenance import Maintenance
from worker.runtime import build_runtime, install_runtime
from worker.tasks import register_tasks

log = logging.getLogger(__name__)


def run_worker(settings: Settings, *, concurrency: int | None = None, preload: bool = True,
               loglevel: str = "INFO", hostname: str | None = None) -> None:
    logging.basicConfig(level=loglevel, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    runtime = build_runtime(settings)
    install_runtime(runtime)
    app = make_celery_app(settings)
    register_tasks(app)
    runtime.engine.start(preload=resolve_model(settings.model) if preload else None)
    maintenance = Maintenance(runtime, app, interval_s=max(1.0, settings.visibility_timeout_s / 6))
    maintenance.start()
    # Enough download/decode threads to keep the engine's batches full.
    threads = concurrency or max(2, 2 * settings.batch_size)
    argv = [
        "worker",
        "--pool=threads",
        f"--concurrency={threads}",
        f"--queues={','.join(worker_queues(settings))}",  # most urgent first (see core.queueing)
        f"--loglevel={loglevel}",
        "--without-gossip",
        "--without-mingle",
    ]
    if hostname:
        argv.append(f"--hostname={hostname}")
    try:
        app.worker_main(argv)
    finally:
        maintenance.stop()
        runtime.engine.stop()
        runtime.db.dispose()
