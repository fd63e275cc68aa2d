"""``Run``: Simvue's Run API, recorded through OpenTelemetry.

Each run gets its own OTel Resource (``simvue.run.key`` + name + folder), its own tracer,
logger and meter providers, and its own pipeline to a sink, so several runs in one program
never mix. The run is a root span ``simvue.run`` whose attributes carry the run's state; each
change also exports a zero-length ``simvue.run.snapshot`` span so the server shows it within
seconds. ``log_metrics`` and ``log_event`` become log records emitted in the root span's
context; resource metrics are observable gauges. See ``docs/conventions.md``.

``Run`` is the façade: it checks the user's calls and holds the run's identity and state
(the fields of :mod:`.run_state`); its parts live in modules of their own: the OTel side
(providers, pipeline, root span, resource metrics) in :mod:`.run_telemetry`, finding a run
again for ``reconnect`` (the offline registry, the server through the sink layer) in
:mod:`.run_registry`, and the checks of ``init``'s arguments in :mod:`.run_checks`.
"""

from __future__ import annotations

import atexit
import datetime as _dt
import logging
import os
import signal
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Literal, TypeAlias

from opentelemetry import context as otel_context

from . import conventions as cv
from .config import SimvueConfig, resolve_config
from .errors import SimvueOtelError, SimvueValidationError
from .names import generate_run_name
from .pipeline import ROW, Kind, MetricRow, Pipeline, default_shutdown_timeout
from .run_checks import check_notification, checked_shell_vars, checked_visibility
from .run_registry import find_run, write_registry
from .run_state import initial_state, state_attributes
from .run_telemetry import RunTelemetry
from .sink import resolve_mode
from .threads import note_sigterm, own_sigterm_handler, process_exiting
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
)

__all__ = ["Run"]

_LOG = logging.getLogger("simvue_otel.run")

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
        note_sigterm()
        for run in list(cls.runs):
            run._interrupted = True
        previous = cls.previous
        if callable(previous):
            previous(signum, frame)
        if process_exiting():  # leaving already: raising would skip the delivery at exit
            return
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
own_sigterm_handler(_Signals._on_sigterm)


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
        self._config: SimvueConfig | None = None
        if self._mode not in ("disabled", "otlp"):
            self._config = resolve_config(server_url, server_token, offline_directory)
            if self._mode == "online":
                self._config.require_online()
        self._telemetry = RunTelemetry(self._config, (otlp_endpoint, otlp_headers))
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
        self._state = initial_state()  # the fields of run_state.RUN_STATE a Run holds
        self._step = 0
        self._t0 = time.monotonic()
        # The hot path's view of the telemetry (log_metrics, log_event), set as it starts.
        self._root_ctx: otel_context.Context | None = None
        self._logger: Any = None
        self._put: Callable[[Kind[MetricRow], MetricRow], bool] | None = None  # fast path
        self._row_resource: dict[str, Any] = {}
        self._valid_names: set[str] = set()
        self._in_context = False
        self._interrupted = False
        self._closed = False
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
        if self._mode != "online" or self._key is None:
            return None
        return self._telemetry.run_id(self._key, wait=not self._closed)

    @property
    def _pipeline(self) -> Pipeline | None:
        return self._telemetry.pipeline

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
            state = self._state
            state["tags"] = validate_tags(tags) if tags is not None else ()
            state["metadata"] = validate_metadata(metadata) if metadata is not None else {}
            if description is not None:
                description = validate_text(description, "description")
            state["description"] = description
            state["ttl"] = parse_retention(retention_period)
            state["visibility"] = checked_visibility(visibility)
            if resources_metrics_interval != 60:  # else keep what config() set (default 60)
                self._resources_interval = validate_interval(resources_metrics_interval)
            state["heartbeat_timeout"] = validate_timeout(timeout)
            check_notification(notification)
            if record_shell_vars is not None:
                self._shell_vars = checked_shell_vars(record_shell_vars)
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
            found = find_run(self._mode, self._config, run)
        except SimvueOtelError as exc:
            return self._error(exc)
        self._key, self._name, self._folder = found.key, found.name, found.folder
        self._state = dict(found.state)
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
        had = self._state["tags"]
        self._state["tags"] = had + tuple(t for t in new if t not in had)
        self._snapshot()
        return True

    def set_tags(self, tags: Sequence[str]) -> bool:
        """Replace the run's tags."""
        if self._skip("set_tags"):
            return True
        try:
            self._state["tags"] = validate_tags(tags)
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
            check_metadata_size({**self._state["metadata"], **new})  # what the run would hold
        except SimvueValidationError as exc:
            return self._error(exc)
        self._state["metadata"].update(new)
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
        self._telemetry.event(message, level, stamp)
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
        if not self._closed:
            self._telemetry.deliver()

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
        ref = weakref.ref(self)
        telemetry = self._telemetry
        telemetry.start(
            self._mode,
            self._key,
            self._name,
            self._folder,
            self._shell_vars,
            lambda key: _abort(ref, key),
        )
        self._put, self._row_resource = telemetry.put, telemetry.row_resource

    def _begin(self, status: str) -> None:
        """Open the root span: the run is live from here."""
        attrs = state_attributes(self._state)
        attrs[cv.RUN_STATUS] = status
        telemetry = self._telemetry
        telemetry.begin(attrs)
        self._root_ctx, self._logger = telemetry.root_ctx, telemetry.logger
        self._status = status
        self._t0 = time.monotonic()
        self._step = 0
        interval = None if self._resources_disabled else self._resources_interval
        telemetry.start_resources(interval, self._pid, self._error)

    def _snapshot(self, metadata: Mapping[str, Any] | None = None) -> None:
        """Export the current state now (a span is exported only when it ends)."""
        if self._telemetry.tracer_provider is None:
            return
        attrs = state_attributes(self._state, metadata)
        attrs[cv.RUN_STATUS] = self._status or "running"
        self._telemetry.snapshot(attrs)
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
            if self._telemetry.end_root(status, exc):
                self._status = status
                self._write_registry()
            self._telemetry.shutdown(left)
        finally:
            _Signals.runs.discard(self)
            self._telemetry.close(left())

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
        timeout = self._state["heartbeat_timeout"]
        if self._status == "running":
            _LOG.warning(
                "run %s was not closed (use `with Run() as run:` or call run.close()); what it "
                "logged is delivered, and the server will mark it lost %s",
                self._name,
                f"after its heartbeat timeout ({timeout} s)"
                if timeout
                else "never (it has no heartbeat timeout)",
            )
        deadline = time.monotonic() + default_shutdown_timeout()
        try:
            self._telemetry.abandon()
        finally:
            _Signals.runs.discard(self)
            self._telemetry.close(max(0.0, deadline - time.monotonic()))

    def _write_registry(self) -> None:
        """Offline runs are found again by name (``reconnect``) from a small file holding
        their state (no server to ask), rewritten at each change."""
        if self._mode != "offline" or self._config is None or self._name is None:
            return
        write_registry(self._config, self._key, self._name, self._folder, self._status, self._state)


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
