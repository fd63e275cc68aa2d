"""OpenTelemetry exporters and processors for Simvue (also importable from ``simvue_otel``).

These are the names the ``opentelemetry_*_exporter`` entry points point at, so that
``OTEL_TRACES_EXPORTER=simvue`` (and the metrics and logs equivalents) select them.
"""

from ._internal.exporters import (
    SimvueLogExporter,
    SimvueLogRecordProcessor,
    SimvueMetricExporter,
    SimvueSpanExporter,
    SimvueSpanProcessor,
)

__all__ = [
    "SimvueLogExporter",
    "SimvueLogRecordProcessor",
    "SimvueMetricExporter",
    "SimvueSpanExporter",
    "SimvueSpanProcessor",
]
