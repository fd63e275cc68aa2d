"""OpenTelemetry SDK exporters and processors that write to Simvue.

One exporter per signal, as the OTel SDK expects; all of them feed a :class:`Pipeline`
(mapping + sink). They never raise into the application: ``export`` returns the SDK's result
code, and ``force_flush``/``shutdown`` honour their timeouts. Built with no arguments (as
``OTEL_TRACES_EXPORTER=simvue`` builds them) they share one process-wide pipeline configured
from ``SIMVUE_*`` environment variables or ``simvue.toml``.

The SDK's batch processors drop data when their queue is full and ignore failed exports;
:class:`SimvueSpanProcessor` and :class:`SimvueLogRecordProcessor` hand every item to the
pipeline instead (which never drops), and the span processor shows a run live from the moment
its root span starts.

Exporters on the shared pipeline also make SIGTERM deliver what was recorded (see
:func:`install_sigterm_handler`) when they are made, whoever configured the SDK (simvue-otel's
configurator, ``opentelemetry-distro``'s, or the program). Log records of
``opentelemetry-instrument``'s loader (such as "Configuration of configurator not loaded,
simvue already loaded") are the zero-code machinery talking about its own set-up, not the
program's telemetry: they are not recorded in a run.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Sequence
from types import FrameType
from typing import Any, Literal

from opentelemetry.context import Context
from opentelemetry.sdk._logs import LogRecordProcessor, ReadableLogRecord, ReadWriteLogRecord
from opentelemetry.sdk._logs.export import LogRecordExporter, LogRecordExportResult
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from .config import SimvueConfig
from .conventions import ROOT_SPAN
from .mapping.sdk import span_from_sdk
from .pipeline import (
    LOG,
    METRICS,
    PENDING,
    SPAN,
    Pipeline,
    acquire_shared,
    default_shutdown_timeout,
    release_shared,
    shared_terminating,
)
from .threads import note_sigterm, own_sigterm_handler, process_exiting

__all__ = [
    "SimvueLogExporter",
    "SimvueLogRecordProcessor",
    "SimvueMetricExporter",
    "SimvueSpanExporter",
    "SimvueSpanProcessor",
]

_LOG = logging.getLogger("simvue_otel.exporters")

_LOADER_LOGGERS = "opentelemetry.instrumentation.auto_instrumentation"
"""Python loggers of ``opentelemetry-instrument``'s loader: not the program's telemetry."""


def _is_loader_record(record: Any) -> bool:
    scope = record.instrumentation_scope
    return scope is not None and scope.name.startswith(_LOADER_LOGGERS)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    note_sigterm()
    shared_terminating()
    if process_exiting():  # leaving already: raising would skip the delivery at exit
        return
    raise SystemExit(128 + signum)


own_sigterm_handler(_on_sigterm)


def install_sigterm_handler() -> bool:
    """Make SIGTERM unwind the program (``SystemExit(143)``, so ``finally`` blocks, ``atexit``
    and the SDK's shutdown deliver what was recorded, and runs end ``terminated``) instead
    of killing it on the spot, unless the program (or something before it) already handles
    SIGTERM, or this is not the main thread; True when installed."""
    if threading.current_thread() is not threading.main_thread():
        return False
    try:
        if signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None):
            return False
        signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main interpreter
        return False
    return True


class _PipelineUser:
    """What the three exporters share: a pipeline (their own, given, or the shared one,
    released on shutdown), and ``force_flush``/``shutdown`` that honour their timeouts and never
    raise into the application."""

    def __init__(
        self,
        *,
        mode: Literal["online", "offline", "disabled"] | None = None,
        config: SimvueConfig | None = None,
        pipeline: Pipeline | None = None,
    ) -> None:
        """Without ``pipeline``, write through the process-wide pipeline, made from ``mode``
        (else ``SIMVUE_OTEL_MODE``, else ``online``) and ``config`` (else ``SIMVUE_*`` and
        ``simvue.toml``) by the first exporter that needs it; with ``pipeline``, through that
        one (a ``Run``'s), which its owner closes."""
        super().__init__()  # the SDK exporter base's own (MetricExporter sets temporality)
        self._owned = pipeline is None
        self._pid = os.getpid()
        self.pipeline = pipeline if pipeline is not None else acquire_shared(mode, config)
        self._shut = False
        if self._owned:
            install_sigterm_handler()

    def force_flush(self, timeout_millis: float = 30_000) -> bool:
        try:
            return self.pipeline.flush(timeout_millis / 1000.0)
        except Exception:
            _LOG.exception("flushing to Simvue failed")
            return False

    def shutdown(self, timeout_millis: float | None = None, **kwargs: Any) -> None:
        # PeriodicExportingMetricReader passes ``timeout`` (milliseconds), not timeout_millis.
        timeout_millis = kwargs.get("timeout", timeout_millis)
        if self._shut:
            return
        self._shut = True
        timeout = default_shutdown_timeout() if timeout_millis is None else timeout_millis / 1000
        try:
            if self._owned:
                release_shared(self.pipeline, timeout)
            else:
                # A pipeline given to us has an owner (a Run) that closes it within its own
                # deadline: hand over what we hold, do not wait for the server as well.
                self.pipeline.flush(timeout, deliver=False)
        except Exception:
            _LOG.exception("shutting down the Simvue exporter failed")


class SimvueSpanExporter(_PipelineUser, SpanExporter):
    """Spans → Simvue: the ``simvue.run`` root span becomes the run's state and status, other
    spans and span events become events (see ``docs/conventions.md``)."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        ok = self.pipeline.put_many(SPAN, spans)
        return SpanExportResult.SUCCESS if ok else SpanExportResult.FAILURE


class SimvueLogExporter(_PipelineUser, LogRecordExporter):
    """Log records → Simvue: ``simvue.metrics`` records are exact metric points, every other
    record an event."""

    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        if any(_is_loader_record(record) for record in batch):
            batch = [record for record in batch if not _is_loader_record(record)]
        ok = self.pipeline.put_many(LOG, batch)
        return LogRecordExportResult.SUCCESS if ok else LogRecordExportResult.FAILURE


class SimvueMetricExporter(_PipelineUser, MetricExporter):
    """The app's own instruments → Simvue metrics at each export (cumulative temporality, so
    a failed or late export never loses a count)."""

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **_: Any
    ) -> MetricExportResult:
        if not self._owned and os.getpid() != self._pid:
            # A Run's resource metrics in a forked child (the SDK's reader restarts there):
            # the parent's gauges already cover its children, and two processes numbering
            # one run's samples would collide.
            return MetricExportResult.SUCCESS
        ok = self.pipeline.put(METRICS, metrics_data)
        return MetricExportResult.SUCCESS if ok else MetricExportResult.FAILURE


class SimvueSpanProcessor(SpanProcessor):
    """Hands every ended span to the exporter's pipeline (never dropping), and a root span's
    state at its start, so the run shows ``running`` at once instead of when it ends."""

    def __init__(self, exporter: SimvueSpanExporter) -> None:
        self.exporter = exporter

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        if span.name == ROOT_SPAN:
            try:
                self.exporter.pipeline.put(PENDING, span_from_sdk(span))
            except Exception:
                _LOG.exception("could not record the start of run span")

    def on_end(self, span: ReadableSpan) -> None:
        self.exporter.pipeline.put(SPAN, span)

    def shutdown(self) -> None:
        self.exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self.exporter.force_flush(timeout_millis)


class SimvueLogRecordProcessor(LogRecordProcessor):
    """Hands every log record to the exporter's pipeline as it is emitted (never dropping):
    the cheapest path for metric points, and the one that keeps all 100,000 of a burst."""

    def __init__(self, exporter: SimvueLogExporter) -> None:
        self.exporter = exporter
        self._put = exporter.pipeline.put

    def on_emit(self, log_record: ReadWriteLogRecord) -> None:
        scope = log_record.instrumentation_scope
        if scope is not None and scope.name.startswith(_LOADER_LOGGERS):
            return
        self._put(LOG, log_record)

    def emit(self, log_record: ReadWriteLogRecord) -> None:
        self.on_emit(log_record)

    def shutdown(self) -> None:
        self.exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self.exporter.force_flush(timeout_millis)
