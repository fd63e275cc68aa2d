"""The three OTLP signals as the bridge handles them: one frozen description per signal, read
by both listeners and the core, so adding or changing a signal is one entry here.

Each says what the request and response messages are, which field of the response counts the
refused items, what an item is called in messages, how a request is cut into per-Resource
parts of neutral items (:mod:`..mapping.otlp`), which mapper method maps them, and which
generated gRPC service serves it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from ..mapping import Mapper
from ..mapping.otlp import logs_from_otlp, metrics_from_otlp, spans_from_otlp
from ..mapping.records import Record

__all__ = ["SIGNALS", "Signal"]


@dataclass(frozen=True)
class Signal:
    """How the bridge takes one OTLP signal."""

    name: str
    """``traces``, ``metrics`` or ``logs``: the OTLP/HTTP path is ``/v1/<name>``."""
    item: str
    """What one item is called in messages (``span``, ``data point``, ``log record``)."""
    request_type: type[Message]
    response_type: type[Message]
    rejected_field: str
    """The response's ``partial_success`` field counting refused items."""
    parts: Callable[[Any], Iterator[tuple[int, list[Any]]]]
    """A decoded request → ``(item count, neutral items)`` per Resource."""
    map: Callable[[Mapper, list[Any]], list[Record]]
    grpc_module: str
    """The generated ``*_pb2_grpc`` module of the signal's gRPC service (imported only by
    the gRPC listener)."""
    grpc_service: str
    """The service's name in it: ``<name>Servicer`` and ``add_<name>Servicer_to_server``."""


SIGNALS: dict[str, Signal] = {
    s.name: s
    for s in (
        Signal(
            "traces", "span", ExportTraceServiceRequest, ExportTraceServiceResponse,
            "rejected_spans", spans_from_otlp, Mapper.spans,
            "opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc", "TraceService",
        ),
        Signal(
            "metrics", "data point", ExportMetricsServiceRequest, ExportMetricsServiceResponse,
            "rejected_data_points", metrics_from_otlp, Mapper.metrics,
            "opentelemetry.proto.collector.metrics.v1.metrics_service_pb2_grpc",
            "MetricsService",
        ),
        Signal(
            "logs", "log record", ExportLogsServiceRequest, ExportLogsServiceResponse,
            "rejected_log_records", logs_from_otlp, Mapper.logs,
            "opentelemetry.proto.collector.logs.v1.logs_service_pb2_grpc", "LogsService",
        ),
    )
}  # fmt: skip
