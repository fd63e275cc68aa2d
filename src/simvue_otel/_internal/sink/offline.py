"""The offline sink: records to an append-only spool on disk, for `simvue-otel send`.

Needs no server and no token. Each ``submit`` becomes one checksummed frame written with one
system call, so a killed process loses at most the batch it was writing and never harms the
frames before it; the spool's writer fsyncs at most once a second and at close. A disk that
refuses a write (full, quota) never raises into the program: the records are counted as lost
in a :class:`~.losses.LossLedger`, and each run that lost some gets an event saying so.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Collection, Sequence
from pathlib import Path

from ..mapping.records import Record, RunRecord
from .base import Sink
from .losses import DiskReserve, LossLedger, split_states
from .spool import SpoolWriter

_LOG = logging.getLogger("simvue_otel.sink")

__all__ = ["OfflineSink"]


class OfflineSink(Sink):
    """Writes every submitted batch to the spool in ``spool_dir``."""

    def __init__(self, spool_dir: Path, *, fsync_interval: float = 1.0) -> None:
        self._spool = spool_dir
        self.spool_dir = spool_dir
        self._fsync_interval = fsync_interval
        self._writer = SpoolWriter(spool_dir, fsync_interval=fsync_interval)
        self._id = uuid.uuid4().hex[:12]
        self._seq = 0
        self._lock = threading.Lock()
        self._closed = False
        self.losses = LossLedger(f"the spool directory {spool_dir}")
        self._reserve = DiskReserve(spool_dir)
        self._held: dict[str, RunRecord] = {}  # run states a full disk refused, latest first

    def submit(self, records: Sequence[Record], batch_key: str | None = None) -> None:
        """Append one frame holding ``records`` (under ``batch_key`` when given)."""
        if not records:
            return
        with self._lock:
            if self._closed:
                raise RuntimeError("the sink is closed")
            self._append(records, batch_key)

    def _append(self, records: Sequence[Record], batch_key: str | None = None) -> None:
        """Write one frame; a refused write counts its records as lost. Once writes succeed
        again, runs that lost data get their loss event."""
        self._seq += 1
        try:
            refusal = self.losses.still_refusing()
            if refusal is not None:
                raise refusal  # still full a moment ago: do not encode to find out
            self._writer.append(batch_key or f"{self._id}:{self._seq}", records)
            self.losses.writable()
        except OSError as exc:
            self.losses.refusing(exc)
            lost, states = split_states(records)
            self.losses.add(lost, exc)
            for key, state in states.items():
                held = self._held.get(key)
                if held is None or state.observed >= held.observed:
                    self._held[key] = state
            return
        self._tell_losses()

    def _write_held(self) -> None:
        """Write run states a full disk refused earlier (there is room again, or at close)."""
        if not self._held:
            return
        held = list(self._held.values())
        self._seq += 1
        try:
            self._writer.append(f"{self._id}:{self._seq}", held)
        except OSError:
            return
        self._held.clear()

    def _tell_losses(self) -> None:
        """Write the loss events of runs that lost data (kept for later if there is no room),
        and the run states held back meanwhile."""
        if not self.losses.untold:
            self._write_held()
            return
        events = self.losses.events()
        self._seq += 1
        try:
            self._writer.append(f"{self._id}:{self._seq}", events)
        except OSError:
            self.losses.retell(events)
            return
        self._write_held()

    def for_child(self, parent_runs: Collection[str] = ()) -> OfflineSink:
        """A forked child's own sink: its own spool segment, lock and loss ledger."""
        return OfflineSink(self._spool, fsync_interval=self._fsync_interval)

    def drop_inherited(self) -> None:
        """In a forked child: the parent's open segment is not the child's to write or lock."""
        self._writer.drop_in_child()

    def flush(self, timeout: float | None = None) -> bool:
        """Make what was written durable (fsync)."""
        with self._lock:
            if not self._closed:
                try:
                    self._writer.flush(fsync=True)
                except OSError as exc:
                    _LOG.error("cannot make the spool in %s durable: %s", self._spool, exc)
                    return False
        return True

    def lost_records(self) -> int:
        """Records a full disk could not take."""
        return self.losses.total

    def close(self, timeout: float = 30.0) -> bool:
        """Fsync and mark the spool segment finished, ready for `simvue-otel send`; False
        (and one warning) when records were lost."""
        with self._lock:
            if self._closed:
                return self.losses.total == 0
            self._closed = True
            self._reserve.release()  # room for the loss events and final states
            self.losses.writable()
            self._tell_losses()
            try:
                self._writer.close()
            except OSError as exc:
                _LOG.error("cannot finish the spool in %s: %s", self._spool, exc)
        self._reserve.release()
        if self._held:
            self.losses.total += len(self._held)
            _LOG.error("%d run state(s) could not be written to %s", len(self._held), self._spool)
        if self.losses.total:
            _LOG.warning(
                "%d record(s) could not be written to %s (%s) and are lost; the runs they "
                "belong to have an event saying so%s",
                self.losses.total,
                self._spool,
                self.losses.reason,
                "" if not self.losses.untold else " (where there was room to write it)",
            )
        return self.losses.total == 0
