"""The worker's GPU gauges come from NVML where it answers and are simply absent where it does not."""

from __future__ import annotations

import sys
import types
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from videoscore.worker.service import metrics

GPU_SERIES = {"videoscore_gpu_utilization_ratio", "videoscore_gpu_memory_used_bytes",
              "videoscore_gpu_memory_total_bytes"}


def _families(registry: CollectorRegistry) -> dict[str, list]:
    text = generate_latest(registry).decode()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def _fake_pynvml(count: int, *, init_fails: bool = False) -> types.ModuleType:
    module = types.ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    def init() -> None:
        if init_fails:
            raise NVMLError("Driver Not Loaded")

    def handle(index: int) -> int:
        if index >= count:
            raise NVMLError("Invalid Argument")
        return index

    module.NVMLError = NVMLError  # type: ignore[attr-defined]
    module.nvmlInit = init  # type: ignore[attr-defined]
    module.nvmlDeviceGetCount = lambda: count  # type: ignore[attr-defined]
    module.nvmlDeviceGetHandleByIndex = handle  # type: ignore[attr-defined]
    module.nvmlDeviceGetUtilizationRates = lambda h: SimpleNamespace(gpu=40 + h, memory=10)  # type: ignore[attr-defined]
    module.nvmlDeviceGetMemoryInfo = lambda h: SimpleNamespace(used=2**30 * (h + 1), total=2**34, free=0)  # type: ignore[attr-defined]
    return module


def test_without_a_gpu_the_metrics_serve_no_gpu_series_and_raise_nothing() -> None:
    # nvidia-ml-py may be installed or not; what matters is that no driver or device means no series
    if metrics.nvml_collector() is not None:
        pytest.skip("this host has an NVIDIA GPU and driver")
    assert metrics.track_gpus() is False
    assert not GPU_SERIES & set(_families(metrics.REGISTRY))


def test_a_driver_that_does_not_load_means_no_gpu_series(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml(2, init_fails=True))
    assert metrics.nvml_collector() is None


def test_without_nvidia_ml_py_installed_there_are_no_gpu_series(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml raises ImportError
    assert metrics.nvml_collector() is None


def test_with_nvml_each_visible_gpu_reports_utilisation_and_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml(4))
    collector = metrics.nvml_collector(visible_devices="1,3")
    assert collector is not None
    registry = CollectorRegistry()
    registry.register(collector)
    families = _families(registry)
    util = {s.labels["gpu"]: s.value for s in families["videoscore_gpu_utilization_ratio"]}
    used = {s.labels["gpu"]: s.value for s in families["videoscore_gpu_memory_used_bytes"]}
    assert util == {"1": 0.41, "3": 0.43}
    assert used == {"1": 2.0 * 2**30, "3": 4.0 * 2**30}
    assert {s.value for s in families["videoscore_gpu_memory_total_bytes"]} == {2.0**34}


def test_unnumbered_visible_devices_mean_every_gpu_nvml_sees(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml(2))
    collector = metrics.nvml_collector(visible_devices="GPU-0b1c")
    assert collector is not None and collector.indices == (0, 1)
