"""The plain OpenTelemetry SDK and its official OTLP/HTTP exporters, sending to the bridge.

What it shows: no simvue_otel import and no ``opentelemetry-instrument``. The program sets up
the SDK itself: a Resource that names the run (``simvue.run.key``, ``simvue.run.name``,
``simvue.run.folder``), the OTLP/HTTP span, log and metric exporters, and emits the telemetry
the conventions in docs/conventions.md describe. ``simvue-otel bridge`` turns it into a run.

Start a bridge, then run the program::

    export SIMVUE_URL=http://127.0.0.1:8765 SIMVUE_TOKEN=...
    simvue-otel bridge --listen 127.0.0.1:4318 &
    OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 python examples/otlp_sdk_to_bridge.py

The exporters read ``OTEL_EXPORTER_OTLP_ENDPOINT`` themselves (``/v1/traces``, ``/v1/logs``,
``/v1/metrics`` are appended); this program defaults it to ``http://127.0.0.1:4318``.
Optional: ``EXAMPLE_FOLDER`` picks the Simvue folder (default ``/examples/otlp``).
"""

from __future__ import annotations

import os
import time
import uuid

from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

FOLDER = os.environ.get("EXAMPLE_FOLDER", "/examples/otlp")
os.environ.setdefault("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")


def main() -> None:
    # The Resource names the run: a fresh key per run, plus its name and folder.
    resource = Resource.create(
        {
            "service.name": "otlp-sdk-example",
            "simvue.run.key": str(uuid.uuid4()),
            "simvue.run.name": "otlp-sdk-run",
            "simvue.run.folder": FOLDER,
        }
    )
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter()))
    meter_provider = MeterProvider(
        resource=resource, metric_readers=[PeriodicExportingMetricReader(OTLPMetricExporter())]
    )

    tracer = tracer_provider.get_tracer("examples.otlp_sdk")
    logger = logger_provider.get_logger("examples.otlp_sdk")
    iterations = meter_provider.get_meter("examples.otlp_sdk").create_counter("iterations")

    # The root span is the run; its attributes carry the run's state.
    state = {
        "simvue.run.description": "Plain OpenTelemetry SDK, OTLP/HTTP to simvue-otel bridge",
        "simvue.run.tags": ["otlp", "sdk"],
        "simvue.run.metadata.method": "bisection",
    }
    start = time.monotonic()
    with tracer.start_as_current_span("simvue.run", attributes=state):
        # Bisection for the root of x^3 - 2: one exact metric point per iteration.
        low, high = 1.0, 2.0
        for step in range(20):
            mid = (low + high) / 2
            if mid**3 > 2:
                high = mid
            else:
                low = mid
            iterations.add(1)
            logger.emit(
                body={"estimate": mid, "interval": high - low},
                event_name="simvue.metrics",
                attributes={
                    "simvue.metrics.step": step,
                    "simvue.metrics.time": time.monotonic() - start,
                },
            )
        logger.emit(
            body=f"cube root of 2 is about {mid:.6f}",
            event_name="simvue.event",
            severity_number=SeverityNumber.INFO,
        )

    # Shutting the providers down sends what is still batched (logs and metrics first,
    # then the ended root span that carries the final status).
    logger_provider.shutdown()
    meter_provider.shutdown()
    tracer_provider.shutdown()
    print(f"sent {resource.attributes['simvue.run.name']} to the bridge")


if __name__ == "__main__":
    main()
