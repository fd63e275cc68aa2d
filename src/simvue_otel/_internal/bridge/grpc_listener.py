"""The OTLP/gRPC listener: the three OTLP ``Export`` services on one gRPC server.

Needed because the collector's load-balancing exporter speaks only OTLP/gRPC, and Python's
``otlp`` exporter name means gRPC. Back-pressure is UNAVAILABLE (retryable), a missing or wrong
token UNAUTHENTICATED, an undecodable message is refused by gRPC itself (and so is not counted
in the bridge's metrics). Every other answer is counted and logged at debug.
"""

from __future__ import annotations

import importlib
import time
from concurrent import futures
from typing import Any

import grpc

from .core import BridgeCore
from .signals import SIGNALS, Signal

__all__ = ["start_grpc_server"]


def _export(core: BridgeCore, signal: Signal, request: Any, context: Any) -> Any:
    started = time.perf_counter()
    metadata = dict(context.invocation_metadata())
    if not core.authorized(metadata.get("authorization")):
        core.answered("grpc", signal.name, "UNAUTHENTICATED", started)
        context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")
    if core.retry_after() is not None:
        core.answered("grpc", signal.name, "UNAVAILABLE", started)
        context.abort(grpc.StatusCode.UNAVAILABLE, "the bridge is backed up; retry later")
    outcome = core.ingest(signal.name, request)
    reply = signal.response_type()
    if outcome.rejected:
        setattr(reply.partial_success, signal.rejected_field, outcome.rejected)
        reply.partial_success.error_message = outcome.message
    core.answered("grpc", signal.name, "OK", started, outcome)
    return reply


def _add_service(server: Any, core: BridgeCore, signal: Signal) -> None:
    """Serve one signal's generated ``Export`` service with :func:`_export`."""
    module = importlib.import_module(signal.grpc_module)
    base = getattr(module, f"{signal.grpc_service}Servicer")

    class Servicer(base):  # type: ignore[misc,valid-type]
        def Export(self, request: Any, context: Any) -> Any:
            return _export(core, signal, request, context)

    getattr(module, f"add_{signal.grpc_service}Servicer_to_server")(Servicer(), server)


def start_grpc_server(
    core: BridgeCore, host: str, port: int, *, max_body: int = 20 * 2**20, workers: int = 8
) -> tuple[Any, int]:
    """Start serving; returns the server and the port it listens on."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="simvue-otel-grpc"),
        options=[("grpc.max_receive_message_length", max_body)],
    )
    for signal in SIGNALS.values():
        _add_service(server, core, signal)
    bound = server.add_insecure_port(f"{host}:{port}")
    if not bound:
        raise OSError(f"cannot listen for OTLP/gRPC on {host}:{port}")
    server.start()
    return server, bound
