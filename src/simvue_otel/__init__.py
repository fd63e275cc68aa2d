"""simvue-otel: OpenTelemetry exporters and OTLP bridge for Simvue.

The public API is what ``__all__`` lists; everything under ``simvue_otel._internal`` is
private and may change without notice.
"""

from __future__ import annotations

from ._internal.errors import (
    AuthenticationError,
    ConfigurationError,
    NotFoundError,
    PermissionDeniedError,
    ServerError,
    ServerUnreachableError,
    SimvueHTTPError,
    SimvueOtelError,
    SimvueValidationError,
    TransportError,
)
from ._internal.run import Run
from ._internal.version import VERSION as __version__
from .exporters import (
    SimvueLogExporter,
    SimvueLogRecordProcessor,
    SimvueMetricExporter,
    SimvueSpanExporter,
    SimvueSpanProcessor,
)

__all__ = [
    "AuthenticationError",
    "ConfigurationError",
    "NotFoundError",
    "PermissionDeniedError",
    "Run",
    "ServerError",
    "ServerUnreachableError",
    "SimvueHTTPError",
    "SimvueLogExporter",
    "SimvueLogRecordProcessor",
    "SimvueMetricExporter",
    "SimvueOtelError",
    "SimvueSpanExporter",
    "SimvueSpanProcessor",
    "SimvueValidationError",
    "TransportError",
    "__version__",
]
