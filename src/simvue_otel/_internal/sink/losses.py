"""Records that could not be kept anywhere, counted per run, so no loss is ever silent.

When the spool's disk refuses a write (full, quota, file size limit) while the server cannot
take the data either, the records are gone: the sinks never raise into the user's program over
it. Instead this ledger counts them per run and reason, logs the first refusal once, and gives
each run that lost data a Simvue event (level ``error``) saying how many records were lost and
why, written as soon as there is room again (or uploaded once the server answers). The closing
summary says how many records were lost.

Records lost to damage on disk (a frame whose bytes no longer read back) are told the same
way, by whoever reads the spool: :func:`damage_events`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..mapping.records import EventRecord, Record, RunRecord, RunRef

if TYPE_CHECKING:
    from .spool import Damage

__all__ = ["LOSS_EVENT_PREFIX", "LossLedger", "damage_events", "split_states"]

_LOG = logging.getLogger("simvue_otel.sink")

LOSS_EVENT_PREFIX = "simvue-otel lost data:"
"""How the event recording a loss starts, so it can be found (and told from user events)."""


def split_states(records: Sequence[Record]) -> tuple[list[Record], dict[str, RunRecord]]:
    """A refused batch as (records to count as lost, the latest state of each run): states
    are few and small, so sinks hold them in memory for a later write instead of losing them."""
    lost: list[Record] = []
    states: dict[str, RunRecord] = {}
    for record in records:
        if isinstance(record, RunRecord):
            held = states.get(record.run.key)
            if held is None or record.observed >= held.observed:
                states[record.run.key] = record
        else:
            lost.append(record)
    return lost, states


def _is_loss_event(record: Record) -> bool:
    return isinstance(record, EventRecord) and record.message.startswith(LOSS_EVENT_PREFIX)


def damage_events(damage: Damage) -> list[EventRecord]:
    """One loss event per run that lost records to damage on disk (none for the cut tail of a
    segment whose writer was killed mid-write: that write never returned)."""
    if damage.tail:
        return []
    where = damage.corrupt.name if damage.corrupt is not None else damage.segment.name
    now = time.time()
    return [
        EventRecord(
            run=run,
            message=f"{LOSS_EVENT_PREFIX} {count} record(s) of this run (metric points, events "
            f"or state updates) could not be read back from the spool: segment "
            f"{damage.segment.name} was damaged at offset {damage.offset} ({damage.problem}); "
            f"its bytes are kept in {where}",
            timestamp=now,
            level="error",
        )
        for run, count in damage.records.items()
    ]


class LossLedger:
    """Counts records lost per run; see the module docstring. Thread-safe."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.total = 0
        """Records lost since the sink started."""
        self.reason = ""
        self._pending: dict[RunRef, int] = {}  # lost and not yet told in an event
        self._refusal: OSError | None = None
        self._retry_at = 0.0
        self._lock = threading.Lock()

    def add(self, records: Sequence[Record], exc: OSError) -> None:
        """Count ``records`` as lost because writing them failed with ``exc`` (a loss event
        among them is not a loss of the run's data: its count is told again later)."""
        reason = exc.strerror or type(exc).__name__
        retold = [r for r in records if isinstance(r, EventRecord) and _is_loss_event(r)]
        with self._lock:
            first = self.total == 0
            self.reason = reason
            for record in records:
                if not _is_loss_event(record):
                    self.total += 1
                    self._pending[record.run] = self._pending.get(record.run, 0) + 1
        if retold:
            self.retell(retold)
        if first:
            _LOG.error(
                "%s cannot take more data (%s) and the Simvue server has not taken it: "
                "records are being lost; free space there. Each run that loses data gets an "
                "event saying how much",
                self.where,
                reason,
            )

    def events(self) -> list[EventRecord]:
        """One event per run with untold losses (and forget them: put the events back with
        :meth:`add` if they cannot be kept either)."""
        with self._lock:
            pending, self._pending = self._pending, {}
            reason = self.reason
        now = time.time()
        return [
            EventRecord(
                run=run,
                message=f"{LOSS_EVENT_PREFIX} {count} record(s) of this run (metric points, "
                f"events or state updates) could not be kept: {self.where} refused them "
                f"({reason}) while the Simvue server could not take them",
                timestamp=now,
                level="error",
            )
            for run, count in pending.items()
        ]

    def retell(self, events: Sequence[EventRecord]) -> None:
        """Loss events that could not be kept: their counts wait for the next chance."""
        with self._lock:
            for event in events:
                count = int(event.message.split(" record(s)")[0].rsplit(" ", 1)[-1])
                self._pending[event.run] = self._pending.get(event.run, 0) + count

    @property
    def untold(self) -> bool:
        with self._lock:
            return bool(self._pending)

    # A full disk stays full for a while: after a refusal, writes are not even tried (nor their
    # records encoded) for a second, so a full disk does not also cost the program its CPU.

    def still_refusing(self) -> OSError | None:
        """The last refusal, while writes are paused after it; None when a write may be tried."""
        with self._lock:
            if self._refusal is not None and time.monotonic() < self._retry_at:
                return self._refusal
            return None

    def refusing(self, exc: OSError) -> None:
        """A write was just refused: pause writes for a second (once per refusal)."""
        with self._lock:
            if exc is not self._refusal:
                self._refusal, self._retry_at = exc, time.monotonic() + 1.0

    def writable(self) -> None:
        """A write succeeded (or room was made): no pause."""
        with self._lock:
            self._refusal = None
