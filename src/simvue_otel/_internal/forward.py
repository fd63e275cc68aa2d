"""Sending a run over OTLP (to ``simvue-otel bridge`` or a collector) without losing data.

The SDK's batch processors drop the oldest items when their queue is full and forget a batch
whose export failed. :class:`ForwardingSpanProcessor` and :class:`ForwardingLogProcessor`
batch the same way but never drop: a full queue makes the producer wait, and a failed batch
is retried with backoff (the bridge answers 503 while it is backed up) until shutdown, when
what is still unsent after the timeout is reported.

In a forked child the worker thread does not exist and the queue holds the parent's items: the
child drops that copy (the parent sends it), starts a worker of its own at its first item, and
sends what it queued when it exits (as :class:`~.pipeline.Pipeline` does).
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Mapping
from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk._logs import LogRecordProcessor, ReadWriteLogRecord
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

from .config import setting
from .pipeline import default_shutdown_timeout, deliver_at_child_exit
from .threads import call_in_forked_child, start_daemon

__all__ = ["ForwardingLogProcessor", "ForwardingSpanProcessor", "otlp_exporters"]

_LOG = logging.getLogger("simvue_otel.forward")


class _Forwarder:
    """A queue and a worker thread that exports batches until each one succeeds."""

    def __init__(
        self,
        exporter: Any,
        *,
        max_queue: int = 50_000,
        batch: int = 2_000,
        interval: float = 0.5,
        name: str = "simvue-otel-forward",
    ) -> None:
        self.exporter = exporter
        self.max_queue = max_queue
        self.batch = batch
        self.interval = interval
        self._queue: deque[Any] = deque()
        self._wake = threading.Event()
        self._idle = threading.Condition()
        self._busy = False
        self._closing = False
        self._deadline = float("inf")
        self._name = name
        self._child_pending = False  # forked, not yet started in this process
        self._thread = start_daemon(self._run, name)
        call_in_forked_child(self._after_fork_in_child)

    def _after_fork_in_child(self) -> None:
        """In a forked child: the queued items are the parent's; fresh queue and locks."""
        self._queue = deque()
        self._wake = threading.Event()
        self._idle = threading.Condition()
        self._busy = False
        self._child_pending = not self._closing

    def _start_in_child(self) -> None:
        with self._idle:
            if not self._child_pending:
                return
            self._thread = start_daemon(self._run, self._name)
            self._child_pending = False
        ref = weakref.ref(self)

        def deliver() -> None:
            forwarder = ref()
            if forwarder is not None and not forwarder._closing:
                forwarder.flush(default_shutdown_timeout())

        deliver_at_child_exit(deliver)

    def put(self, item: Any) -> None:
        if self._child_pending:
            self._start_in_child()
        queue = self._queue
        queue.append(item)
        if len(queue) >= self.batch:
            self._wake.set()
            while len(queue) >= self.max_queue and not self._closing:
                time.sleep(0.005)  # back-pressure: wait, never drop

    def _run(self) -> None:
        backoff = 0.0
        pending: list[Any] = []
        while True:
            if not pending:
                self._wake.wait(self.interval)
                self._wake.clear()
                while self._queue and len(pending) < self.batch:
                    pending.append(self._queue.popleft())
            if pending:
                with self._idle:
                    self._busy = True
                ok = False
                try:
                    ok = self.exporter.export(pending).name == "SUCCESS"
                except Exception:
                    _LOG.exception("OTLP export failed; will retry")
                if ok:
                    pending = []
                    backoff = 0.0
                else:
                    backoff = min(10.0, max(0.5, backoff * 2))
                    if time.monotonic() + backoff > self._deadline:
                        _LOG.warning(
                            "%d item(s) could not be sent over OTLP before shutdown", len(pending)
                        )
                        pending = []
                        self._queue.clear()
                    else:
                        time.sleep(backoff)
                with self._idle:
                    self._busy = False
                    self._idle.notify_all()
            elif self._closing:
                return
            else:
                with self._idle:
                    self._idle.notify_all()

    def flush(self, timeout: float) -> bool:
        if self._child_pending:
            return True  # a forked child that queued nothing
        deadline = time.monotonic() + timeout
        self._wake.set()
        with self._idle:
            while self._queue or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._wake.set()
                self._idle.wait(min(left, 0.2))
        return True

    def shutdown(self, timeout: float) -> None:
        if self._child_pending:  # a forked child that queued nothing: the exporter is the parent's
            self._closing = True
            return
        self._deadline = time.monotonic() + timeout
        self.flush(timeout)
        self._closing = True
        self._wake.set()
        self._thread.join(max(0.1, self._deadline - time.monotonic()))
        self.exporter.shutdown()


class ForwardingSpanProcessor(SpanProcessor):
    """Exports ended spans in batches, retrying instead of dropping."""

    def __init__(self, exporter: Any, **options: Any) -> None:
        self._forwarder = _Forwarder(exporter, name="simvue-otel-forward-spans", **options)

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        self._forwarder.put(span)

    def shutdown(self, timeout: float = 30.0) -> None:
        self._forwarder.shutdown(timeout)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self._forwarder.flush(timeout_millis / 1000)


class ForwardingLogProcessor(LogRecordProcessor):
    """Exports log records in batches, retrying instead of dropping."""

    def __init__(self, exporter: Any, **options: Any) -> None:
        self._forwarder = _Forwarder(exporter, name="simvue-otel-forward-logs", **options)

    def on_emit(self, log_record: ReadWriteLogRecord) -> None:
        self._forwarder.put(log_record)

    def emit(self, log_record: ReadWriteLogRecord) -> None:
        self._forwarder.put(log_record)

    def shutdown(self, timeout: float = 30.0) -> None:
        self._forwarder.shutdown(timeout)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self._forwarder.flush(timeout_millis / 1000)


def otlp_exporters(
    endpoint: str | None = None, headers: Mapping[str, str] | None = None
) -> tuple[Any, Any, Any]:
    """Span, log and metric OTLP exporters, configured as OpenTelemetry configures them
    (``OTEL_EXPORTER_OTLP_*``), with ``endpoint``/``headers`` given here taking precedence.

    ``OTEL_EXPORTER_OTLP_PROTOCOL=grpc`` selects gRPC; anything else OTLP/HTTP protobuf.
    """
    protocol = (setting("OTEL_EXPORTER_OTLP_PROTOCOL") or "").strip().lower()
    extra: dict[str, Any] = {}
    if headers:
        extra["headers"] = dict(headers)
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        if endpoint:
            extra["endpoint"] = endpoint
            extra["insecure"] = endpoint.startswith("http://") or "://" not in endpoint
        return OTLPSpanExporter(**extra), OTLPLogExporter(**extra), OTLPMetricExporter(**extra)
    from opentelemetry.exporter.otlp.proto.http._log_exporter import (
        OTLPLogExporter as HttpLogExporter,
    )
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
        OTLPMetricExporter as HttpMetricExporter,
    )
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpSpanExporter,
    )

    def signal(path: str) -> dict[str, Any]:
        return {**extra, "endpoint": endpoint.rstrip("/") + path} if endpoint else dict(extra)

    return (
        HttpSpanExporter(**signal("/v1/traces")),
        HttpLogExporter(**signal("/v1/logs")),
        HttpMetricExporter(**signal("/v1/metrics")),
    )
