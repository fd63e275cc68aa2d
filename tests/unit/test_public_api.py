"""The public API, pinned: what ``simvue_otel`` and ``simvue_otel.exporters`` export, and the
entry points that let OpenTelemetry select the exporters by name. A change here is a change
users see (a release note, maybe a major version), never an accident."""

from __future__ import annotations

from importlib.metadata import entry_points

import simvue_otel
import simvue_otel.exporters

EXPORTERS = [
    "SimvueLogExporter",
    "SimvueLogRecordProcessor",
    "SimvueMetricExporter",
    "SimvueSpanExporter",
    "SimvueSpanProcessor",
]
ERRORS = [
    "AuthenticationError",
    "ConfigurationError",
    "NotFoundError",
    "PermissionDeniedError",
    "ServerError",
    "ServerUnreachableError",
    "SimvueHTTPError",
    "SimvueOtelError",
    "SimvueValidationError",
    "TransportError",
]


def test_the_package_exports_exactly_this() -> None:
    assert sorted(simvue_otel.__all__) == sorted(["Run", "__version__", *ERRORS, *EXPORTERS])
    for name in set(simvue_otel.__all__) - {"__version__"}:
        assert getattr(simvue_otel, name).__module__.startswith("simvue_otel._internal.")
    assert isinstance(simvue_otel.__version__, str) and simvue_otel.__version__


def test_the_exporters_module_exports_exactly_this() -> None:
    assert sorted(simvue_otel.exporters.__all__) == EXPORTERS
    for name in EXPORTERS:
        assert getattr(simvue_otel.exporters, name) is getattr(simvue_otel, name)


def test_every_error_is_a_simvue_otel_error() -> None:
    for name in ERRORS:
        assert issubclass(getattr(simvue_otel, name), simvue_otel.SimvueOtelError)
    assert issubclass(simvue_otel.SimvueValidationError, ValueError)


def test_opentelemetry_finds_the_exporters_by_the_name_simvue() -> None:
    expected = {
        "opentelemetry_traces_exporter": "SimvueSpanExporter",
        "opentelemetry_logs_exporter": "SimvueLogExporter",
        "opentelemetry_metrics_exporter": "SimvueMetricExporter",
    }
    for group, cls in expected.items():
        (entry,) = entry_points(group=group, name="simvue")
        assert entry.load() is getattr(simvue_otel.exporters, cls)
