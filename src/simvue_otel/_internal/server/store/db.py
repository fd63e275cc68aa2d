"""The store's one SQLite database: its file (private to its owner), the write connection and
its lock, the pool of read connections, transactions, and what a full disk does.

Writes go through one connection in WAL mode, serialised by a lock (SQLite's single writer is
the real limit anyway); reads take a connection of their own from a pool, which WAL lets run
beside a write, so a long write (a run with 100,000 tags) does not hold up other users' reads
or token checks.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .common import format_time

_LOG = logging.getLogger("simvue_otel.server")

SQLITE_FULL = 13
"""SQLite's primary result code for a write that found no room on the disk."""
ROOM_REGAINED = 2**20
"""Bytes of free space, beyond those left when a write failed for lack of room, after which
the disk no longer counts as full (a write that still fails marks it full again)."""


def free_bytes(path: str) -> int | None:
    """Bytes free to unprivileged writers on the file system holding the file ``path``;
    None for an in-memory database or when the system does not say."""
    if path == ":memory:" or path.startswith("file:"):
        return None
    try:
        info = os.statvfs(os.path.dirname(os.path.abspath(path)))
    except (OSError, AttributeError):  # no statvfs on Windows
        return None
    return int(info.f_bavail * info.f_frsize)


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` is SQLite failing a write for lack of room on the disk."""
    if not isinstance(exc, sqlite3.Error):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF == SQLITE_FULL
    return "disk is full" in str(exc)


_SIDE_FILES = ("-wal", "-shm", "-journal")
"""The files SQLite keeps beside a database (made with the database file's permissions)."""


def secure_database_file(path: str) -> list[str]:
    """Make the database file at ``path`` private to its owner before SQLite opens it: a new
    one is created 0600 (it holds the token-signing secret, with which anyone who reads it
    can mint tokens), and SQLite gives its ``-wal``, ``-shm`` and ``-journal`` files the same
    mode. An existing file (or side file) that others can read or write is tightened to
    0600; returns a warning for each, or for each that could not be tightened.
    In-memory databases and ``file:`` URIs are left alone."""
    if path == ":memory:" or path.startswith("file:"):
        return []
    try:
        fd = os.open(
            path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600
        )
    except FileExistsError:
        pass
    except OSError:  # a directory that cannot be written: SQLite's own error says so
        return []
    else:
        os.close(fd)
        return []
    warnings: list[str] = []
    for name in (path, *(path + suffix for suffix in _SIDE_FILES)):
        try:
            mode = os.stat(name).st_mode
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(mode) or not mode & 0o077:
            continue
        private = stat.S_IMODE(mode) & 0o700
        try:
            os.chmod(name, private)
        except OSError as exc:
            warnings.append(
                f"{name} can be read by other users (mode {stat.S_IMODE(mode):o}) and could not "
                f"be made private ({exc.strerror}): it holds the token-signing secret; "
                f"run 'chmod 600 {name}'"
            )
        else:
            warnings.append(
                f"{name} could be read by other users (mode {stat.S_IMODE(mode):o}): made it "
                f"private ({private:04o}), as it holds the token-signing secret"
            )
    return warnings


class Database:
    """The connection every resource of the store shares: one for writes, serialised by a
    lock (:meth:`_tx`), and a pool of read-only ones (:meth:`_read`)."""

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        self.warnings = secure_database_file(self.path)
        """What was found wrong with the file's permissions (and fixed where possible)."""
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("PRAGMA busy_timeout=10000")
        self._full: tuple[float, int] | None = None  # (when, bytes free) of a failed write
        # Readers: idle connections, taken by one read at a time (WAL lets them read while
        # the writer writes); as many as reads ever ran at once, which the server's thread
        # pool bounds. An in-memory database exists only in its one connection.
        self._shared = self.path == ":memory:" or self.path.startswith("file::memory:")
        self._idle: list[sqlite3.Connection] = []
        self._idle_lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._conn.close()
        with self._idle_lock:
            for conn in self._idle:
                conn.close()
            self._idle.clear()

    # -- a full disk ------------------------------------------------------------------------

    def note_write_error(self, exc: BaseException) -> bool:
        """Whether ``exc`` is a write that failed because the disk is full; if so, remember
        it (with the free space left then) for :meth:`disk_full`, and log it once."""
        if not is_disk_full(exc):
            return False
        if self._full is None:
            _LOG.warning(
                "the disk holding %s is full: writes are answered 503 until space is freed",
                self.path,
            )
        self._full = (time.time(), free_bytes(self.path) or 0)
        return True

    def disk_full(self) -> dict[str, Any] | None:
        """How the disk stands when the last write failed for lack of room and no room has
        been freed since (``since``, ``free_bytes``); None otherwise."""
        full = self._full
        if full is None:
            return None
        when, free_then = full
        free = free_bytes(self.path)
        if free is not None and free >= free_then + ROOM_REGAINED:
            self._full = None
            _LOG.warning("the disk holding %s has room again (%d bytes free)", self.path, free)
            return None
        return {"since": format_time(when), "free_bytes": free}

    # -- transactions ---------------------------------------------------------------------

    def _tx(self) -> _Transaction:
        return _Transaction(self._conn, self._lock)

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A read-only transaction on a connection of its own: a consistent snapshot that
        neither waits for nor holds up the writer."""
        if self._shared:
            with self._tx() as db:
                yield db
            return
        with self._idle_lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA busy_timeout=10000")
        try:
            conn.execute("BEGIN")
        except sqlite3.Error:
            conn.close()
            raise
        try:
            yield conn  # errors of the caller (a 404 inside the block) pass through
        finally:
            try:
                conn.execute("COMMIT")  # ends the snapshot; nothing was written
            except sqlite3.Error:
                conn.close()  # in an unknown state: not reused
            else:
                with self._idle_lock:
                    self._idle.append(conn)


class _Transaction:
    """``with store._tx() as db``: holds the store lock and wraps one SQLite transaction."""

    def __init__(self, conn: sqlite3.Connection, lock: threading.RLock) -> None:
        self._conn = conn
        self._lock = lock
        self._depth_owner = False

    def __enter__(self) -> sqlite3.Connection:
        self._lock.acquire()
        if not self._conn.in_transaction:
            self._conn.execute("BEGIN IMMEDIATE")
            self._depth_owner = True
        return self._conn

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            if self._depth_owner:
                self._conn.execute("ROLLBACK" if exc_type else "COMMIT")
        finally:
            self._lock.release()
