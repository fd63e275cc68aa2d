"""What both bridge listeners (OTLP/HTTP and OTLP/gRPC) share: authentication, back-pressure,
and decoding → the one mapping → the sink, with per-Resource partial success.

A request is acknowledged only once its records are in the sink: with the online sink built
for the bridge (every batch written ahead to the spool), that means on disk, so a bridge that
crashes after answering loses nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ..mapping import Mapper
from ..mapping.otlp import logs_from_otlp, metrics_from_otlp, spans_from_otlp
from ..mapping.records import Record
from ..sink import Sink

__all__ = ["BridgeCore", "Outcome"]

_LOG = logging.getLogger("simvue_otel.bridge")

_ADAPTERS: dict[str, Callable[[Any], Iterator[tuple[int, list[Any]]]]] = {
    "traces": spans_from_otlp,
    "metrics": metrics_from_otlp,
    "logs": logs_from_otlp,
}


@dataclass(frozen=True)
class Outcome:
    """How a request went: items refused (and why), for OTLP partial success."""

    accepted: int
    rejected: int
    message: str = ""


class BridgeCore:
    """Shared state of one bridge process: the token, the mapper and the sink."""

    def __init__(self, sink: Sink, *, token: str | None, max_backlog: int = 10_000) -> None:
        self.sink = sink
        self.mapper = Mapper(span_events=os.environ.get("SIMVUE_OTEL_SPAN_EVENTS", "all"))
        self.token = token
        self.max_backlog = max_backlog
        self._lock = threading.Lock()  # the mapper keeps per-run state: one request at a time

    def authorized(self, header: str | None) -> bool:
        """Whether an ``Authorization`` header carries the bridge's bearer token."""
        if self.token is None:
            return True
        if not header or not header.lower().startswith("bearer "):
            return False
        return hmac.compare_digest(header[7:].strip().encode(), self.token.encode())

    def retry_after(self) -> int | None:
        """Seconds a sender should wait when the sink is backed up; None when it is not."""
        backlog = getattr(self.sink, "backlog", None)
        if backlog is not None and backlog() >= self.max_backlog:
            return 2
        return None

    def ingest(self, signal: str, request: Any, body: bytes | None = None) -> Outcome:
        """Map and store a decoded request; a Resource whose data cannot be mapped is
        refused on its own (counted), the others are kept.

        Each Resource's records are stored under a key derived from the request's bytes, so a
        request that a collector re-sends (its answer was lost, or it went to another replica)
        is stored once on the server, not twice.
        """
        accepted = rejected = 0
        problems: list[str] = []
        raw = body if body is not None else request.SerializeToString(deterministic=True)
        digest = hashlib.sha256(signal.encode() + b"\0" + raw).hexdigest()[:40]
        with self._lock:
            for index, (count, items) in enumerate(_ADAPTERS[signal](request)):
                try:
                    records = self._map(signal, items)
                    self.sink.submit(records, f"otlp-{digest}-{index}")
                except Exception as exc:
                    _LOG.exception("could not map %d %s item(s)", count, signal)
                    rejected += count
                    problems.append(f"{type(exc).__name__}: {exc}")
                    continue
                accepted += count
        return Outcome(accepted, rejected, "; ".join(problems)[:500])

    def _map(self, signal: str, items: list[Any]) -> list[Record]:
        if signal == "traces":
            return self.mapper.spans(items)
        if signal == "logs":
            return self.mapper.logs(items)
        return self.mapper.metrics(items)
