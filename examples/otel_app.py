"""An app instrumented with the OpenTelemetry API only, recorded in Simvue with no code change.

What it shows: nothing here imports simvue_otel. The app uses OpenTelemetry's tracer, meter
and logger; ``opentelemetry-instrument`` with the ``simvue`` exporters turns that into a Simvue
run (see docs/conventions.md):

- the span ``simvue.run`` is the run: its attributes give the description, tags and metadata,
  its end gives the final status;
- log records with event name ``simvue.metrics`` are exact metric points (step, time);
- a log record with event name ``simvue.event`` becomes an event, and so does each other span
  (``span 'solve' ended after ...``);
- the counter and histogram become Simvue metrics at each metric export.

Install and run it (the Resource names the run and its folder)::

    pip install "simvue-otel[instrument]"
    export SIMVUE_URL=http://127.0.0.1:8765 SIMVUE_TOKEN=...
    OTEL_TRACES_EXPORTER=simvue OTEL_METRICS_EXPORTER=simvue OTEL_LOGS_EXPORTER=simvue \\
    OTEL_RESOURCE_ATTRIBUTES=simvue.run.name=otel-app,simvue.run.folder=/examples/otel \\
        opentelemetry-instrument python examples/otel_app.py

Without ``simvue.run.name`` and ``simvue.run.folder`` the run is named after the service
(``OTEL_SERVICE_NAME``) and lands in ``/otel``. Add ``simvue.run.key=<a fresh UUID>`` to
``OTEL_RESOURCE_ATTRIBUTES`` to give the run a key of your own (one run per key).
"""

from __future__ import annotations

import math
import time

from opentelemetry import _logs, metrics, trace
from opentelemetry._logs import SeverityNumber

STEPS = 25

tracer = trace.get_tracer("examples.otel_app")
logger = _logs.get_logger("examples.otel_app")
meter = metrics.get_meter("examples.otel_app")
cells_updated = meter.create_counter("cells_updated", description="cells updated so far")
step_seconds = meter.create_histogram("step_seconds", unit="s", description="time per step")


def solve() -> float:
    """A toy relaxation: one exact metric point per step, as a simvue.metrics log record."""
    residual = 1.0
    start = time.monotonic()
    with tracer.start_as_current_span("solve"):
        for step in range(STEPS):
            began = time.perf_counter()
            residual *= 0.8
            cells_updated.add(100)
            step_seconds.record(time.perf_counter() - began)
            logger.emit(
                body={"residual": residual, "log10_residual": math.log10(residual)},
                event_name="simvue.metrics",
                attributes={
                    "simvue.metrics.step": step,
                    "simvue.metrics.time": time.monotonic() - start,
                },
            )
    return residual


def main() -> None:
    attributes = {
        "simvue.run.description": "Relaxation solver instrumented with OpenTelemetry only",
        "simvue.run.tags": ["otel-app", "relaxation"],
        "simvue.run.metadata.solver.factor": 0.8,
        "simvue.run.metadata.solver.steps": STEPS,
    }
    with tracer.start_as_current_span("simvue.run", attributes=attributes) as run:
        try:
            residual = solve()
            with tracer.start_as_current_span("write-output"):
                pass  # the app would write its results here
            logger.emit(
                body=f"converged to a residual of {residual:.3e}",
                event_name="simvue.event",
                severity_number=SeverityNumber.INFO,
            )
        except KeyboardInterrupt:
            # An interrupted run would otherwise read as completed: say so explicitly.
            run.set_attribute("simvue.run.status", "terminated")
            raise


if __name__ == "__main__":
    main()
