"""An app instrumented with the OpenTelemetry SDK only, exporting to Simvue in process, and the
one small program every mode runs."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opentelemetry._logs import SeverityNumber
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from simvue_otel import (
    SimvueLogExporter,
    SimvueLogRecordProcessor,
    SimvueMetricExporter,
    SimvueSpanExporter,
    SimvueSpanProcessor,
)
from simvue_otel._internal.config import resolve_config
from simvue_otel._internal.pipeline import Pipeline
from simvue_otel._internal.sink import create_sink
from tests.helpers.servers import LocalServer


@dataclass
class App:
    """An app instrumented with the OTel SDK only, exporting to Simvue through one pipeline."""

    key: str
    pipeline: Pipeline
    tracer_provider: TracerProvider
    logger_provider: LoggerProvider
    meter_provider: MeterProvider

    @property
    def tracer(self) -> Any:
        return self.tracer_provider.get_tracer("app")

    @property
    def logger(self) -> Any:
        return self.logger_provider.get_logger("app")

    def metrics(self, values: dict[str, float], step: int, t: float | None = None) -> None:
        attrs: dict[str, Any] = {"simvue.metrics.step": step}
        if t is not None:
            attrs["simvue.metrics.time"] = t
        self.logger.emit(body=values, event_name="simvue.metrics", attributes=attrs)

    def close(self, timeout: float = 60.0) -> bool:
        self.meter_provider.shutdown()
        self.logger_provider.shutdown()
        self.tracer_provider.shutdown()
        return self.pipeline.close(timeout)


def make_app(
    mode: str, offline_dir: Path, server: LocalServer | None, name: str, folder: str
) -> App:
    config = resolve_config(
        url=server.url if server else None,
        token=server.token if server else None,
        offline_directory=offline_dir,
        environ={},
    )
    pipeline = Pipeline(create_sink(mode, config, flush_interval=0.2))
    key = str(uuid.uuid4())
    resource = Resource.create(
        {"simvue.run.key": key, "simvue.run.name": name, "simvue.run.folder": folder}
    )
    tp = TracerProvider(resource=resource)
    tp.add_span_processor(SimvueSpanProcessor(SimvueSpanExporter(pipeline=pipeline)))
    lp = LoggerProvider(resource=resource)
    lp.add_log_record_processor(SimvueLogRecordProcessor(SimvueLogExporter(pipeline=pipeline)))
    reader = PeriodicExportingMetricReader(
        SimvueMetricExporter(pipeline=pipeline), export_interval_millis=3_600_000
    )
    mp = MeterProvider(resource=resource, metric_readers=[reader])
    return App(key, pipeline, tp, lp, mp)


ROOT_ATTRS = {
    "simvue.run.description": "an OTel-only app",
    "simvue.run.tags": ["otel", "demo"],
    "simvue.run.metadata.solver.tol": 1e-6,
    "simvue.run.metadata.solver.name": "cg",
    "simvue.run.metadata.n": 64,
    "simvue.run.visibility": "tenant",
    "simvue.run.retention_seconds": 3600,
}


def run_program(app: App, n_steps: int = 50) -> None:
    """The same small program for every mode: a run span, metric points, events, an
    instrument, a child span."""
    counter = app.meter_provider.get_meter("app").create_counter("iterations")
    with app.tracer.start_as_current_span("simvue.run", attributes=ROOT_ATTRS):
        for step in range(n_steps):
            app.metrics({"loss": 1.0 / (step + 1), "residual": step * 0.5}, step, t=step * 0.1)
            counter.add(1, {"phase": "solve"})
        app.logger.emit(body="converged", event_name="simvue.event")
        app.logger.emit(body="mesh is coarse", severity_number=SeverityNumber.WARN)
        with app.tracer.start_as_current_span("assemble"):
            pass
        app.meter_provider.force_flush()
