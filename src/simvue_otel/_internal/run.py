"""``Run``: Simvue's Run API, recorded through OpenTelemetry.

Each run gets its own OTel Resource (``simvue.run.key`` + name + folder), its own tracer,
logger and meter providers, and its own pipeline to a sink, so several runs in one program
never mix. The run is a root span ``simvue.run`` whose attributes carry the run's state; each
change also exports a zero-length ``simvue.run.snapshot`` span so the server shows it within
seconds. ``log_metrics`` and ``log_event`` become log records emitted in the root span's
context; resource metrics are observable gauges. See ``docs/conventions.md``.
"""

from __future__ import annotations

import atexit
import datetime as _dt
import json
import logging
import os
import re
import signal
import sys
import threading
import time
import traceback
import uuid
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Literal, TypeAlias
from urllib.parse import quote

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry._logs import SeverityNumber
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.trace import Status, StatusCode

from . import conventions as cv
from .config import SimvueConfig, resolve_config
from .detect import detect
from .errors import SimvueOtelError, SimvueValidationError
from .exporters import (
    SimvueLogExporter,
    SimvueLogRecordProcessor,
    SimvueMetricExporter,
    SimvueSpanExporter,
    SimvueSpanProcessor,
)
from .flatten import leaves
from .mapping.sdk import attributes_from_sdk
from .names import generate_run_name
from .pipeline import ROW, Kind, MetricRow, Pipeline, default_shutdown_timeout
from .resources import cpu_count
from .sink import NullSink, create_sink, online_spool_directory, resolve_mode
from .sink.files import private_dir, read_private, replace_private
from .sink.online import run_index_for
from .validation import (
    check_metadata_size,
    parse_retention,
    validate_folder,
    validate_interval,
    validate_log_level,
    validate_metadata,
    validate_metric_name,
    validate_name,
    validate_status,
    validate_step,
    validate_tags,
    validate_text,
    validate_timeout,
    validate_visibility,
)
from .version import VERSION

__all__ = ["Run"]

_LOG = logging.getLogger("simvue_otel.run")

_SEVERITY = {
    "debug": SeverityNumber.DEBUG,
    "info": SeverityNumber.INFO,
    "warning": SeverityNumber.WARN,
    "error": SeverityNumber.ERROR,
    "critical": SeverityNumber.FATAL,
}
_REGISTRY_DIR = "otel-runs"


def _registry_file(name: str) -> str:
    """A run's registry file: its name, with what a file name cannot hold (``/``, and ``%``
    itself) percent-encoded, so ``step/1`` is ``step%2F1.json``."""
    return quote(name, safe=" -_.:") + ".json"


_RUN_MODES = ("online", "offline", "otlp", "disabled")


class _Terminated(SystemExit):
    """Raised in the main thread on SIGTERM so open runs end ``terminated``."""


class _Signals:
    """One SIGTERM handler for all runs, installed while any run is live (main thread only)."""

    runs: weakref.WeakSet[Run] = weakref.WeakSet()
    previous: Any = None
    installed = False
    hooked = False
    lock = threading.Lock()

    @classmethod
    def add(cls, run: Run) -> None:
        with cls.lock:
            cls.runs.add(run)
            if not cls.hooked:
                cls.hooked = True
                previous_hook = sys.excepthook

                def hook(kind: Any, value: Any, tb: Any) -> None:
                    # An uncaught exception ends the runs a program never closed as failed
                    # (or terminated on Ctrl-C), with the exception as an event, before the
                    # interpreter's exit would close them as completed.
                    interrupted = issubclass(kind, KeyboardInterrupt | _Terminated)
                    for open_run in list(cls.runs):
                        try:
                            open_run._finish(
                                "terminated" if interrupted else "failed",
                                None if interrupted else value,
                            )
                        except Exception:
                            _LOG.exception("closing run %s failed", open_run.name)
                    previous_hook(kind, value, tb)

                sys.excepthook = hook
            if cls.installed or threading.current_thread() is not threading.main_thread():
                return
            try:
                cls.previous = signal.signal(signal.SIGTERM, cls._on_sigterm)
                cls.installed = True
            except (ValueError, OSError):  # not the main interpreter thread
                pass

    @classmethod
    def _on_sigterm(cls, signum: int, frame: FrameType | None) -> None:
        for run in list(cls.runs):
            run._interrupted = True
        previous = cls.previous
        if callable(previous):
            previous(signum, frame)
        raise _Terminated(128 + signum)


def _close_open_runs() -> None:
    """At interpreter exit, for runs the program never closed: deliver what they logged. A
    run ended by SIGTERM ends ``terminated``; any other keeps no final status, so the server
    marks it ``lost`` after its heartbeat timeout (Simvue's rule for a run never closed)."""
    for run in list(_Signals.runs):
        try:
            if run._interrupted:
                run._finish("terminated", None)
            else:
                run._abandon()
        except Exception:
            _LOG.exception("delivering run %s at exit failed", run.name)


atexit.register(_close_open_runs)


RunMode: TypeAlias = Literal["online", "offline", "disabled", "otlp"]
"""Where a run's records go: a Simvue server, the offline spool, nowhere, or an OTLP endpoint."""

Timestamp: TypeAlias = "_dt.datetime | str | float | int"
"""A moment: a datetime (UTC when it has no zone), an ISO 8601 string, or epoch seconds."""


def _epoch_ns(timestamp: Timestamp | None, field: str = "timestamp") -> int:
    """A Simvue timestamp (datetime, ISO string, or epoch seconds) as epoch nanoseconds.

    Like Simvue, a datetime or ISO string without a zone is taken as UTC; one with a zone
    is converted to UTC (Simvue drops the offset; converting keeps the instant right)."""
    if timestamp is None:
        return time.time_ns()
    if isinstance(timestamp, bool):
        raise SimvueValidationError(
            field, "must be a datetime, ISO 8601 string or number", timestamp
        )
    if isinstance(timestamp, int | float):
        return int(timestamp * 1e9)
    if isinstance(timestamp, str):
        try:
            timestamp = _dt.datetime.fromisoformat(timestamp)
        except ValueError:
            raise SimvueValidationError(
                field, "must be an ISO 8601 date and time such as 2024-01-31T12:00:00", timestamp
            ) from None
    if isinstance(timestamp, _dt.datetime):
        if timestamp.tzinfo is None:
            timestamp = timestamp.replace(tzinfo=_dt.timezone.utc)
        return int(timestamp.timestamp() * 1e9)
    raise SimvueValidationError(field, "must be a datetime, ISO 8601 string or number", timestamp)


class Run:
    """A Simvue run, recorded through OpenTelemetry.

    Use it as a context manager (``with Run() as run: run.init(...)``) or call ``close()``.
    ``mode`` is ``"online"`` (to the server named by ``SIMVUE_URL``/``SIMVUE_TOKEN`` or
    simvue.toml), ``"offline"`` (to a spool on disk, uploaded later by ``simvue-otel send``),
    ``"otlp"`` (OTLP to ``simvue-otel bridge`` or a collector: ``otlp_endpoint``, else
    ``OTEL_EXPORTER_OTLP_ENDPOINT``; ``OTEL_EXPORTER_OTLP_HEADERS`` and ``_PROTOCOL`` apply)
    or ``"disabled"`` (does nothing, costs nothing).
    """

    def __init__(
        self,
        mode: RunMode | None = None,
        *,
        server_url: str | None = None,
        server_token: str | None = None,
        offline_directory: str | Path | None = None,
        abort_callback: Callable[[Run], None] | None = None,
        otlp_endpoint: str | None = None,
        otlp_headers: Mapping[str, str] | None = None,
    ) -> None:
        self._mode = resolve_mode(mode, allowed=_RUN_MODES)
        self._otlp = (otlp_endpoint, otlp_headers)
        self._metric_exporter: Any = None
        self._config: SimvueConfig | None = None
        if self._mode not in ("disabled", "otlp"):
            self._config = resolve_config(server_url, server_token, offline_directory)
            if self._mode == "online":
                self._config.require_online()
        self._abort_callback = abort_callback
        self._suppress_errors = False
        self._queue_blocking = True
        self._resources_interval: float | None = 60.0
        self._resources_disabled = False
        self._pid: int | None = None
        self._status: str | None = None
        self._name: str | None = None
        self._folder = "/"
        self._key: str | None = None
        self._description: str | None = None
        self._tags: tuple[str, ...] = ()
        self._metadata: dict[str, Any] = {}
        self._visibility: str | list[str] | None = None
        self._ttl: int | None = None
        self._heartbeat_timeout: int | None = 180
        self._step = 0
        self._t0 = time.monotonic()
        self._pipeline: Pipeline | None = None
        self._tracer_provider: TracerProvider | None = None
        self._logger_provider: LoggerProvider | None = None
        self._meter_provider: MeterProvider | None = None
        self._monitor: Any = None
        self._root: trace.Span | None = None
        self._root_ctx: otel_context.Context | None = None
        self._logger: Any = None
        self._put: Callable[[Kind[MetricRow], MetricRow], bool] | None = None  # fast path
        self._row_resource: dict[str, Any] = {}
        self._valid_names: set[str] = set()
        self._in_context = False
        self._interrupted = False
        self._closed = False
        self._stated = False
        self._resource: Resource | None = None
        self._shell_vars: tuple[str, ...] = ()
        self._lock = threading.RLock()
        self._owner_pid = os.getpid()  # the process that starts and ends the run

    def __reduce__(self) -> Any:
        raise TypeError(
            "a simvue_otel.Run cannot be pickled, so it cannot be passed to another process "
            "(a multiprocessing argument, or the spawn and forkserver start methods): with the "
            "fork start method, a child uses the Run its parent created as a global (it logs "
            "metrics and events into it; the parent ends it); otherwise each process makes a "
            "Run of its own"
        )

    # -- context manager ------------------------------------------------------------------

    def __enter__(self) -> Run:
        self._in_context = True
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            status = "completed"
        elif issubclass(exc_type, KeyboardInterrupt | _Terminated) or self._interrupted:
            status = "terminated"
        elif isinstance(exc, SystemExit) and not exc.code:
            status = "completed"  # sys.exit(0) is a clean end
        else:
            status = "failed"
        self._finish(status, exc if status == "failed" else None)

    # -- properties -----------------------------------------------------------------------

    @property
    def name(self) -> str | None:
        """The run's name (generated ``adjective-noun`` when none was given)."""
        return self._name

    @property
    def key(self) -> str | None:
        """The run key: a UUID naming this run on every OTel signal and pipeline."""
        return self._key

    @property
    def status(self) -> str | None:
        """``created``, ``running``, ``completed``, ``failed`` or ``terminated``."""
        return self._status

    @property
    def folder(self) -> str:
        return self._folder

    @property
    def id(self) -> str | None:
        """The server's id for the run, once the server has it (online mode); else None."""
        if self._mode != "online" or self._key is None or self._pipeline is None:
            return None
        sink = self._pipeline.sink
        found = sink.run_id(self._key)
        if found is None and not self._closed:
            self._pipeline.flush(10.0)
            found = sink.run_id(self._key)
        return str(found) if found is not None else None

    @property
    def duration(self) -> float:
        """Seconds since the run started (or reconnected)."""
        return time.monotonic() - self._t0

    # -- configuration --------------------------------------------------------------------

    def config(
        self,
        *,
        suppress_errors: bool | None = None,
        queue_blocking: bool | None = None,
        disable_resources_metrics: bool | None = None,
        resources_metrics_interval: float | None = None,
        system_metrics_interval: float | None = None,
    ) -> bool:
        """Set how the run behaves (before or after ``init``; resource settings apply at
        ``init``). ``system_metrics_interval`` is Simvue 2.6's name for the interval."""
        if suppress_errors is not None:
            self._suppress_errors = bool(suppress_errors)
        interval = resources_metrics_interval
        if system_metrics_interval is not None:
            interval = system_metrics_interval
        if interval is not None and disable_resources_metrics:
            return self._error(
                SimvueValidationError(
                    "resources_metrics_interval",
                    "cannot be set together with disable_resources_metrics=True",
                    interval,
                )
            )
        try:
            if interval is not None:
                self._resources_interval = validate_interval(interval)
        except SimvueValidationError as exc:
            return self._error(exc)
        if queue_blocking is not None:
            self._queue_blocking = bool(queue_blocking)
        if disable_resources_metrics is not None:
            self._resources_disabled = bool(disable_resources_metrics)
        return True

    def set_pid(self, pid: int) -> None:
        """Monitor the resources of process ``pid`` and its children instead of this one
        (call it before ``init``, as with Simvue's ``Run.set_pid``)."""
        if self._status is not None:
            self._error(RuntimeError("set_pid() must be called before init()"))
            return
        if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
            self._error(SimvueValidationError("pid", "must be a positive process id", pid))
            return
        self._pid = pid

    # -- lifecycle ------------------------------------------------------------------------

    def init(
        self,
        name: str | None = None,
        *,
        metadata: Mapping[str, Any] | None = None,
        tags: Sequence[str] | None = None,
        description: str | None = None,
        folder: str = "/",
        running: bool = True,
        retention_period: str | int | None = None,
        resources_metrics_interval: float | None = 60,
        visibility: str | Sequence[str] | None = None,
        timeout: int | None = 180,
        notification: str = "none",
        record_shell_vars: Sequence[str] | None = None,
    ) -> bool:
        """Start the run (``running=True``) or register it as queued (``running=False``).

        Every argument is checked before anything is recorded; an invalid one raises
        :class:`SimvueValidationError` naming it (or, with ``config(suppress_errors=True)``,
        is logged and the run disabled).
        """
        if self._mode == "disabled":
            return True
        if self._status is not None:
            return self._error(RuntimeError("init() was already called for this run"))
        try:
            self._name = validate_name(name) if name is not None else generate_run_name()
            self._folder = validate_folder(folder)
            self._tags = validate_tags(tags) if tags is not None else ()
            self._metadata = validate_metadata(metadata) if metadata is not None else {}
            if description is not None:
                description = validate_text(description, "description")
            self._description = description
            self._ttl = parse_retention(retention_period)
            validate_visibility(visibility)
            if isinstance(visibility, str) or visibility is None:
                self._visibility = visibility
            else:
                self._visibility = list(visibility)
            if resources_metrics_interval != 60:  # else keep what config() set (default 60)
                self._resources_interval = validate_interval(resources_metrics_interval)
            self._heartbeat_timeout = validate_timeout(timeout)
            if notification not in ("none", "all", "error", "lost"):
                raise SimvueValidationError(
                    "notification", "must be one of none, all, error, lost", notification
                )
            if record_shell_vars is not None:
                if isinstance(record_shell_vars, str) or not all(
                    isinstance(p, str) and p for p in record_shell_vars
                ):
                    raise SimvueValidationError(
                        "record_shell_vars",
                        "must be a list or set of environment variable names or glob patterns",
                        record_shell_vars,
                    )
                self._shell_vars = tuple(record_shell_vars)
        except SimvueValidationError as exc:
            return self._error(exc)
        self._key = str(uuid.uuid4())
        try:
            self._start_pipeline()
        except SimvueOtelError as exc:
            return self._error(exc)
        if running:
            self._begin("running")
        else:
            self._status = "created"
            self._snapshot()
        self._write_registry()
        _Signals.add(self)
        return True

    def reconnect(self, run: str) -> bool:
        """Resume a run by its server id or name (a queued run from ``init(..., running=False)``,
        or one left ``lost``): it turns ``running`` and this object records into it.

        The run keeps what it has: its tags, metadata, description, visibility, retention and
        heartbeat timeout are read from the server (offline: from the run's local record),
        and only what this object changes afterwards is sent. A run that has ended, or a
        name that several runs share, is refused with the reason.
        """
        if self._mode == "disabled":
            return True
        if self._status is not None:
            return self._error(RuntimeError("reconnect() must be called before init()"))
        try:
            found = self._find_run(run)
        except SimvueOtelError as exc:
            return self._error(exc)
        self._key, self._name, self._folder = found.key, found.name, found.folder
        self._description = found.description
        self._tags = found.tags
        self._metadata = dict(found.metadata)
        self._visibility = found.visibility
        self._ttl = found.ttl
        self._heartbeat_timeout = found.heartbeat_timeout
        try:
            self._start_pipeline()
        except SimvueOtelError as exc:
            return self._error(exc)
        self._begin("running")
        self._write_registry()
        _Signals.add(self)
        return True

    def close(self) -> bool:
        """End the run as ``completed`` and deliver whatever is not yet sent.

        In a process forked from the one that started the run, deliver what this process
        logged so far and leave the run running: the process that started it ends it."""
        self._finish("completed", None)
        return True

    def set_status(self, status: str) -> bool:
        """End the run with this status: ``completed``, ``failed`` or ``terminated``."""
        try:
            chosen = validate_status(status)
            if chosen not in cv.FINAL_STATUSES:
                raise SimvueValidationError(
                    "status", "must be one of completed, failed, terminated", status
                )
        except SimvueValidationError as exc:
            return self._error(exc)
        if self._in_child() and self._status is not None and self._mode != "disabled":
            return self._error(RuntimeError(self._child_refusal("set_status")))
        self._finish(chosen, None)
        return True

    # -- updates --------------------------------------------------------------------------

    def update_tags(self, tags: Sequence[str]) -> bool:
        """Add tags to the run's tags."""
        if self._skip("update_tags"):
            return True
        try:
            new = validate_tags(tags)
        except SimvueValidationError as exc:
            return self._error(exc)
        self._tags = self._tags + tuple(t for t in new if t not in self._tags)
        self._snapshot()
        return True

    def set_tags(self, tags: Sequence[str]) -> bool:
        """Replace the run's tags."""
        if self._skip("set_tags"):
            return True
        try:
            self._tags = validate_tags(tags)
        except SimvueValidationError as exc:
            return self._error(exc)
        self._snapshot()
        return True

    def update_metadata(self, metadata: Mapping[str, Any]) -> bool:
        """Merge metadata into the run's: given keys replaced, others kept."""
        if self._skip("update_metadata"):
            return True
        try:
            new = validate_metadata(metadata)
            check_metadata_size({**self._metadata, **new})  # what the run would hold
        except SimvueValidationError as exc:
            return self._error(exc)
        self._metadata.update(new)
        self._snapshot(metadata=new)
        return True

    # -- data -----------------------------------------------------------------------------

    def log_metrics(
        self,
        metrics: Mapping[str, float],
        step: int | None = None,
        time: float | None = None,
        timestamp: Timestamp | None = None,
    ) -> bool:
        """Record metric values at one step: ``step`` counts calls from 0 unless given,
        ``time`` is seconds since ``init`` unless given, ``timestamp`` is now unless given."""
        logger = self._logger
        if logger is None or self._status != "running":
            if self._mode == "disabled" or (self._closed and self._suppress_errors):
                return True
            return self._error(RuntimeError(self._not_running("log_metrics")))
        try:
            if metrics.__class__ is not dict and not isinstance(metrics, Mapping):
                raise SimvueValidationError("metrics", "must be a dict of name: number", metrics)
            valid = self._valid_names
            convert = False
            for name, value in metrics.items():
                if name not in valid:
                    validate_metric_name(name, field="metrics")
                    if len(valid) >= cv.MAX_METRICS_PER_RUN:  # a server refuses the rest
                        raise SimvueValidationError(
                            "metrics",
                            f"a run holds at most {cv.MAX_METRICS_PER_RUN} distinct metric names",
                            name,
                        )
                    valid.add(name)
                cls = value.__class__
                if cls is not float and cls is not int and not isinstance(value, int | float):
                    # numpy scalars and the like: anything that is a real number
                    if isinstance(value, str | bytes) or not hasattr(value, "__float__"):
                        raise SimvueValidationError(
                            f"metrics[{name!r}]", "must be an int or float", value
                        )
                    convert = True
            if convert:
                metrics = {k: float(v) for k, v in metrics.items()}
            if step is None:
                step = self._step
            elif step.__class__ is not int:
                step = validate_step(step)
            elif step < 0:
                raise SimvueValidationError("step", "must be an integer >= 0", step)
            stamp = _epoch_ns(timestamp) if timestamp is not None else None
            if time is not None and (
                time.__class__ is bool or not isinstance(time, int | float) or time != time
            ):
                raise SimvueValidationError("time", "must be a number of seconds", time)
        except SimvueValidationError as exc:
            return self._error(exc)
        self._step += 1
        elapsed = time if time is not None else _monotonic() - self._t0
        put = self._put
        if put is not None:
            # In process, the log record travels as its fields: the mapping reads the same
            # body, step, time and timestamp as from the SDK record, built at a fraction of
            # the cost (no SDK LogRecord, no attribute cleaning of two known-good values).
            put(
                ROW,
                (
                    self._row_resource,
                    dict(metrics),  # a snapshot: callers often reuse and mutate one dict
                    step,
                    elapsed,
                    (stamp if stamp is not None else _time_ns()) * 1e-9,
                ),
            )
            return True
        logger.emit(
            body=dict(metrics),  # a snapshot: callers often reuse and mutate one dict
            event_name=cv.METRICS_EVENT,
            attributes={cv.METRICS_STEP: step, cv.METRICS_TIME: elapsed},
            timestamp=stamp,
            context=self._root_ctx,
        )
        return True

    def log_event(
        self, message: str, *, timestamp: Timestamp | None = None, log_level: str | None = None
    ) -> bool:
        """Record a timestamped message (``log_level``: debug, info, warning, error, critical)."""
        if self._logger is None or self._status != "running":
            if self._mode == "disabled":
                return True
            return self._error(RuntimeError(self._not_running("log_event")))
        try:
            message = validate_text(message, "message")
            level = validate_log_level(log_level or "info", field="log_level")
            stamp = _epoch_ns(timestamp) if timestamp is not None else None
        except SimvueValidationError as exc:
            return self._error(exc)
        self._logger.emit(
            body=message,
            event_name=cv.EVENT_EVENT,
            severity_number=_SEVERITY[level],
            severity_text=level.upper(),
            timestamp=stamp,
            context=self._root_ctx,
        )
        return True

    # -- internals ------------------------------------------------------------------------

    def _not_running(self, method: str) -> str:
        if self._status is None:
            return f"the run must be initialised (init or reconnect) before calling {method}()"
        if self._status == "created":
            return f"{method}() needs a running run; this run is queued (init(running=False))"
        return f"{method}() was called after the run ended ({self._status})"

    def _skip(self, method: str) -> bool:
        """True for a no-op (disabled); raises (or logs) when the run cannot take updates."""
        if self._mode == "disabled":
            return True
        if self._status is None or self._closed:
            self._error(RuntimeError(self._not_running(method)))
            return True
        if self._in_child():
            self._error(RuntimeError(self._child_refusal(method)))
            return True
        return False

    # -- forked children ------------------------------------------------------------------

    def _in_child(self) -> bool:
        """True in a process forked from the one that started the run."""
        return self._owner_pid != os.getpid()

    def _child_refusal(self, method: str) -> str:
        return (
            f"{method}() changes the run's state, which only the process that started the run "
            f"(pid {self._owner_pid}) may do; a forked child process (pid {os.getpid()}) logs "
            "metrics and events into it"
        )

    def _deliver_in_child(self) -> None:
        """In a forked child, for ``close``, the end of a ``with`` block and the exit: deliver
        what this process logged so far, and leave the run as it is: its status, end and
        final state belong to the process that started it, and the child may go on logging
        (a pool worker runs many tasks). The child's exit delivers the rest."""
        if self._closed:
            return
        if self._pipeline is not None:
            self._pipeline.flush(default_shutdown_timeout())
        elif self._logger_provider is not None and self._tracer_provider is not None:
            # otlp: the forwarders (restarted in this process at its first record) send it
            timeout_ms = int(default_shutdown_timeout() * 1000)
            self._logger_provider.force_flush(timeout_ms)
            self._tracer_provider.force_flush(timeout_ms)

    def _error(self, exc: BaseException) -> bool:
        """Raise, or with ``suppress_errors`` log and disable the run (Simvue's behaviour)."""
        if not self._suppress_errors:
            raise exc
        _LOG.error("simvue-otel run %s: %s; the run is disabled", self._name or "", exc)
        if self._status is None:
            self._mode = "disabled"
        return False

    def _start_pipeline(self) -> None:
        assert self._key is not None and self._name is not None
        self._owner_pid = os.getpid()
        pipeline: Pipeline | None = None
        if self._mode != "otlp":
            sink = create_sink(self._mode, self._config) if self._mode != "disabled" else NullSink()
            self._pipeline = pipeline = Pipeline(sink, finish_foreign=False)
            pipeline.owned_runs.add(self._key)
            ref = weakref.ref(self)
            sink.abort_listener = lambda key: _abort(ref, key)
        # What the official client records at init (system, git, Python packages, chosen
        # environment variables), as Resource attributes the mapping turns into Simvue's.
        detected = Resource(detect(shell_vars=self._shell_vars))
        base = detected.merge(Resource.create({cv.SERVICE_NAME: f"simvue-run:{self._name}"}))
        resource = base.merge(
            Resource(
                {
                    cv.RUN_KEY: self._key,
                    cv.RUN_NAME: self._name,
                    cv.RUN_FOLDER: self._folder,
                    cv.CPU_COUNT: cpu_count(),  # what process.cpu.utilization is a fraction of
                    "telemetry.distro.name": "simvue-otel",
                    "telemetry.distro.version": VERSION,
                }
            )
        )
        # Metadata travels as root-span attributes: lift the SDK's 128-attribute cap.
        limits = SpanLimits(max_span_attributes=100_000, max_attribute_length=None)
        tp = TracerProvider(resource=resource, span_limits=limits, shutdown_on_exit=False)
        lp = LoggerProvider(resource=resource, shutdown_on_exit=False)
        if pipeline is not None:
            tp.add_span_processor(SimvueSpanProcessor(SimvueSpanExporter(pipeline=pipeline)))
            lp.add_log_record_processor(
                SimvueLogRecordProcessor(SimvueLogExporter(pipeline=pipeline))
            )
        else:
            from .forward import ForwardingLogProcessor, ForwardingSpanProcessor, otlp_exporters

            spans, logs, self._metric_exporter = otlp_exporters(*self._otlp)
            tp.add_span_processor(ForwardingSpanProcessor(spans, interval=0.2))
            lp.add_log_record_processor(ForwardingLogProcessor(logs))
        self._tracer_provider, self._logger_provider = tp, lp
        self._resource = resource
        if pipeline is not None:
            self._put = pipeline.put
            self._row_resource = attributes_from_sdk(resource.attributes)

    def _start_resources(self) -> None:
        interval = self._resources_interval
        if self._resources_disabled or interval is None:
            return
        from .resources import ResourceMonitor

        if self._pipeline is not None:
            exporter: Any = SimvueMetricExporter(pipeline=self._pipeline)
        elif self._metric_exporter is not None:
            exporter = self._metric_exporter
        else:
            return
        reader = PeriodicExportingMetricReader(exporter, export_interval_millis=interval * 1000.0)
        assert self._resource is not None
        self._meter_provider = MeterProvider(
            resource=self._resource, metric_readers=[reader], shutdown_on_exit=False
        )
        try:
            self._monitor = ResourceMonitor(
                self._meter_provider.get_meter("simvue_otel.resources", VERSION), self._pid
            )
        except SimvueValidationError as exc:
            self._error(exc)

    def _state_attributes(self, metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
        attrs: dict[str, Any] = {cv.RUN_TAGS: list(self._tags)}
        if self._description is not None:
            attrs[cv.RUN_DESCRIPTION] = self._description
        for key, value in (self._metadata if metadata is None else metadata).items():
            attrs[cv.RUN_METADATA_PREFIX + key] = value
        if isinstance(self._visibility, list):
            attrs[cv.RUN_VISIBILITY] = "private"
            attrs[cv.RUN_VISIBILITY_USERS] = self._visibility
        else:
            attrs[cv.RUN_VISIBILITY] = self._visibility or "private"
        if self._ttl is not None:
            attrs[cv.RUN_RETENTION] = self._ttl
        if self._heartbeat_timeout is not None:
            attrs[cv.RUN_HEARTBEAT_TIMEOUT] = self._heartbeat_timeout
        return attrs

    def _begin(self, status: str, *, stated: bool = True) -> None:
        """Open the root span: the run is live from here."""
        assert self._tracer_provider is not None and self._logger_provider is not None
        attrs = self._state_attributes() if stated else {}
        attrs[cv.RUN_STATUS] = status
        tracer = self._tracer_provider.get_tracer("simvue_otel", VERSION)
        self._root = tracer.start_span(
            cv.ROOT_SPAN, attributes=attrs, context=otel_context.Context()
        )
        self._root_ctx = trace.set_span_in_context(self._root)
        self._stated = stated
        self._status = status
        self._t0 = time.monotonic()
        self._step = 0
        self._logger = self._logger_provider.get_logger("simvue_otel", VERSION)
        # The state at start, exported now: through OTLP (no span processor of ours in the
        # path) this is what shows the run live before its root span ends.
        tracer.start_span(cv.SNAPSHOT_SPAN, attributes=attrs, context=self._root_ctx).end()
        self._start_resources()
        if self._meter_provider is not None:
            self._meter_provider.force_flush(5_000)  # a first sample at start, as Simvue does

    def _snapshot(self, metadata: Mapping[str, Any] | None = None) -> None:
        """Export the current state now (a span is exported only when it ends)."""
        if self._tracer_provider is None:
            return
        attrs = self._state_attributes(metadata)
        attrs[cv.RUN_STATUS] = self._status or "running"
        if self._root is not None:
            self._root.set_attributes(attrs)  # the final state carries it too
            self._stated = True
            ctx = self._root_ctx
        else:
            ctx = otel_context.Context()
        tracer = self._tracer_provider.get_tracer("simvue_otel", VERSION)
        tracer.start_span(cv.SNAPSHOT_SPAN, attributes=attrs, context=ctx).end()
        self._write_registry()

    def _finish(self, status: str, exc: BaseException | None) -> None:
        if self._in_child():
            self._deliver_in_child()
            return
        with self._lock:
            if self._closed or self._mode == "disabled" or self._status is None:
                self._closed = True
                return
            self._closed = True
        timeout = default_shutdown_timeout()
        deadline = time.monotonic() + timeout

        def left() -> float:
            return max(0.0, deadline - time.monotonic())

        try:
            if self._root is not None:
                if exc is not None:
                    self._record_exception(exc)
                    self._root.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
                self._root.set_attribute(cv.RUN_STATUS, status)
                self._root.end()
                self._status = status
                self._write_registry()
            if self._monitor is not None:
                self._monitor.close()
            if self._meter_provider is not None:
                self._meter_provider.shutdown(timeout_millis=left() * 1000)
            if self._logger_provider is not None:
                self._logger_provider.shutdown()
            if self._tracer_provider is not None:
                self._tracer_provider.shutdown()
        finally:
            _Signals.runs.discard(self)
            if self._pipeline is not None:
                # The sink says once what it could not deliver, where it is, and how to send it.
                self._pipeline.close(left())

    def _abandon(self) -> None:
        """At exit, for a run never closed: deliver what it logged but state no final
        status; with its heartbeats gone, the server marks it ``lost``."""
        if self._in_child():
            self._deliver_in_child()
            return
        with self._lock:
            if self._closed or self._mode == "disabled" or self._status is None:
                return
            self._closed = True
        if self._status == "running":
            _LOG.warning(
                "run %s was not closed (use `with Run() as run:` or call run.close()); what it "
                "logged is delivered, and the server will mark it lost %s",
                self._name,
                f"after its heartbeat timeout ({self._heartbeat_timeout} s)"
                if self._heartbeat_timeout
                else "never (it has no heartbeat timeout)",
            )
        deadline = time.monotonic() + default_shutdown_timeout()
        try:
            if self._monitor is not None:
                self._monitor.close()
            if self._meter_provider is not None:
                self._meter_provider.shutdown(timeout_millis=5_000)
            if self._logger_provider is not None:
                self._logger_provider.shutdown()
            # The tracer provider is left alone: shutting it down would not end the root span,
            # and the run's state snapshots were exported when they were taken.
        finally:
            _Signals.runs.discard(self)
            if self._pipeline is not None:
                self._pipeline.close(max(0.0, deadline - time.monotonic()))

    def _record_exception(self, exc: BaseException) -> None:
        """The exception as an event: type, message and traceback."""
        assert self._root is not None
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        self._root.add_event(
            cv.EXCEPTION_EVENT,
            {
                "exception.type": type(exc).__name__,
                "exception.message": str(exc),
                "exception.stacktrace": text,
            },
        )

    # -- queued runs: finding them again --------------------------------------------------

    def _registry(self) -> Path | None:
        if self._config is None:
            return None
        return self._config.offline_directory / _REGISTRY_DIR

    def _write_registry(self) -> None:
        """Offline runs are found again by name from a small file holding their state (no
        server to ask), rewritten at each change."""
        directory = self._registry()
        if self._mode != "offline" or directory is None or self._name is None:
            return
        try:
            private_dir(directory)
        except OSError as exc:
            _LOG.warning("cannot record offline run %s in %s: %s", self._name, directory, exc)
            return
        entry = {
            "key": self._key,
            "name": self._name,
            "folder": self._folder,
            "status": self._status,
            "description": self._description,
            "tags": list(self._tags),
            "metadata": self._metadata,
            "visibility": self._visibility,
            "ttl": self._ttl,
            "heartbeat_timeout": self._heartbeat_timeout,
        }
        try:  # under the encoded name: no run name leads out of the directory
            replace_private(directory / _registry_file(self._name), json.dumps(entry).encode())
        except OSError as exc:  # a full disk: the run goes on; only reconnect-by-name suffers
            _LOG.warning("cannot record offline run %s in %s: %s", self._name, directory, exc)

    def _find_run(self, run: str) -> _FoundRun:
        if not isinstance(run, str) or not run:
            raise SimvueValidationError("run", "must be a run name or id", run)
        if self._mode == "otlp":
            raise SimvueValidationError(
                "mode", "reconnect() needs online or offline mode (it asks the server)", "otlp"
            )
        if self._mode == "offline":
            directory = self._registry()
            path = directory / _registry_file(run) if directory else None
            if path is None or not path.exists():
                raise SimvueValidationError(
                    "run", f"no offline run of that name in {directory}", run
                )
            try:
                entry = json.loads(read_private(path))
            except (OSError, ValueError) as exc:
                raise SimvueValidationError(
                    "run", f"the record of this offline run in {directory} is unusable: {exc}", run
                ) from None
            found = _FoundRun.from_registry(entry)
        else:
            found = self._find_online(run)
        if found.status in cv.FINAL_STATUSES:
            raise SimvueValidationError(
                "run",
                f"run {found.name!r} has ended ({found.status}); reconnect() resumes a queued or "
                "lost run: start a new run instead",
                run,
            )
        return found

    def _find_online(self, run: str) -> _FoundRun:
        """The run with this id (one GET), else the one run with this name (a filter)."""
        from .client import SimvueClient
        from .errors import NotFoundError

        assert self._config is not None
        with SimvueClient.from_config(self._config) as client:
            doc: dict[str, Any] | None = None
            if _ID_SHAPE.match(run):
                try:
                    doc = client.get_run(run)
                except NotFoundError:
                    doc = None
            if doc is None:
                named = client.find_runs_by_name(run)
                if not named:
                    raise SimvueValidationError(
                        "run", "no run with this name or id on the server", run
                    )
                if len(named) > 1:
                    # Several runs share the name: the one still queued is the one to resume.
                    queued = [r for r in named if r.get("status") == "created"]
                    if len(queued) != 1:
                        ids = ", ".join(f"{r.get('id')} ({r.get('status')})" for r in named[:20])
                        more = f" and {len(named) - 20} more" if len(named) > 20 else ""
                        raise SimvueValidationError(
                            "run",
                            f"{len(named)} runs have this name and {len(queued)} of them is "
                            f"queued (created); reconnect by id: {ids}{more}",
                            run,
                        )
                    named = queued
                doc = client.get_run(str(named[0]["id"]))
            run_id = str(doc.get("id") or run)
            metadata = doc.get("metadata") or {}
            key = metadata.get(cv.RUN_KEY_METADATA) if isinstance(metadata, dict) else None
            if not isinstance(key, str) or not key:
                # A run made by another client: give it a key so our records find it.
                key = str(uuid.uuid4())
                client.update_metadata(run_id, {cv.RUN_KEY_METADATA: key})
            if self._mode == "online":
                # Tell this process's uploader which run the key is (no second run made).
                run_index_for(online_spool_directory(self._config)).put(key, run_id)
            return _FoundRun.from_server(key, doc)


_ID_SHAPE = re.compile(r"^[A-Za-z0-9]{22}$")
"""The shape of a Simvue run id (``OBJECT_ID`` of the official client)."""


@dataclass(frozen=True)
class _FoundRun:
    """A run found for ``reconnect``: its identity and the state it already has."""

    key: str
    name: str
    folder: str
    status: str | None
    description: str | None
    tags: tuple[str, ...]
    metadata: dict[str, Any]
    visibility: str | list[str] | None
    ttl: int | None
    heartbeat_timeout: int | None

    @classmethod
    def from_registry(cls, entry: Mapping[str, Any]) -> _FoundRun:
        return cls(
            key=str(entry["key"]),
            name=str(entry["name"]),
            folder=str(entry.get("folder") or "/"),
            status=entry.get("status"),
            description=entry.get("description"),
            tags=tuple(entry.get("tags") or ()),
            metadata=dict(entry.get("metadata") or {}),
            visibility=entry.get("visibility"),
            ttl=entry.get("ttl"),
            heartbeat_timeout=entry.get("heartbeat_timeout", 180),
        )

    @classmethod
    def from_server(cls, key: str, doc: Mapping[str, Any]) -> _FoundRun:
        """The server's run as this object's state: metadata leaves that a run can state
        (numbers, strings, booleans) are kept; others stay on the server untouched."""
        metadata = doc.get("metadata")
        flat = {
            k: v
            for _keys, k, v in (leaves(metadata) if isinstance(metadata, Mapping) else ())
            if isinstance(v, bool | int | float | str) and k != cv.RUN_KEY_METADATA
        }
        shared = doc.get("visibility") or {}
        visibility: str | list[str] | None = None
        if shared.get("public"):
            visibility = "public"
        elif shared.get("tenant"):
            visibility = "tenant"
        elif shared.get("users"):
            visibility = [str(u) for u in shared["users"]]
        timeout = doc.get("heartbeat_timeout")
        ttl = doc.get("ttl")
        return cls(
            key=key,
            name=str(doc.get("name") or ""),
            folder=str(doc.get("folder") or "/"),
            status=doc.get("status"),
            description=doc.get("description"),
            tags=tuple(str(t) for t in doc.get("tags") or ()),
            metadata=flat,
            visibility=visibility,
            ttl=int(ttl) if isinstance(ttl, int | float) else None,
            heartbeat_timeout=int(timeout) if isinstance(timeout, int | float) else None,
        )


def _abort(ref: weakref.ReferenceType[Run], key: str) -> None:
    """The server was asked to abort a run (from its UI or API): the run's
    ``abort_callback(run)`` decides; without one, the process is terminated as Simvue does
    (SIGTERM, so the run ends ``terminated`` with its data delivered)."""
    run = ref()
    if run is None or run._key != key or run._closed:
        return
    if run._abort_callback is not None:
        run._abort_callback(run)
        return
    _LOG.warning("the Simvue server asked to abort run %s; terminating this process", run.name)
    run._interrupted = True
    os.kill(os.getpid(), signal.SIGTERM)


# ``time`` under names that ``log_metrics(time=...)`` does not shadow
_monotonic = time.monotonic
_time_ns = time.time_ns
