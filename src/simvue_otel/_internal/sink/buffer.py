"""Records accepted and not yet delivered: a memory buffer that spills to the spool.

The part every sink that keeps data on disk shares (the online sink, whose worker then
delivers it, and the offline sink, which has no worker): the buffer, the spool segment it
spills to, and the one full-disk policy. A disk that refuses a write (full, quota) never
raises into the program: the points and events are counted as lost in a
:class:`~.losses.LossLedger` (each run that lost some is told so later), and run states go
back to memory, few and small, so a run's final status survives a full disk. While the disk
refuses, nothing is encoded to find out again (the ledger pauses writes for a second).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..mapping.records import MetricRecord, Record, RunRecord
from .base import Sink
from .losses import LossLedger, split_states
from .reserve import DiskReserve
from .spool import SpoolWriter

if TYPE_CHECKING:
    from .uploader import Progress

__all__ = ["SpooledBuffer"]


class SpooledBuffer(Sink):
    """What a sink accepted and has not delivered: held in memory (``_buffer``, its size in
    metric values in ``_buffered``) or spilled to the spool (``_spilled`` frames holding
    ``_spilled_records``); one lock guards it all (methods named ``*_locked`` hold it)."""

    def __init__(
        self,
        spool_dir: Path,
        *,
        spill_points: int,
        segment_bytes: int,
        writer: SpoolWriter | None = None,
    ) -> None:
        """``writer``: the spool segment, when the sink opened it already (else it is opened
        with the first spill)."""
        self._spool = spool_dir
        self.spool_dir = spool_dir
        self.spill_points = spill_points
        self.segment_bytes = segment_bytes
        self.losses = LossLedger(f"the spool directory {spool_dir}")
        self._reserve = DiskReserve(spool_dir)
        self._id = uuid.uuid4().hex[:12]
        self._seq = 0
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)  # the worker took the buffer
        self._buffer: list[Record] = []
        self._buffered = 0
        self._spilled = 0  # frames written and not yet uploaded
        self._spilled_records = 0  # the records in them
        self._spill_seq = 0
        self._writer = writer
        self._closed = False

    def lost_records(self) -> int:
        """Records neither the server nor a full disk could take."""
        return self.losses.total

    def drop_inherited(self) -> None:
        """In a forked child: the parent's open segment is not the child's to write or lock."""
        if self._writer is not None:
            self._writer.drop_in_child()

    def _take_locked(self) -> list[Record]:
        batch, self._buffer, self._buffered = self._buffer, [], 0
        self._room.notify_all()
        return batch

    def _next_key(self) -> str:
        self._seq += 1
        return f"{self._id}:{self._seq}"

    def _spill_locked(
        self,
        records: Sequence[Record],
        key: str | None = None,
        progress: Progress | None = None,
    ) -> None:
        """Write records to the spool: a batch that met the server keeps its key and what the
        server holds of it (``progress``); fresh overflow goes in frames of ``spill_points``
        values, so no single encode holds the interpreter for long."""
        if not records:
            return
        if self._writer is None:
            try:
                self._writer = SpoolWriter(self._spool, segment_bytes=self.segment_bytes)
            except OSError as exc:
                self._refused_locked(records, exc)
                return
        chunks: list[Sequence[Record]] = [records]
        if key is None:
            chunks, chunk, cost = [], [], 0
            for record in records:
                chunk.append(record)
                cost += len(record.values) if isinstance(record, MetricRecord) else 1
                if cost >= self.spill_points:
                    chunks.append(chunk)
                    chunk, cost = [], 0
            if chunk:
                chunks.append(chunk)
        states = progress.states if progress is not None else None
        began = progress.began if progress is not None else None
        for part in chunks:
            refusal = self.losses.still_refusing()
            if refusal is not None:
                self._refused_locked(part, refusal)  # no encoding while the disk is full
                continue
            try:
                self._writer.append(key or self._next_key(), part, states, began)
            except OSError as exc:  # a full disk: counted and told, never raised
                self.losses.refusing(exc)
                self._refused_locked(part, exc)
                continue
            self.losses.writable()
            self._spilled += 1
            self._spilled_records += len(part)
            self._spill_seq += 1

    def _refused_locked(self, records: Sequence[Record], exc: OSError) -> None:
        """The disk refused records the server could not take: the points and events are lost
        (counted, and told to their runs later); run states go back to memory, few and small,
        so a run's final status survives a full disk."""
        lost, states = split_states(records)
        self.losses.add(lost, exc)
        kept = {r.run.key: r for r in self._buffer if isinstance(r, RunRecord)}
        fresh = [s for k, s in states.items() if k not in kept or s.observed >= kept[k].observed]
        self._buffer.extend(fresh)
        self._buffered += len(fresh)
