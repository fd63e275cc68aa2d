"""The OTLP/gRPC listener: the three OTLP ``Export`` services on one gRPC server.

Needed because the collector's load-balancing exporter speaks only OTLP/gRPC, and Python's
``otlp`` exporter name means gRPC. Back-pressure is UNAVAILABLE (retryable), a missing or wrong
token UNAUTHENTICATED, an undecodable message is refused by gRPC itself (and so is not counted
in the bridge's metrics). Every other answer is counted and logged at debug.
"""

from __future__ import annotations

import time
from concurrent import futures
from typing import Any

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from .core import BridgeCore

__all__ = ["start_grpc_server"]


def _export(
    core: BridgeCore, signal: str, request: Any, context: Any, reply: Any, field: str
) -> Any:
    started = time.perf_counter()
    metadata = dict(context.invocation_metadata())
    if not core.authorized(metadata.get("authorization")):
        core.answered("grpc", signal, "UNAUTHENTICATED", started)
        context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")
    if core.retry_after() is not None:
        core.answered("grpc", signal, "UNAVAILABLE", started)
        context.abort(grpc.StatusCode.UNAVAILABLE, "the bridge is backed up; retry later")
    outcome = core.ingest(signal, request)
    if outcome.rejected:
        setattr(reply.partial_success, field, outcome.rejected)
        reply.partial_success.error_message = outcome.message
    core.answered("grpc", signal, "OK", started, outcome)
    return reply


class _Traces(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, core: BridgeCore) -> None:
        self.core = core

    def Export(self, request: Any, context: Any) -> Any:
        reply = trace_service_pb2.ExportTraceServiceResponse()
        return _export(self.core, "traces", request, context, reply, "rejected_spans")


class _Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, core: BridgeCore) -> None:
        self.core = core

    def Export(self, request: Any, context: Any) -> Any:
        reply = metrics_service_pb2.ExportMetricsServiceResponse()
        return _export(self.core, "metrics", request, context, reply, "rejected_data_points")


class _Logs(logs_service_pb2_grpc.LogsServiceServicer):
    def __init__(self, core: BridgeCore) -> None:
        self.core = core

    def Export(self, request: Any, context: Any) -> Any:
        reply = logs_service_pb2.ExportLogsServiceResponse()
        return _export(self.core, "logs", request, context, reply, "rejected_log_records")


def start_grpc_server(
    core: BridgeCore, host: str, port: int, *, max_body: int = 20 * 2**20, workers: int = 8
) -> tuple[Any, int]:
    """Start serving; returns the server and the port it listens on."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="simvue-otel-grpc"),
        options=[("grpc.max_receive_message_length", max_body)],
    )
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Traces(core), server)  # type: ignore[no-untyped-call]
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_Metrics(core), server)  # type: ignore[no-untyped-call]
    logs_service_pb2_grpc.add_LogsServiceServicer_to_server(_Logs(core), server)  # type: ignore[no-untyped-call]
    bound = server.add_insecure_port(f"{host}:{port}")
    if not bound:
        raise OSError(f"cannot listen for OTLP/gRPC on {host}:{port}")
    server.start()
    return server, bound
