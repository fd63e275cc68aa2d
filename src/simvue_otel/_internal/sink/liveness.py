"""Liveness of an online sink's runs: heartbeats and abort polling.

A run's data or a running state makes it live; its final state ends it for good. Live runs
get a heartbeat every ``heartbeat_interval`` seconds (a third of the shortest heartbeat
timeout among them, when shorter), so the server never marks a run that is still going
``lost``; with each beat the server is asked whether someone asked to abort the run, and
``abort_listener`` is told. A forked child's sink sends none: its parent keeps its runs alive.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from ..conventions import FINAL_STATUSES
from ..mapping.records import Record, RunRecord
from .uploader import Uploader

__all__ = ["Liveness"]

_LOG = logging.getLogger("simvue_otel.sink")


class Liveness:
    """The heartbeat side of an online sink (a part of it: its lock guards this state too;
    methods named ``*_locked`` hold it)."""

    _lock: threading.Lock
    uploader: Uploader
    heartbeat_interval: float
    live_window: float | None
    abort_listener: Callable[[str], None] | None

    def _init_liveness(self, *, child: bool) -> None:
        self._live: dict[str, float] = {}  # run key -> last time seen, for heartbeats
        self._ended: set[str] = set()  # runs whose final status was seen: no more heartbeats
        self._timeouts: dict[str, int] = {}  # run key -> its heartbeat timeout, when given
        self._child = child

    def _note_live_locked(self, records: Sequence[Record], now: float) -> None:
        """Track which runs are live (for heartbeats) and their heartbeat timeouts: a run's
        data or a running state makes it live, a final state ends it for good (late records
        of an ended run never restart its heartbeats)."""
        for state in [r for r in records if type(r) is RunRecord]:
            key = state.run.key
            if state.heartbeat_timeout:
                self._timeouts[key] = state.heartbeat_timeout
            if state.status in FINAL_STATUSES:
                self._live.pop(key, None)
                self._timeouts.pop(key, None)
                self._ended.add(key)
            elif state.status == "running" and key not in self._ended:
                self._live[key] = now
        for key in {r.run.key for r in records if r.__class__ is not RunRecord}:
            if key not in self._ended:
                self._live[key] = now

    def _beat_every_locked(self) -> float:
        shortest = min((t for k, t in self._timeouts.items() if k in self._live), default=None)
        if shortest is None:
            return self.heartbeat_interval
        return max(0.2, min(self.heartbeat_interval, shortest / 3.0))

    def _beat_every(self) -> float:
        """Heartbeat period: the configured one, or a third of the shortest heartbeat
        timeout among live runs, so a run with a short timeout is never marked lost."""
        with self._lock:
            return self._beat_every_locked()

    def _heartbeat(self, now: float) -> None:
        if self._child:
            return
        with self._lock:
            if self.live_window is None:
                keys = list(self._live)
            else:
                keys = [k for k, seen in self._live.items() if now - seen <= self.live_window]
                for k in [k for k, seen in self._live.items() if now - seen > self.live_window]:
                    del self._live[k]
        listener = self.abort_listener
        for key in self.uploader.heartbeat(keys, check_abort=listener is not None):
            if listener is not None:
                try:
                    listener(key)
                except Exception:
                    _LOG.exception("the abort handler of run %s failed", key)
