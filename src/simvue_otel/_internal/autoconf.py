"""Zero-code setup: what makes ``opentelemetry-instrument`` honour ``OTEL_*_EXPORTER=simvue``.

``opentelemetry-instrument`` only reads the ``OTEL_*_EXPORTER`` variables when an
``opentelemetry_configurator`` entry point is installed; simvue-otel registers this one, so
installing simvue-otel is enough. It configures the SDK exactly as OpenTelemetry's own
configurator does, with two differences: Simvue exporters get the non-dropping Simvue
processors instead of the SDK's batch processors (which drop on a full queue), and, when an
exporter is Simvue's and the program has no SIGTERM handler of its own, SIGTERM unwinds the
program (``SystemExit(143)``) instead of killing it on the spot, so everything recorded is
delivered at exit and its runs end ``terminated`` (as a ``Run`` does).
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

from opentelemetry.sdk._configuration import _OTelSDKConfigurator
from opentelemetry.sdk._logs import LogRecordProcessor
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, LogRecordExporter
from opentelemetry.sdk.trace import SpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

from .config import setting
from .exporters import (
    SimvueLogExporter,
    SimvueLogRecordProcessor,
    SimvueSpanExporter,
    SimvueSpanProcessor,
)
from .pipeline import shared_terminating

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


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    shared_terminating()
    raise SystemExit(128 + signum)


def install_sigterm_handler() -> bool:
    """Make SIGTERM unwind the program (see the module docstring), unless the program (or
    something before it) already handles SIGTERM; True when installed."""
    if threading.current_thread() is not threading.main_thread():
        return False
    if signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None):
        return False
    signal.signal(signal.SIGTERM, _on_sigterm)
    return True


class SimvueConfigurator(_OTelSDKConfigurator):
    """OpenTelemetry's SDK configurator, with Simvue's processors for Simvue's exporters (and
    a SIGTERM that delivers what was recorded)."""

    def _configure(self, **kwargs: Any) -> None:
        kwargs.setdefault("export_span_processor", span_processor_for)
        kwargs.setdefault("export_log_record_processor", log_processor_for)
        super()._configure(**kwargs)  # type: ignore[no-untyped-call]
        chosen = ",".join(
            setting(f"OTEL_{signal_name}_EXPORTER") or ""
            for signal_name in ("TRACES", "METRICS", "LOGS")
        )
        if "simvue" in [name.strip() for name in chosen.split(",")]:
            install_sigterm_handler()
