"""A ``Run``'s OpenTelemetry side: its providers, its way out, its root span, its resources.

:class:`RunTelemetry` holds what a run needs to be recorded through OTel: the Resource naming
the run, the tracer and logger providers (and the meter provider of resource metrics), and
either a pipeline to a sink (online, offline, disabled) or OTLP forwarders (otlp). It opens
the root span and exports the state snapshots the ``Run`` asks for, and shuts all of it down
at the run's end. The ``Run`` keeps the state and the checks, and delegates to it.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Mapping
from typing import Any

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
from .config import SimvueConfig
from .detect import detect
from .errors import SimvueValidationError
from .exporters import (
    SimvueLogExporter,
    SimvueLogRecordProcessor,
    SimvueMetricExporter,
    SimvueSpanExporter,
    SimvueSpanProcessor,
)
from .mapping.sdk import attributes_from_sdk
from .pipeline import Kind, MetricRow, Pipeline, default_shutdown_timeout
from .resources import cpu_count
from .sink import NullSink, create_sink
from .threads import signals_blocked
from .version import VERSION

__all__ = ["RunTelemetry"]

_SEVERITY = {
    "debug": SeverityNumber.DEBUG,
    "info": SeverityNumber.INFO,
    "warning": SeverityNumber.WARN,
    "error": SeverityNumber.ERROR,
    "critical": SeverityNumber.FATAL,
}


class RunTelemetry:
    """One run's OTel providers, pipeline (or OTLP forwarders) and root span."""

    def __init__(
        self, config: SimvueConfig | None, otlp: tuple[str | None, Mapping[str, str] | None]
    ) -> None:
        self.config = config
        self.otlp = otlp
        self.metric_exporter: Any = None
        self.pipeline: Pipeline | None = None
        self.tracer_provider: TracerProvider | None = None
        self.logger_provider: LoggerProvider | None = None
        self.meter_provider: MeterProvider | None = None
        self.monitor: Any = None
        self.root: trace.Span | None = None
        self.root_ctx: otel_context.Context | None = None
        self.logger: Any = None
        self.put: Callable[[Kind[MetricRow], MetricRow], bool] | None = None  # the fast path
        self.row_resource: dict[str, Any] = {}
        self.resource: Resource | None = None

    def start(
        self,
        mode: str,
        key: str,
        name: str,
        folder: str,
        shell_vars: tuple[str, ...],
        abort_listener: Callable[[str], None],
    ) -> None:
        """Make the run's Resource, providers and way out (before its root span opens): a
        pipeline to the ``mode``'s sink, or OTLP forwarders."""
        pipeline: Pipeline | None = None
        if mode != "otlp":
            sink = create_sink(mode, self.config) if mode != "disabled" else NullSink()
            self.pipeline = pipeline = Pipeline(sink, finish_foreign=False)
            pipeline.owned_runs.add(key)
            sink.abort_listener = abort_listener
        # What the official client records at init (system, git, Python packages, chosen
        # environment variables), as Resource attributes the mapping turns into Simvue's.
        detected = Resource(detect(shell_vars=shell_vars))
        base = detected.merge(Resource.create({cv.SERVICE_NAME: f"simvue-run:{name}"}))
        resource = base.merge(
            Resource(
                {
                    cv.RUN_KEY: key,
                    cv.RUN_NAME: name,
                    cv.RUN_FOLDER: folder,
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

            spans, logs, self.metric_exporter = otlp_exporters(*self.otlp)
            tp.add_span_processor(ForwardingSpanProcessor(spans, interval=0.2))
            lp.add_log_record_processor(ForwardingLogProcessor(logs))
        self.tracer_provider, self.logger_provider = tp, lp
        self.resource = resource
        if pipeline is not None:
            self.put = pipeline.put
            self.row_resource = attributes_from_sdk(resource.attributes)

    def begin(self, attrs: Mapping[str, Any]) -> None:
        """Open the root span with ``attrs`` (the run's state) and export them at once."""
        assert self.tracer_provider is not None and self.logger_provider is not None
        tracer = self.tracer_provider.get_tracer("simvue_otel", VERSION)
        self.root = tracer.start_span(
            cv.ROOT_SPAN, attributes=attrs, context=otel_context.Context()
        )
        self.root_ctx = trace.set_span_in_context(self.root)
        self.logger = self.logger_provider.get_logger("simvue_otel", VERSION)
        # The state at start, exported now: through OTLP (no span processor of ours in the
        # path) this is what shows the run live before its root span ends.
        tracer.start_span(cv.SNAPSHOT_SPAN, attributes=attrs, context=self.root_ctx).end()

    def start_resources(
        self, interval: float | None, pid: int | None, error: Callable[[BaseException], Any]
    ) -> None:
        """Sample the resources of ``pid`` (else this process) every ``interval`` seconds
        (None: not at all), with a first sample now, as Simvue does."""
        if interval is not None:
            self._start_resources(interval, pid, error)
        if self.meter_provider is not None:
            self.meter_provider.force_flush(5_000)  # a first sample at start, as Simvue does

    def _start_resources(
        self, interval: float, pid: int | None, error: Callable[[BaseException], Any]
    ) -> None:
        from .resources import ResourceMonitor

        if self.pipeline is not None:
            exporter: Any = SimvueMetricExporter(pipeline=self.pipeline)
        elif self.metric_exporter is not None:
            exporter = self.metric_exporter
        else:
            return
        with signals_blocked():  # its thread leaves SIGTERM to the main thread (see threads)
            reader = PeriodicExportingMetricReader(
                exporter, export_interval_millis=interval * 1000.0
            )
        assert self.resource is not None
        self.meter_provider = MeterProvider(
            resource=self.resource, metric_readers=[reader], shutdown_on_exit=False
        )
        try:
            self.monitor = ResourceMonitor(
                self.meter_provider.get_meter("simvue_otel.resources", VERSION), pid
            )
        except SimvueValidationError as exc:
            error(exc)

    def event(self, message: str, level: str, stamp: int | None) -> None:
        """Emit an event (``level``: a Simvue log level) in the root span's context."""
        self.logger.emit(
            body=message,
            event_name=cv.EVENT_EVENT,
            severity_number=_SEVERITY[level],
            severity_text=level.upper(),
            timestamp=stamp,
            context=self.root_ctx,
        )

    def run_id(self, key: str, *, wait: bool) -> str | None:
        """The server's id for run ``key``, once the sink knows it; with ``wait``, after
        delivering what is queued (up to 10 s) when it does not know it yet."""
        if self.pipeline is None:
            return None
        sink = self.pipeline.sink
        found = sink.run_id(key)
        if found is None and wait:
            self.pipeline.flush(10.0)
            found = sink.run_id(key)
        return str(found) if found is not None else None

    def snapshot(self, attrs: Mapping[str, Any]) -> None:
        """Export the state ``attrs`` now (a span is exported only when it ends); the root
        span takes them too, so the final state carries them."""
        if self.tracer_provider is None:
            return
        if self.root is not None:
            self.root.set_attributes(attrs)
            ctx = self.root_ctx
        else:
            ctx = otel_context.Context()
        tracer = self.tracer_provider.get_tracer("simvue_otel", VERSION)
        tracer.start_span(cv.SNAPSHOT_SPAN, attributes=attrs, context=ctx).end()

    def end_root(self, status: str, exc: BaseException | None) -> bool:
        """End the root span with ``status`` (and ``exc`` as an event and error); False when
        the run has no root span (queued, never started)."""
        if self.root is None:
            return False
        if exc is not None:
            self._record_exception(exc)
            self.root.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        self.root.set_attribute(cv.RUN_STATUS, status)
        self.root.end()
        return True

    def shutdown(self, left: Callable[[], float]) -> None:
        """Stop sampling and shut the providers down (``left()``: seconds left to deliver)."""
        if self.monitor is not None:
            self.monitor.close()
        if self.meter_provider is not None:
            self.meter_provider.shutdown(timeout_millis=left() * 1000)
        if self.logger_provider is not None:
            self.logger_provider.shutdown()
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()

    def abandon(self) -> None:
        """At exit, for a run never closed: deliver what it logged, ending nothing."""
        if self.monitor is not None:
            self.monitor.close()
        if self.meter_provider is not None:
            self.meter_provider.shutdown(timeout_millis=5_000)
        if self.logger_provider is not None:
            self.logger_provider.shutdown()
        # The tracer provider is left alone: shutting it down would not end the root span,
        # and the run's state snapshots were exported when they were taken.

    def close(self, timeout: float) -> None:
        """Close the pipeline: the sink says once what it could not deliver, where it is,
        and how to send it."""
        if self.pipeline is not None:
            self.pipeline.close(timeout)

    def deliver(self) -> None:
        """Deliver what this process logged so far, ending nothing (a forked child)."""
        if self.pipeline is not None:
            self.pipeline.flush(default_shutdown_timeout())
        elif self.logger_provider is not None and self.tracer_provider is not None:
            # otlp: the forwarders (restarted in this process at its first record) send it
            timeout_ms = int(default_shutdown_timeout() * 1000)
            self.logger_provider.force_flush(timeout_ms)
            self.tracer_provider.force_flush(timeout_ms)

    def _record_exception(self, exc: BaseException) -> None:
        """The exception as an event: type, message and traceback."""
        assert self.root is not None
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        self.root.add_event(
            cv.EXCEPTION_EVENT,
            {
                "exception.type": type(exc).__name__,
                "exception.message": str(exc),
                "exception.stacktrace": text,
            },
        )
