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
  A ``sending`` line also carries ``"t"``, when that POST began (seconds since the epoch): the
  part is checked only once no copy of that POST can still be on its way (the settle time,
  see :mod:`.uploader`); a ``sending`` line without it (written by an earlier version) counts
  as long settled. A line applies only to the frame at that offset with that CRC, so a line
  left by a write that failed can never mark another frame.
* ``<stem>.corrupt``: bytes set aside from a damaged segment (kept, never deleted); the reader
  resynchronises on the next valid frame (marker and CRC), so damage costs only itself.
* ``.send.lock``: held by the one ``simvue-otel send`` allowed per directory.

One uploader per segment: whoever uploads a segment (its owner, ``simvue-otel send``, a process
adopting what a dead one left) holds an exclusive ``flock`` on the segment file while it does
(see :meth:`SpoolReader.claim`; an owner uploading its own live segment keeps its writer's lock
through rotation with :meth:`SpoolWriter.claim`). A segment someone else holds is skipped.

The spool is no attack surface: directories are made 0700 and files 0600; no link is ever
followed (``O_NOFOLLOW``, ``lstat``), and a file is written, appended to or read as spool data
only when it is a regular file of this user with one link (:func:`open_private`).

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
import math
import os
import secrets
import struct
import threading
import time
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import msgpack

from ..mapping.records import Record, RunRef
from .codec import FORMAT_VERSION, CodecError, decode_batch, encode_batch
from .files import (
    NOFOLLOW,
    SAFE_OPEN,
    UnsafeSpoolFile,
    is_plain_file,
    open_private,
    private_dir,
    read_private,
    replace_private,
)
from .reserve import stale_reserves

__all__ = [
    "FRAME_MAGIC",
    "Damage",
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
_DAMAGE_CRC = -1  # the "CRC" of a progress line recording damage set aside (no CRC32 is < 0)


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
        fd = os.open(path, os.O_RDONLY | SAFE_OPEN)
    except FileNotFoundError:
        return None
    except OSError:  # a link planted under a segment's name: never followed, never "free"
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing also drops the lock if we took it
    return False


def _alive(pid: int) -> bool:
    """Whether a process with this id exists (one of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


# Descriptors that hold a spool flock for this process (a segment claimed for upload, a
# finished segment its writer keeps locked while its owner uploads it, the send lock). A
# forked child inherits them, and a flock lasts while any copy is open: the child would keep
# its parent's segments and directory locked for its whole life. It closes its copies at once.
_LOCK_FDS: set[int] = set()


def _keep_lock(fd: int) -> int:
    _LOCK_FDS.add(fd)
    return fd


def _drop_lock(fd: int) -> None:
    """Close a lock's descriptor, unless a fork already closed it in this (child) process."""
    if fd in _LOCK_FDS:
        _LOCK_FDS.discard(fd)
        os.close(fd)


def _drop_locks_in_child() -> None:
    for fd in list(_LOCK_FDS):
        with contextlib.suppress(OSError):
            os.close(fd)
    _LOCK_FDS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_locks_in_child)


def _mark_line(offset: int, crc: int, part: str, state: str, at: float | None = None) -> bytes:
    """One progress line; ``at``: when a ``sending`` part's POST began (epoch seconds)."""
    entry: dict[str, object] = {"o": offset, "c": crc, "p": part, "s": state}
    if at is not None:
        entry["t"] = round(at, 3)
    return (json.dumps(entry) + "\n").encode()


def _append_marks(path: Path, lines: Sequence[bytes]) -> None:
    """Append progress lines in one write (O_APPEND): a killed process leaves whole lines, or
    at most one cut line at the end, which the reader skips."""
    fd = open_private(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
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

    The owner of the segments uploads them itself while it lives: :meth:`claim` keeps a
    segment's lock held through its rotation until :meth:`unclaim`, so no other process
    (``simvue-otel send``, another bridge) starts uploading it meanwhile.
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
        self.directory = private_dir(Path(directory))
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
        self._claimed: set[str] = set()  # stems the owner is uploading: locks kept
        self._held: dict[str, int] = {}  # finished segments whose lock is kept, by stem

    @property
    def written_stems(self) -> set[str]:
        """Stems of every segment this writer has put a frame in (``.seg`` or, once rotated,
        ``.done``): what an owner may read back without touching other writers' spools."""
        with self._lock:
            return set(self.stems)

    def claim(self, stem: str) -> bool:
        """Keep holding the lock of this writer's segment ``stem`` (being written, or finished
        while claimed) until :meth:`unclaim`, so the owner can upload it with nobody else
        doing the same; False when this writer holds no lock on it (then claim it with
        :meth:`SpoolReader.claim`, like any other process)."""
        with self._lock:
            live = self._path is not None and self._path.stem == stem
            if live or stem in self._held:
                self._claimed.add(stem)
                return True
            return False

    def unclaim(self, stem: str) -> None:
        """Release the lock :meth:`claim` kept (at once, when the segment is finished)."""
        with self._lock:
            self._claimed.discard(stem)
            fd = self._held.pop(stem, None)
        if fd is not None:
            _drop_lock(fd)

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
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC | NOFOLLOW
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
        """fsync the current segment, rename it ``.done``, then release its lock (kept while
        the owner has it claimed: it is uploading it)."""
        fd, path = self._fd, self._path
        if fd is None or path is None:
            return
        self._fd = self._path = None
        keep = False
        try:
            os.fsync(fd)
            if self._size == 0:
                os.unlink(path)  # nothing in it: no need to keep it
            else:
                os.rename(path, path.with_suffix(_DONE_SUFFIX))
                keep = path.stem in self._claimed
            _fsync_dir(self.directory)
        finally:
            if keep:
                self._held[path.stem] = _keep_lock(fd)
            else:
                os.close(fd)  # releases the flock

    def append(
        self,
        batch_key: str,
        records: Sequence[Record],
        progress: Mapping[str, str] | None = None,
        began: Mapping[str, float] | None = None,
    ) -> int:
        """Write one batch as one frame; return the frame's size in bytes.

        ``progress`` (part → ``done`` or ``sending``) is what the server already holds of a
        batch that met it before being spooled, and ``began`` when each ``sending`` part's
        POST began; they are written before the frame, so a frame never appears on disk
        without them.
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
                times = began or {}
                lines = [
                    _mark_line(start, crc, part, state, times.get(part))
                    for part, state in progress.items()
                ]
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
            try:
                self._finish_segment()
            finally:
                held, self._held = self._held, {}
                self._claimed.clear()
                for fd in held.values():
                    _drop_lock(fd)

    def drop_in_child(self) -> None:
        """In a forked child: close the child's copy of the open segment's descriptor (its lock
        is the parent's) without finishing it or taking the writer's lock; the writer is
        unusable in the child from then on."""
        fd, self._fd, self._path, self._closed = self._fd, None, None, True
        self._held, self._claimed = {}, set()  # their descriptors went at the fork
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


@dataclass(frozen=True)
class Damage:
    """Bytes of a segment that held no readable frame, set aside in ``corrupt``."""

    segment: Path
    offset: int
    size: int
    problem: str
    corrupt: Path | None
    """Where the bytes went (None: they could not be set aside and stay in the segment)."""
    records: dict[RunRef, int]
    """Records lost per run, as far as the damaged bytes still tell (their batch starts with
    its table of runs)."""
    unidentified: int | None
    """Records whose run cannot be told (None: how many is not known either)."""
    tail: bool = False
    """An incomplete last frame of a finished segment: its writer was killed while writing
    it, so that write never returned (expected after a kill, not damage to stored data)."""

    def describe(self) -> str:
        """One line for a log or a summary."""
        where = f"{self.size} byte(s)" + (
            f" set aside in {self.corrupt.name}" if self.corrupt is not None else ""
        )
        runs = ", ".join(
            f"{count} record(s) of run {ref.name or ref.key!r} ({ref.key})"
            for ref, count in self.records.items()
        )
        if self.unidentified:
            runs += f"{', ' if runs else ''}{self.unidentified} record(s) of unknown runs"
        elif self.unidentified is None:
            runs += f"{', ' if runs else ''}an unknown number of records of unknown runs"
        return (
            f"segment {self.segment.name} damaged at offset {self.offset} ({self.problem}): "
            f"{where}; lost: {runs or 'nothing readable'}"
        )


def _salvage(blob: bytes) -> tuple[dict[RunRef, int], int | None]:
    """What a damaged batch still tells: records per run (its table of runs comes first, so
    damage further on leaves it readable), and how many records of unknown runs."""
    # Bounded by the bytes at hand: a damaged length never makes it allocate more.
    unpacker = msgpack.Unpacker(raw=False, use_list=True, max_buffer_size=len(blob) + 16)
    unpacker.feed(blob)
    runs: list[RunRef] = []
    try:
        if unpacker.read_array_header() != 4 or unpacker.unpack() != FORMAT_VERSION:
            return {}, None
        unpacker.skip()  # the batch key
        for item in unpacker.unpack():
            key, name, folder = item
            if not isinstance(key, str) or not key:
                return {}, None
            runs.append(
                RunRef(
                    key,
                    name if isinstance(name, str) else None,
                    folder if isinstance(folder, str) else "/",
                )
            )
        total = unpacker.read_array_header()
    except Exception:  # any way damaged bytes fail to decode
        return {}, None
    if total > len(blob):  # a damaged count: every record takes at least a byte
        return {}, None
    counts: dict[RunRef, int] = {}
    decoded = 0
    for _ in range(total):
        try:
            item = unpacker.unpack()
            ref = runs[item[1]]
        except Exception:  # the damage starts here
            break
        counts[ref] = counts.get(ref, 0) + 1
        decoded += 1
    rest = total - decoded
    if rest and len(runs) == 1:
        counts[runs[0]] = counts.get(runs[0], 0) + rest
        rest = 0
    return counts, rest


def _next_frame(data: bytes, start: int) -> int | None:
    """Where the first valid frame at or after ``start`` begins in ``data``: a marker, then a
    length that fits and a CRC that matches (a chance match of all three is 1 in 2^32 per
    marker); None when there is none."""
    view = memoryview(data)
    at = start
    while True:
        at = data.find(FRAME_MAGIC, at)
        if at < 0 or at + _HEADER.size > len(data):
            return None
        _, length, crc = _HEADER.unpack_from(data, at)
        end = at + _HEADER.size + length
        if end <= len(data) and zlib.crc32(view[at + _HEADER.size : end]) == crc:
            return at
        at += 1


class SpoolReader:
    """Replays the frames of a spool directory in order, tracking progress by cursor files.

    A frame is yielded until it is acknowledged with :meth:`ack`; segments wholly acknowledged
    and finished are deleted. Upload a segment's frames only while holding it (:meth:`claim`,
    or the owner's :meth:`SpoolWriter.claim`): one uploader per segment across processes.
    Damaged bytes cost only themselves: they are set aside, reported in :attr:`damage`, and
    reading resumes at the next valid frame.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        # Parsed progress lines per segment stem: (bytes read so far, {(offset, crc): marks}),
        # a mark being a part's state and when its last POST began (0: not known, long ago).
        self._marks: dict[str, tuple[int, dict[tuple[int, int], dict[str, tuple[str, float]]]]] = {}
        self._claims: dict[str, int] = {}  # segment stem -> descriptor holding its flock
        self.damage: list[Damage] = []
        """Damage found and set aside so far (take it with :meth:`take_damage`)."""
        self.left_alone: dict[Path, str] = {}
        """Names in the spool this reader refused to touch (links, other users' files), and
        why."""

    # paths and state

    def _cursor_path(self, segment: Path) -> Path:
        return segment.with_suffix(_CURSOR_SUFFIX)

    def _read_cursor(self, segment: Path) -> int:
        path = self._cursor_path(segment)
        try:
            text = read_private(path).decode("ascii").strip()
        except FileNotFoundError:
            return 0
        except UnsafeSpoolFile:
            raise
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
        """Replace the cursor atomically: a fresh file, fsync, rename."""
        replace_private(self._cursor_path(segment), f"{offset}\n".encode("ascii"), fsync=True)
        _fsync_dir(self.directory)

    def _resolve(self, segment: Path) -> Path | None:
        """The segment's current path (a ``.seg`` may have become ``.done``); None if gone."""
        if is_plain_file(segment):
            return segment
        if segment.suffix == _LIVE_SUFFIX:
            done = segment.with_suffix(_DONE_SUFFIX)
            if is_plain_file(done):
                return done
        return None

    def _is_finished(self, segment: Path) -> bool:
        """A ``.done`` segment, or a ``.seg`` no live writer holds (its writer died)."""
        if segment.suffix == _DONE_SUFFIX or segment.stem in self._claims:
            return True
        return _is_locked(segment) is False

    @staticmethod
    def _size(path: Path) -> int | None:
        try:
            return os.lstat(path).st_size
        except FileNotFoundError:
            return None

    def _leave_alone(self, path: Path, why: str) -> None:
        if path not in self.left_alone:
            self.left_alone[path] = why
            _LOG.error("spool: %s", why)

    def _unsafe_side(self, segment: Path) -> str | None:
        """Why the segment or its progress files cannot be trusted, or None."""
        for path in (segment, self._cursor_path(segment), segment.with_suffix(_PARTS_SUFFIX)):
            try:
                fd = open_private(path, os.O_RDONLY)
            except FileNotFoundError:
                if path == segment:
                    return None  # gone meanwhile: nothing to upload, nothing to refuse
                continue
            except UnsafeSpoolFile as exc:
                return f"{exc.strerror}: segment {segment.name} is not uploaded"
            os.close(fd)
        return None

    # public API

    def segments(self, include_live: bool = False) -> list[Path]:
        """Segments in creation order; those still being written only if ``include_live``.
        A name that is a link or not a regular file is left alone (and listed in
        :attr:`left_alone`)."""
        if not self.directory.is_dir():
            return []
        found: list[Path] = []
        for path in sorted(self.directory.iterdir(), key=lambda p: p.name):
            if path.suffix not in (_DONE_SUFFIX, _LIVE_SUFFIX):
                continue
            if not is_plain_file(path):
                if path.exists() or path.is_symlink():
                    self._leave_alone(path, f"{path} is a link or not a regular file; left alone")
                continue
            if path.suffix == _DONE_SUFFIX:
                found.append(path)
            else:
                locked = _is_locked(path)
                if locked is None:  # renamed to .done or deleted meanwhile
                    done = path.with_suffix(_DONE_SUFFIX)
                    if is_plain_file(done) and done not in found:
                        found.append(done)
                elif include_live or not locked:
                    found.append(path)
        found.sort(key=lambda p: p.name)
        return found

    def claim(self, segment: Path) -> bool:
        """Take the exclusive right to upload ``segment`` (its ``flock``, held until
        :meth:`release`); False when another uploader or a live writer holds it, when it is
        gone, or when it or its progress files are not this user's plain files (left alone)."""
        path = self._resolve(segment)
        if path is None:
            return False
        if path.stem in self._claims:
            return True
        unsafe = self._unsafe_side(path)
        if unsafe is not None:
            self._leave_alone(path, unsafe)
            return False
        try:
            fd = open_private(path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        except UnsafeSpoolFile as exc:
            self._leave_alone(path, exc.strerror or str(exc))
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        if self._resolve(path) is None:  # uploaded and deleted by its holder meanwhile
            os.close(fd)
            return False
        self._claims[path.stem] = _keep_lock(fd)
        return True

    def release(self, segment: Path) -> None:
        """Give up the right :meth:`claim` took (closing the descriptor drops the lock)."""
        fd = self._claims.pop(segment.stem, None)
        if fd is not None:
            _drop_lock(fd)

    def release_all(self) -> None:
        """Give up every claim this reader holds."""
        for stem in list(self._claims):
            _drop_lock(self._claims.pop(stem))

    def take_damage(self) -> list[Damage]:
        """The damage found since the last call (and forget it)."""
        found, self.damage = self.damage, []
        return found

    def frames(self, segment: Path) -> Iterator[Frame]:
        """Yield the complete frames of ``segment`` from its cursor onwards.

        An incomplete frame at the end of a live segment ends iteration silently (it is being
        written). Bytes that hold no valid frame are set aside in ``<stem>.corrupt``, reported
        in :attr:`damage`, and reading goes on at the next valid frame (marker and CRC), so
        damage costs only the frame it hit; in a live segment, damage with no valid frame
        after it waits for the segment to be finished.
        """
        path = self._resolve(segment)
        if path is None:
            return
        offset = self._read_cursor(path)
        try:
            fd = open_private(path, os.O_RDONLY)
        except FileNotFoundError:
            return
        with os.fdopen(fd, "rb") as handle:
            handle.seek(offset)
            while True:
                header = handle.read(_HEADER.size)
                if not header:
                    return
                problem: str | None = None
                incomplete = False
                end = offset + len(header)
                if len(header) < _HEADER.size:
                    problem, incomplete = "incomplete frame header", True
                else:
                    magic, length, crc = _HEADER.unpack(header)
                    if magic != FRAME_MAGIC:
                        problem = f"bad frame magic {magic!r}"
                    else:
                        payload = handle.read(length)
                        end = offset + _HEADER.size + length
                        if len(payload) < length:
                            problem, incomplete = "incomplete frame", True
                        elif zlib.crc32(payload) != crc:
                            problem = "CRC mismatch"
                        else:
                            try:
                                batch_key, records = decode_batch(payload)
                            except CodecError as exc:
                                problem = str(exc)
                if problem is None:
                    yield Frame(path, offset, end, batch_key, tuple(records), crc)
                    offset = end
                    continue
                finished = self._is_finished(path)
                if not finished and (incomplete or self._size(path) == end):
                    return  # the last frame of a live segment: may still be landing
                handle.seek(offset)
                rest = handle.read()
                found = _next_frame(rest, 1)
                if found is None and not finished:
                    return  # damage in a live segment: set aside once it is finished
                stop = offset + (found if found is not None else len(rest))
                tail = found is None and incomplete
                if tail:
                    problem += " at the end of a finished segment"
                if not self._set_aside(path, offset, rest[: stop - offset], problem, tail):
                    return
                if found is None:
                    return
                offset = stop
                handle.seek(offset)

    def _set_aside(self, segment: Path, offset: int, data: bytes, problem: str, tail: bool) -> bool:
        """Copy damaged bytes into ``<stem>.corrupt`` (nothing is lost), record the damage,
        and move the cursor past them when all before is acknowledged; False when the bytes
        could not be set aside (they stay, and reading this segment stops)."""
        # Expected after a writer was killed mid-append (that append never returned): a warning.
        level = logging.WARNING if tail else logging.ERROR
        # Found again (its cursor was held back by a frame before it kept for a later pass):
        # already kept and told, so only the cursor may move past it now.
        seen = f"damage:{len(data)}"
        if seen in self._marks_at(segment, offset, _DAMAGE_CRC):
            return self._past_damage(segment, offset, len(data))
        _LOG.log(level, "spool: damaged segment %s at offset %d: %s", segment.name, offset, problem)
        corrupt: Path | None = segment.with_suffix(_CORRUPT_SUFFIX)
        try:
            assert corrupt is not None
            try:
                fd = open_private(corrupt, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            except UnsafeSpoolFile as exc:  # a link planted there: use a name of our own
                self._leave_alone(corrupt, exc.strerror or str(exc))
                corrupt = segment.with_name(f"{segment.stem}.{secrets.token_hex(4)}.corrupt")
                fd = open_private(corrupt, os.O_WRONLY | os.O_APPEND, exclusive=True)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            _LOG.error(
                "spool: cannot set aside %d damaged byte(s) of %s (%s); they stay in the "
                "segment and the rest of it waits",
                len(data),
                segment.name,
                exc,
            )
            return False
        # What the bytes still tell (a damaged header or payload tail leaves the batch's table
        # of runs, at the start of its payload, readable).
        records, unknown = _salvage(data[_HEADER.size :])
        damage = Damage(segment, offset, len(data), problem, corrupt, records, unknown, tail)
        try:
            _append_marks(
                segment.with_suffix(_PARTS_SUFFIX),
                [_mark_line(offset, _DAMAGE_CRC, seen, "done")],
            )
        except OSError as exc:  # then a later read may set it aside (and tell it) again
            _LOG.warning("spool: cannot record damage of %s as kept (%s)", segment.name, exc)
        self.damage.append(damage)
        _LOG.log(level, "spool: %s", damage.describe())
        return self._past_damage(segment, offset, len(data))

    def _past_damage(self, segment: Path, offset: int, size: int) -> bool:
        """Move the cursor past damage set aside, when all before it is acknowledged."""
        try:
            if self._read_cursor(segment) == offset:  # all before the damage acknowledged
                stop = offset + size
                if stop >= (self._size(segment) or 0) and self._is_finished(segment):
                    self._delete(segment)
                else:
                    self._write_cursor(segment, stop)
        except OSError as exc:
            _LOG.error("spool: cannot move the cursor of %s past damage (%s)", segment.name, exc)
            return False
        return True

    def progress(self, frame: Frame) -> dict[str, str]:
        """What is recorded of ``frame``'s parts: part → ``done`` or ``sending``."""
        return {part: state for part, (state, _) in self._read_marks(frame).items()}

    def began(self, frame: Frame) -> dict[str, float]:
        """When the last POST of each of ``frame``'s ``sending`` parts began (epoch seconds;
        0.0 where its line does not say: written before lines said, so long ago)."""
        return {p: at for p, (state, at) in self._read_marks(frame).items() if state == "sending"}

    def _read_marks(self, frame: Frame) -> dict[str, tuple[str, float]]:
        """The marks of ``frame``, reading what was appended to its ``.parts`` since last."""
        return self._marks_at(frame.segment, frame.offset, frame.crc)

    def _marks_at(self, segment: Path, offset: int, crc: int) -> dict[str, tuple[str, float]]:
        """The marks recorded at ``offset`` for ``crc`` in ``segment``'s ``.parts``."""
        stem = segment.stem
        read, marks = self._marks.get(stem, (0, {}))
        path = segment.with_suffix(_PARTS_SUFFIX)
        try:
            fd = open_private(path, os.O_RDONLY)
        except FileNotFoundError:
            fresh = b""
        else:
            with os.fdopen(fd, "rb") as handle:
                handle.seek(read)
                fresh = handle.read()
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
                at = entry.get("t")
                # A time that does not read counts as long ago (as a line without one): the
                # part is still reconciled before anything of it is sent again.
                at = float(at) if isinstance(at, (int, float)) and math.isfinite(at) else 0.0
                states = marks.setdefault(where, {})
                if state == "clear":
                    states.pop(part, None)
                else:
                    states[part] = (state, at)
            read += len(whole)
        self._marks[stem] = (read, marks)
        return dict(marks.get((offset, crc), {}))

    def mark(self, frame: Frame, part: str, state: str, at: float | None = None) -> None:
        """Record ``state`` (``sending``, ``done`` or ``clear``) for one part of ``frame``;
        ``at``: when a ``sending`` part's POST began (epoch seconds)."""
        path = self._resolve(frame.segment)
        if path is None:
            return
        line = _mark_line(frame.offset, frame.crc, part, state, at)
        _append_marks(path.with_suffix(_PARTS_SUFFIX), [line])

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
            try:
                if self._size(segment) == self._read_cursor(segment):
                    self._delete(segment)
            except UnsafeSpoolFile as exc:
                self._leave_alone(segment, exc.strerror or str(exc))
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
        for tmp in self.directory.glob(".*.tmp"):  # a cursor a killed process never renamed
            pid = tmp.name.split(".")[-3] if tmp.name.count(".") >= 4 else ""
            if pid.isdigit() and not _alive(int(pid)):
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()

    def pending_bytes(self, include_live: bool = False) -> int:
        """Unacknowledged bytes (segment size minus cursor), e.g. for a progress bar."""
        total = 0
        for segment in self.segments(include_live):
            size = self._size(segment)
            if size is not None:
                try:
                    total += max(size - self._read_cursor(segment), 0)
                except UnsafeSpoolFile:
                    continue
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
        private_dir(self.directory)
        fd = open_private(self.path, os.O_RDWR | os.O_CREAT)
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
        self._fd = _keep_lock(fd)

    def release(self) -> None:
        """Drop the lock (closing the descriptor releases it)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            _drop_lock(fd)

    def __enter__(self) -> SendLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
