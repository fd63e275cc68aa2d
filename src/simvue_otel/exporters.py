"""OpenTelemetry exporters and processors for Simvue (also importable from ``simvue_otel``).

These are the names the ``opentelemetry_*_exporter`` entry points point at, so that
``OTEL_TRACES_EXPORTER=simvue`` (and the metrics and logs equivalents) select them.
"""

from ._internal.exporters import *  # noqa: F403  (the names of its __all__, listed there once)
from ._internal.exporters import __all__ as __all__
