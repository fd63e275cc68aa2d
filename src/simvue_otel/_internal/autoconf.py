"""Zero-code setup: what makes ``opentelemetry-instrument`` honour ``OTEL_*_EXPORTER=simvue``.

``opentelemetry-instrument`` only reads the ``OTEL_*_EXPORTER`` variables when an
``opentelemetry_configurator`` entry point is installed; simvue-otel registers this one, so
installing simvue-otel is enough. It configures the SDK exactly as OpenTelemetry's own
configurator does, with one difference: Simvue exporters get the non-dropping Simvue
processors instead of the SDK's batch processors (which drop on a full queue).
"""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk._configuration import _OTelSDKConfigurator
from opentelemetry.sdk._logs import LogRecordProcessor
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, LogRecordExporter
from opentelemetry.sdk.trace import SpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

from .exporters import (
    SimvueLogExporter,
    SimvueLogRecordProcessor,
    SimvueSpanExporter,
    SimvueSpanProcessor,
)

__all__ = ["SimvueConfigurator"]


def span_processor_for(exporter: SpanExporter, *args: Any, **kwargs: Any) -> SpanProcessor:
    """Our processor for our exporter, the SDK's batch processor for any other."""
    if isinstance(exporter, SimvueSpanExporter):
        return SimvueSpanProcessor(exporter)
    return BatchSpanProcessor(exporter, *args, **kwargs)


def log_processor_for(exporter: LogRecordExporter, *args: Any, **kwargs: Any) -> LogRecordProcessor:
    """Our processor for our exporter, the SDK's batch processor for any other."""
    if isinstance(exporter, SimvueLogExporter):
        return SimvueLogRecordProcessor(exporter)
    return BatchLogRecordProcessor(exporter, *args, **kwargs)


class SimvueConfigurator(_OTelSDKConfigurator):
    """OpenTelemetry's SDK configurator, with Simvue's processors for Simvue's exporters."""

    def _configure(self, **kwargs: Any) -> None:
        kwargs.setdefault("export_span_processor", span_processor_for)
        kwargs.setdefault("export_log_record_processor", log_processor_for)
        super()._configure(**kwargs)  # type: ignore[no-untyped-call]
