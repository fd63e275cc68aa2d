"""The bridge's own metrics, served as Prometheus text at ``GET /metrics``.

Counters of what senders asked (requests by transport, signal and answer; items accepted and
refused; what the mapping made of them) are kept as they happen; the state of the sink (its
backlog in batches and bytes, what it uploaded, what the server refused, what a full disk
lost) and of the mapper (runs seen) is read when Prometheus scrapes, so nothing is counted
twice and the hot path pays for a few counter increments only. Each bridge has a registry of
its own (no process-global state), and the names are listed in ``docs/deploy.md``.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from ..sink.spool import SpoolReader
from ..sink.uploader import UPLOAD_BUCKETS
from ..version import VERSION

__all__ = ["PREFIX", "BridgeMetrics", "replica_name"]

PREFIX = "simvue_otel_bridge"
# Request latencies: a bridge answers once a request is on its disk, from about a millisecond
# for a small request to seconds for a 20 MiB one on a busy disk.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def replica_name() -> str:
    """``host:pid``: names this bridge process in its log lines and metrics, so an operator
    can tell which replica wrote a run and whether a restarted one took over a spool."""
    return f"{socket.gethostname()}:{os.getpid()}"


class _SinkCollector(Collector):
    """What the sink and the mapper hold, read at scrape time."""

    def __init__(self, core: Any) -> None:
        self.core = core

    def collect(self) -> Iterator[Metric]:
        core = self.core
        sink = core.sink
        yield GaugeMetricFamily(
            f"{PREFIX}_backlog_batches",
            "Accepted batches not yet uploaded to the Simvue server.",
            value=sink.backlog(),
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_backed_up",
            "1 while the backlog is at --max-backlog and senders are told to retry later.",
            value=1 if core.retry_after() is not None else 0,
        )
        stats = sink.upload_stats()
        if stats is not None and sink.spool_dir is not None:
            yield GaugeMetricFamily(
                f"{PREFIX}_backlog_bytes",
                "Bytes in the spool not yet uploaded (this bridge's and any it adopted).",
                value=_pending_bytes(sink.spool_dir),
            )
        if stats is not None:
            uploaded = CounterMetricFamily(
                f"{PREFIX}_uploaded",
                "What the Simvue server acknowledged: metric values, events, run states.",
                labels=["kind"],
            )
            uploaded.add_metric(["points"], stats.points)
            uploaded.add_metric(["events"], stats.events)
            uploaded.add_metric(["states"], stats.states)
            yield uploaded
            yield CounterMetricFamily(
                f"{PREFIX}_server_rejected_records",
                "Records the Simvue server refused (4xx), set aside in the spool's rejected "
                "folder.",
                value=stats.rejected,
            )
            yield CounterMetricFamily(
                f"{PREFIX}_runs_created",
                "Runs this bridge created on the Simvue server.",
                value=stats.runs_created,
            )
            yield CounterMetricFamily(
                f"{PREFIX}_reconciled_parts",
                "Uploads whose answer was lost, checked against what the server holds.",
                value=stats.reconciled,
            )
            failures = CounterMetricFamily(
                f"{PREFIX}_upload_failures",
                "Upload attempts that left their batch waiting, by reason: unreachable, "
                "server_error (5xx), token (401/403), refused_run.",
                labels=["reason"],
            )
            for reason in ("unreachable", "server_error", "token", "refused_run"):
                failures.add_metric([reason], stats.failures[reason])
            yield failures
            cumulative, buckets = 0, []
            bounds = (*(repr(b) for b in UPLOAD_BUCKETS), "+Inf")
            for bound, count in zip(bounds, stats.upload_seconds, strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            yield HistogramMetricFamily(
                f"{PREFIX}_upload_duration_seconds",
                "Time to upload one batch to the Simvue server, for batches that got there.",
                buckets=buckets,
                sum_value=stats.upload_seconds_sum,
            )
        yield CounterMetricFamily(
            f"{PREFIX}_lost_records",
            "Records neither the server nor the disk (full) could take.",
            value=sink.lost_records(),
        )
        yield CounterMetricFamily(
            f"{PREFIX}_runs_seen",
            "Runs this bridge has received telemetry for since it started.",
            value=core.mapper.runs_seen,
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_runs_tracked",
            "Runs whose step counters and time origin this bridge holds in memory.",
            value=core.mapper.tracked_runs,
        )


def _pending_bytes(spool_dir: Path) -> int:
    try:
        return SpoolReader(spool_dir).pending_bytes(include_live=True)
    except OSError:
        return 0


class BridgeMetrics:
    """The counters a bridge keeps, and its Prometheus registry."""

    def __init__(self, core: Any, *, mode: str = "", replica: str | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        Gauge(
            f"{PREFIX}_info",
            "This bridge process: version, mode and replica (host:pid).",
            ["version", "mode", "replica"],
            registry=registry,
        ).labels(VERSION, mode, replica or replica_name()).set(1)
        self.requests = Counter(
            f"{PREFIX}_requests",
            "OTLP requests by transport, signal and answer (HTTP status, or gRPC status name).",
            ["transport", "signal", "code"],
            registry=registry,
        )
        self.latency = Histogram(
            f"{PREFIX}_request_duration_seconds",
            "Time to answer an OTLP request (decoding, mapping, writing to the spool).",
            ["transport", "signal"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.items = Counter(
            f"{PREFIX}_items",
            "Spans, log records and metric data points in decoded requests, accepted or refused "
            "(OTLP partial success).",
            ["signal", "outcome"],
            registry=registry,
        )
        self.resent = Counter(
            f"{PREFIX}_resent_items",
            "Items of requests a sender sent again after storing: answered, not stored twice.",
            ["signal"],
            registry=registry,
        )
        self.mapped = Counter(
            f"{PREFIX}_mapped",
            "What the mapping made of accepted items: Simvue metric values (points), events "
            "and run states.",
            ["kind"],
            registry=registry,
        )
        registry.register(_SinkCollector(core))

    def request(self, transport: str, signal: str, code: str, seconds: float) -> None:
        """Count one answered request."""
        self.requests.labels(transport, signal, code).inc()
        self.latency.labels(transport, signal).observe(seconds)

    def outcome(self, signal: str, outcome: Any) -> None:
        """Count what one ingested request held (an :class:`~.core.Outcome`)."""
        if outcome.accepted:
            self.items.labels(signal, "accepted").inc(outcome.accepted)
        if outcome.rejected:
            self.items.labels(signal, "refused").inc(outcome.rejected)
        if outcome.resent:
            self.resent.labels(signal).inc(outcome.resent)
        for kind, count in (("points", outcome.points), ("events", outcome.events),
                            ("states", outcome.states)):  # fmt: skip
            if count:
                self.mapped.labels(kind).inc(count)

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The metrics in the format the scraper asks for (``Accept``): (body, content type)."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type
