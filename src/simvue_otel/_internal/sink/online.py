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
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Collection, Sequence
from pathlib import Path

from ..client import SimvueClient
from ..conventions import FINAL_STATUSES
from ..hints import command
from ..mapping.records import MetricRecord, Record, RunRecord
from ..threads import start_daemon
from .base import Sink
from .files import UnsafeSpoolFile, private_dir
from .losses import DiskReserve, LossLedger, damage_events, split_states
from .run_index import RunIndex
from .spool import Frame, SendLock, SpoolBusyError, SpoolReader, SpoolWriter
from .uploader import PartlyTaken, Progress, RetryLater, Unsettled, Uploader, UploadStats

__all__ = ["OnlineSink"]

_LOG = logging.getLogger("simvue_otel.sink")


class SpoolProgress(Progress):
    """The progress of a spooled frame, kept in its segment's ``.parts`` file."""

    def __init__(self, reader: SpoolReader, frame: Frame) -> None:
        super().__init__(reader.progress(frame), reader.began(frame))
        self._reader = reader
        self._frame = frame

    def record(self, part: str, state: str) -> None:
        at = self.began.get(part) if state == "sending" else None
        self._reader.mark(self._frame, part, state, at)


SEGMENT_BYTES = 8 * 2**20
"""Size at which a spool segment is finished and a new one begun (unless given)."""
ADOPT_INTERVAL = 60.0
"""Seconds between looks for what processes that died left in the spool (unless given)."""


def run_index_for(spool_dir: Path) -> RunIndex:
    """The run index kept beside a server's spool (what ``send`` and later processes read)."""
    return RunIndex(spool_dir / "server_ids")


def _cost(records: Sequence[Record]) -> int:
    """Size of records in metric values (an event or state counts as one)."""
    return sum(len(r.values) if r.__class__ is MetricRecord else 1 for r in records)


class OnlineSink(Sink):
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
        self._spool = spool_dir
        self.spool_dir = spool_dir
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
        self.spill_points = spill_points
        self.room_wait = room_wait
        self.hold_seconds = hold_seconds
        self.abort_listener: Callable[[str], None] | None = None
        """Called (on the sink's thread) with the key of a run the server was asked to abort."""
        self.segment_bytes = SEGMENT_BYTES if segment_bytes is None else segment_bytes
        self.adopt_interval = ADOPT_INTERVAL if adopt_interval is None else adopt_interval
        """Seconds between looks for spools that processes which died left behind."""
        self.losses = LossLedger(f"the spool directory {spool_dir}")
        self._reserve = DiskReserve(spool_dir)
        self._id = uuid.uuid4().hex[:12]
        self._seq = 0
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._idle = threading.Condition(self._lock)
        self._room = threading.Condition(self._lock)  # the worker took the buffer
        self._spill_until = 0.0  # full buffers go to disk without waiting until then
        self._buffer: list[Record] = []
        self._buffered = 0
        self._busy = False
        self._spilled = 0  # frames written and not yet uploaded
        self._spilled_records = 0  # the records in them
        self._spill_seq = 0
        self._next_adopt = 0.0  # when to look for spools left by processes that died
        self._adopted_once = False  # close waits for the first look (within its deadline)
        # Frames of adopted segments kept for a later pass (waiting to settle, or refused by
        # an endpoint): held for the server like our own spills, so counted in the backlog
        # and waited for by close, within its deadline.
        self._orphans_kept = 0
        self._writer: SpoolWriter | None = None
        self._left_alone: set[str] = set()  # segments not uploaded: a link beside them
        self._live: dict[str, float] = {}  # run key -> last time seen, for heartbeats
        self._ended: set[str] = set()  # runs whose final status was seen: no more heartbeats
        self._timeouts: dict[str, int] = {}  # run key -> its heartbeat timeout, when given
        self._closing = False
        self._closed = False
        self._deadline: float | None = None
        self._failures = 0
        self._partly = False  # the last pass was refused by some endpoints only (5xx, 429)
        self._settling: float | None = None  # when a spooled frame kept for its unsettled
        # parts (see Unsettled) can go on (time.monotonic()); None: no frame waits so
        self._since = 0.0  # when the memory buffer last went from empty to holding records
        self._child = child_of is not None
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

    def drop_inherited(self) -> None:
        """In a forked child: the parent's open segment is not the child's to write or lock."""
        if self._writer is not None:
            self._writer.drop_in_child()

    def run_id(self, key: str) -> str | None:
        """The server's id for the run with this key, once it was created or found."""
        return self.uploader.run_id(key)

    def upload_stats(self) -> UploadStats:
        """What the uploads achieved so far."""
        return self.uploader.stats

    def lost_records(self) -> int:
        """Records neither the server nor a full disk could take."""
        return self.losses.total

    def backlog(self) -> int:
        """Batches waiting for the server (spooled frames, plus one for a non-empty memory
        buffer): what a receiver checks before taking more (back-pressure)."""
        with self._lock:
            return self._spilled + self._orphans_kept + (1 if self._buffer else 0)

    # -- internals ------------------------------------------------------------------------

    def _take_locked(self) -> list[Record]:
        batch, self._buffer, self._buffered = self._buffer, [], 0
        self._room.notify_all()
        return batch

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

    def _run(self) -> None:
        last_beat = time.monotonic()
        backoff = 0.0
        while True:
            with self._lock:
                if not self._closing:
                    wait = backoff or min(self.flush_interval, self._beat_every_locked())
                    if self._buffered < self.batch_points or backoff:
                        self._wake.wait(timeout=wait)
                if self._closing and self._deadline is not None:
                    if time.monotonic() >= self._deadline:
                        return
                    if (
                        not self._buffer
                        and not self._spilled
                        and not self._orphans_kept
                        and self._adopted_once
                    ):
                        return
                    if backoff:  # the server is not taking data: wait, do not spin
                        left = self._deadline - time.monotonic()
                        self._wake.wait(timeout=min(backoff, max(0.05, left / 2)))
                        if time.monotonic() >= self._deadline:
                            return
                    elif self._settling is not None and not self._buffer:
                        # Only frames that wait for earlier POSTs to settle: wait for them
                        # (or the deadline), do not spin.
                        now = time.monotonic()
                        pause = min(self._settling, self._deadline) - now
                        if pause > 0:
                            self._wake.wait(timeout=pause)
                        if time.monotonic() >= self._deadline:
                            return
                self._busy = True
            try:
                ok = self._drain()
            except Exception:  # never let the worker die: the data is still held
                _LOG.exception("unexpected error while uploading to Simvue; will retry")
                ok = False
            with self._lock:
                self._busy = False
                self._idle.notify_all()
            if ok:
                self._failures = 0
                backoff = 0.0
                if self.losses.untold:  # the server answers: tell it what the disk lost
                    with self._lock:
                        self._buffer.extend(self.losses.events())
            else:
                self._failures += 1
                backoff = min(self.max_backoff, 0.5 * 2 ** min(self._failures, 8))
                if self._closing and self._deadline is not None:
                    # Closing: the next try comes within half the time left, so the last
                    # try is made before the deadline instead of a backoff running past it.
                    left = self._deadline - time.monotonic()
                    backoff = min(backoff, max(0.05, left / 2))
            now = time.monotonic()
            # Beats go on while the server answers, even when one endpoint refuses data.
            if (ok or self._partly) and now - last_beat >= self._beat_every():
                last_beat = now
                self._heartbeat(now)

    def _drain(self) -> bool:
        """Upload the spool, then the memory buffer; False when the server is not taking data.

        One pass of the uploader: an endpoint that fails (5xx, 429) is tried once, and what
        the other endpoints take still goes, from the spool and from memory."""
        self.uploader.begin_pass()
        try:
            return self._drain_pass()
        finally:
            self.uploader.end_pass()

    def _drain_pass(self) -> bool:
        self._partly = False
        self._settling = None
        now = time.monotonic()
        ok = True
        if now >= self._next_adopt:
            self._next_adopt = now + self.adopt_interval
            if self._adopt_orphans():
                self._adopted_once = True
            else:
                self._next_adopt = now  # try again with the next pass
                if not self._partly:  # the server did not answer: nothing more this pass
                    return False
                ok = False  # some endpoint refused part of what was left: the rest still goes
        if self._spilled and not self._drain_spool():
            if not self._partly:  # the server did not answer: nothing more this pass
                return False
            ok = False  # some endpoint refused: the others still take what waits in memory
        while True:
            with self._lock:
                batch = self._take_locked()
                if not batch:
                    return ok
                key = self._next_key()
            progress = Progress()
            try:
                self.uploader.upload(batch, key, progress)
            except Exception as exc:  # RetryLater, or anything unforeseen: keep the batch
                if isinstance(exc, RetryLater):
                    self._partly = self._partly or isinstance(exc, PartlyTaken)
                with self._lock:
                    before = self._spill_seq
                    self._spill_locked(batch, key, progress)
                    kept = "kept on disk" if self._spill_seq > before else "not kept (see below)"
                if not isinstance(exc, RetryLater):
                    _LOG.exception("unexpected error while uploading; the batch is %s", kept)
                else:
                    _LOG.info("Simvue server not taking data (%s); the batch is %s", exc, kept)
                return False

    def _adopt_orphans(self) -> bool:
        """Upload what a process that died before delivering left in this server's spool
        (finished segments that are not ours), one segment at a time under its lock, so a
        segment another live process is uploading is left to it; skipped while a
        `simvue-otel send` holds the directory."""
        reader = SpoolReader(self._spool)
        ours = self._writer.written_stems if self._writer is not None else set()
        orphans = [s for s in reader.segments() if s.stem not in ours]
        if not orphans:
            with self._lock:
                self._orphans_kept = 0
            return True
        try:
            lock = SendLock(self._spool)
            lock.acquire()
        except SpoolBusyError:
            return True
        except OSError as exc:  # a link planted as the lock: leave the directory alone
            _LOG.error("cannot take the send lock of %s (%s); not adopting", self._spool, exc)
            return True
        try:
            adopted = self._upload_frames(reader, orphans, ours=False)
            if adopted is None:
                return False
            if self._settling is not None:  # a frame waits to settle: look again by then
                self._next_adopt = min(self._next_adopt, self._settling)
            reader.cleanup()
            if adopted[0]:
                _LOG.warning(
                    "uploaded %d batch(es) an earlier process left in %s", adopted[0], self._spool
                )
            return True
        finally:
            lock.release()

    def _drain_spool(self) -> bool:
        with self._lock:
            seq = self._spill_seq
        reader = SpoolReader(self._spool)
        # By stem: a full segment is renamed from .seg to .done when it rotates.
        ours = self._writer.written_stems if self._writer is not None else set()
        segments = [s for s in reader.segments(include_live=True) if s.stem in ours]
        done = self._upload_frames(reader, segments, ours=True)
        if done is None:
            return False
        with self._lock:
            if self._spill_seq == seq and not done[1]:
                # A whole pass found nothing more (even past a corrupt frame), and no segment
                # of ours was held by another uploader (a `send` taking it over).
                self._spilled = 0
                self._spilled_records = 0
        return True

    def _claim(self, reader: SpoolReader, segment: Path) -> bool:
        """Take the right to upload ``segment``: through our writer's own lock for a segment
        it is writing (or finished while claimed), else its flock like any other process."""
        if self._writer is not None and self._writer.claim(segment.stem):
            return True
        return reader.claim(segment)

    def _unclaim(self, reader: SpoolReader, segment: Path) -> None:
        if self._writer is not None:
            self._writer.unclaim(segment.stem)
        reader.release(segment)

    def _upload_frames(
        self, reader: SpoolReader, segments: list[Path], *, ours: bool
    ) -> tuple[int, int] | None:
        """Upload the segments' frames in order, each segment under its lock, acknowledging
        each frame on disk once the server has it: (frames uploaded, segments skipped because
        another uploader holds them or frames kept for a later pass), or None when the server
        stopped taking them. ``ours``: the frames are this sink's own spills, counted in its
        backlog.

        A frame kept for a later pass (an endpoint refused part of it, or parts of it wait to
        settle: :class:`Unsettled`) holds back nothing: the frames after it are uploaded too,
        but acknowledged (the cursor moved past them) only once it is, by a later pass that
        finds their parts done."""
        uploaded = busy = kept_frames = 0
        partly = False
        try:
            for segment in segments:
                if not self._claim(reader, segment):
                    busy += 1
                    continue
                # Once a frame of this segment is kept for a later pass, the later ones are not
                # acknowledged either: an acknowledgement moves the segment's cursor past every
                # frame before it, and would drop that frame's remaining parts. Their parts are
                # marked done, so reading them again costs only the skip.
                kept = False
                try:
                    for frame in reader.frames(segment):
                        try:
                            self.uploader.upload(
                                frame.records, frame.batch_key, SpoolProgress(reader, frame)
                            )
                        except Unsettled as exc:  # kept; tried again once settled
                            _LOG.info("a spooled batch waits: %s", exc)
                            ready = exc.ready
                            self._settling = min(self._settling or ready, ready)
                            kept = True
                            busy += 1
                            kept_frames += 1
                            continue
                        except PartlyTaken as exc:  # kept, with its progress; later frames go
                            _LOG.info("Simvue server took part of a spooled batch (%s)", exc)
                            partly = self._partly = True
                            kept = True
                            kept_frames += 1
                            continue
                        except RetryLater as exc:
                            _LOG.info("Simvue server not taking spooled data yet (%s)", exc)
                            return None
                        except UnsafeSpoolFile:
                            raise  # (its progress file is a link: the segment is left alone)
                        except Exception:
                            _LOG.exception("unexpected error while uploading a spooled batch; kept")
                            return None
                        if kept:  # delivered; acknowledged after the frame kept before it
                            busy += 1
                            kept_frames += 1
                            continue
                        reader.ack(frame)
                        uploaded += 1
                        if ours:
                            with self._lock:
                                self._spilled = max(0, self._spilled - 1)
                                self._spilled_records = max(
                                    0, self._spilled_records - len(frame.records)
                                )
                except UnsafeSpoolFile as exc:  # a link planted beside it: left alone
                    if segment.stem not in self._left_alone:  # said once, not every pass
                        self._left_alone.add(segment.stem)
                        _LOG.error("spool: %s; segment %s is not uploaded", exc, segment.name)
                    busy += 1
                finally:
                    self._unclaim(reader, segment)
        finally:
            self._tell_damage(reader)
        if not ours:  # what this whole adoption pass keeps for a later one
            with self._lock:
                self._orphans_kept = kept_frames
        return None if partly else (uploaded, busy)

    def _tell_damage(self, reader: SpoolReader) -> None:
        """Runs whose spooled records were damaged on disk get a loss event (uploaded with
        the next batch)."""
        events = [e for damage in reader.take_damage() for e in damage_events(damage)]
        if events:
            with self._lock:
                self._buffer.extend(events)
                self._buffered += len(events)

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
