"""Unit tests of the resource monitor: gauge names (OTel's) and what the mapping makes of them
(Simvue's), process-tree sampling, and NVML handling."""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
import time
import types
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import Gauge, InMemoryMetricReader

from simvue_otel._internal import resources
from simvue_otel._internal.conventions import (
    CPU_COUNT,
    HW_GPU_MEMORY_UTILIZATION,
    HW_GPU_UTILIZATION,
    PROCESS_CPU_UTILIZATION,
    PROCESS_MEMORY_USAGE,
    RESOURCE_CPU_PERCENT,
    RESOURCE_GPU_MEMORY,
    RESOURCE_GPU_PERCENT,
    RESOURCE_MEMORY_MB,
)
from simvue_otel._internal.errors import SimvueValidationError
from simvue_otel._internal.mapping.system import resource_metric
from simvue_otel._internal.resources import ResourceMonitor, cpu_count, sample_tree

BURN = [sys.executable, "-c", "while True: pass"]


class Setup:
    """A real SDK meter provider whose in-memory reader collects on demand."""

    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        self.provider = MeterProvider(metric_readers=[self.reader])
        self.meter = self.provider.get_meter("test_resources")

    def collect(self) -> dict[str, tuple[str, list[float]]]:
        """One collection as Simvue stores it: Simvue metric name → (OTel unit, values), each
        point turned into Simvue's name and unit by the mapping (as a Run's Resource, which
        states the CPU count, lets it); ``self.otel`` keeps the OTel names and units."""
        found: dict[str, tuple[str, list[float]]] = {}
        self.otel: dict[str, tuple[str, list[float]]] = {}
        data = self.reader.get_metrics_data()
        if data is None:
            return found
        resource = {CPU_COUNT: cpu_count()}
        for resource_metrics in data.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    assert isinstance(metric.data, Gauge), metric
                    unit = metric.unit or ""
                    raw = [float(point.value) for point in metric.data.data_points]
                    self.otel[metric.name] = (unit, raw)
                    for point in metric.data.data_points:
                        mapped = resource_metric(
                            metric.name, dict(point.attributes or {}), point.value, resource
                        )
                        assert mapped is not None, (metric.name, point)
                        found.setdefault(mapped[0], (unit, []))[1].append(mapped[1])
        return found


@pytest.fixture
def otel() -> Iterator[Setup]:
    setup = Setup()
    try:
        yield setup
    finally:
        setup.provider.shutdown()


@pytest.fixture
def burner() -> Iterator[subprocess.Popen[bytes]]:
    """A child process that keeps one core busy; killed whatever the test does."""
    child = subprocess.Popen(BURN)
    try:
        yield child
    finally:
        child.kill()
        child.wait(timeout=10)


def value(collected: dict[str, tuple[str, list[float]]], name: str) -> float:
    """The one value observed for ``name`` in a collection."""
    values = observed(collected, name)
    assert len(values) == 1, (name, values)
    return values[0]


def observed(collected: dict[str, tuple[str, list[float]]], name: str) -> list[float]:
    """Values observed for ``name`` (none when the SDK left the metric out)."""
    return collected.get(name, ("", []))[1]


def test_gauges_have_otel_names_and_units_and_map_to_simvues(otel: Setup) -> None:
    monitor = ResourceMonitor(otel.meter, gpus=False)
    try:
        collected = otel.collect()
    finally:
        monitor.close()
    assert set(otel.otel) == {PROCESS_CPU_UTILIZATION, PROCESS_MEMORY_USAGE}
    assert otel.otel[PROCESS_CPU_UTILIZATION][0] == "1"
    assert otel.otel[PROCESS_MEMORY_USAGE][0] == "By"
    assert set(collected) == {RESOURCE_CPU_PERCENT, RESOURCE_MEMORY_MB}
    assert value(collected, RESOURCE_CPU_PERCENT) >= 0.0
    (fraction,) = otel.otel[PROCESS_CPU_UTILIZATION][1]
    assert 0.0 <= fraction <= 1.5  # of all CPUs (a sample may overshoot a little)
    (rss,) = otel.otel[PROCESS_MEMORY_USAGE][1]
    assert value(collected, RESOURCE_MEMORY_MB) == pytest.approx(rss / 2**20)
    assert monitor.pid == psutil.Process().pid


def test_otel_resource_metrics_of_any_producer_map_to_simvues() -> None:
    """The system-metrics instrumentation's process metrics, and GPU metrics under the
    hardware conventions, fill a run's resource plots; what does not fit keeps its name."""
    four = {CPU_COUNT: 4}
    assert resource_metric(PROCESS_CPU_UTILIZATION, {}, 0.5, four) == (RESOURCE_CPU_PERCENT, 200.0)
    assert resource_metric(PROCESS_CPU_UTILIZATION, {}, 0.5, {}) is None  # count unknown
    assert resource_metric(PROCESS_CPU_UTILIZATION, {"cpu.mode": "user"}, 0.5, four) is None
    assert resource_metric(PROCESS_MEMORY_USAGE, {}, 3 * 2**20, {}) == (RESOURCE_MEMORY_MB, 3.0)
    gpu = {"hw.id": "1", "hw.type": "gpu"}
    assert resource_metric(HW_GPU_UTILIZATION, gpu, 0.25, {}) == (
        "resources/gpu.utilisation.percent.1",
        25.0,
    )
    assert resource_metric(HW_GPU_MEMORY_UTILIZATION, gpu, 0.5, {}) == (
        "resources/gpu.utilisation.memory.1",
        50.0,
    )
    assert resource_metric(HW_GPU_UTILIZATION, {**gpu, "hw.gpu.task": "decoder"}, 0.1, {}) is None
    assert resource_metric(HW_GPU_UTILIZATION, {}, 0.1, {}) is None  # which GPU?
    assert resource_metric("process.thread.count", {}, 7, four) is None


def test_memory_of_this_process_is_sane(otel: Setup) -> None:
    monitor = ResourceMonitor(otel.meter, gpus=False)
    try:
        memory = value(otel.collect(), RESOURCE_MEMORY_MB)
    finally:
        monitor.close()
    assert 10.0 < memory < 100 * 1024.0


def test_tree_includes_a_busy_child(otel: Setup, burner: subprocess.Popen[bytes]) -> None:
    monitor = ResourceMonitor(otel.meter, gpus=False)
    try:
        otel.collect()
        time.sleep(1.0)
        cpu = value(otel.collect(), RESOURCE_CPU_PERCENT)
        assert burner.pid in monitor._processes
    finally:
        monitor.close()
    assert cpu > 5.0  # a busy child: far above an idle one, even on busy shared cores


def test_monitor_of_the_child_alone_like_set_pid(
    otel: Setup, burner: subprocess.Popen[bytes]
) -> None:
    monitor = ResourceMonitor(otel.meter, burner.pid, gpus=False)
    try:
        otel.collect()
        time.sleep(1.0)
        collected = otel.collect()
        assert set(monitor._processes) == {burner.pid}
    finally:
        monitor.close()
    assert value(collected, RESOURCE_CPU_PERCENT) > 5.0
    assert value(collected, RESOURCE_MEMORY_MB) > 0.0


def test_dead_child_disappears_without_error(otel: Setup) -> None:
    child = subprocess.Popen(BURN)
    try:
        monitor = ResourceMonitor(otel.meter, gpus=False)
        otel.collect()
        assert child.pid in monitor._processes
        child.kill()
        child.wait(timeout=10)
        time.sleep(0.6)  # past the sample's reuse window
        collected = otel.collect()
        assert child.pid not in monitor._processes
        assert value(collected, RESOURCE_MEMORY_MB) > 10.0
        monitor.close()
    finally:
        child.kill()
        child.wait(timeout=10)


def test_dead_root_yields_nothing(otel: Setup) -> None:
    child = subprocess.Popen(BURN)
    try:
        monitor = ResourceMonitor(otel.meter, child.pid, gpus=False)
        child.kill()
        child.wait(timeout=10)
        collected = otel.collect()
        assert observed(collected, RESOURCE_CPU_PERCENT) == []
        assert observed(collected, RESOURCE_MEMORY_MB) == []
        monitor.close()
    finally:
        child.kill()
        child.wait(timeout=10)


def test_sample_tree_directly(burner: subprocess.Popen[bytes]) -> None:
    cache: dict[int, psutil.Process] = {}
    root = psutil.Process()
    sample_tree(cache, root)
    assert root.pid in cache
    assert burner.pid in cache
    time.sleep(0.5)
    cpu, memory = sample_tree(cache, psutil.Process(burner.pid))
    assert cpu > 5.0
    assert memory > 0.0
    assert set(cache) == {burner.pid}  # this process left the tree, so left the cache


def test_one_sample_per_collection(otel: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = 0
    real = resources.sample_tree

    def counting(cache: dict[int, psutil.Process], root: psutil.Process) -> tuple[float, float]:
        nonlocal calls
        calls += 1
        return real(cache, root)

    monkeypatch.setattr(resources, "sample_tree", counting)
    monitor = ResourceMonitor(otel.meter, gpus=False)
    try:
        calls = 0
        otel.collect()
        assert calls == 1
    finally:
        monitor.close()


@pytest.mark.parametrize("pid", [2**22 + 12345, -1, "1", True])
def test_bad_pid_is_refused(otel: Setup, pid: Any) -> None:
    if isinstance(pid, int) and not isinstance(pid, bool) and psutil.pid_exists(pid):
        pytest.skip("that pid happens to exist here")
    with pytest.raises(SimvueValidationError) as caught:
        ResourceMonitor(otel.meter, pid)
    assert caught.value.field == "pid"
    assert caught.value.value == pid


def test_gpu_gauges_only_with_nvml(otel: Setup) -> None:
    monitor = ResourceMonitor(otel.meter)
    try:
        gpu_names = [name for name in otel.collect() if name.startswith("resources/gpu")]
        assert all(name.startswith("resources/gpu.utilisation.") for name in gpu_names)
    finally:
        monitor.close()
    if importlib.util.find_spec("pynvml") is None:
        assert gpu_names == []
    else:
        # pynvml is installed: gauges exist exactly when NVML initialises and sees a GPU.
        assert bool(gpu_names) == _nvml_sees_a_gpu()


def _nvml_sees_a_gpu() -> bool:
    pynvml = importlib.import_module("pynvml")
    try:
        pynvml.nvmlInit()
    except Exception:
        return False
    try:
        return int(pynvml.nvmlDeviceGetCount()) > 0
    finally:
        pynvml.nvmlShutdown()


class FakeNvml(types.ModuleType):
    """Two GPUs; the utilisation query of GPU 0 fails, as a flaky driver would."""

    def __init__(self, count: int = 2) -> None:
        super().__init__("pynvml")
        self.count = count
        self.initialised = 0
        self.shutdowns = 0

    def nvmlInit(self) -> None:
        self.initialised += 1

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return self.count

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> Any:
        if handle == 0:
            raise RuntimeError("NVML_ERROR_GPU_IS_LOST")
        return types.SimpleNamespace(gpu=42, memory=7)

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:
        return types.SimpleNamespace(used=(handle + 1) * 256, total=1024, free=0)


def test_fake_nvml_failing_call_yields_nothing(
    otel: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monitor = ResourceMonitor(otel.meter)
    try:
        collected = otel.collect()
        assert fake.initialised == 1
        assert observed(collected, RESOURCE_GPU_PERCENT.format(index=0)) == []
        assert value(collected, RESOURCE_GPU_PERCENT.format(index=1)) == 42.0
        assert value(collected, RESOURCE_GPU_MEMORY.format(index=0)) == 25.0
        assert value(collected, RESOURCE_GPU_MEMORY.format(index=1)) == 50.0
        assert collected[RESOURCE_GPU_MEMORY.format(index=1)][0] == "1"
        assert set(otel.otel) >= {HW_GPU_UTILIZATION, HW_GPU_MEMORY_UTILIZATION}
        assert RESOURCE_CPU_PERCENT in collected
    finally:
        monitor.close()
    assert fake.shutdowns == 1
    monitor.close()
    assert fake.shutdowns == 1

    after = otel.collect()
    assert all(observed(after, name) == [] for name in after), after


class FakeNvmlWithProcesses(FakeNvml):
    """Two GPUs: this process runs on GPU 1 only; GPU 0 belongs to someone else."""

    def __init__(self) -> None:
        super().__init__()
        self.owner = {0: [999_999], 1: [os.getpid()]}

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> Any:
        return types.SimpleNamespace(gpu=10 * (handle + 1), memory=0)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> list[Any]:
        return [types.SimpleNamespace(pid=p) for p in self.owner[handle]]

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: int) -> list[Any]:
        return []


def test_only_gpus_the_run_uses_are_reported(otel: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeNvmlWithProcesses()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monitor = ResourceMonitor(otel.meter)
    try:
        collected = otel.collect()
        assert observed(collected, RESOURCE_GPU_PERCENT.format(index=0)) == []
        assert observed(collected, RESOURCE_GPU_MEMORY.format(index=0)) == []
        assert value(collected, RESOURCE_GPU_PERCENT.format(index=1)) == 20.0
        assert value(collected, RESOURCE_GPU_MEMORY.format(index=1)) == 50.0
    finally:
        monitor.close()


def test_nvml_without_devices_or_failing_init(otel: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = FakeNvml(count=0)
    monkeypatch.setitem(sys.modules, "pynvml", empty)
    monitor = ResourceMonitor(otel.meter)
    monitor.close()
    assert empty.initialised == 1
    assert empty.shutdowns == 1  # released at once: nothing to watch

    broken = FakeNvml()

    def fail() -> None:
        raise RuntimeError("NVML_ERROR_DRIVER_NOT_LOADED")

    monkeypatch.setattr(broken, "nvmlInit", fail)
    monkeypatch.setitem(sys.modules, "pynvml", broken)
    monitor = ResourceMonitor(otel.meter)
    monitor.close()
    assert broken.shutdowns == 0
    assert not any(name.startswith("resources/gpu") for name in otel.collect())


def test_gpus_false_never_touches_nvml(otel: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monitor = ResourceMonitor(otel.meter, gpus=False)
    monitor.close()
    assert fake.initialised == 0


def _average_cpu(pid: int) -> float:
    """A process's CPU use since it started, in percent of one core, from the kernel's
    counters: what it really got, however loaded the machine is."""
    proc = psutil.Process(pid)
    with proc.oneshot():
        used = proc.cpu_times()
        age = max(time.time() - proc.create_time(), 0.05)
    return 100.0 * (used.user + used.system) / age


def test_the_first_cpu_sample_is_right(burner: subprocess.Popen[bytes]) -> None:
    """Collected the moment the monitor starts (as a Run does at init), the CPU use of a busy
    process reads what it has really been getting: not 0, and not one clock tick over a few
    milliseconds read as hundreds of percent. Compared with the kernel's own count rather than
    a fixed share, which a loaded machine need not give the burner."""
    deadline = time.monotonic() + 60
    while sum(psutil.Process(burner.pid).cpu_times()[:2]) < 0.3:  # it has been busy a while
        assert time.monotonic() < deadline, "the burner got no CPU time in 60 s"
        time.sleep(0.1)
    samples = []
    for _ in range(5):
        setup = Setup()  # a fresh provider each time, as each Run has its own
        before = _average_cpu(burner.pid)
        monitor = ResourceMonitor(setup.meter, burner.pid, gpus=False)
        try:
            first = value(setup.collect(), RESOURCE_CPU_PERCENT)
        finally:
            monitor.close()
            setup.provider.shutdown()
        after = _average_cpu(burner.pid)
        samples.append((min(before, after), first, max(before, after)))
    for low, first, high in samples:  # averages over seconds barely move in milliseconds
        assert 0.5 * low <= first <= 1.5 * high + 1.0, samples
