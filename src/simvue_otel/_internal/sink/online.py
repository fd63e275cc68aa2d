"""The online sink: records to a Simvue server, in batches, with nothing lost.

Records are buffered in memory and uploaded by one worker thread in batches bounded by size
(``batch_points``) and by time (``flush_interval``). When the server cannot take them (down,
slow, 5xx, 429, token refused) the batch goes to a spool on disk with what the server already
holds of it (its :class:`~.uploader.Progress`), and so does anything past
``max_memory_points`` unless the server is taking data as fast as the buffer fills (then the
producer waits up to ``room_wait`` seconds for the worker to take the buffer: cheaper than
writing it to disk and reading it back, for the same end), and so does a buffer that has
waited ``hold_seconds`` for a worker held by a slow or failing server. The worker replays the
spool first, oldest first, once the server answers again, skipping acknowledged parts and
reconciling parts whose answer was lost, so each point and event is stored once without any
help from the server. Every segment is uploaded by one process at a time: this sink holds a
segment's lock while it uploads it (kept through the segment's rotation), and adopts what
others left only segment by segment, under each one's lock, so a ``simvue-otel send`` or
another bridge sharing the directory never uploads the same frames at the same time. Run
ids are recorded in a :class:`~.run_index.RunIndex` beside the spool. Heartbeats keep live
runs from turning ``lost``; a run that has ended gets none, whatever arrives for it later.
At ``close`` the sink waits at most ``timeout`` seconds and leaves the rest on disk for
``simvue-otel send``.

The sink is made of parts, one job each, that share its lock: :class:`~.buffer.SpooledBuffer`
holds what was accepted and not yet delivered (memory, spill, the full-disk policy and the loss
ledger), :class:`~.liveness.Liveness` keeps heartbeats and abort polling, and
:class:`~.delivery.Delivery` runs the worker loop and adopts what dead processes left. This
module adds the producer's side (``submit``, ``flush``), ``close`` and the forked child's sink.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path

from ..client import SimvueClient
from ..hints import command
from ..mapping.records import MetricRecord, Record, RunRecord
from ..threads import start_daemon
from .delivery import Delivery
from .files import private_dir
from .run_index import run_index_for
from .spool import SpoolReader
from .uploader import Uploader, UploadStats

__all__ = ["OnlineSink"]

_LOG = logging.getLogger("simvue_otel.sink")


SEGMENT_BYTES = 8 * 2**20
"""Size at which a spool segment is finished and a new one begun (unless given)."""
ADOPT_INTERVAL = 60.0
"""Seconds between looks for what processes that died left in the spool (unless given)."""


def _cost(records: Sequence[Record]) -> int:
    """Size of records in metric values (an event or state counts as one)."""
    return sum(len(r.values) if r.__class__ is MetricRecord else 1 for r in records)


class OnlineSink(Delivery):
    """Uploads records to one Simvue server; see the module docstring."""

    def __init__(
        self,
        client: SimvueClient,
        spool_dir: Path,
        *,
        batch_points: int = 10_000,
        flush_interval: float = 1.0,
        max_memory_points: int = 25_000,
        heartbeat_interval: float = 30.0,
        live_window: float | None = None,
        max_backoff: float = 15.0,
        spill_points: int = 50_000,
        segment_bytes: int | None = None,
        room_wait: float = 1.0,
        hold_seconds: float = 1.0,
        adopt_interval: float | None = None,
        child_of: Collection[str] | None = None,
    ) -> None:
        """``child_of``: this sink is a forked child's, and these are its parent's runs (see
        :meth:`for_child`)."""
        self.client = client
        try:  # the spool's folders are this user's alone (0700), before anything is written
            private_dir(spool_dir / "rejected")
        except OSError as exc:
            _LOG.warning("cannot prepare the spool directory %s: %s", spool_dir, exc)
        self.uploader = Uploader(
            client, rejected_dir=spool_dir / "rejected", index=run_index_for(spool_dir)
        )
        self.batch_points = batch_points
        self.flush_interval = flush_interval
        self.max_memory_points = max_memory_points
        self.heartbeat_interval = heartbeat_interval
        self.live_window = live_window
        self.max_backoff = max_backoff
        self.room_wait = room_wait
        self.hold_seconds = hold_seconds
        self.abort_listener: Callable[[str], None] | None = None
        """Called (on the sink's thread) with the key of a run the server was asked to abort."""
        self.adopt_interval = ADOPT_INTERVAL if adopt_interval is None else adopt_interval
        """Seconds between looks for spools that processes which died left behind."""
        super().__init__(
            spool_dir,
            spill_points=spill_points,
            segment_bytes=SEGMENT_BYTES if segment_bytes is None else segment_bytes,
        )
        self._wake = threading.Condition(self._lock)
        self._idle = threading.Condition(self._lock)
        self._spill_until = 0.0  # full buffers go to disk without waiting until then
        self._busy = False
        self._next_adopt = 0.0  # when to look for spools left by processes that died
        self._adopted_once = False  # close waits for the first look (within its deadline)
        # Frames of adopted segments kept for a later pass (waiting to settle, or refused by
        # an endpoint): held for the server like our own spills, so counted in the backlog
        # and waited for by close, within its deadline.
        self._orphans_kept = 0
        self._left_alone: set[str] = set()  # segments not uploaded: a link beside them
        self._closing = False
        self._deadline: float | None = None
        self._failures = 0
        self._partly = False  # the last pass was refused by some endpoints only (5xx, 429)
        self._settling: float | None = None  # when a spooled frame kept for its unsettled
        # parts (see Unsettled) can go on (time.monotonic()); None: no frame waits so
        self._since = 0.0  # when the memory buffer last went from empty to holding records
        self._init_liveness(child=child_of is not None)
        if child_of is not None:
            self.uploader.waits_for = frozenset(child_of)
            self._next_adopt = math.inf  # what others left is the parent's (or send's) to adopt
            self._adopted_once = True
        self._thread = start_daemon(self._run, "simvue-otel-sink")

    # -- producer side --------------------------------------------------------------------

    def submit(self, records: Sequence[Record], batch_key: str | None = None) -> None:
        """Queue records for upload (never blocks on the network).

        With a ``batch_key`` (the bridge derives one from each request), the records are
        written to the spool at once under that key (write-ahead: on disk before the bridge
        answers its sender).
        """
        if not records:
            return
        now = time.monotonic()
        with self._lock:
            if self._closed:
                raise RuntimeError("the sink is closed")
            if batch_key is not None:
                self._note_live_locked(records, now)
                self._spill_locked(records, batch_key)
                self._wake.notify()
                return
            if not self._buffer:
                self._since = now
            self._buffer.extend(records)
            self._buffered += _cost(records)
            self._note_live_locked(records, now)
            full = self._buffered > self.max_memory_points
            if (full and not self._wait_for_room_locked()) or self._held_locked(now):
                self._spill_locked(self._take_locked())
            if self._buffered >= self.batch_points:
                self._wake.notify()

    def _held_locked(self, now: float) -> bool:
        """Whether the memory buffer has waited ``hold_seconds`` for a worker that is held
        (a slow POST, a server that fails, a backoff): then it goes to the spool, so that a
        killed process loses about a second of data, not what piled up meanwhile. A worker
        that is only waiting for its flush interval takes the buffer itself."""
        if not self._buffer or now - self._since < self.hold_seconds:
            return False
        return self._busy or self._failures > 0

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything submitted so far is on the server; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._wake.notify()
            while self._buffer or self._spilled or self._busy:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._idle.wait(timeout=min(left, 0.5) if left is not None else 0.5)
                self._wake.notify()
            return True

    def close(self, timeout: float = 30.0) -> bool:
        """Upload what is left for at most ``timeout`` seconds, then keep the rest on disk.

        Returns True when everything reached the server.
        """
        with self._lock:
            if self._closed:
                return not self._spilled
            if self.losses.untold:
                self._buffer.extend(self.losses.events())
            self._closing = True
            self._deadline = time.monotonic() + timeout
            self._wake.notify()
        self._thread.join(timeout + 5.0)
        # A worker still held by a POST past the deadline holds a batch: its spool stays open
        # (the batch is written there if that POST fails), and not everything is delivered.
        in_flight = self._thread.is_alive()
        with self._lock:
            self._closed = True
            leftover = self._take_locked()
            data = [r for r in leftover if not isinstance(r, RunRecord)]
            if data:
                self._spill_locked(data)
            # Then the runs' states and loss events, small, in the room the reserve kept
            # (a full disk gave their data no room; their end must still be told).
            self._reserve.release()
            self.losses.writable()
            last: list[Record] = [r for r in self._buffer if isinstance(r, RunRecord)]
            self._buffer.clear()
            last += [r for r in leftover if isinstance(r, RunRecord)]
            if self.losses.untold:
                last.extend(self.losses.events())
            if last:
                self._spill_locked(last)
            if self._buffer:  # run states a full disk refused: nowhere left to keep them
                self.losses.total += len(self._buffer)
                self._buffer.clear()
            if in_flight:
                _LOG.warning(
                    "a batch was still being uploaded to %s at shutdown; if that upload fails "
                    "it is kept in %s",
                    self.client.url,
                    self._spool,
                )
            elif self._writer is not None:
                try:
                    self._writer.close()
                    SpoolReader(self._spool).cleanup()  # our fully uploaded segments go
                except OSError as exc:
                    _LOG.error("cannot finish the spool in %s: %s", self._spool, exc)
            remaining = self._spilled
            records = self._spilled_records
        if self.losses.total:
            _LOG.warning(
                "%d record(s) could neither reach the Simvue server at %s nor be written to %s "
                "(%s) and are lost; the runs they belong to have an event saying so where it "
                "could be kept",
                self.losses.total,
                self.client.url,
                self._spool,
                self.losses.reason,
            )
        if remaining:
            _LOG.warning(
                "the Simvue server at %s did not take everything before shutdown: %d record(s) "
                "(metric points, events, run states) are kept in %s. The next process sending "
                "to this server as the same user uploads them, or send them now with: %s",
                self.client.url,
                records,
                self._spool,
                command("send", "--cache", self._spool.parent.parent),
            )
        if in_flight:
            return False  # the worker still uses the uploader and the client
        self.uploader.close()
        self.client.close()
        return remaining == 0 and self.losses.total == 0

    def for_child(self, parent_runs: Collection[str] = ()) -> OnlineSink:
        """A forked child's own sink: its own connections, buffer, worker and spool segment.
        It sends no heartbeats (the parent keeps its runs alive, and a run whose parent died
        must turn ``lost``), adopts nothing, and never creates the parent's runs: their records
        wait until the parent has made them."""
        return OnlineSink(
            self.client.copy(),
            self._spool,
            batch_points=self.batch_points,
            flush_interval=self.flush_interval,
            max_memory_points=self.max_memory_points,
            heartbeat_interval=self.heartbeat_interval,
            live_window=self.live_window,
            max_backoff=self.max_backoff,
            spill_points=self.spill_points,
            segment_bytes=self.segment_bytes,
            room_wait=self.room_wait,
            hold_seconds=self.hold_seconds,
            adopt_interval=self.adopt_interval,
            child_of=parent_runs,
        )

    def run_id(self, key: str) -> str | None:
        """The server's id for the run with this key, once it was created or found."""
        return self.uploader.run_id(key)

    def upload_stats(self) -> UploadStats:
        """What the uploads achieved so far."""
        return self.uploader.stats

    def backlog(self) -> int:
        """Batches waiting for the server (spooled frames, plus one for a non-empty memory
        buffer): what a receiver checks before taking more (back-pressure)."""
        with self._lock:
            return self._spilled + self._orphans_kept + (1 if self._buffer else 0)

    # -- internals ------------------------------------------------------------------------

    def _wait_for_room_locked(self) -> bool:
        """The buffer is full: while the server takes data (the last upload worked), wait up
        to ``room_wait`` seconds for the worker to take it; False when it did not (a slow or
        failing server, a sink closing): then it is spilled, and so is every full buffer for
        the next ``5 * room_wait`` seconds (a slow server costs the producer one wait, not
        one per buffer)."""
        if not self.room_wait or not self.max_memory_points:  # 0: everything on disk first
            return False
        now = time.monotonic()
        if self._failures or self._closing or now < self._spill_until:
            return False
        deadline = now + self.room_wait
        self._wake.notify()
        while self._buffered > self.max_memory_points:
            left = deadline - time.monotonic()
            if self._failures or self._closing or self._closed:
                return False
            if left <= 0:
                self._spill_until = time.monotonic() + 5 * self.room_wait
                return False
            self._room.wait(left)
        return True
