"""Zero-code setup: what makes ``opentelemetry-instrument`` honour ``OTEL_*_EXPORTER=simvue``.

``opentelemetry-instrument`` only reads the ``OTEL_*_EXPORTER`` variables when an
``opentelemetry_configurator`` entry point is installed; simvue-otel registers this one, so
installing simvue-otel is enough. It configures the SDK exactly as OpenTelemetry's own
configurator does, with two differences: Simvue exporters get the non-dropping Simvue
processors instead of the SDK's batch processors (which drop on a full queue), and, when an
exporter is Simvue's and the program has no SIGTERM handler of its own, SIGTERM unwinds the
program (``SystemExit(143)``) instead of killing it on the spot, so everything recorded is
delivered at exit and its runs end ``terminated`` (as a ``Run`` does).

``opentelemetry-instrument`` loads one configurator only: the one ``OTEL_PYTHON_CONFIGURATOR``
names, else the first entry point found. With ``opentelemetry-distro`` installed (what
``opentelemetry-bootstrap`` sets up) its configurator may be that one, so nothing here relies
on ours running: the exporters install the SIGTERM handling themselves when they are made
(:func:`.exporters.install_sigterm_handler`), and :func:`after_configuration`, an
``opentelemetry_pre_instrument`` hook (run after whichever configurator loaded), gives Simvue
exporters that another configurator wrapped in the SDK's batch processors the Simvue
processors instead. The loader's own warning about the configurator it skipped is not the
program's telemetry and is never recorded in a run (see :mod:`.exporters`).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from opentelemetry import _logs, trace
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
    install_sigterm_handler,
)

__all__ = ["SimvueConfigurator", "after_configuration", "install_sigterm_handler"]

_LOG = logging.getLogger("simvue_otel.autoconf")


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


def _simvue_chosen() -> bool:
    signals = ("TRACES", "METRICS", "LOGS")
    chosen = ",".join(setting(f"OTEL_{name}_EXPORTER") or "" for name in signals)
    return "simvue" in [name.strip() for name in chosen.split(",")]


class SimvueConfigurator(_OTelSDKConfigurator):
    """OpenTelemetry's SDK configurator, with Simvue's processors for Simvue's exporters (and
    a SIGTERM that delivers what was recorded)."""

    def _configure(self, **kwargs: Any) -> None:
        kwargs.setdefault("export_span_processor", span_processor_for)
        kwargs.setdefault("export_log_record_processor", log_processor_for)
        super()._configure(**kwargs)  # type: ignore[no-untyped-call]
        if _simvue_chosen():
            install_sigterm_handler()


def _swap_processors(
    multi: Any, field: str, exporter_type: type[Any], processor_type: type[Any]
) -> int:
    """In a provider's multi-processor, replace each SDK batch processor whose exporter is
    ``exporter_type`` by ``processor_type(exporter)``; the number replaced. The batch
    processor is retired without shutting its exporter down (the exporter lives on in the new
    processor): its worker hands over whatever it still queues, then stops."""
    processors = getattr(multi, field, None)
    if not isinstance(processors, tuple):
        return 0
    replaced = 0
    with getattr(multi, "_lock", None) or contextlib.nullcontext():
        chosen = []
        for processor in getattr(multi, field):
            batch: Any = getattr(processor, "_batch_processor", None)
            exporter = getattr(batch, "_exporter", None)
            if not isinstance(exporter, exporter_type):
                chosen.append(processor)
                continue
            chosen.append(processor_type(exporter))
            replaced += 1
            try:  # stop the batch worker (it exports what it still holds first)
                batch._shutdown = True
                batch._worker_awaken.set()
            except AttributeError:
                _LOG.debug("could not stop the batch processor of %r", exporter)
        setattr(multi, field, tuple(chosen))
    return replaced


def after_configuration() -> None:
    """``opentelemetry_pre_instrument`` hook: whichever configurator ran, Simvue exporters
    end up behind the Simvue processors (never dropping) and SIGTERM delivers what was
    recorded. A no-op when our configurator ran or no exporter is Simvue's."""
    if not _simvue_chosen():
        return
    install_sigterm_handler()
    try:
        spans = _swap_processors(
            getattr(trace.get_tracer_provider(), "_active_span_processor", None),
            "_span_processors",
            SimvueSpanExporter,
            SimvueSpanProcessor,
        )
        logs = _swap_processors(
            getattr(_logs.get_logger_provider(), "_multi_log_record_processor", None),
            "_log_record_processors",
            SimvueLogExporter,
            SimvueLogRecordProcessor,
        )
    except Exception:  # never break the program's start-up
        _LOG.exception("could not give the Simvue exporters their processors")
        return
    if spans or logs:
        _LOG.info(
            "another OpenTelemetry configurator set up the SDK; the Simvue exporters got "
            "their non-dropping processors instead of the SDK's batch processors"
        )
