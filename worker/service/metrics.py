"""Prometheus metrics of one worker process, served on VIDEOSCORE_METRICS_HOST:VIDEOSCORE_METRICS_PORT (default
127.0.0.1:9108; port 0 turns it off; containers set the host to 0.0.0.0 so Prometheus reaches it).

What a fleet operator watches: jobs by outcome, where the time goes per stage (download, decode,
preprocess, forward, persist), how full the batches are, how long the model took to load, the GPU's peak
memory, and the true load per queue (`videoscore_queue_load`, queued + running jobs counted in the database,
which is what an autoscaler should scale on; see producer.fleet). Everything lives in this module's own
registry, so a test process can import it next to the producer's exporter without name clashes.

Where NVML answers (the `pynvml` module of nvidia-ml-py, and an NVIDIA driver), `serve` adds the GPU's
utilisation and memory as the driver sees them (`videoscore_gpu_utilization_ratio`,
`videoscore_gpu_memory_used_bytes`, `videoscore_gpu_memory_total_bytes`, labelled by device index): all
processes on the device, not only this one's tensors. Without NVML or a GPU these series are absent, never an
error. NVML is initialised when serving starts, never at import.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
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
from prometheus_client.core import GaugeMetricFamily

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
STAGES = ("download", "decode", "preprocess", "collate", "forward", "persist")
STAGE_SECONDS = Histogram(
    "videoscore_stage_seconds",
    "Seconds per pipeline stage (download, decode, preprocess, persist per job; collate, forward per batch)",
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
BATCH_PADDING = Histogram(
    "videoscore_batch_padding_ratio", "Share of a batch's pixel positions that are padding (computed for nothing)",
    buckets=(0.0, 0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0), registry=REGISTRY,
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


class NvmlCollector:
    """GPU utilisation and memory per device from NVML, read on every scrape (a failed read skips a device)."""

    def __init__(self, nvml: Any, indices: Sequence[int]) -> None:
        self.nvml = nvml
        self.indices = tuple(indices)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        util = GaugeMetricFamily("videoscore_gpu_utilization_ratio",
                                 "Fraction of the last sample period a kernel ran on the GPU (NVML)", labels=["gpu"])
        used = GaugeMetricFamily("videoscore_gpu_memory_used_bytes",
                                 "GPU memory in use by all processes (NVML)", labels=["gpu"])
        total = GaugeMetricFamily("videoscore_gpu_memory_total_bytes", "GPU memory installed (NVML)", labels=["gpu"])
        for index in self.indices:
            try:
                handle = self.nvml.nvmlDeviceGetHandleByIndex(index)
                rates = self.nvml.nvmlDeviceGetUtilizationRates(handle)
                memory = self.nvml.nvmlDeviceGetMemoryInfo(handle)
            except self.nvml.NVMLError as exc:
                log.debug("NVML read of GPU %d failed: %s", index, exc)
                continue
            util.add_metric([str(index)], rates.gpu / 100.0)
            used.add_metric([str(index)], float(memory.used))
            total.add_metric([str(index)], float(memory.total))
        yield from (util, used, total)

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())  # registering must not call NVML


def nvml_collector(visible_devices: str | None = None) -> NvmlCollector | None:
    """A collector for the GPUs this process may use, or None without nvidia-ml-py, a driver or a GPU.

    `visible_devices` is CUDA_VISIBLE_DEVICES (read from the environment when None): NVML numbers every GPU on
    the host, so a worker pinned to some reports only those; UUIDs or an unset variable mean all of them.
    """
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
    except pynvml.NVMLError as exc:  # no driver, no device: no GPU series
        log.debug("no NVML GPU metrics: %s", exc)
        return None
    if count == 0:
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES") if visible_devices is None else visible_devices
    indices = list(range(count))
    if visible is not None and all(part.strip().isdigit() for part in visible.split(",") if part.strip()):
        indices = [int(part) for part in visible.split(",") if part.strip() and int(part) < count]
    return NvmlCollector(pynvml, indices) if indices else None


_nvml_registered = False


def track_gpus() -> bool:
    """Add the NVML GPU gauges to the registry once, where NVML answers; whether they are served."""
    global _nvml_registered
    if not _nvml_registered:
        collector = nvml_collector()
        if collector is not None:
            REGISTRY.register(collector)
            _nvml_registered = True
    return _nvml_registered


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
    track_gpus()
    server, _thread = start_http_server(port, addr=host, registry=REGISTRY)
    log.info("metrics on %s:%d/metrics", host, port)
    return server
