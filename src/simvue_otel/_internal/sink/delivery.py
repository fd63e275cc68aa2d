"""The delivery loop of an online sink: one worker thread that uploads what was accepted.

The worker waits for a full batch (``batch_points``) or the flush interval, then makes one
pass of the uploader: first what processes that died left in the spool (adopted segment by
segment, under each one's lock, at most every ``adopt_interval`` seconds), then this sink's
own spool, oldest first, then the memory buffer. A batch the server does not take goes to the
spool with its progress; the worker backs off (at most ``max_backoff`` seconds) and tries
again. While the server answers, live runs get their heartbeats (:class:`~.liveness.Liveness`).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from .buffer import SpooledBuffer
from .files import UnsafeSpoolFile
from .liveness import Liveness
from .losses import damage_events
from .spool import SendLock, SpoolBusyError, SpoolReader
from .spool_progress import SpoolProgress
from .uploader import PartlyTaken, Progress, RetryLater, Unsettled, Uploader

__all__ = ["Delivery"]

_LOG = logging.getLogger("simvue_otel.sink")


class Delivery(SpooledBuffer, Liveness):
    """The worker side of an online sink (a part of it, sharing its lock and state)."""

    uploader: Uploader
    batch_points: int
    flush_interval: float
    max_backoff: float
    adopt_interval: float
    _wake: threading.Condition  # records to upload (or closing)
    _idle: threading.Condition  # the worker finished a pass
    _busy: bool  # the worker is in a pass
    _failures: int  # passes in a row the server did not take
    _partly: bool  # the last pass was refused by some endpoints only (5xx, 429)
    _settling: float | None  # when a frame kept for its unsettled parts can go on
    _next_adopt: float  # when to look for spools left by processes that died
    _adopted_once: bool  # close waits for the first look (within its deadline)
    _orphans_kept: int  # frames of adopted segments kept for a later pass
    _closing: bool
    _deadline: float | None
    _left_alone: set[str]  # segments not uploaded: a link beside them

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
