"""Resource metrics of a Simvue run as OpenTelemetry observable gauges.

CPU and memory cover a process and all its descendants, as the official client's
``Run.set_pid`` does; GPU utilisation comes from NVML when ``pynvml`` is importable and finds a
device. Gauges carry OTel's semantic-convention names and units (``process.cpu.utilization``,
``process.memory.usage``, ``hw.gpu.utilization``, ``hw.gpu.memory.utilization``), so any OTel
backend behind the same collector understands them; the mapping turns them into Simvue's
``resources/*`` metrics (:func:`.mapping.system.resource_metric`). Nothing here blocks or
raises inside a collection: a failing probe just yields no observation.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import psutil
from opentelemetry.metrics import CallbackOptions, Meter, Observation

from .conventions import (
    HW_GPU_MEMORY_UTILIZATION,
    HW_GPU_UTILIZATION,
    HW_ID,
    HW_TYPE,
    PROCESS_CPU_UTILIZATION,
    PROCESS_MEMORY_USAGE,
)
from .errors import SimvueValidationError
from .threads import call_in_forked_child

__all__ = ["ResourceMonitor", "cpu_count", "sample_tree"]

_LOG = logging.getLogger("simvue_otel.resources")

_GONE = (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess)
"""What psutil raises for a process that died, became a zombie or may not be read."""

_SAMPLE_TTL_S = 0.5
"""How long one tree sample serves further gauges: one collection reads all gauges at once."""

_MIB = float(2**20)


def cpu_count() -> int:
    """Logical CPUs of this host: what ``process.cpu.utilization`` is a fraction of."""
    return psutil.cpu_count() or os.cpu_count() or 1


def sample_tree(
    processes_cache: dict[int, psutil.Process], root: psutil.Process
) -> tuple[float, float]:
    """CPU percent (100 = one core) and resident memory in MiB of ``root`` and its descendants.

    ``processes_cache`` keeps one ``psutil.Process`` per pid between calls, because
    ``cpu_percent(interval=None)`` measures since that object's previous call. A process seen
    for the first time has no previous call (psutil would say 0.0, and a call milliseconds after
    a priming one reads one 10 ms clock tick as hundreds of percent): its share is its average
    since it started instead. Processes that are gone or unreadable are dropped silently.
    """
    try:
        tree = [root, *root.children(recursive=True)]
    except _GONE:
        tree = [root]
    cpu = 0.0
    rss = 0
    alive: set[int] = set()
    for found in tree:
        proc = processes_cache.get(found.pid)
        first = proc is None or proc != found  # new pid, or a pid reused by another process
        if first:
            proc = found
            processes_cache[found.pid] = proc
        assert proc is not None
        try:
            with proc.oneshot():
                if first:
                    proc.cpu_percent(interval=None)  # the start of the next sample's window
                    used = proc.cpu_times()
                    age = max(time.time() - proc.create_time(), 0.05)
                    cpu += 100.0 * (used.user + used.system) / age
                else:
                    cpu += proc.cpu_percent(interval=None)
                rss += proc.memory_info().rss
        except _GONE:
            continue
        alive.add(proc.pid)
    for pid in [pid for pid in processes_cache if pid not in alive]:
        del processes_cache[pid]
    return cpu, rss / _MIB


def _load_nvml() -> tuple[ModuleType, int] | None:
    """The initialised ``pynvml`` module and its GPU count when it imports and sees one."""
    try:
        nvml = importlib.import_module("pynvml")
    except Exception:  # ImportError, or a broken install failing on import
        return None
    try:
        nvml.nvmlInit()
    except Exception:
        _LOG.debug("nvmlInit failed; no GPU metrics", exc_info=True)
        return None
    try:
        count = int(nvml.nvmlDeviceGetCount())
    except Exception:
        count = 0
    if count > 0:
        return nvml, count
    try:
        nvml.nvmlShutdown()
    except Exception:
        _LOG.debug("nvmlShutdown failed", exc_info=True)
    return None


class ResourceMonitor:
    """Observable gauges of the CPU, memory and GPU use of a process tree, for one run.

    The gauges are registered on ``meter`` at construction and read by whatever metric reader
    the meter's provider has; ``close`` stops them reporting and releases NVML.
    """

    def __init__(self, meter: Meter, pid: int | None = None, *, gpus: bool = True) -> None:
        """Watch ``pid`` (default: this process) and its descendants; GPUs too if ``gpus``."""
        if pid is None:
            pid = os.getpid()
        try:
            if isinstance(pid, bool) or not isinstance(pid, int):
                raise TypeError(pid)
            self._root = psutil.Process(pid)
        except (TypeError, ValueError, psutil.Error):
            raise SimvueValidationError("pid", "must be the id of a running process", pid) from None
        self._lock = threading.Lock()
        self._closed = False
        self._processes: dict[int, psutil.Process] = {}
        call_in_forked_child(self._after_fork_in_child)
        self._sample: tuple[float, float] | None = None
        self._sampled_at = float("-inf")

        self._cpus = cpu_count()
        meter.create_observable_gauge(
            PROCESS_CPU_UTILIZATION,
            callbacks=[self._observe_cpu],
            unit="1",
            description="CPU use of the run's process tree, fraction of all logical CPUs",
        )
        meter.create_observable_gauge(
            PROCESS_MEMORY_USAGE,
            callbacks=[self._observe_memory],
            unit="By",
            description="Resident memory of the run's process tree",
        )

        # The import is tried once, here: with no pynvml or no GPU, no gauge and no cost.
        loaded = _load_nvml() if gpus else None
        self._nvml = loaded[0] if loaded is not None else None
        self._gpu_handles: dict[int, Any] = {}
        if loaded is not None:
            count = loaded[1]
            meter.create_observable_gauge(
                HW_GPU_UTILIZATION,
                callbacks=[self._gpu_callback(count, self._gpu_busy)],
                unit="1",
                description="Fraction of time a kernel ran on the GPU (GPUs the run uses)",
            )
            meter.create_observable_gauge(
                HW_GPU_MEMORY_UTILIZATION,
                callbacks=[self._gpu_callback(count, self._gpu_memory)],
                unit="1",
                description="Fraction of the GPU's memory in use (GPUs the run uses)",
            )

    @property
    def pid(self) -> int:
        """The root process watched."""
        return int(self._root.pid)

    def close(self) -> None:
        """Stop every gauge reporting and shut NVML down if this monitor initialised it."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            nvml, self._nvml = self._nvml, None
            self._processes.clear()
        if nvml is not None:
            try:
                nvml.nvmlShutdown()
            except Exception:
                _LOG.debug("nvmlShutdown failed", exc_info=True)

    def _after_fork_in_child(self) -> None:
        """A forked child reports nothing: the parent's gauges cover the whole tree. Its lock
        may have been held by the parent's reader at the fork, so the child gets a new one."""
        self._lock = threading.Lock()
        self._closed = True
        self._nvml = None  # the parent's to shut down

    # -- CPU and memory -----------------------------------------------------------------------

    def _current(self) -> tuple[float, float] | None:
        """The tree sample of this collection: taken once, reused by the other gauges."""
        with self._lock:
            if self._closed:
                return None
            now = time.monotonic()
            if self._sample is None or now - self._sampled_at > _SAMPLE_TTL_S:
                try:
                    self._sample = sample_tree(self._processes, self._root)
                except Exception:  # never let a probe break the reader's collection
                    _LOG.debug("process sampling failed", exc_info=True)
                    self._sample = None
                    return None
                self._sampled_at = now
            if self._root.pid not in self._processes:
                return None  # the watched process itself is gone
            return self._sample

    def _observe_cpu(self, options: CallbackOptions) -> Iterator[Observation]:
        """Callback of the CPU gauge."""
        sample = self._current()
        if sample is not None:
            yield Observation(sample[0] / 100.0 / self._cpus)

    def _observe_memory(self, options: CallbackOptions) -> Iterator[Observation]:
        """Callback of the memory gauge."""
        sample = self._current()
        if sample is not None:
            yield Observation(sample[1] * _MIB)

    # -- GPUs ---------------------------------------------------------------------------------

    def _gpu_callback(
        self, count: int, probe: Callable[[ModuleType, Any], float]
    ) -> Callable[[CallbackOptions], Iterator[Observation]]:
        """A gauge callback reading ``probe`` on each of ``count`` GPUs, one observation per
        GPU the run uses (``hw.id`` its index); a GPU whose NVML query fails yields nothing."""

        def observe(options: CallbackOptions) -> Iterator[Observation]:
            for index in range(count):
                nvml = self._nvml
                if nvml is None:
                    return
                try:
                    handle = self._gpu_handles.get(index)
                    if handle is None:
                        handle = nvml.nvmlDeviceGetHandleByIndex(index)
                        self._gpu_handles[index] = handle
                    if not self._uses_gpu(nvml, handle):
                        continue
                    value = probe(nvml, handle)
                except Exception:
                    _LOG.debug("NVML query of GPU %d failed", index, exc_info=True)
                    continue
                yield Observation(value, {HW_ID: str(index), HW_TYPE: "gpu"})

        return observe

    def _uses_gpu(self, nvml: ModuleType, handle: Any) -> bool:
        """Whether a process of the watched tree runs on this GPU (as Simvue reports only
        GPUs the run uses); when NVML cannot list a GPU's processes, it is reported."""
        pids: set[int] = set()
        try:
            for lister in (
                nvml.nvmlDeviceGetComputeRunningProcesses,
                nvml.nvmlDeviceGetGraphicsRunningProcesses,
            ):
                pids.update(int(p.pid) for p in lister(handle))
        except Exception:
            return True
        with self._lock:
            watched = set(self._processes) | {self._root.pid}
        return bool(pids & watched)

    @staticmethod
    def _gpu_busy(nvml: ModuleType, handle: Any) -> float:
        """Utilisation of the GPU, fraction of time a kernel ran."""
        return float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu) / 100.0

    @staticmethod
    def _gpu_memory(nvml: ModuleType, handle: Any) -> float:
        """Memory used on the GPU, fraction of its total."""
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        return float(memory.used) / float(memory.total)
