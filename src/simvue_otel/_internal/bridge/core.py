"""What both bridge listeners (OTLP/HTTP and OTLP/gRPC) share: authentication, back-pressure,
and decoding → the one mapping → the sink, with partial success counting every item refused
(a Resource that could not be mapped) or skipped (records the mapping leaves out), and the
bridge's own metrics and per-request log lines.

A request is acknowledged only once its records are in the sink: with the online sink built
for the bridge (every batch written ahead to the spool), that means on disk, so a bridge that
crashes after answering loses nothing. A request a sender re-sends (its answer was lost) is
recognised by its bytes in a :class:`RequestLog` and not stored again.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import span_events
from ..mapping import Mapper
from ..mapping.records import EventRecord, MetricRecord, RunRecord
from ..sink import Sink
from .metrics import BridgeMetrics
from .signals import SIGNALS

__all__ = ["RETRY_AFTER_SECONDS", "BridgeCore", "Outcome", "RequestLog"]

_LOG = logging.getLogger("simvue_otel.bridge")

RETRY_AFTER_SECONDS = 5
"""``Retry-After`` of a 503 while the sink is backed up (``docs/exporters.md`` says the same)."""
_LOGGED_RUNS = 5  # run keys named in one request's log line; the rest are counted


@dataclass(frozen=True)
class Outcome:
    """How a request went: items accepted and refused (and why), for OTLP partial success;
    ``resent`` of the accepted were stored before (a re-sent request); ``runs`` are the keys
    of the runs it fed, and ``points``, ``events`` and ``states`` what the mapping made."""

    accepted: int
    rejected: int
    message: str = ""
    resent: int = 0
    runs: tuple[str, ...] = ()
    points: int = 0
    events: int = 0
    states: int = 0


class RequestLog:
    """Keys of the OTLP requests (per Resource) a bridge has stored, kept ``keep`` seconds.

    Collectors and SDKs re-send a request whose answer they did not get; a Simvue server would
    store it twice, so the bridge remembers what it took. The log is a SQLite file in the spool
    directory: it survives a restart, and replicas that share the directory (one host, or a
    shared file system with working locks) share it. ``path=None`` keeps it in memory.
    """

    def __init__(self, path: Path | None, *, keep: float = 3600.0) -> None:
        self.keep = keep
        target = ":memory:"
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            target = str(path)
        self._db = sqlite3.connect(target, timeout=10.0, check_same_thread=False)
        with contextlib.suppress(sqlite3.OperationalError):  # e.g. a file system without WAL
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS seen (key TEXT PRIMARY KEY, at REAL)")
        self._db.commit()
        self._added = 0
        self._lock = threading.Lock()

    def seen(self, key: str) -> bool:
        """Whether a request part with this key was stored within the last ``keep`` seconds."""
        with self._lock:
            row = self._db.execute("SELECT at FROM seen WHERE key = ?", (key,)).fetchone()
        return row is not None and row[0] >= time.time() - self.keep

    def add(self, key: str) -> None:
        """Remember that this request part is stored (called once it is in the sink)."""
        now = time.time()
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO seen (key, at) VALUES (?, ?)", (key, now))
            self._added += 1
            if self._added % 1000 == 0:
                self._db.execute("DELETE FROM seen WHERE at < ?", (now - self.keep,))
            self._db.commit()

    def close(self) -> None:
        with self._lock:
            self._db.close()


class BridgeCore:
    """Shared state of one bridge process: the token, the mapper and the sink."""

    def __init__(
        self,
        sink: Sink,
        *,
        token: str | None,
        max_backlog: int = 10_000,
        requests: RequestLog | None = None,
        metrics_token: str | None = None,
        mode: str = "",
    ) -> None:
        self.sink = sink
        self.requests = requests if requests is not None else RequestLog(None)
        self.mapper = Mapper(span_events=span_events())
        self.token = token
        self.metrics_token = metrics_token
        self.max_backlog = max_backlog
        self.metrics = BridgeMetrics(self, mode=mode)
        self._lock = threading.Lock()  # the mapper keeps per-run state: one request at a time

    def authorized(self, header: str | None) -> bool:
        """Whether an ``Authorization`` header carries the bridge's bearer token."""
        if self.token is None:
            return True
        return _bearer_matches(header, self.token)

    def may_scrape(self, header: str | None) -> bool:
        """Whether ``GET /metrics`` may be answered: open on a bridge without a token (it
        listens on loopback only); otherwise the bridge token or the metrics token, so a
        scraper need not hold the token that writes runs."""
        if self.token is None and self.metrics_token is None:
            return True
        return any(
            _bearer_matches(header, token)
            for token in (self.token, self.metrics_token)
            if token is not None
        )

    def retry_after(self) -> int | None:
        """Seconds a sender should wait when the sink is backed up; None when it is not."""
        if self.sink.backlog() >= self.max_backlog:
            return RETRY_AFTER_SECONDS
        return None

    def answered(
        self,
        transport: str,
        signal: str,
        code: str,
        started: float,
        outcome: Outcome | None = None,
    ) -> None:
        """Count one answered request (and what it held) and log it at debug: transport,
        signal, answer, items, runs, latency. ``started`` is its ``time.perf_counter()``."""
        seconds = time.perf_counter() - started
        self.metrics.request(transport, signal, code, seconds)
        if outcome is not None:
            self.metrics.outcome(signal, outcome)
        if not _LOG.isEnabledFor(logging.DEBUG):
            return
        if outcome is None:
            _LOG.debug(
                "request transport=%s signal=%s code=%s latency_ms=%.1f",
                transport, signal, code, seconds * 1000,
            )  # fmt: skip
            return
        runs = ",".join(outcome.runs[:_LOGGED_RUNS])
        if len(outcome.runs) > _LOGGED_RUNS:
            runs += f",+{len(outcome.runs) - _LOGGED_RUNS}"
        _LOG.debug(
            "request transport=%s signal=%s code=%s items=%d accepted=%d refused=%d resent=%d "
            "points=%d events=%d states=%d runs=%s latency_ms=%.1f%s",
            transport, signal, code, outcome.accepted + outcome.rejected, outcome.accepted,
            outcome.rejected, outcome.resent, outcome.points, outcome.events, outcome.states,
            runs or "-", seconds * 1000,
            f" refused_because={outcome.message!r}" if outcome.rejected else "",
        )  # fmt: skip

    def ingest(self, signal: str, request: Any, body: bytes | None = None) -> Outcome:
        """Map and store a decoded request; a Resource whose data cannot be mapped is
        refused on its own (counted), the others are kept, and records the mapping skips
        (see the conventions) are counted as refused, with the reason.

        Each Resource's records are stored under a key derived from the request's bytes, and
        the key is logged once they are in the sink: a request that a sender re-sends (its
        answer was lost) is answered as accepted and not stored again.
        """
        accepted = rejected = resent = points = events = states = 0
        problems: list[str] = []
        skipped: dict[str, int] = {}
        runs: dict[str, None] = {}
        raw = body if body is not None else request.SerializeToString(deterministic=True)
        digest = hashlib.sha256(signal.encode() + b"\0" + raw).hexdigest()[:40]
        with self._lock:
            self.mapper.take_skipped()  # nothing from another caller is counted here
            for index, (count, items) in enumerate(SIGNALS[signal].parts(request)):
                key = f"otlp-{digest}-{index}"
                if self.requests.seen(key):
                    _LOG.debug("%s request part %s was stored before; not again", signal, key)
                    accepted += count
                    resent += count
                    continue
                try:
                    records = SIGNALS[signal].map(self.mapper, items)
                    self.sink.submit(records, key)
                except Exception as exc:
                    _LOG.exception("could not map %d %s item(s)", count, signal)
                    self.mapper.take_skipped()
                    rejected += count
                    problems.append(f"{type(exc).__name__}: {exc}")
                    continue
                self.requests.add(key)
                left_out = self.mapper.take_skipped()
                dropped = min(count, sum(left_out.values()))
                for reason, n in left_out.items():
                    skipped[reason] = skipped.get(reason, 0) + n
                accepted += count - dropped
                rejected += dropped
                for record in records:
                    runs[record.run.key] = None
                    if isinstance(record, MetricRecord):
                        points += len(record.values)
                    elif isinstance(record, EventRecord):
                        events += 1
                    elif isinstance(record, RunRecord):
                        states += 1
        if skipped:
            item = SIGNALS[signal].item
            problems.extend(f"{n} {item}(s) skipped: {reason}" for reason, n in skipped.items())
        return Outcome(
            accepted,
            rejected,
            "; ".join(problems)[:500],
            resent=resent,
            runs=tuple(runs),
            points=points,
            events=events,
            states=states,
        )


def _bearer_matches(header: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header is ``Bearer <token>`` (compared in constant time)."""
    if not header or not header.lower().startswith("bearer "):
        return False
    return hmac.compare_digest(header[7:].strip().encode(), token.encode())
