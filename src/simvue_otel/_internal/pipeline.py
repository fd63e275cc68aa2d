"""The in-process pipeline: SDK telemetry → (worker thread) mapping → sink.

The application's threads only append to a queue; one worker thread converts, maps and
hands records to the sink (it shares the interpreter lock with the application, which is
what the per-call figures in ``bench/`` measure). Nothing is dropped: when the worker falls
far behind, producers wait (back-pressure) instead of losing data, unlike the SDK's batch
processors.

After ``os.fork`` (``multiprocessing``'s fork start method, or a program's own fork) the
worker thread does not exist in the child, and the queue and sink it inherited hold the
parent's records. The child drops that copy (the parent delivers it), and at its first use
starts a worker of its own and a fresh sink of the same kind (:meth:`Sink.for_child`), which
it closes when it exits (``atexit``, and ``multiprocessing``'s exit finalizers, which run where
``atexit`` does not). A child never ends a run it did not start.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .config import SimvueConfig, shutdown_timeout, span_events
from .mapping import Mapper
from .mapping.model import MetricRow, OtelSpan
from .mapping.records import Record
from .mapping.sdk import attributes_from_sdk, map_sdk_logs, metrics_from_sdk, spans_from_sdk
from .sink import Sink, create_sink
from .threads import call_in_forked_child, mark_exiting, start_daemon, watch_sigterm_in_child

if TYPE_CHECKING:
    from opentelemetry.sdk._logs import ReadableLogRecord, ReadWriteLogRecord
    from opentelemetry.sdk.metrics.export import MetricsData
    from opentelemetry.sdk.trace import ReadableSpan

__all__ = [
    "LOG",
    "METRICS",
    "PENDING",
    "ROW",
    "SPAN",
    "Kind",
    "MetricRow",
    "Pipeline",
    "acquire_shared",
    "deliver_at_child_exit",
    "release_shared",
    "shared_terminating",
]

_LOG = logging.getLogger("simvue_otel.pipeline")

T = TypeVar("T")
T_contra = TypeVar("T_contra", contravariant=True)


@dataclass(frozen=True, slots=True, eq=False)
class Kind(Generic[T_contra]):
    """One kind of queued item: how the worker maps a run of them in order, and the
    Resources an item names (the attributes, or SDK Resources when ``sdk``), by which a
    forked child knows its parent's runs. ``Pipeline.put(kind, item)`` takes only an item of
    the kind's type; a new kind of telemetry is one more of these."""

    name: str
    map: Callable[[Mapper, Sequence[T_contra]], list[Record]]
    resources: Callable[[T_contra], Iterable[Any]]
    sdk: bool = True


def _map_pending(mapper: Mapper, spans: Sequence[OtelSpan]) -> list[Record]:
    records: list[Record] = []
    for span in spans:
        records.extend(mapper.pending_span(span))
    return records


def _map_metrics(mapper: Mapper, items: Sequence[MetricsData]) -> list[Record]:
    records: list[Record] = []
    for data in items:
        records.extend(mapper.metrics(metrics_from_sdk(data)))
    return records


def _flushed(_mapper: Mapper, events: Sequence[threading.Event]) -> list[Record]:
    for done in events:
        done.set()
    return []


SPAN: Kind[ReadableSpan] = Kind(
    "span", lambda mapper, spans: mapper.spans(spans_from_sdk(spans)), lambda s: [s.resource]
)
PENDING: Kind[OtelSpan] = Kind("pending", _map_pending, lambda s: [s.resource], sdk=False)
"""A root span seen at its start (already in the neutral model)."""
LOG: Kind[ReadableLogRecord | ReadWriteLogRecord] = Kind(
    "log", map_sdk_logs, lambda r: [r.resource]
)
METRICS: Kind[MetricsData] = Kind(
    "metrics", _map_metrics, lambda m: [rm.resource for rm in m.resource_metrics]
)
ROW: Kind[MetricRow] = Kind("row", Mapper.metric_rows, lambda row: [row[0]], sdk=False)
"""A ``Run``'s ``simvue.metrics`` log record as its fields (see ``Mapper.metric_rows``)."""
_FLUSH: Kind[threading.Event] = Kind("flush", _flushed, lambda _: ())
"""Everything queued before it is mapped and handed to the sink: set the event."""

_Item = tuple[Kind[Any], Any]
"""A queued item and its kind (``put`` checks that they agree)."""

default_shutdown_timeout = shutdown_timeout
"""Seconds to wait for delivery at shutdown (``SIMVUE_OTEL_SHUTDOWN_TIMEOUT``, 30)."""


class Pipeline:
    """A queue, a mapper and a sink, with one worker thread between them."""

    def __init__(
        self,
        sink: Sink,
        mapper: Mapper | None = None,
        *,
        max_queue: int = 5_000,
        interval: float = 0.2,
        finish_foreign: bool = True,
    ) -> None:
        self.sink = sink
        self.mapper = mapper or Mapper(span_events=span_events())
        self.max_queue = max_queue
        self.interval = interval
        self.finish_foreign = finish_foreign
        self._queue: deque[_Item] = deque()
        self._wake = threading.Event()
        self._room = threading.Event()
        self._room.set()
        self._closed = False
        self._lock = threading.Lock()
        self._child_pending = False  # forked, not yet started in this process
        self._inherited: list[Sink] = []  # sinks a parent left: kept, never used
        self._inherited_queue: deque[_Item] = deque()
        self.owned_runs: set[str] = set()
        """Keys of the runs the process that made this pipeline starts (a ``Run``'s): a forked
        child records into them but leaves their making and ending to that process."""
        self._thread = start_daemon(self._run, "simvue-otel-pipeline")
        call_in_forked_child(self._after_fork_in_child)

    @property
    def closed(self) -> bool:
        return self._closed

    # -- producers (application threads) --------------------------------------------------

    def put(self, kind: Kind[T], item: T) -> bool:
        """Queue one item; False once the pipeline is closed."""
        if self._closed:
            return False
        if self._child_pending:
            self._start_in_child()
        queue = self._queue
        queue.append((kind, item))
        if len(queue) >= self.max_queue:
            self._backpressure()
        return True

    def put_many(self, kind: Kind[T], items: Iterable[T]) -> bool:
        """Queue several items of one kind."""
        if self._closed:
            return False
        if self._child_pending:
            self._start_in_child()
        self._queue.extend((kind, item) for item in items)
        self._wake.set()
        if len(self._queue) >= self.max_queue:
            self._backpressure()
        return True

    def _backpressure(self) -> None:
        self._room.clear()
        self._wake.set()
        while len(self._queue) >= self.max_queue and not self._closed:
            self._room.wait(0.05)

    # -- control --------------------------------------------------------------------------

    def flush(self, timeout: float | None = None, *, deliver: bool = True) -> bool:
        """Map everything queued so far and hand it to the sink; with ``deliver``, also wait
        for the sink to deliver it."""
        start = time.monotonic()
        if self._child_pending:
            return True  # a forked child that has logged nothing: nothing of its own to deliver
        if not self._thread.is_alive():
            return self.sink.flush(timeout) if deliver else True
        done = threading.Event()
        self._queue.append((_FLUSH, done))
        self._wake.set()
        if not done.wait(timeout):
            return False
        if not deliver:
            return True
        left = None if timeout is None else max(0.0, timeout - (time.monotonic() - start))
        return self.sink.flush(left)

    def terminating(self) -> None:
        """The process is being stopped by a signal: runs whose root span ends without an
        explicit or error status, and runs this process ends itself, end ``terminated``."""
        self.mapper.unset_status = "terminated"

    def close(self, timeout: float = 30.0) -> bool:
        """Map what is queued, end foreign runs, and close the sink within ``timeout``."""
        with self._lock:
            if self._closed:
                return True
            if self._child_pending:  # a forked child that logged nothing: the parent's to close
                self._closed = True
                return True
            start = time.monotonic()
            done = threading.Event()
            self._queue.append((_FLUSH, done))
            self._wake.set()
            done.wait(timeout)
            self._closed = True
            self._wake.set()
            self._room.set()
            self._thread.join(max(0.1, timeout - (time.monotonic() - start)))
            if self._queue:  # never silent: what the deadline cut off is said
                _LOG.warning(
                    "%d telemetry item(s) were not yet mapped when the shutdown timeout (%.0f s) "
                    "ran out, and are lost; raise SIMVUE_OTEL_SHUTDOWN_TIMEOUT",
                    len(self._queue),
                    timeout,
                )
            if self.finish_foreign:
                self._submit(self.mapper.finish_foreign())
            left = max(0.0, timeout - (time.monotonic() - start))
            return self.sink.close(left)

    # -- fork -----------------------------------------------------------------------------

    def _after_fork_in_child(self) -> None:
        """Runs in a forked child before anything else (keep it small): what was queued, and
        the sink with its buffers and spool files, are the parent's, which delivers them. The
        child gets an empty queue, fresh locks, and no worker until its first use."""
        if not self._child_pending:  # (a child that never started keeps its parent's)
            self._inherited.append(self.sink)
            self._inherited_queue = self._queue  # read at the child's first use, then dropped
        with contextlib.suppress(Exception):  # never break a fork
            self.sink.drop_inherited()  # e.g. the parent's spool segment's file descriptor
        self._queue = deque()
        self._wake = threading.Event()
        self._room = threading.Event()
        self._room.set()
        self._lock = threading.Lock()
        self._child_pending = not self._closed

    def _start_in_child(self) -> None:
        """A forked child's first use: a fresh sink and worker of its own, closed at its exit.
        A child of a child starts again from its parent's."""
        with self._lock:
            if not self._child_pending:
                return
            parent_sink = self._inherited[-1]
            # The parent's runs: a Run's, those its mapper knows, and those named by what it
            # had queued and not yet mapped (a run span that has just started).
            parent_runs = set(self.owned_runs) | set(self.mapper._runs)
            parent_runs |= _run_keys(self._inherited_queue)
            self._inherited_queue = deque()
            # The child's own mapper: a foreign run's counts and end belong to the parent.
            self.mapper = Mapper(span_events=self.mapper.span_events, max_runs=self.mapper.max_runs)
            self.finish_foreign = False
            self.sink = parent_sink.for_child(parent_runs)
            self._thread = start_daemon(self._run, "simvue-otel-pipeline")
            self._child_pending = False
        _close_at_child_exit(self)

    # -- worker ---------------------------------------------------------------------------

    def _run(self) -> None:
        queue = self._queue
        while True:
            self._wake.wait(self.interval)
            self._wake.clear()
            while queue:
                self._process_some()
                if len(queue) < self.max_queue:
                    self._room.set()
            self._room.set()
            if self._closed and not queue:
                return

    def _process_some(self, limit: int = 20_000) -> None:
        """Map up to ``limit`` queued items, each run of one kind at once, in order."""
        queue = self._queue
        kind: Kind[Any] | None = None
        group: list[Any] = []
        for _ in range(limit):
            try:
                item_kind, item = queue.popleft()
            except IndexError:
                break
            if item_kind is not kind:
                if group:
                    self._map(kind, group)
                    group = []
                kind = item_kind
            group.append(item)
        if group:
            self._map(kind, group)

    def _map(self, kind: Kind[Any] | None, items: list[Any]) -> None:
        if kind is None:
            return
        try:
            records = kind.map(self.mapper, items)
        except Exception:  # a mapping bug must never stop the pipeline
            _LOG.exception("could not map %d %s item(s) to Simvue records", len(items), kind.name)
            return
        self._submit(records)

    def _submit(self, records: list[Record]) -> None:
        if not records:
            return
        try:
            self.sink.submit(records)
        except Exception:
            _LOG.exception("the sink refused %d record(s)", len(records))


def _run_keys(items: Iterable[_Item]) -> set[str]:
    """The run keys the queued items' Resources name (as the mapper derives them)."""
    keys: set[str] = set()
    resources: dict[int, Any] = {}
    for kind, item in items:
        try:
            for resource in kind.resources(item):
                if id(resource) in resources:
                    continue
                resources[id(resource)] = resource
                attrs: Mapping[str, Any] = (
                    attributes_from_sdk(resource.attributes if resource is not None else None)
                    if kind.sdk
                    else resource
                )
                keys.add(Mapper._run_key(attrs)[0])
        except Exception:  # an item of unexpected shape names no run
            _LOG.debug("no run key in a queued %s item", kind.name, exc_info=True)
    return keys


def deliver_at_child_exit(deliver: Callable[[], None]) -> None:
    """Call ``deliver`` when this forked child exits: through ``atexit`` for a child that exits
    as a program does, and ``multiprocessing``'s exit finalizers for its workers (they leave
    with ``os._exit``, which skips ``atexit``, after running those finalizers, SIGTERM included
    when the child has a handler that raises, as a ``Run``'s does). Call it from the child's
    own code (its first use), after ``multiprocessing`` cleared the finalizers it inherited."""

    def at_exit() -> None:
        mark_exiting()
        if threading.current_thread() is threading.main_thread():
            # The process is ending already: a SIGTERM now (``Pool.terminate`` sends one to
            # workers that are still delivering as they exit) would cut the delivery short.
            # The wait is bounded by the shutdown timeout; SIGKILL still ends it at once.
            with contextlib.suppress(ValueError, OSError):
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
        deliver()

    atexit.register(at_exit)
    mp_util = sys.modules.get("multiprocessing.util")
    if mp_util is not None:
        mp_util.Finalize(None, at_exit, exitpriority=100)
    watch_sigterm_in_child(at_exit)  # a SIGTERM the main thread cannot take still delivers


def _close_at_child_exit(pipeline: Pipeline) -> None:
    """Close a forked child's pipeline (delivering what it holds) when the child exits."""
    ref = weakref.ref(pipeline)

    def close() -> None:
        alive = ref()
        if alive is not None and not alive.closed:
            alive.close(default_shutdown_timeout())

    deliver_at_child_exit(close)


# -- the process-wide pipeline shared by exporters built with no arguments ----------------

_shared_lock = threading.Lock()


def _reinit_shared_lock() -> None:
    """In a forked child: the lock may have been held by another of the parent's threads."""
    global _shared_lock
    _shared_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reinit_shared_lock)


class _Shared:
    pipeline: Pipeline | None = None
    users = 0


def acquire_shared(mode: str | None = None, config: SimvueConfig | None = None) -> Pipeline:
    """The process's shared pipeline (made on first use); pair with :func:`release_shared`.

    Exporters chosen by name (``OTEL_TRACES_EXPORTER=simvue`` ...) are built with no
    arguments, one per signal: sharing one pipeline gives them one sink, one spool and one
    set of runs.
    """
    with _shared_lock:
        pipeline = _Shared.pipeline
        if pipeline is None or pipeline.closed:
            pipeline = Pipeline(create_sink(mode, config))
            _Shared.pipeline = pipeline
            _Shared.users = 0
        _Shared.users += 1
        return pipeline


def shared_terminating() -> None:
    """The process is being stopped by a signal: tell the shared pipeline (if any)."""
    with _shared_lock:
        if _Shared.pipeline is not None:
            _Shared.pipeline.terminating()


def release_shared(pipeline: Pipeline, timeout: float) -> bool:
    """Drop one user of the shared pipeline; the last one closes it."""
    with _shared_lock:
        if _Shared.pipeline is not pipeline:
            return True
        _Shared.users -= 1
        if _Shared.users > 0:
            return pipeline.flush(timeout)
        _Shared.pipeline = None
    return pipeline.close(timeout)
