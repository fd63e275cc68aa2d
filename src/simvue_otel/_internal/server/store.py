"""SQLite storage of the local Simvue-compatible server.

Writes go through one connection in WAL mode, serialised by a lock (SQLite's single writer is
the real limit anyway); reads take a connection of their own from a pool, which WAL lets run
beside a write,
so a long write (a run with 100,000 tags) does not hold up other users' reads or token checks.
Every read and write takes the caller's :class:`~.auth.Identity` and enforces run visibility
here, so no endpoint can forget it.

What is stored must stay readable by every later query: times must be finite and within the
range that can be formatted, integers must fit SQLite's 64 bits, folder paths are bounded.
Rows are also formatted defensively, so one damaged row (from an older version) never fails
another user's listing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import secrets
import sqlite3
import stat
import string
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import conventions as cv
from ..names import generate_run_name
from . import points
from .auth import Identity
from .filters import Predicate

__all__ = [
    "Conflict",
    "DiskFull",
    "Forbidden",
    "Invalid",
    "NotFound",
    "Store",
    "StoreError",
]

RUN_STATUSES = cv.RUN_STATUSES
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%f"
_NAME_RE = re.compile(rf"^{cv.NAME_PATTERN}$")
_TAG_RE = re.compile(cv.TAG_PATTERN)
_METRIC_NAME_RE = re.compile(cv.METRIC_NAME_PATTERN)
_ID_ALPHABET = string.ascii_letters + string.digits
_LOG = logging.getLogger("simvue_otel.server")
_MAX_INT = 2**63 - 1
"""SQLite integers are signed 64-bit; larger Python ints cannot be stored as integers."""
MAX_SECONDS = 2**53
"""Largest ttl or heartbeat timeout accepted, in seconds (exact as a double)."""
MAX_FOLDER_LENGTH = 1024
MAX_FOLDER_DEPTH = 64


class StoreError(Exception):
    """An API-level failure with its HTTP status; ``detail`` becomes ``{"detail": ...}``."""

    status = 400

    def __init__(self, detail: Any, **extra: Any) -> None:
        super().__init__(str(detail))
        self.detail = detail
        self.extra = extra


class NotFound(StoreError):
    status = 404


class Forbidden(StoreError):
    status = 403


class Conflict(StoreError):
    status = 409


class Invalid(StoreError):
    status = 422


SQLITE_FULL = 13
"""SQLite's primary result code for a write that found no room on the disk."""
RETRY_AFTER_FULL = 30
"""Seconds a client is told to wait (``Retry-After``) when the disk is full."""
ROOM_REGAINED = 2**20
"""Bytes of free space, beyond those left when a write failed for lack of room, after which
the disk no longer counts as full (a write that still fails marks it full again)."""


class DiskFull(StoreError):
    """A write refused because the disk holding the database is full: 503 with
    ``Retry-After`` (a full disk is temporary, and clients retry a 503), nothing stored."""

    status = 503

    def __init__(self, path: str) -> None:
        super().__init__(
            f"the disk holding the server's database ({path}) is full: nothing of this request "
            f"was stored; try again once space is freed (GET /health says when)",
        )
        self.headers = {"Retry-After": str(RETRY_AFTER_FULL)}


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


def new_id() -> str:
    """A 22-character alphanumeric id, the shape of Simvue's object ids (uniform: bytes of 248
    or more are dropped so that ``% 62`` has no bias)."""
    out: list[str] = []
    while len(out) < 22:
        out.extend(_ID_ALPHABET[b % 62] for b in secrets.token_bytes(32) if b < 248)
    return "".join(out[:22])


def format_time(epoch: Any) -> str | None:
    """A stored epoch as Simvue's UTC timestamp text; None for no time, and for a value that
    cannot be formatted (a row written before times were checked), so reads never fail."""
    if epoch is None:
        return None
    try:
        return datetime.fromtimestamp(float(epoch), tz=timezone.utc).strftime(_TIME_FORMAT)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def finite_number(value: Any) -> float | None:
    """``value`` as a finite float, or None when it is not a number (bools are not) or has no
    finite double (NaN, infinities, integers of hundreds of digits)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def parse_time(value: Any, field: str) -> float | None:
    """Simvue timestamps are UTC strings without a zone suffix; epoch numbers are accepted too.

    The time must be one the server can format back (years 1 to 9999, finite), else 422:
    a stored time that cannot be formatted would break every later read of the run."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        epoch = finite_number(value)
        if epoch is None or format_time(epoch) is None:
            raise _invalid(field, f"must be a finite time within years 1 to 9999, not {value!r}")
        return epoch
    if isinstance(value, str):
        text = value.strip().replace(" ", "T")
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise Invalid(
                [
                    {
                        "loc": ["body", field],
                        "msg": f"not a timestamp: {value[:100]!r}",
                        "type": "value",
                    }
                ]
            ) from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)
        try:
            epoch = parsed.timestamp()
        except (OverflowError, ValueError, OSError):
            epoch = math.nan
        if format_time(epoch) is None:
            raise _invalid(field, f"must be a time within years 1 to 9999, not {value[:100]!r}")
        return epoch
    raise Invalid([{"loc": ["body", field], "msg": "must be a timestamp string", "type": "type"}])


def _invalid(field: str, msg: str) -> Invalid:
    return Invalid([{"loc": ["body", field], "msg": msg, "type": "value_error"}])


def deep_merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``update`` into a copy of ``base``; nested dicts merge, everything else replaces."""
    merged = dict(base)
    for key, value in update.items():
        old = merged.get(key)
        if isinstance(old, dict) and isinstance(value, Mapping):
            merged[key] = deep_merge(old, value)
        else:
            merged[key] = value
    return merged


def _visibility(value: Any) -> dict[str, Any]:
    if value is None:
        return {"public": False, "tenant": False, "users": []}
    if not isinstance(value, Mapping):
        raise _invalid("visibility", "must be an object {public, tenant, users}")
    users = value.get("users", value.get("user")) or []
    if not isinstance(users, list) or not all(isinstance(u, str) for u in users):
        raise _invalid("visibility.users", "must be a list of user names")
    return {
        "public": bool(value.get("public", False)),
        "tenant": bool(value.get("tenant", False)),
        "users": list(dict.fromkeys(users)),
    }


def _check_ttl(value: Any, field: str) -> int | None:
    if value is None:
        return None
    seconds = finite_number(value)
    if seconds is None or not 0 < seconds <= MAX_SECONDS:
        raise _invalid(
            field, f"must be a positive number of seconds, at most {MAX_SECONDS}, or null"
        )
    return int(seconds)


def _check_tags(value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _invalid("tags", "must be a list of tags")
    for i, tag in enumerate(value):
        if not isinstance(tag, str) or not _TAG_RE.fullmatch(tag):
            raise _invalid(f"tags.{i}", f"must match {_TAG_RE.pattern} (the official rule)")
    return list(dict.fromkeys(value))


def _check_folder(value: Any, field: str = "folder") -> str:
    if not isinstance(value, str) or not value.startswith("/"):
        raise _invalid(field, "must be a path starting with '/'")
    if value != "/" and value.endswith("/"):
        value = value.rstrip("/") or "/"
    if len(value) > MAX_FOLDER_LENGTH or value.count("/") > MAX_FOLDER_DEPTH:
        raise _invalid(
            field,
            f"must be at most {MAX_FOLDER_LENGTH} characters and {MAX_FOLDER_DEPTH} levels deep",
        )
    return str(value)


def _optional_text(body: Mapping[str, Any], key: str, default: Any = None) -> Any:
    """``body[key]`` when it is a string or null (``default`` when absent), else 422."""
    value = body.get(key, default)
    if value is not None and not isinstance(value, str):
        raise _invalid(key, "must be a string or null")
    return value


def _session_key(session_id: str) -> str:
    """What the database keeps of a session id: its hash, so a copy of the file holds no
    usable session."""
    return hashlib.sha256(session_id.encode()).hexdigest()


_SLICE_BITS = 10
"""Steps per envelope slice: 2**10 = 1,024 (a million steps are a thousand slices)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY, tenant TEXT NOT NULL, created REAL NOT NULL, tokens_after REAL);
CREATE TABLE IF NOT EXISTS folders (
    id TEXT PRIMARY KEY, owner TEXT NOT NULL, tenant TEXT NOT NULL, path TEXT NOT NULL,
    doc TEXT NOT NULL, created REAL NOT NULL, UNIQUE (owner, path));
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY, owner TEXT NOT NULL, tenant TEXT NOT NULL, name TEXT NOT NULL,
    folder TEXT NOT NULL, status TEXT NOT NULL, run_key TEXT,
    vis_public INTEGER NOT NULL, vis_tenant INTEGER NOT NULL, vis_users TEXT NOT NULL,
    created REAL NOT NULL, modified REAL NOT NULL, last_heartbeat REAL,
    heartbeat_timeout REAL, ttl REAL, doc TEXT NOT NULL);
-- Older databases enforced one run per simvue-otel run key: Simvue does not, so neither do we.
DROP INDEX IF EXISTS runs_key;
CREATE INDEX IF NOT EXISTS runs_owner ON runs (owner, name);
CREATE INDEX IF NOT EXISTS runs_status ON runs (status);
-- Metric points in chunks (see points.py): per run, batch and shape (the metric names of an
-- entry, kept once), packed columns of steps, times, timestamps, positions and values.
CREATE TABLE IF NOT EXISTS metric_shapes (id INTEGER PRIMARY KEY, names TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS metric_chunks (
    run_id TEXT NOT NULL, shape INTEGER NOT NULL, batch INTEGER NOT NULL, n INTEGER NOT NULL,
    lo INTEGER NOT NULL, hi INTEGER NOT NULL, ascending INTEGER NOT NULL,
    steps BLOB NOT NULL, times BLOB NOT NULL, stamps TEXT NOT NULL, positions BLOB NOT NULL,
    vals BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS metric_chunks_run ON metric_chunks (run_id, shape);
-- Per run and metric, kept up to date as points arrive, so that run documents and listings cost
-- the same whatever a run holds: count, non-NaN count, min, max, sum, and the value at the
-- highest step (the latest stored of equal steps).
CREATE TABLE IF NOT EXISTS metric_summary (
    run_id TEXT NOT NULL, name TEXT NOT NULL, n INTEGER NOT NULL, finite INTEGER NOT NULL,
    lo REAL, hi REAL, total REAL, step INTEGER NOT NULL, last REAL,
    PRIMARY KEY (run_id, name));
-- Per run, metric and slice of 1,024 steps: the lowest and highest value and the slice's first
-- and last step, kept as points arrive, so a run page plots a metric of a million points from
-- about a thousand rows.
CREATE TABLE IF NOT EXISTS metric_envelope (
    run_id TEXT NOT NULL, name TEXT NOT NULL, slice INTEGER NOT NULL,
    lo REAL NOT NULL, hi REAL NOT NULL, x0 INTEGER NOT NULL, x1 INTEGER NOT NULL,
    PRIMARY KEY (run_id, name, slice));
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL, message TEXT NOT NULL,
    log_level TEXT NOT NULL, timestamp TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_run ON events (run_id, seq);
DROP TABLE IF EXISTS batches;
CREATE TABLE IF NOT EXISTS tags (
    id TEXT PRIMARY KEY, owner TEXT NOT NULL, name TEXT NOT NULL, colour TEXT,
    description TEXT, created REAL NOT NULL, UNIQUE (owner, name));
-- Web sessions (the cookie holds a random id; only its hash is kept here).
CREATE TABLE IF NOT EXISTS sessions (
    key TEXT PRIMARY KEY, user TEXT NOT NULL, tenant TEXT NOT NULL,
    created REAL NOT NULL, expires REAL NOT NULL);
-- Sign-in links already used (each works once), kept until they would have expired.
CREATE TABLE IF NOT EXISTS used_codes (jti TEXT PRIMARY KEY, expires REAL NOT NULL);
"""

# Visibility of runs, in SQL: owner, public, same tenant when shared with it, or named user.
_VISIBLE = (
    "(r.owner = :user OR r.vis_public = 1 OR (r.vis_tenant = 1 AND r.tenant = :tenant) "
    "OR EXISTS (SELECT 1 FROM json_each(r.vis_users) WHERE json_each.value = :user))"
)


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


class Store:
    """All state of the local server, in one SQLite file, readable by its owner alone."""

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
            self._conn.executescript(_SCHEMA)
            columns = {r["name"] for r in self._conn.execute("PRAGMA table_info(users)")}
            if "tokens_after" not in columns:  # a database made before revocation existed
                self._conn.execute("ALTER TABLE users ADD COLUMN tokens_after REAL")
            self._shape_ids: dict[tuple[str, ...], int] = {}
            self._shape_names: dict[int, tuple[str, ...]] = {}
            last = self._conn.execute("SELECT MAX(batch) FROM metric_chunks").fetchone()[0]
            self._batches = int(last or 0)  # batches are numbered in the order stored
            self._upgrade_metrics()
        self._last_sweep = 0.0
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

    # -- meta and users -------------------------------------------------------------------

    def secret(self) -> str:
        """The token-signing secret, created on first use and kept in the database."""
        with self._tx() as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'secret'").fetchone()
            if row:
                return str(row["value"])
            value = secrets.token_urlsafe(48)
            db.execute("INSERT INTO meta (key, value) VALUES ('secret', ?)", (value,))
            return value

    def get_meta(self, key: str) -> str | None:
        with self._tx() as db:
            row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            return str(row["value"]) if row else None

    def set_meta(self, key: str, value: str) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def ensure_user(self, name: str, tenant: str | None = None) -> tuple[Identity, bool]:
        """The user ``name`` (created if new); an existing user keeps their tenant unless one
        different from it is asked for, which is an error rather than a silent move."""
        with self._tx() as db:
            row = db.execute("SELECT tenant FROM users WHERE name = ?", (name,)).fetchone()
            if row:
                if tenant and tenant != row["tenant"]:
                    raise Conflict(
                        f"user {name!r} already belongs to tenant {row['tenant']!r}, not {tenant!r}"
                    )
                return Identity(name, str(row["tenant"])), False
            tenant = tenant or "default"
            now = time.time()
            # Tokens issued before a user's creation are refused: a user deleted and created
            # again under the same name does not bring its old tokens (or sessions) back.
            db.execute(
                "INSERT INTO users (name, tenant, created, tokens_after) VALUES (?, ?, ?, ?)",
                (name, tenant, now, now),
            )
            return Identity(name, tenant), True

    def user_exists(self, identity: Identity) -> bool:
        with self._read() as db:
            row = db.execute(
                "SELECT 1 FROM users WHERE name = ? AND tenant = ?",
                (identity.user, identity.tenant),
            ).fetchone()
            return row is not None

    def token_problem(self, identity: Identity) -> str | None:
        """Why a correctly signed token (or session) for ``identity`` is refused, or None when
        it is good: its user must exist, in its tenant, and it must be issued after the user's
        cut-off (creation, or the last :meth:`revoke_tokens`)."""
        with self._read() as db:
            row = db.execute(
                "SELECT tenant, tokens_after FROM users WHERE name = ?", (identity.user,)
            ).fetchone()
        if row is None or row["tenant"] != identity.tenant:
            return "the token's user does not exist on this server"
        if row["tokens_after"] is not None and identity.issued < row["tokens_after"]:
            return "the token has been revoked: mint a new one with 'simvue-otel server token'"
        return None

    def revoke_tokens(self, user: str) -> bool:
        """End every token, sign-in link and web session of ``user`` issued until now; tokens
        minted afterwards work. False when there is no such user."""
        with self._tx() as db:
            found = db.execute(
                "UPDATE users SET tokens_after = ? WHERE name = ?", (time.time(), user)
            ).rowcount
            db.execute("DELETE FROM sessions WHERE user = ?", (user,))
        return bool(found)

    # -- web sessions and sign-in links ----------------------------------------------------

    def create_session(self, who: Identity, lifetime: float) -> str:
        """A new web session for ``who``, valid ``lifetime`` seconds; returns its secret id."""
        session_id = secrets.token_urlsafe(32)
        now = time.time()
        with self._tx() as db:
            db.execute(
                "INSERT INTO sessions (key, user, tenant, created, expires) VALUES (?,?,?,?,?)",
                (_session_key(session_id), who.user, who.tenant, now, now + lifetime),
            )
        return session_id

    def session_identity(self, session_id: str) -> Identity | None:
        """Who the session ``session_id`` belongs to; None when it is unknown, expired, ended,
        or its user's tokens were revoked since it began."""
        if not session_id or len(session_id) > 200:
            return None
        with self._read() as db:
            row = db.execute(
                "SELECT user, tenant, created FROM sessions WHERE key = ? AND expires > ?",
                (_session_key(session_id), time.time()),
            ).fetchone()
        if row is None:
            return None
        who = Identity(str(row["user"]), str(row["tenant"]), issued=float(row["created"]))
        return None if self.token_problem(who) else who

    def end_session(self, session_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM sessions WHERE key = ?", (_session_key(session_id),))

    def code_used(self, jti: str) -> bool:
        """Whether the sign-in link ``jti`` has been used."""
        with self._read() as db:
            return (
                db.execute("SELECT 1 FROM used_codes WHERE jti = ?", (jti,)).fetchone() is not None
            )

    def redeem_code(self, jti: str, expires: float) -> bool:
        """Mark the sign-in link ``jti`` used; False when it was used before."""
        with self._tx() as db:
            return bool(
                db.execute(
                    "INSERT OR IGNORE INTO used_codes (jti, expires) VALUES (?, ?)", (jti, expires)
                ).rowcount
            )

    # -- folders --------------------------------------------------------------------------

    def create_folder(self, who: Identity, path: str) -> tuple[str, bool]:
        """Create ``path`` and its missing parents; returns (id, created)."""
        path = _check_folder(path, "path")
        with self._tx() as db:
            return self._ensure_folder(db, who, path)

    def _ensure_folder(self, db: sqlite3.Connection, who: Identity, path: str) -> tuple[str, bool]:
        """The folder ``path`` and its missing parents (walked up in a loop, not recursion,
        then created from the top down); returns (id, created)."""
        missing: list[str] = []
        current = path
        while True:
            row = db.execute(
                "SELECT id FROM folders WHERE owner = ? AND path = ?", (who.user, current)
            ).fetchone()
            if row is not None and not missing:
                return str(row["id"]), False
            if row is not None:
                break
            missing.append(current)
            if current == "/":
                break
            current = current.rsplit("/", 1)[0] or "/"
        now = time.time()
        folder_id = ""
        for folder in reversed(missing):
            folder_id = new_id()
            doc: dict[str, Any] = {
                "description": None,
                "tags": [],
                "metadata": {},
                "starred": False,
                "ttl": None,
                "name": folder.rsplit("/", 1)[-1] or "/",
            }
            db.execute(
                "INSERT INTO folders (id, owner, tenant, path, doc, created) VALUES (?,?,?,?,?,?)",
                (folder_id, who.user, who.tenant, folder, json.dumps(doc), now),
            )
        return folder_id, True

    def _folder_api(self, row: sqlite3.Row) -> dict[str, Any]:
        doc = json.loads(row["doc"])
        modified = _epoch(doc.get("modified"))
        if modified is None:
            modified = _epoch(row["created"])
        return {
            "id": row["id"],
            "path": row["path"],
            "name": doc.get("name"),
            "description": doc.get("description"),
            "tags": doc.get("tags", []),
            "metadata": doc.get("metadata", {}),
            "starred": doc.get("starred", False),
            "ttl": doc.get("ttl"),
            "created": format_time(row["created"]),
            "modified": format_time(modified),
            "user": row["owner"],
            "visibility": {"public": False, "tenant": False, "users": []},
            # numeric epochs for sorting; dropped before serving
            "_created": _epoch(row["created"]),
            "_modified": modified,
        }

    def list_folders(
        self,
        who: Identity,
        predicate: Predicate,
        start: int = 0,
        count: int | None = None,
        sorting: Sequence[Mapping[str, Any]] = (),
    ) -> tuple[list[dict[str, Any]], int]:
        """The caller's folders, newest first unless ``sorting`` says otherwise (as the
        official client expects: ``Folder.get(count=10)`` must hold a folder just made)."""
        with self._read() as db:
            rows = db.execute(
                "SELECT * FROM folders WHERE owner = ? ORDER BY created DESC, rowid DESC",
                (who.user,),
            ).fetchall()
        found = [f for f in _formatted(rows, self._folder_api) if predicate(f, who.user)]
        _sort_items(found, sorting, FOLDER_SORT_COLUMNS, "folders")
        return [_public(f) for f in _page(found, start, count)], len(found)

    def get_folder(self, who: Identity, folder_id: str) -> dict[str, Any]:
        with self._read() as db:
            row = db.execute(
                "SELECT * FROM folders WHERE id = ? AND owner = ?", (folder_id, who.user)
            ).fetchone()
        if row is None:
            raise NotFound(f"folder {folder_id!r} not found")
        return _public(self._folder_api(row))

    def update_folder(self, who: Identity, folder_id: str, changes: Mapping[str, Any]) -> None:
        if not isinstance(changes, Mapping):
            raise _invalid("body", "an update must be a JSON object")
        with self._tx() as db:
            row = db.execute(
                "SELECT doc FROM folders WHERE id = ? AND owner = ?", (folder_id, who.user)
            ).fetchone()
            if row is None:
                raise NotFound(f"folder {folder_id!r} not found")
            doc = json.loads(row["doc"])
            for key, value in changes.items():
                if key == "metadata":
                    if not isinstance(value, Mapping):
                        raise _invalid("metadata", "must be an object")
                    doc["metadata"] = deep_merge(doc.get("metadata", {}), value)
                elif key == "tags":
                    doc["tags"] = _check_tags(value)
                elif key == "ttl":
                    doc["ttl"] = _check_ttl(value, "ttl")
                elif key in ("description", "name", "starred"):
                    doc[key] = value
            doc["modified"] = time.time()
            db.execute("UPDATE folders SET doc = ? WHERE id = ?", (json.dumps(doc), folder_id))

    def delete_folder(
        self, who: Identity, folder_id: str, *, recursive: bool, runs: bool, runs_only: bool
    ) -> dict[str, list[str]]:
        with self._tx() as db:
            row = db.execute(
                "SELECT path FROM folders WHERE id = ? AND owner = ?", (folder_id, who.user)
            ).fetchone()
            if row is None:
                raise NotFound(f"folder {folder_id!r} not found")
            path = str(row["path"])
            prefix = path.rstrip("/") + "/"
            targets = db.execute(
                "SELECT id, path FROM folders WHERE owner = ? AND (path = ? OR "
                "(? AND substr(path, 1, ?) = ?))",
                (who.user, path, recursive, len(prefix), prefix),
            ).fetchall()
            if (
                not recursive
                and db.execute(
                    "SELECT 1 FROM folders WHERE owner = ? AND substr(path, 1, ?) = ? LIMIT 1",
                    (who.user, len(prefix), prefix),
                ).fetchone()
            ):
                raise Conflict(f"folder {path!r} has subfolders: delete with recursive=True")
            paths = [str(t["path"]) for t in targets]
            marks = ",".join("?" * len(paths))
            run_rows = db.execute(
                f"SELECT id FROM runs WHERE owner = ? AND folder IN ({marks})",  # noqa: S608
                (who.user, *paths),
            ).fetchall()
            run_ids = [str(r["id"]) for r in run_rows]
            if run_ids and not (runs or runs_only):
                raise Conflict(f"folder {path!r} holds runs: delete with runs=True")
            if runs or runs_only:
                self._delete_runs(db, run_ids)
            folder_ids: list[str] = []
            if not runs_only:
                folder_ids = [str(t["id"]) for t in targets]
                db.executemany("DELETE FROM folders WHERE id = ?", [(f,) for f in folder_ids])
            return {"folders": folder_ids, "runs": run_ids}

    # -- tags -----------------------------------------------------------------------------

    def _ensure_tags(self, db: sqlite3.Connection, who: Identity, names: Iterable[str]) -> None:
        now = time.time()
        db.executemany(
            "INSERT OR IGNORE INTO tags (id, owner, name, colour, description, created) "
            "VALUES (?, ?, ?, NULL, NULL, ?)",
            [(new_id(), who.user, name, now) for name in names],
        )

    def create_tag(self, who: Identity, body: Mapping[str, Any]) -> tuple[str, bool]:
        if not isinstance(body, Mapping):
            raise _invalid("body", "a tag must be a JSON object {name, colour, description}")
        name = body.get("name")
        if not isinstance(name, str) or not name:
            raise _invalid("name", "a tag needs a non-empty name")
        colour = _optional_text(body, "colour")
        description = _optional_text(body, "description")
        with self._tx() as db:
            row = db.execute(
                "SELECT id FROM tags WHERE owner = ? AND name = ?", (who.user, name)
            ).fetchone()
            if row:
                return str(row["id"]), False
            tag_id = new_id()
            db.execute(
                "INSERT INTO tags (id, owner, name, colour, description, created) "
                "VALUES (?,?,?,?,?,?)",
                (tag_id, who.user, name, colour, description, time.time()),
            )
            return tag_id, True

    @staticmethod
    def _tag_api(row: sqlite3.Row) -> dict[str, Any]:
        return {
            "id": row["id"],
            "name": row["name"],
            "colour": row["colour"] or "#7f7f7f",
            "description": row["description"],
            "created": format_time(row["created"]),
        }

    def list_tags(
        self,
        who: Identity,
        predicate: Predicate,
        start: int = 0,
        count: int | None = None,
        sorting: Sequence[Mapping[str, Any]] = (),
    ) -> tuple[list[dict[str, Any]], int]:
        with self._read() as db:
            rows = db.execute(
                "SELECT * FROM tags WHERE owner = ? ORDER BY created, name", (who.user,)
            ).fetchall()
        found = [t for t in _formatted(rows, self._tag_api) if predicate(t, who.user)]
        _sort_items(found, sorting, TAG_SORT_COLUMNS, "tags")
        return _page(found, start, count), len(found)

    def get_tag(self, who: Identity, tag_id: str) -> dict[str, Any]:
        with self._read() as db:
            row = db.execute(
                "SELECT * FROM tags WHERE id = ? AND owner = ?", (tag_id, who.user)
            ).fetchone()
        if row is None:
            raise NotFound(f"tag {tag_id!r} not found")
        return self._tag_api(row)

    def update_tag(self, who: Identity, tag_id: str, changes: Mapping[str, Any]) -> None:
        if not isinstance(changes, Mapping):
            raise _invalid("body", "an update must be a JSON object")
        current = self.get_tag(who, tag_id)
        name = changes.get("name", current["name"])
        if not isinstance(name, str) or not name:
            raise _invalid("name", "a tag needs a non-empty name")
        colour = _optional_text(changes, "colour", current["colour"])
        description = _optional_text(changes, "description", current["description"])
        with self._tx() as db:
            clash = db.execute(
                "SELECT id FROM tags WHERE owner = ? AND name = ? AND id != ?",
                (who.user, name, tag_id),
            ).fetchone()
            if clash:
                raise Conflict(f"a tag named {name!r} already exists", id=str(clash["id"]))
            db.execute(
                "UPDATE tags SET name = ?, colour = ?, description = ? WHERE id = ?",
                (name, colour, description, tag_id),
            )

    def delete_tag(self, who: Identity, tag_id: str) -> None:
        tag = self.get_tag(who, tag_id)
        # Runs are found in Python, not with SQLite's JSON functions: a document holding NaN
        # (which Python's JSON writes and SQLite calls malformed) must not break this.
        needle = json.dumps(tag["name"])
        with self._tx() as db:
            db.execute("DELETE FROM tags WHERE id = ?", (tag_id,))
            rows = db.execute(
                "SELECT id, doc FROM runs WHERE owner = ? AND instr(doc, ?) > 0",
                (who.user, needle),
            ).fetchall()
            for row in rows:
                doc = json.loads(row["doc"])
                tags = doc.get("tags")
                if not isinstance(tags, list) or tag["name"] not in tags:
                    continue
                doc["tags"] = [t for t in tags if t != tag["name"]]
                db.execute("UPDATE runs SET doc = ? WHERE id = ?", (json.dumps(doc), row["id"]))

    # -- runs -----------------------------------------------------------------------------

    def create_run(self, who: Identity, body: Mapping[str, Any]) -> dict[str, Any]:
        """Create a run. Every POST makes a new run, as on a Simvue server (no deduplication)."""
        if not isinstance(body, Mapping):
            raise _invalid("body", "a run must be a JSON object")
        name = body.get("name")
        if name is not None and (not isinstance(name, str) or not _NAME_RE.match(name)):
            raise _invalid("name", f"must match {_NAME_RE.pattern}")
        folder = _check_folder(body.get("folder", "/"))
        status = body.get("status") or "running"
        if status not in RUN_STATUSES:
            raise _invalid("status", f"must be one of {', '.join(RUN_STATUSES)}")
        metadata = body.get("metadata") or {}
        if not isinstance(metadata, Mapping):
            raise _invalid("metadata", "must be an object")
        tags = _check_tags(body.get("tags"))
        visibility = _visibility(body.get("visibility"))
        ttl = _check_ttl(body.get("ttl"), "ttl")
        heartbeat_timeout = _check_ttl(body.get("heartbeat_timeout", 180), "heartbeat_timeout")
        now = time.time()
        with self._tx() as db:
            if name is None:
                name = self._unique_name(db, who)
            self._ensure_folder(db, who, folder)
            self._ensure_tags(db, who, tags)
            doc = {
                "description": body.get("description"),
                "tags": tags,
                "metadata": dict(metadata),
                "notifications": body.get("notifications") or {"state": "none"},
                "alerts": body.get("alerts") or [],
                "system": body.get("system") or {},
                "started": parse_time(body.get("started"), "started")
                or (now if status == "running" else None),
                "endtime": parse_time(body.get("endtime"), "endtime"),
                "starred": False,
                "abort": False,
                "ttl": ttl,
                "heartbeat_timeout": heartbeat_timeout,
                "visibility": visibility,
            }
            run_id = new_id()
            db.execute(
                "INSERT INTO runs (id, owner, tenant, name, folder, status, run_key, vis_public, "
                "vis_tenant, vis_users, created, modified, last_heartbeat, heartbeat_timeout, "
                "ttl, doc) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    run_id,
                    who.user,
                    who.tenant,
                    name,
                    folder,
                    status,
                    None,  # run_key: a column older databases have; nothing reads it
                    int(visibility["public"]),
                    int(visibility["tenant"]),
                    json.dumps(visibility["users"]),
                    now,
                    now,
                    now if status == "running" else None,
                    heartbeat_timeout,
                    ttl,
                    json.dumps(doc),
                ),
            )
        return {"id": run_id, "name": name}

    def _unique_name(self, db: sqlite3.Connection, who: Identity) -> str:
        for _ in range(50):
            name = generate_run_name()
            if not db.execute(
                "SELECT 1 FROM runs WHERE owner = ? AND name = ?", (who.user, name)
            ).fetchone():
                return name
        return f"{generate_run_name()}-{secrets.token_hex(3)}"

    def _load_run(self, db: sqlite3.Connection, who: Identity, run_id: str) -> sqlite3.Row:
        row = db.execute(
            f"SELECT * FROM runs r WHERE r.id = :id AND {_VISIBLE}",  # noqa: S608
            {"id": run_id, "user": who.user, "tenant": who.tenant},
        ).fetchone()
        if row is None:
            # Another user's private run reads exactly like a missing one.
            raise NotFound(f"run {run_id!r} not found")
        return row  # type: ignore[no-any-return]

    def _writable_run(self, db: sqlite3.Connection, who: Identity, run_id: str) -> sqlite3.Row:
        row = self._load_run(db, who, run_id)
        if row["owner"] != who.user:
            raise Forbidden(f"run {run_id!r} belongs to another user; it is read-only to you")
        return row

    def _upgrade_metrics(self) -> None:
        """Bring a database written by an older version to the current way of keeping points:
        summaries and envelopes filled once, then points moved from the one-row-per-value
        ``metrics`` table into chunks, in the order they were stored."""
        tables = {
            r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
        if "metric_rows" in tables:  # a development version kept a row per entry
            self._chunk_entry_rows()
        if "metrics" not in tables:
            self._conn.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('metric_summary_v2', '1')"
            )
            return
        self._summarise_older_points()
        with self._tx() as db:
            rows = db.execute(
                "SELECT run_id, name, step, time, timestamp, value FROM metrics ORDER BY rowid"
            )
            self._rechunk(
                db,
                ((run, (name,), step, t, stamp, [math.nan if v is None else v])
                 for run, name, step, t, stamp, v in rows),
            )  # fmt: skip
            db.execute("DROP TABLE metrics")

    def _chunk_entry_rows(self) -> None:
        with self._tx() as db:
            rows = db.execute(
                "SELECT run_id, step, time, timestamp, shape, vals FROM metric_rows ORDER BY rowid"
            )
            self._rechunk(
                db,
                ((run, self._names_of(db, shape), step, t, stamp, points.unpack("d", blob))
                 for run, step, t, stamp, shape, blob in rows),
            )  # fmt: skip
            db.execute("DROP TABLE metric_rows")

    def _rechunk(
        self,
        db: sqlite3.Connection,
        rows: Iterable[tuple[str, tuple[str, ...], Any, Any, Any, Any]],
    ) -> None:
        """Points kept by an older version, ``(run, names, step, time, timestamp, values)`` in
        the order they were stored, as chunks (one batch per run)."""
        batches: dict[str, points.Batch] = {}
        for run_id, names, step, t, stamp, values in rows:
            batches.setdefault(run_id, points.Batch()).add(
                names, step, math.nan if t is None else t, stamp or "", values
            )
        for run_id, batch in batches.items():
            self._insert_chunks(db, run_id, batch)

    def _summarise_older_points(self) -> None:
        """Fill the summaries of a database written before they were kept (once)."""
        done = self._conn.execute("SELECT 1 FROM meta WHERE key = 'metric_summary_v2'").fetchone()
        if done is not None:
            return
        with self._conn:
            self._conn.execute("DELETE FROM metric_summary")
            self._conn.execute("DELETE FROM metric_envelope")
            self._conn.execute(
                "INSERT INTO metric_envelope (run_id, name, slice, lo, hi, x0, x1) "
                "SELECT run_id, name, step >> ?, MIN(value), MAX(value), MIN(step), MAX(step) "
                "FROM metrics WHERE value IS NOT NULL GROUP BY run_id, name, step >> ?",
                (_SLICE_BITS, _SLICE_BITS),
            )
            self._conn.execute(
                "INSERT INTO metric_summary (run_id, name, n, finite, lo, hi, total, step, last) "
                "SELECT m.run_id, m.name, COUNT(*), COUNT(m.value), MIN(m.value), MAX(m.value), "
                "TOTAL(m.value), MAX(m.step), (SELECT value FROM metrics l WHERE l.run_id = "
                "m.run_id AND l.name = m.name ORDER BY l.step DESC, l.rowid DESC LIMIT 1) "
                "FROM metrics m GROUP BY m.run_id, m.name"
            )
            self._conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('metric_summary_v2', '1')"
            )

    @staticmethod
    def _summarise(db: sqlite3.Connection, run_id: str, batch: points.Batch) -> None:
        """Add a batch to the run's summaries and envelopes (inside the batch's transaction:
        both or neither)."""
        summary, slices = points.summarise(batch, _SLICE_BITS)
        db.executemany(
            "INSERT INTO metric_envelope (run_id, name, slice, lo, hi, x0, x1) "
            "VALUES (?,?,?,?,?,?,?) ON CONFLICT (run_id, name, slice) DO UPDATE SET "
            "lo = MIN(lo, excluded.lo), hi = MAX(hi, excluded.hi), "
            "x0 = MIN(x0, excluded.x0), x1 = MAX(x1, excluded.x1)",
            [(run_id, *k, *e) for k, e in slices.items()],
        )
        db.executemany(
            "INSERT INTO metric_summary (run_id, name, n, finite, lo, hi, total, step, last) "
            "VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT (run_id, name) DO UPDATE SET "
            "n = n + excluded.n, finite = finite + excluded.finite, "
            "lo = CASE WHEN lo IS NULL THEN excluded.lo WHEN excluded.lo IS NULL THEN lo "
            "ELSE MIN(lo, excluded.lo) END, "
            "hi = CASE WHEN hi IS NULL THEN excluded.hi WHEN excluded.hi IS NULL THEN hi "
            "ELSE MAX(hi, excluded.hi) END, "
            "total = total + excluded.total, "
            "last = CASE WHEN excluded.step >= step THEN excluded.last ELSE last END, "
            "step = MAX(step, excluded.step)",
            [(run_id, name, *s) for name, s in summary.items()],
        )

    def _metric_summary(self, db: sqlite3.Connection, run_id: str) -> dict[str, Any]:
        rows = db.execute(
            "SELECT name, n, finite, lo, hi, total, step, last FROM metric_summary "
            "WHERE run_id = ? ORDER BY name",
            (run_id,),
        ).fetchall()
        return {
            r["name"]: {
                "count": r["n"],
                "min": r["lo"],
                "max": r["hi"],
                "average": r["total"] / r["finite"] if r["finite"] else None,
                "last": r["last"],
                "step": r["step"],
            }
            for r in rows
        }

    def _run_api(self, db: sqlite3.Connection, row: sqlite3.Row, metrics: bool) -> dict[str, Any]:
        doc = json.loads(row["doc"])
        started, endtime = _epoch(doc.get("started")), _epoch(doc.get("endtime"))
        runtime = None
        if started is not None:
            end = endtime if endtime is not None else time.time()
            runtime = _format_duration(max(0.0, end - started))
        return {
            "id": row["id"],
            "name": row["name"],
            "status": row["status"],
            "folder": row["folder"],
            "description": doc.get("description"),
            "tags": doc.get("tags", []),
            "metadata": doc.get("metadata", {}),
            "ttl": doc.get("ttl"),
            "heartbeat_timeout": doc.get("heartbeat_timeout"),
            "notifications": doc.get("notifications", {"state": "none"}),
            "visibility": doc.get("visibility"),
            "alerts": doc.get("alerts", []),
            "created": format_time(row["created"]),
            "modified": format_time(row["modified"]),
            "started": format_time(started),
            "endtime": format_time(endtime),
            "runtime": runtime,
            "system": doc.get("system", {}),
            "user": row["owner"],
            "starred": doc.get("starred", False),
            "metrics": self._metric_summary(db, row["id"]) if metrics else {},
            "events": {},
            # numeric epochs for the age-window filters; dropped before serving
            "_created": row["created"],
            "_started": started,
            "_endtime": endtime,
            "_modified": row["modified"],
        }

    def get_run(self, who: Identity, run_id: str) -> dict[str, Any]:
        self.sweep()
        with self._read() as db:
            return _public(self._run_api(db, self._load_run(db, who, run_id), metrics=True))

    def list_runs(
        self,
        who: Identity,
        predicate: Predicate,
        *,
        sorting: Sequence[Mapping[str, Any]] = (),
        start: int = 0,
        count: int | None = None,
        metrics: bool = True,
    ) -> tuple[list[dict[str, Any]], int]:
        self.sweep()
        # Metric summaries are the costly part of a run: made for every run only when a filter
        # or the sorting reads them, else only for the page served.
        fields = getattr(predicate, "fields", None)
        keys = [str(spec.get("id", "")) for spec in sorting]
        early = metrics and (
            fields is None or any(k.startswith("metrics") for k in (*fields, *keys))
        )
        with self._read() as db:
            rows = db.execute(
                f"SELECT * FROM runs r WHERE {_VISIBLE} ORDER BY r.created",  # noqa: S608
                {"user": who.user, "tenant": who.tenant},
            ).fetchall()
            runs = _formatted(rows, lambda r: self._run_api(db, r, metrics=early))
            found = [r for r in runs if predicate(r, who.user)]
            self._sort_runs(found, sorting)
            page = _page(found, start, count)
            if metrics and not early:
                for run in page:
                    run["metrics"] = self._metric_summary(db, run["id"])
        return [_public(r) for r in page], len(found)

    @staticmethod
    def _sort_runs(found: list[dict[str, Any]], sorting: Sequence[Mapping[str, Any]]) -> None:
        for spec in reversed(list(sorting)):
            key = str(spec.get("id", "created"))
            numeric = {
                "created": "_created",
                "started": "_started",
                "endtime": "_endtime",
                "modified": "_modified",
            }.get(key)

            def sort_key(run: dict[str, Any], k: str = key, n: str | None = numeric) -> Any:
                return _sort_key(run[n] if n else _dig(run, k))

            found.sort(key=sort_key, reverse=bool(spec.get("desc", False)))

    def update_run(self, who: Identity, run_id: str, changes: Mapping[str, Any]) -> None:
        """A partial update: only the keys given change; metadata merges into what is there."""
        if not isinstance(changes, Mapping):
            raise _invalid("body", "an update must be a JSON object")
        with self._tx() as db:
            row = self._writable_run(db, who, run_id)
            doc = json.loads(row["doc"])
            cols: dict[str, Any] = {}
            now = time.time()
            for key, value in changes.items():
                if key == "metadata":
                    if not isinstance(value, Mapping):
                        raise _invalid("metadata", "must be an object")
                    doc["metadata"] = deep_merge(doc.get("metadata", {}), value)
                elif key == "tags":
                    doc["tags"] = _check_tags(value)
                    self._ensure_tags(db, who, doc["tags"])
                elif key == "status":
                    if value not in RUN_STATUSES:
                        raise _invalid("status", f"must be one of {', '.join(RUN_STATUSES)}")
                    cols["status"] = value
                    if value == "running":
                        doc["started"] = doc.get("started") or now
                        doc["endtime"] = None
                        cols["last_heartbeat"] = now
                    elif value in cv.FINAL_STATUSES and "endtime" not in changes:
                        doc["endtime"] = now
                elif key in ("endtime", "started"):
                    doc[key] = parse_time(value, key)
                elif key == "visibility":
                    vis = _visibility(value)
                    doc["visibility"] = vis
                    cols["vis_public"] = int(vis["public"])
                    cols["vis_tenant"] = int(vis["tenant"])
                    cols["vis_users"] = json.dumps(vis["users"])
                elif key in ("ttl", "heartbeat_timeout"):
                    doc[key] = _check_ttl(value, key)
                    cols[key] = doc[key]
                elif key == "name":
                    if not isinstance(value, str) or not _NAME_RE.match(value):
                        raise _invalid("name", f"must match {_NAME_RE.pattern}")
                    cols["name"] = value
                elif key == "folder":
                    cols["folder"] = _check_folder(value)
                    self._ensure_folder(db, who, cols["folder"])
                elif key in ("description", "system", "notifications", "alerts"):
                    doc[key] = value
                # other keys (e.g. client-side bookkeeping) are accepted and ignored
            cols["doc"] = json.dumps(doc)
            cols["modified"] = now
            assignments = ", ".join(f"{c} = :{c}" for c in cols)
            db.execute(
                f"UPDATE runs SET {assignments} WHERE id = :id",  # noqa: S608
                {**cols, "id": run_id},
            )

    def delete_run(self, who: Identity, run_id: str) -> None:
        with self._tx() as db:
            self._writable_run(db, who, run_id)
            self._delete_runs(db, [run_id])

    @staticmethod
    def _delete_runs(db: sqlite3.Connection, run_ids: Sequence[str]) -> None:
        rows = [(r,) for r in run_ids]
        db.executemany("DELETE FROM metric_chunks WHERE run_id = ?", rows)
        db.executemany("DELETE FROM metric_summary WHERE run_id = ?", rows)
        db.executemany("DELETE FROM metric_envelope WHERE run_id = ?", rows)
        db.executemany("DELETE FROM events WHERE run_id = ?", rows)
        db.executemany("DELETE FROM runs WHERE id = ?", rows)

    def heartbeat(self, who: Identity, run_id: str) -> None:
        """Record a heartbeat; a run marked lost while its client was cut off comes back."""
        with self._tx() as db:
            row = self._writable_run(db, who, run_id)
            status = "running" if row["status"] == "lost" else row["status"]
            db.execute(
                "UPDATE runs SET last_heartbeat = ?, status = ? WHERE id = ?",
                (time.time(), status, run_id),
            )

    def set_abort(self, who: Identity, run_id: str, reason: str | None) -> None:
        with self._tx() as db:
            row = self._writable_run(db, who, run_id)
            doc = json.loads(row["doc"])
            doc["abort"] = True
            doc["abort_reason"] = reason
            db.execute("UPDATE runs SET doc = ? WHERE id = ?", (json.dumps(doc), run_id))

    def abort_requested(self, who: Identity, run_id: str) -> bool:
        with self._read() as db:
            return bool(json.loads(self._load_run(db, who, run_id)["doc"]).get("abort"))

    def set_starred(self, who: Identity, run_id: str, starred: bool) -> None:
        with self._tx() as db:
            row = self._writable_run(db, who, run_id)
            doc = json.loads(row["doc"])
            doc["starred"] = bool(starred)
            db.execute("UPDATE runs SET doc = ? WHERE id = ?", (json.dumps(doc), run_id))

    # -- metrics and events ---------------------------------------------------------------

    def _run_for_write(self, db: sqlite3.Connection, who: Identity, run_id: Any) -> None:
        if not isinstance(run_id, str):
            raise _invalid("run", "must be a run id")
        try:
            self._writable_run(db, who, run_id)
        except NotFound:
            # The official client expects 422 (a ValueError) for data posted to an unknown run.
            raise _invalid("run", f"no run {run_id!r} you can write to") from None

    def add_metrics(self, who: Identity, run_id: Any, entries: Any) -> int:
        """Store a batch of ``{values, step, time, timestamp}`` entries, all or nothing; the
        number of values stored.

        A batch sent twice is stored twice, as on a Simvue server: clients own exactly-once."""
        batch = points.check_entries(
            entries,
            max_int=_MAX_INT,
            max_seconds=MAX_SECONDS,
            valid_name=_valid_metric_name,
            name_rule=_METRIC_NAME_RE.pattern,
            max_name=cv.MAX_METRIC_NAME_LENGTH,
            invalid=_invalid,
        )
        try:
            with self._tx() as db:
                self._run_for_write(db, who, run_id)
                self._check_metric_count(db, run_id, batch)
                self._insert_chunks(db, run_id, batch)
                self._summarise(db, run_id, batch)
        except BaseException:
            self._forget_shapes()  # ids made in a transaction that did not commit
            raise
        return batch.values

    @staticmethod
    def _check_metric_count(db: sqlite3.Connection, run_id: str, batch: points.Batch) -> None:
        """422 when the batch would take the run past :data:`cv.MAX_METRICS_PER_RUN`
        distinct metric names (every name a run holds is in every listing of it). The
        names already held are looked up only when the run is near the bound."""
        limit = cv.MAX_METRICS_PER_RUN
        names = {name for shape in batch.groups for name in shape}
        held = int(
            db.execute(
                "SELECT COUNT(*) FROM metric_summary WHERE run_id = ?", (run_id,)
            ).fetchone()[0]
        )
        if held + len(names) <= limit:
            return
        wanted = sorted(names)
        for start in range(0, len(wanted), 500):
            part = json.dumps(wanted[start : start + 500], ensure_ascii=False)
            for row in db.execute(
                "SELECT name FROM metric_summary WHERE run_id = ? "
                "AND name IN (SELECT value FROM json_each(?))",
                (run_id, part),
            ):
                names.discard(row[0])
        if held + len(names) > limit:
            example = min(names)
            raise _invalid(
                "metrics",
                f"a run may hold at most {limit} distinct metric names: run {run_id} holds "
                f"{held} and this batch would add {len(names)} new ones (such as "
                f"{example[:100]!r})",
            )

    def _insert_chunks(self, db: sqlite3.Connection, run_id: str, batch: points.Batch) -> None:
        """One chunk per shape of a batch; batches are numbered in the order stored."""
        self._batches += 1
        db.executemany(
            "INSERT INTO metric_chunks (run_id, shape, batch, n, lo, hi, ascending, steps, "
            "times, stamps, positions, vals) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            [
                (run_id, self._shape_id(db, names), self._batches, *group.chunk())
                for names, group in batch.groups.items()
            ],
        )

    def _shape_id(self, db: sqlite3.Connection, names: tuple[str, ...]) -> int:
        """The id of a shape (an entry's metric names, in order), made on first use."""
        found = self._shape_ids.get(names)
        if found is not None:
            return found
        text = json.dumps(names, ensure_ascii=False)
        row = db.execute("SELECT id FROM metric_shapes WHERE names = ?", (text,)).fetchone()
        if row is None:
            cursor = db.execute("INSERT INTO metric_shapes (names) VALUES (?)", (text,))
            shape = int(cursor.lastrowid or 0)
        else:
            shape = int(row[0])
        self._shape_ids[names] = shape
        self._shape_names[shape] = names
        return shape

    def _forget_shapes(self) -> None:
        self._shape_ids = {}
        self._shape_names = {}

    def _positions(self, db: sqlite3.Connection, name: str) -> dict[int, int]:
        """Shape id -> the position of metric ``name`` in it, for every shape holding it."""
        out: dict[int, int] = {}
        for row in db.execute("SELECT id, names FROM metric_shapes"):
            names = self._shape_names.get(row[0])
            if names is None:
                names = tuple(json.loads(row[1]))
            if name in names:
                out[int(row[0])] = names.index(name)
        return out

    def _points_of(
        self, db: sqlite3.Connection, run_id: str, name: str
    ) -> list[tuple[int, Any, Any, float]]:
        """A metric's points in a run, ``(step, time, timestamp, value)`` ordered by step, then
        as they arrived (batch, then position in it)."""
        where = self._positions(db, name)
        if not where:
            return []
        shapes = ",".join(str(k) for k in where)
        chunks = db.execute(
            "SELECT shape, batch, lo, hi, ascending, steps, times, stamps, positions, vals "  # noqa: S608
            f"FROM metric_chunks WHERE run_id = ? AND shape IN ({shapes}) ORDER BY batch, shape",
            (run_id,),
        ).fetchall()
        # Already in order when each chunk is and each starts above the last one's end.
        in_order = True
        top = -1
        for c in chunks:
            in_order = in_order and bool(c[4]) and c[2] > top
            top = max(top, c[3])
        unpack = points.unpack
        out: list[tuple[Any, ...]] = []
        for c in chunks:
            width = len(self._names_of(db, c[0]))
            steps = unpack("q", c[5])
            times = [None if t != t else t for t in unpack("d", c[6])]
            stamps = [s or None for s in c[7].split(points.STAMP_SEPARATOR)]
            values = unpack("d", c[9])[where[c[0]] :: width]
            if in_order:
                out.extend(zip(steps, times, stamps, values, strict=True))
                continue
            batch = c[1]
            positions = unpack("q", c[8])
            out.extend(
                (s, t, m, v, batch, o)
                for s, t, m, v, o in zip(steps, times, stamps, values, positions, strict=True)
            )
        if in_order:
            return out
        out.sort(key=lambda p: (p[0], p[4], p[5]))
        return [p[:4] for p in out]

    def _names_of(self, db: sqlite3.Connection, shape: int) -> tuple[str, ...]:
        names = self._shape_names.get(shape)
        if names is None:
            row = db.execute("SELECT names FROM metric_shapes WHERE id = ?", (shape,)).fetchone()
            names = tuple(json.loads(row[0]))
        return names

    def add_events(self, who: Identity, run_id: Any, entries: Any) -> int:
        if not isinstance(entries, list):
            raise _invalid("events", "must be a list of {message, timestamp, log_level}")
        rows: list[tuple[Any, ...]] = []
        for i, entry in enumerate(entries):
            if not isinstance(entry, Mapping) or not isinstance(entry.get("message"), str):
                raise _invalid(f"events.{i}.message", "must be a string")
            stamp = entry.get("timestamp") or format_time(time.time())
            if not isinstance(stamp, str):
                raise _invalid(f"events.{i}.timestamp", "must be a timestamp string")
            level = entry.get("log_level") or "info"
            if level not in ("debug", "info", "warning", "error", "critical"):
                raise _invalid(f"events.{i}.log_level", "must be debug|info|warning|error|critical")
            rows.append((run_id, entry["message"], level, stamp))
        with self._tx() as db:
            self._run_for_write(db, who, run_id)
            db.executemany(
                "INSERT INTO events (run_id, message, log_level, timestamp) VALUES (?,?,?,?)", rows
            )
        return len(rows)

    def _visible_runs(
        self, db: sqlite3.Connection, who: Identity, run_ids: Sequence[str]
    ) -> list[str]:
        visible = []
        for run_id in run_ids:
            try:
                self._load_run(db, who, run_id)
            except NotFound:
                continue
            visible.append(run_id)
        return visible

    def get_metrics(
        self, who: Identity, run_ids: Sequence[str], names: Sequence[str], xaxis: str
    ) -> dict[str, dict[str, list[dict[str, Any]]]]:
        """Points per run and metric, ordered by step (then arrival); only runs and metrics
        that have points appear."""
        out: dict[str, dict[str, list[dict[str, Any]]]] = {}
        with self._read() as db:
            for run_id in self._visible_runs(db, who, run_ids):
                per_metric: dict[str, list[dict[str, Any]]] = {}
                for name in names:
                    held = self._points_of(db, run_id, name)
                    if held:
                        per_metric[name] = [
                            {"step": step, "time": t, "timestamp": stamp, "value": value}
                            for step, t, stamp, value in held
                        ]
                # A run with none of the metrics asked for is left out: the official client
                # reads the first metric of the first run, and answers "no data" for ``{}``.
                if per_metric:
                    out[run_id] = per_metric
        return out

    def metric_names(self, who: Identity, run_ids: Sequence[str]) -> list[str]:
        with self._read() as db:
            visible = self._visible_runs(db, who, run_ids)
            names: dict[str, None] = {}
            for run_id in visible:
                for r in db.execute(
                    "SELECT name FROM metric_summary WHERE run_id = ? ORDER BY name", (run_id,)
                ):
                    names[str(r["name"])] = None
        return list(names)

    @staticmethod
    def _step_envelope(
        db: sqlite3.Connection, key: tuple[str, str], buckets: int
    ) -> list[tuple[float, float]]:
        """The lowest and highest value per slice of steps, from the kept envelope (slices
        merged so that at most ``buckets`` remain)."""
        rows = db.execute(
            "SELECT lo, hi, x0, x1 FROM metric_envelope WHERE run_id = ? AND name = ? "
            "ORDER BY slice",
            key,
        ).fetchall()
        per = max(1, math.ceil(len(rows) / buckets))
        points: list[tuple[float, float]] = []
        for start in range(0, len(rows), per):
            group = rows[start : start + per]
            points.append((float(group[0]["x0"]), float(min(r["lo"] for r in group))))
            points.append((float(group[-1]["x1"]), float(max(r["hi"] for r in group))))
        return points

    def plot_points(
        self, who: Identity, run_id: str, names: Sequence[str], xaxis: str, buckets: int = 1000
    ) -> dict[str, list[tuple[float, float]]]:
        """What a plot of each metric needs: every ``(x, value)`` point up to ``2 * buckets``
        of them; beyond, an envelope, the lowest and the highest value in each of ``buckets``
        equal slices of x. By step, the envelope is the one kept as points arrive, so a run
        page costs about the same whether a metric holds a thousand points or a million; by
        time, it is computed from every point. NaN and points without an x are left out
        (nothing to draw)."""
        column = "step" if xaxis == "step" else "time"
        out: dict[str, list[tuple[float, float]]] = {}
        with self._read() as db:
            if not self._visible_runs(db, who, [run_id]):
                return out
            for name in names:
                key = (run_id, name)
                held = db.execute(
                    "SELECT n FROM metric_summary WHERE run_id = ? AND name = ?", key
                ).fetchone()
                if held is None:
                    continue
                if held["n"] > 2 * buckets and column == "step":
                    out[name] = self._step_envelope(db, key, buckets)
                    continue
                index = 0 if column == "step" else 1
                drawn = [
                    (float(p[index]), p[3])
                    for p in self._points_of(db, run_id, name)
                    if p[index] is not None and p[3] == p[3]
                ]
                out[name] = drawn if len(drawn) <= 2 * buckets else _envelope(drawn, buckets)
        return out

    def get_events(
        self, who: Identity, run_id: str, predicate: Predicate, start: int, count: int | None
    ) -> tuple[list[dict[str, Any]], int]:
        with self._read() as db:
            self._load_run(db, who, run_id)
            rows = db.execute(
                "SELECT message, log_level, timestamp FROM events WHERE run_id = ? ORDER BY seq",
                (run_id,),
            ).fetchall()
        events = [
            {"message": r["message"], "log_level": r["log_level"], "timestamp": r["timestamp"]}
            for r in rows
        ]
        found = [e for e in events if predicate({"event": e, **e}, who.user)]
        return _page(found, start, count), len(found)

    # -- statistics -----------------------------------------------------------------------

    def run_stats(self, who: Identity) -> dict[str, int]:
        """How many of the caller's runs are in each status."""
        self.sweep()
        with self._read() as db:
            rows = db.execute(
                "SELECT status, COUNT(*) AS n FROM runs WHERE owner = ? GROUP BY status",
                (who.user,),
            ).fetchall()
        counts = dict.fromkeys(RUN_STATUSES, 0)
        for row in rows:
            if row["status"] in counts:
                counts[row["status"]] = int(row["n"])
        return counts

    def user_stats(self, who: Identity) -> dict[str, int]:
        """What the caller holds: runs, tags, metric values and events (alerts, files and
        their volume are always 0: the server stores none)."""
        with self._read() as db:

            def one(sql: str) -> int:
                return int(db.execute(sql, (who.user,)).fetchone()[0])

            owned = "SELECT id FROM runs WHERE owner = ?"
            return {
                "runs": one("SELECT COUNT(*) FROM runs WHERE owner = ?"),
                "alerts": 0,
                "tags": one("SELECT COUNT(*) FROM tags WHERE owner = ?"),
                "files": 0,
                "volume": 0,
                "events": one(f"SELECT COUNT(*) FROM events WHERE run_id IN ({owned})"),  # noqa: S608
                "metrics": one(
                    f"SELECT COALESCE(SUM(n), 0) FROM metric_summary WHERE run_id IN ({owned})"  # noqa: S608
                ),
            }

    # -- lifecycle ------------------------------------------------------------------------

    def sweep(self, *, force: bool = False) -> None:
        """Mark silent running runs ``lost`` and remove runs past their retention period.

        Called by a background thread and lazily before reads (at most 4 times a second), so
        reads see lost runs promptly whatever the thread's period.
        """
        now = time.time()
        if not force and now - self._last_sweep < 0.25:
            return
        # Before a read, wait only briefly for a busy writer: the background sweep follows.
        if not self._lock.acquire(timeout=-1 if force else 0.2):
            return
        try:
            self._sweep(now)
        except sqlite3.Error as exc:
            # A full disk must not fail reads too: the sweep is tried again later.
            if force or not self.note_write_error(exc):
                raise
        finally:
            self._lock.release()

    def _sweep(self, now: float) -> None:
        self._last_sweep = now
        with self._tx() as db:
            db.execute("DELETE FROM used_codes WHERE expires < ?", (now,))
            db.execute("DELETE FROM sessions WHERE expires < ?", (now,))
            db.execute(
                "UPDATE runs SET status = 'lost', modified = :now WHERE status = 'running' "
                "AND heartbeat_timeout IS NOT NULL "
                "AND COALESCE(last_heartbeat, created) + heartbeat_timeout < :now",
                {"now": now},
            )
            expired = db.execute(
                "SELECT id FROM runs WHERE ttl IS NOT NULL AND created + ttl < ?", (now,)
            ).fetchall()
            if expired:
                self._delete_runs(db, [str(r["id"]) for r in expired])


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


FOLDER_SORT_COLUMNS = ("created", "modified", "path", "name", "metadata.<key>")
"""What folders can be sorted on (the official client allows created, modified, path and
metadata.*)."""
TAG_SORT_COLUMNS = ("created", "name")
"""What tags can be sorted on (as the official client allows)."""


def _sort_items(
    items: list[dict[str, Any]],
    sorting: Sequence[Mapping[str, Any]],
    allowed: Sequence[str],
    what: str,
) -> None:
    """Sort ``items`` in place by each ``{id, desc}`` of ``sorting``, first one first; a
    column not in ``allowed`` (``metadata.<key>`` standing for any metadata key) answers 400
    naming it. Times sort by their numeric ``_<column>`` when the item has one."""
    for spec in sorting:
        column = spec.get("id")
        if not isinstance(column, str) or not (
            column in allowed
            or ("metadata.<key>" in allowed and column.startswith("metadata.") and column[9:])
        ):
            raise StoreError(
                f"query parameter 'sorting': {what} can be sorted by "
                f"{', '.join(allowed)}, not {str(column)[:100]!r}"
            )
    for spec in reversed(list(sorting)):
        column = str(spec["id"])

        def key(item: dict[str, Any], c: str = column) -> tuple[int, Any]:
            return _sort_key(item[f"_{c}"] if f"_{c}" in item else _dig(item, c))

        items.sort(key=key, reverse=bool(spec.get("desc", False)))


def _page(items: list[dict[str, Any]], start: int, count: int | None) -> list[dict[str, Any]]:
    start = max(0, start)
    if count is None or count <= 0:
        return items[start:]
    return items[start : start + count]


def _formatted(rows: Iterable[sqlite3.Row], api: Any) -> list[dict[str, Any]]:
    """Rows as API objects; a row that cannot be formatted (damaged by hand, or written by an
    older version) is logged and left out, so it never fails a listing."""
    out: list[dict[str, Any]] = []
    for row in rows:
        try:
            out.append(api(row))
        except Exception:
            _LOG.exception("skipped a damaged row %r in a listing", row["id"])
    return out


def _epoch(value: Any) -> float | None:
    """A stored time as a finite number, None otherwise (never raises)."""
    return finite_number(value)


def _public(run: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in run.items() if not k.startswith("_")}


def _dig(obj: Mapping[str, Any], dotted: str) -> Any:
    current: Any = obj
    for part in dotted.split("."):
        if not isinstance(current, Mapping):
            return None
        current = current.get(part)
    return current


def _sort_key(value: Any) -> tuple[int, Any]:
    if value is None:
        return (2, "")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, value)
    return (1, str(value))


def _format_duration(seconds: float) -> str | None:
    if not math.isfinite(seconds):
        return None
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{int(hours):02d}:{int(minutes):02d}:{secs:09.6f}"


def _envelope(drawn: Sequence[tuple[float, float]], buckets: int) -> list[tuple[float, float]]:
    """The lowest and highest value in each of ``buckets`` equal slices of x, drawn at the
    slice's first and last x."""
    xs = [x for x, _ in drawn]
    lo_x, hi_x = min(xs), max(xs)
    width = (hi_x - lo_x) / buckets or 1.0
    slices: dict[int, list[float]] = {}
    for x, value in drawn:
        b = min(int((x - lo_x) / width), buckets - 1)
        s = slices.get(b)
        if s is None:
            slices[b] = [x, x, value, value]
        else:
            s[0], s[1] = min(s[0], x), max(s[1], x)
            s[2], s[3] = min(s[2], value), max(s[3], value)
    out: list[tuple[float, float]] = []
    for b in sorted(slices):
        x0, x1, lo, hi = slices[b]
        out.append((x0, lo))
        out.append((x1, hi))
    return out


def _valid_metric_name(name: str) -> bool:
    return len(name) <= cv.MAX_METRIC_NAME_LENGTH and _METRIC_NAME_RE.fullmatch(name) is not None


# SQLite stores NaN as NULL. Every point has a value, so NULL can only mean NaN; aggregates
# (min, max, average) then skip NaN points, which is what a plot of them wants anyway.
def _nan_safe(value: float) -> float | None:
    return None if math.isnan(value) else value


def _nan_back(value: float | None) -> float:
    return math.nan if value is None else value
