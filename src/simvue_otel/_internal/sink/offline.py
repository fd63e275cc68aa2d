"""The offline sink: records to an append-only spool on disk, for `simvue-otel send`.

Needs no server and no token. Each ``submit`` becomes one checksummed frame written with one
system call, so a killed process loses at most the batch it was writing and never harms the
frames before it; the spool's writer fsyncs at most once a second and at close. A disk that
refuses a write (full, quota) never raises into the program: the records are counted as lost
in a :class:`~.losses.LossLedger`, and each run that lost some gets an event saying so.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Collection, Sequence
from pathlib import Path

from ..mapping.records import Record
from .buffer import SpooledBuffer
from .losses import split_states
from .spool import SpoolWriter

_LOG = logging.getLogger("simvue_otel.sink")

__all__ = ["OfflineSink"]


class OfflineSink(SpooledBuffer):
    """Writes every submitted batch to the spool in ``spool_dir``: a spooled buffer with no
    uploader, whose memory holds only the run states a full disk refused."""

    def __init__(self, spool_dir: Path, *, fsync_interval: float = 1.0) -> None:
        self._fsync_interval = fsync_interval
        writer = SpoolWriter(spool_dir, fsync_interval=fsync_interval)
        super().__init__(
            spool_dir,
            spill_points=sys.maxsize,  # (unused: each batch is one frame, under its key)
            segment_bytes=writer.segment_bytes,
            writer=writer,
        )
        self._writer: SpoolWriter = writer

    def submit(self, records: Sequence[Record], batch_key: str | None = None) -> None:
        """Append one frame holding ``records`` (under ``batch_key`` when given)."""
        if not records:
            return
        with self._lock:
            if self._closed:
                raise RuntimeError("the sink is closed")
            self._append(records, batch_key)

    def _append(self, records: Sequence[Record], batch_key: str | None = None) -> None:
        """Write one frame; a refused write counts its records as lost (the full-disk policy
        of :meth:`_spill_locked`). Once writes succeed again, runs that lost data get their
        loss event."""
        written = self._spill_seq
        key = self._next_key()  # taken by every batch, keyed or not (the spool's numbering)
        self._spill_locked(records, batch_key or key)
        if self._spill_seq > written:
            self._tell_losses()

    def _write_held(self) -> None:
        """Write run states a full disk refused earlier (there is room again, or at close)."""
        if not self._buffer:
            return
        held = list(split_states(self._buffer)[1].values())  # the latest state of each run
        try:
            self._writer.append(self._next_key(), held)
        except OSError:
            return
        self._take_locked()

    def _tell_losses(self) -> None:
        """Write the loss events of runs that lost data (kept for later if there is no room),
        and the run states held back meanwhile."""
        if not self.losses.untold:
            self._write_held()
            return
        events = self.losses.events()
        try:
            self._writer.append(self._next_key(), events)
        except OSError:
            self.losses.retell(events)
            return
        self._write_held()

    def for_child(self, parent_runs: Collection[str] = ()) -> OfflineSink:
        """A forked child's own sink: its own spool segment, lock and loss ledger."""
        return OfflineSink(self._spool, fsync_interval=self._fsync_interval)

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
        held = split_states(self._buffer)[1]
        if held:
            self.losses.total += len(held)
            _LOG.error("%d run state(s) could not be written to %s", len(held), self._spool)
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
