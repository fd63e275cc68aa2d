"""An append-only, crash-safe spool of record batches on disk, replayed later exactly once.

Used for offline runs and for the overflow of the online sink while the server is down.

Layout of a spool directory:

* ``<UTC yyyymmddTHHMMSSffffff>-<pid>-<8 hex>.seg``: a segment being written; its writer holds
  an exclusive ``flock`` on it, so a ``.seg`` whose lock can be taken was left by a writer that
  died, and is finished as it stands. Names sort by creation time.
* ``<stem>.done``: a segment its writer closed cleanly.
* ``<stem>.cursor``: the byte offset of the segment's first unacknowledged frame (missing: 0).
* ``<stem>.parts``: progress inside frames, one JSON line per change ``{"o": offset, "c": crc,
  "p": part, "s": state}``: which parts of a frame (a run's metrics or events, in POST-sized
  chunks) the server holds (``done``), which were sent without an answer (``sending``: checked
  against the server before anything is sent again) and which turned out unsent (``clear``).
  A line applies only to the frame at that offset with that CRC, so a line left by a write that
  failed can never mark another frame.
* ``<stem>.corrupt``: bytes set aside from a damaged segment (kept, never deleted).
* ``.send.lock``: held by the one ``simvue-otel send`` allowed per directory.

A frame is ``b"SV"``, the payload length (4 bytes, big-endian), the payload's CRC32 (4 bytes,
big-endian) and the payload, an :func:`~.codec.encode_batch` blob. Each frame goes out in one
``os.write`` on an ``O_APPEND`` descriptor, so a killed writer leaves at most one partial frame,
at the very end.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import json
import logging
import os
import secrets
import struct
import threading
import time
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..mapping.records import Record
from .codec import CodecError, decode_batch, encode_batch
from .losses import stale_reserves

__all__ = [
    "FRAME_MAGIC",
    "Frame",
    "SendLock",
    "SpoolBusyError",
    "SpoolReader",
    "SpoolWriter",
]

_LOG = logging.getLogger("simvue_otel.sink.spool")

FRAME_MAGIC = b"SV"
_HEADER = struct.Struct(">2sII")  # magic, payload length, CRC32 of the payload
_MAX_PAYLOAD = 2**32 - 1

_LIVE_SUFFIX = ".seg"
_DONE_SUFFIX = ".done"
_CURSOR_SUFFIX = ".cursor"
_CORRUPT_SUFFIX = ".corrupt"
_PARTS_SUFFIX = ".parts"
_CREATING_SUFFIX = ".creating"  # a segment before its lock is held; readers never look at it
_SEND_LOCK = ".send.lock"


def _fsync_dir(directory: Path) -> None:
    """Make renames and unlinks in ``directory`` durable (best effort)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _is_locked(path: Path) -> bool | None:
    """Whether a live process holds the flock on ``path``; None when the file is gone.

    Uses a fresh descriptor: flock conflicts between open file descriptions even within one
    process, so this also sees a writer in this very process.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing also drops the lock if we took it
    return False


def _mark_line(offset: int, crc: int, part: str, state: str) -> bytes:
    return (json.dumps({"o": offset, "c": crc, "p": part, "s": state}) + "\n").encode()


def _append_marks(path: Path, lines: Sequence[bytes]) -> None:
    """Append progress lines in one write (O_APPEND): a killed process leaves whole lines, or
    at most one cut line at the end, which the reader skips."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, b"".join(lines))
    finally:
        os.close(fd)


# --- writer ---------------------------------------------------------------------------------


class SpoolWriter:
    """Appends record batches as frames to the segments of one spool directory.

    A segment is opened lazily on the first append, under an exclusive flock held until it is
    closed; it is closed (renamed ``.done``) when it reaches ``segment_bytes`` or on
    :meth:`close`. Existing segments are never opened for writing. Thread-safe.
    """

    def __init__(
        self,
        directory: Path,
        *,
        segment_bytes: int = 8 * 2**20,
        fsync_interval: float = 1.0,
    ) -> None:
        if segment_bytes <= 0:
            raise ValueError("segment_bytes must be positive")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.segment_bytes = segment_bytes
        self.fsync_interval = fsync_interval
        self.bytes_written = 0
        """Bytes of frames this writer has written, over all its segments."""
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._path: Path | None = None
        self._size = 0
        self._last_fsync = 0.0
        self._dirty = False
        self._last_stamp = ""
        self._closed = False
        self.stems: set[str] = set()

    @property
    def written_stems(self) -> set[str]:
        """Stems of every segment this writer has put a frame in (``.seg`` or, once rotated,
        ``.done``): what an owner may read back without touching other writers' spools."""
        with self._lock:
            return set(self.stems)

    @property
    def segment(self) -> Path | None:
        """The segment open for writing now, or None between segments."""
        return self._path

    def _new_stem(self) -> str:
        """A fresh segment stem that sorts after every earlier one of this writer."""
        now = _dt.datetime.now(_dt.timezone.utc)
        stamp = now.strftime("%Y%m%dT%H%M%S%f")
        if stamp <= self._last_stamp:  # same microsecond, or the clock stepped back
            last = _dt.datetime.strptime(self._last_stamp, "%Y%m%dT%H%M%S%f")
            stamp = (last + _dt.timedelta(microseconds=1)).strftime("%Y%m%dT%H%M%S%f")
        self._last_stamp = stamp
        return f"{stamp}-{os.getpid()}-{secrets.token_hex(4)}"

    def _open_segment(self) -> None:
        """Create a new segment, take its lock, then give it its ``.seg`` name.

        The lock is taken before the file is visible as ``.seg``, so a reader never mistakes a
        segment being born for one left by a dead writer.
        """
        stem = self._new_stem()
        creating = self.directory / f"{stem}{_CREATING_SUFFIX}"
        path = self.directory / f"{stem}{_LIVE_SUFFIX}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC
        fd = os.open(creating, flags, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(creating, path)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(creating)
            raise
        _fsync_dir(self.directory)
        self._fd, self._path, self._size = fd, path, 0
        self._last_fsync = time.monotonic()
        self._dirty = False

    def _finish_segment(self) -> None:
        """fsync the current segment, rename it ``.done``, then release its lock."""
        fd, path = self._fd, self._path
        if fd is None or path is None:
            return
        self._fd = self._path = None
        try:
            os.fsync(fd)
            if self._size == 0:
                os.unlink(path)  # nothing in it: no need to keep it
            else:
                os.rename(path, path.with_suffix(_DONE_SUFFIX))
            _fsync_dir(self.directory)
        finally:
            os.close(fd)  # releases the flock

    def append(
        self,
        batch_key: str,
        records: Sequence[Record],
        progress: Mapping[str, str] | None = None,
    ) -> int:
        """Write one batch as one frame; return the frame's size in bytes.

        ``progress`` (part → ``done`` or ``sending``) is what the server already holds of a
        batch that met it before being spooled; it is written before the frame, so a frame
        never appears on disk without it.
        """
        payload = encode_batch(batch_key, records)
        if len(payload) > _MAX_PAYLOAD:
            raise ValueError(f"batch too large for one frame ({len(payload)} bytes)")
        crc = zlib.crc32(payload)
        frame = _HEADER.pack(FRAME_MAGIC, len(payload), crc) + payload
        with self._lock:
            if self._closed:
                raise ValueError("append to a closed SpoolWriter")
            if self._fd is None:
                self._open_segment()
            fd = self._fd
            assert fd is not None and self._path is not None
            start = self._size
            if progress:
                lines = [_mark_line(start, crc, part, state) for part, state in progress.items()]
                _append_marks(self._path.with_suffix(_PARTS_SUFFIX), lines)
            try:
                written = os.write(fd, frame)
                if written != len(frame):
                    raise OSError(errno.ENOSPC, f"short write ({written} of {len(frame)} bytes)")
            except OSError:
                self._undo_partial(start)
                raise
            self._size += len(frame)
            self.bytes_written += len(frame)
            self.stems.add(self._path.stem if self._path is not None else "")
            self._dirty = True
            # The frame is written: what follows must not report it as refused.
            try:
                if time.monotonic() - self._last_fsync > self.fsync_interval:
                    self._fsync()
                if self._size >= self.segment_bytes:
                    self._finish_segment()
            except OSError as exc:
                _LOG.warning("spool: cannot sync or finish %s: %s", self.directory, exc)
        return len(frame)

    def _undo_partial(self, start: int) -> None:
        """Cut a failed write back off the segment, or give the segment up if that fails."""
        assert self._fd is not None
        try:
            os.ftruncate(self._fd, start)
        except OSError:
            # The partial frame stays at the end of a finished segment; the reader sets it aside.
            with contextlib.suppress(OSError):
                self._finish_segment()

    def _fsync(self) -> None:
        if self._fd is not None and self._dirty:
            os.fsync(self._fd)
            self._dirty = False
        self._last_fsync = time.monotonic()

    def flush(self, fsync: bool = True) -> None:
        """Make written frames durable (frames go straight to the OS; only fsync is left)."""
        if fsync:
            with self._lock:
                self._fsync()

    def close(self) -> None:
        """fsync and finish the open segment (``.seg`` → ``.done``), releasing its lock."""
        with self._lock:
            self._closed = True
            self._finish_segment()

    def drop_in_child(self) -> None:
        """In a forked child: close the child's copy of the open segment's descriptor (its lock
        is the parent's) without finishing it or taking the writer's lock; the writer is
        unusable in the child from then on."""
        fd, self._fd, self._path, self._closed = self._fd, None, None, True
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> SpoolWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- reader ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    """One decoded frame: where it lies in its segment, and its batch."""

    segment: Path
    offset: int
    end: int
    batch_key: str
    records: tuple[Record, ...]
    crc: int = 0


class SpoolReader:
    """Replays the frames of a spool directory in order, tracking progress by cursor files.

    A frame is yielded until it is acknowledged with :meth:`ack`; segments wholly acknowledged
    and finished are deleted. One reader per directory at a time (see :class:`SendLock`).
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        # Parsed progress lines per segment stem: (bytes read so far, {(offset, crc): marks}).
        self._marks: dict[str, tuple[int, dict[tuple[int, int], dict[str, str]]]] = {}

    # paths and state

    def _cursor_path(self, segment: Path) -> Path:
        return segment.with_suffix(_CURSOR_SUFFIX)

    def _read_cursor(self, segment: Path) -> int:
        path = self._cursor_path(segment)
        try:
            text = path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return 0
        except (OSError, UnicodeDecodeError) as exc:
            _LOG.warning("spool: cannot read cursor %s (%s); starting from 0", path.name, exc)
            return 0
        try:
            cursor = int(text)
        except ValueError:
            _LOG.warning("spool: bad cursor %s (%r); starting from 0", path.name, text)
            return 0
        return max(cursor, 0)

    def _write_cursor(self, segment: Path, offset: int) -> None:
        """Replace the cursor atomically: tmp file, fsync, rename."""
        path = self._cursor_path(segment)
        tmp = path.with_name(f"{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, f"{offset}\n".encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        _fsync_dir(self.directory)

    def _resolve(self, segment: Path) -> Path | None:
        """The segment's current path (a ``.seg`` may have become ``.done``); None if gone."""
        if segment.exists():
            return segment
        if segment.suffix == _LIVE_SUFFIX:
            done = segment.with_suffix(_DONE_SUFFIX)
            if done.exists():
                return done
        return None

    def _is_finished(self, segment: Path) -> bool:
        """A ``.done`` segment, or a ``.seg`` no live writer holds (its writer died)."""
        if segment.suffix == _DONE_SUFFIX:
            return True
        return _is_locked(segment) is False

    @staticmethod
    def _size(path: Path) -> int | None:
        try:
            return path.stat().st_size
        except FileNotFoundError:
            return None

    # public API

    def segments(self, include_live: bool = False) -> list[Path]:
        """Segments in creation order; those still being written only if ``include_live``."""
        if not self.directory.is_dir():
            return []
        found: list[Path] = []
        for path in sorted(self.directory.iterdir(), key=lambda p: p.name):
            if path.suffix == _DONE_SUFFIX:
                found.append(path)
            elif path.suffix == _LIVE_SUFFIX:
                locked = _is_locked(path)
                if locked is None:  # renamed to .done or deleted meanwhile
                    done = path.with_suffix(_DONE_SUFFIX)
                    if done.exists() and done not in found:
                        found.append(done)
                elif include_live or not locked:
                    found.append(path)
        found.sort(key=lambda p: p.name)
        return found

    def frames(self, segment: Path) -> Iterator[Frame]:
        """Yield the complete frames of ``segment`` from its cursor onwards.

        An incomplete frame at the end of a live segment ends iteration silently (it is being
        written). Damage is set aside in ``<stem>.corrupt`` and ends iteration: a frame that
        cannot be read with more bytes after it, or an incomplete frame at the end of a finished
        segment (its writer died mid-write); the frames before are unaffected.
        """
        path = self._resolve(segment)
        if path is None:
            return
        offset = self._read_cursor(path)
        try:
            handle = open(path, "rb")  # noqa: SIM115 - held across yields
        except FileNotFoundError:
            return
        with handle:
            handle.seek(offset)
            while True:
                header = handle.read(_HEADER.size)
                if not header:
                    return
                if len(header) < _HEADER.size:
                    self._bad_tail(path, offset, "incomplete frame header")
                    return
                magic, length, crc = _HEADER.unpack(header)
                if magic != FRAME_MAGIC:
                    self._damaged(path, offset, f"bad frame magic {magic!r}")
                    return
                payload = handle.read(length)
                end = offset + _HEADER.size + length
                if len(payload) < length:
                    self._bad_tail(path, offset, "incomplete frame")
                    return
                problem: str | None = None
                if zlib.crc32(payload) != crc:
                    problem = "CRC mismatch"
                else:
                    try:
                        batch_key, records = decode_batch(payload)
                    except CodecError as exc:
                        problem = str(exc)
                if problem is not None:
                    if self._size(path) == end and not self._is_finished(path):
                        return  # the last frame of a live segment: may still be landing
                    self._damaged(path, offset, problem)
                    return
                yield Frame(path, offset, end, batch_key, tuple(records), crc)
                offset = end

    def _bad_tail(self, segment: Path, offset: int, what: str) -> None:
        """An incomplete last frame: normal while being written, damage once finished."""
        if not self._is_finished(segment):
            return
        # Expected after a writer was killed mid-append (that append never returned): a warning.
        self._damaged(
            segment, offset, f"{what} at the end of a finished segment", level=logging.WARNING
        )

    def _damaged(
        self, segment: Path, offset: int, problem: str, *, level: int = logging.ERROR
    ) -> None:
        """Log, then move the bytes from ``offset`` into ``<stem>.corrupt`` (nothing is lost)."""
        _LOG.log(level, "spool: damaged segment %s at offset %d: %s", segment.name, offset, problem)
        if not self._is_finished(segment):
            # Truncating under a live writer could lose what it appends meanwhile; the damage
            # is set aside once the segment is finished.
            return
        corrupt = segment.with_suffix(_CORRUPT_SUFFIX)
        with open(segment, "r+b") as handle:
            handle.seek(offset)
            rest = handle.read()
            with open(corrupt, "ab") as out:
                out.write(rest)
                out.flush()
                os.fsync(out.fileno())
            handle.truncate(offset)
            handle.flush()
            os.fsync(handle.fileno())
        _LOG.log(
            level,
            "spool: moved %d byte(s) of %s from offset %d to %s",
            len(rest),
            segment.name,
            offset,
            corrupt.name,
        )
        if self._read_cursor(segment) == offset:  # all before the damage already acknowledged
            self._delete(segment)

    def progress(self, frame: Frame) -> dict[str, str]:
        """What is recorded of ``frame``'s parts: part → ``done`` or ``sending``."""
        stem = frame.segment.stem
        read, marks = self._marks.get(stem, (0, {}))
        path = frame.segment.with_suffix(_PARTS_SUFFIX)
        try:
            with open(path, "rb") as handle:
                handle.seek(read)
                fresh = handle.read()
        except FileNotFoundError:
            fresh = b""
        if fresh:
            whole = fresh[: fresh.rfind(b"\n") + 1]  # a cut last line waits for its end
            for line in whole.splitlines():
                try:
                    entry = json.loads(line)
                    where = (int(entry["o"]), int(entry["c"]))
                    part, state = str(entry["p"]), str(entry["s"])
                except (ValueError, KeyError, TypeError):
                    _LOG.warning("spool: unreadable progress line in %s: %r", path.name, line)
                    continue
                states = marks.setdefault(where, {})
                if state == "clear":
                    states.pop(part, None)
                else:
                    states[part] = state
            read += len(whole)
        self._marks[stem] = (read, marks)
        return dict(marks.get((frame.offset, frame.crc), {}))

    def mark(self, frame: Frame, part: str, state: str) -> None:
        """Record ``state`` (``sending``, ``done`` or ``clear``) for one part of ``frame``."""
        path = self._resolve(frame.segment)
        if path is None:
            return
        _append_marks(
            path.with_suffix(_PARTS_SUFFIX), [_mark_line(frame.offset, frame.crc, part, state)]
        )

    def ack(self, frame: Frame) -> None:
        """Record ``frame`` as done; delete its segment once finished and wholly acknowledged."""
        path = self._resolve(frame.segment)
        if path is None:
            return
        if frame.end > self._read_cursor(path):
            self._write_cursor(path, frame.end)
        if frame.end == self._size(path) and self._is_finished(path):
            self._delete(path)

    def _delete(self, segment: Path) -> None:
        """Delete a segment, then its cursor (an orphan cursor is harmless: cleanup drops it)."""
        with contextlib.suppress(FileNotFoundError):
            segment.unlink()
        with contextlib.suppress(FileNotFoundError):
            self._cursor_path(segment).unlink()
        with contextlib.suppress(FileNotFoundError):
            segment.with_suffix(_PARTS_SUFFIX).unlink()
        self._marks.pop(segment.stem, None)
        _fsync_dir(self.directory)

    def cleanup(self) -> None:
        """Delete finished, wholly acknowledged segments, and cursors whose segment is gone."""
        if not self.directory.is_dir():
            return
        for segment in self.segments():
            if self._size(segment) == self._read_cursor(segment):
                self._delete(segment)
        for pattern in (f"*{_CURSOR_SUFFIX}", f"*{_PARTS_SUFFIX}"):
            for side in self.directory.glob(pattern):
                live = side.with_suffix(_LIVE_SUFFIX)
                done = side.with_suffix(_DONE_SUFFIX)
                if not live.exists() and not done.exists():
                    with contextlib.suppress(FileNotFoundError):
                        side.unlink()
        for reserve in stale_reserves(self.directory):  # left by writers that were killed
            with contextlib.suppress(FileNotFoundError):
                reserve.unlink()
        for creating in self.directory.glob(f"*{_CREATING_SUFFIX}"):
            if _is_locked(creating) is False:  # a writer died before naming its segment
                with contextlib.suppress(FileNotFoundError):
                    creating.unlink()

    def pending_bytes(self, include_live: bool = False) -> int:
        """Unacknowledged bytes (segment size minus cursor), e.g. for a progress bar."""
        total = 0
        for segment in self.segments(include_live):
            size = self._size(segment)
            if size is not None:
                total += max(size - self._read_cursor(segment), 0)
        return total


# --- one sender per directory ---------------------------------------------------------------


class SpoolBusyError(RuntimeError):
    """Another ``simvue-otel send`` holds the spool directory."""


class SendLock:
    """Context manager: the exclusive right to send (replay) one spool directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / _SEND_LOCK
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock without waiting; raise :class:`SpoolBusyError` if it is held."""
        if self._fd is not None:
            raise RuntimeError("SendLock is already held by this object")
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SpoolBusyError(
                f"another 'simvue-otel send' is already running on {self.directory}"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (closing the descriptor releases it)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self) -> SendLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
