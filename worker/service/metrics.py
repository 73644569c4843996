"""Prometheus metrics of one worker process, served on VIDEOSCORE_METRICS_HOST:VIDEOSCORE_METRICS_PORT (default
127.0.0.1:9108; port 0 turns it off; containers set the host to 0.0.0.0 so Prometheus reaches it).

What a fleet operator watches: jobs by outcome, where the time goes per stage (download, decode,
preprocess, forward, persist), how full the batches are, how long the model took to load, the GPU's peak
memory, and the true load per queue (`videoscore_queue_load`, queued + running jobs counted in the database,
which is what an autoscaler should scale on; see producer.fleet). Everything lives in this module's own
registry, so a test process can import it next to the producer's exporter without name clashes.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)

log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

# Outcomes: succeeded and failed are final; retried means handed back after a transient error; skipped means
# a delivery found the job not claimable (finished, cancelled or held by a live worker); superseded means the
# job was taken over before this worker could save its result; dropped means a malformed message.
OUTCOMES = ("succeeded", "failed", "retried", "skipped", "superseded", "dropped")
JOBS = Counter("videoscore_jobs", "Job deliveries handled by this worker, by outcome", ["outcome"], registry=REGISTRY)
for _outcome in OUTCOMES:
    JOBS.labels(_outcome)
FAILURES = Counter(
    "videoscore_job_failures", "Jobs this worker failed for good, by error kind", ["kind"], registry=REGISTRY
)
STAGES = ("download", "decode", "preprocess", "forward", "persist")
STAGE_SECONDS = Histogram(
    "videoscore_stage_seconds",
    "Seconds per pipeline stage (download, decode, persist per job; preprocess, forward per batch)",
    ["stage"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
    registry=REGISTRY,
)
for _stage in STAGES:
    STAGE_SECONDS.labels(_stage)
BATCH_SIZE = Histogram(
    "videoscore_batch_size", "Videos per forward pass", buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64),
    registry=REGISTRY,
)
MODEL_LOAD_SECONDS = Gauge(
    "videoscore_model_load_seconds", "Seconds the current model took to load and warm up", registry=REGISTRY
)
GPU_MAX_MEMORY = Gauge(
    "videoscore_gpu_max_memory_allocated_bytes", "torch.cuda.max_memory_allocated() (0 without CUDA)",
    registry=REGISTRY,
)
IN_FLIGHT = Gauge("videoscore_jobs_in_flight", "Jobs this worker holds right now", registry=REGISTRY)
REAPED = Counter(
    "videoscore_jobs_resent", "Jobs this worker's reaper sent again (orphaned or never sent)", registry=REGISTRY
)


def _gpu_max_memory() -> float:
    torch = sys.modules.get("torch")  # never import torch (or initialise CUDA) just to be scraped
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return 0.0
    return float(torch.cuda.max_memory_allocated())


GPU_MAX_MEMORY.set_function(_gpu_max_memory)


def track_model_load(read_seconds: Callable[[], float | None]) -> None:
    MODEL_LOAD_SECONDS.set_function(lambda: read_seconds() or 0.0)


def track_in_flight(count: Callable[[], int]) -> None:
    IN_FLIGHT.set_function(lambda: float(count()))


def register(collector: Any) -> None:
    REGISTRY.register(collector)


def serve(port: int, host: str = "127.0.0.1") -> Any | None:
    """Start the /metrics HTTP server on `host` (VIDEOSCORE_METRICS_HOST: loopback unless a scraper on another
    host must reach it); port 0 means off."""
    if port <= 0:
        return None
    server, _thread = start_http_server(port, addr=host, registry=REGISTRY)
    log.info("metrics on %s:%d/metrics", host, port)
    return server
