"""OTLP as a program sends it to a bridge: the official exporters of each transport in an
in-process app, and raw protobuf trace requests built by hand."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
from opentelemetry.exporter.otlp.common.http import Compression as JsonCompression
from opentelemetry.exporter.otlp.json.http._log_exporter import (
    OTLPLogExporter as JsonLogExporter,
)
from opentelemetry.exporter.otlp.json.http.metric_exporter import (
    OTLPMetricExporter as JsonMetricExporter,
)
from opentelemetry.exporter.otlp.json.http.trace_exporter import (
    OTLPSpanExporter as JsonSpanExporter,
)
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import (
    OTLPLogExporter as GrpcLogExporter,
)
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
    OTLPMetricExporter as GrpcMetricExporter,
)
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from tests.helpers.apps import App
from tests.helpers.servers import Bridge

NO_PROXY = (("grpc.enable_http_proxy", 0),)  # loopback only, whatever the environment says
T0 = 1_700_000_000_000_000_000  # a fixed span clock, in ns


class OtlpApp(App):
    """`make_app`'s providers, but exporting over OTLP through the SDK's own processors."""

    def close(self, timeout: float = 60.0) -> bool:
        self.meter_provider.shutdown()
        self.logger_provider.shutdown()
        self.tracer_provider.shutdown()
        return True


def _exporters(kind: str, traces: Bridge, logs: Bridge, metrics: Bridge) -> tuple[Any, Any, Any]:
    """The three official exporters of one transport, each pointed at its own bridge."""
    if kind.startswith("proto"):
        proto = {"proto-gzip": Compression.Gzip, "proto-deflate": Compression.Deflate}
        c = proto.get(kind, Compression.NoCompression)
        return (
            OTLPSpanExporter(endpoint=f"{traces.url}/v1/traces", compression=c, timeout=10),
            OTLPLogExporter(endpoint=f"{logs.url}/v1/logs", compression=c, timeout=10),
            OTLPMetricExporter(endpoint=f"{metrics.url}/v1/metrics", compression=c, timeout=10),
        )
    if kind.startswith("json"):
        j = JsonCompression.GZIP if kind == "json-gzip" else JsonCompression.NONE
        return (
            JsonSpanExporter(endpoint=f"{traces.url}/v1/traces", compression=j, timeout=10),
            JsonLogExporter(endpoint=f"{logs.url}/v1/logs", compression=j, timeout=10),
            JsonMetricExporter(endpoint=f"{metrics.url}/v1/metrics", compression=j, timeout=10),
        )
    assert kind.startswith("grpc"), kind
    g = grpc.Compression.Gzip if kind == "grpc-gzip" else grpc.Compression.NoCompression
    common: dict[str, Any] = {
        "insecure": True, "compression": g, "timeout": 10, "channel_options": NO_PROXY,
    }  # fmt: skip
    return (
        GrpcSpanExporter(endpoint=traces.grpc, **common),
        GrpcLogExporter(endpoint=logs.grpc, **common),
        GrpcMetricExporter(endpoint=metrics.grpc, **common),
    )


def otlp_app(
    kind: str,
    name: str,
    folder: str,
    traces: Bridge,
    logs: Bridge | None = None,
    metrics: Bridge | None = None,
) -> OtlpApp:
    key = str(uuid.uuid4())
    resource = Resource.create(
        {"simvue.run.key": key, "simvue.run.name": name, "simvue.run.folder": folder}
    )
    span_exporter, log_exporter, metric_exporter = _exporters(
        kind, traces, logs or traces, metrics or traces
    )
    tp = TracerProvider(resource=resource)
    tp.add_span_processor(BatchSpanProcessor(span_exporter))
    lp = LoggerProvider(resource=resource)
    lp.add_log_record_processor(BatchLogRecordProcessor(log_exporter))
    reader = PeriodicExportingMetricReader(metric_exporter, export_interval_millis=3_600_000)
    mp = MeterProvider(resource=resource, metric_readers=[reader])
    return OtlpApp(key, None, tp, lp, mp)  # type: ignore[arg-type]


def attr(key: str, value: Any) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    if isinstance(value, float):
        return KeyValue(key=key, value=AnyValue(double_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def run_request(
    key: str, folder: str, name: str = "raw", root_attrs: dict[str, Any] | None = None
) -> ExportTraceServiceRequest:
    """A protobuf trace request: one Resource naming run `key`, its ended root span and a
    child span of 2 ms."""
    request = ExportTraceServiceRequest()
    add_run(request, key, folder, name, root_attrs)
    return request


def add_run(
    request: ExportTraceServiceRequest,
    key: str,
    folder: str,
    name: str,
    root_attrs: dict[str, Any] | None = None,
) -> None:
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.extend(
        [attr("simvue.run.key", key), attr("simvue.run.name", name),
         attr("simvue.run.folder", folder)]
    )  # fmt: skip
    spans = resource_spans.scope_spans.add().spans
    trace_id = uuid.uuid4().bytes
    root = spans.add(
        trace_id=trace_id, span_id=b"\x01" * 8, name="simvue.run",
        start_time_unix_nano=T0, end_time_unix_nano=T0 + 10_000_000,
    )  # fmt: skip
    root.attributes.extend(attr(k, v) for k, v in (root_attrs or {}).items())
    spans.add(
        trace_id=trace_id, span_id=b"\x02" * 8, parent_span_id=b"\x01" * 8, name="solve",
        start_time_unix_nano=T0 + 1_000_000, end_time_unix_nano=T0 + 3_000_000,
        kind=Span.SPAN_KIND_INTERNAL,
    )  # fmt: skip
