"""The offline sink: records to an append-only spool on disk, for `simvue-otel send`.

Needs no server and no token. Each ``submit`` becomes one checksummed frame written with one
system call, so a killed process loses at most the batch it was writing and never harms the
frames before it; the spool's writer fsyncs at most once a second and at close.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence
from pathlib import Path

from ..mapping.records import Record
from .spool import SpoolWriter

__all__ = ["OfflineSink"]


class OfflineSink:
    """Writes every submitted batch to the spool in ``spool_dir``."""

    def __init__(self, spool_dir: Path, *, fsync_interval: float = 1.0) -> None:
        self.spool_dir = spool_dir
        self._writer = SpoolWriter(spool_dir, fsync_interval=fsync_interval)
        self._id = uuid.uuid4().hex[:12]
        self._seq = 0
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, records: Sequence[Record], batch_key: str | None = None) -> None:
        """Append one frame holding ``records`` (under ``batch_key`` when given)."""
        if not records:
            return
        with self._lock:
            if self._closed:
                raise RuntimeError("the sink is closed")
            self._seq += 1
            self._writer.append(batch_key or f"{self._id}:{self._seq}", records)

    def flush(self, timeout: float | None = None) -> bool:
        """Make what was written durable (fsync)."""
        with self._lock:
            if not self._closed:
                self._writer.flush(fsync=True)
        return True

    def close(self, timeout: float = 30.0) -> bool:
        """Fsync and mark the spool segment finished, ready for `simvue-otel send`."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._writer.close()
        return True
