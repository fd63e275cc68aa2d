"""Run key → server id, remembered on disk beside the spool of one server.

A Simvue server does not deduplicate runs: a run POSTed twice is two runs. So every process
that learns which server run belongs to a run key (by creating it, or by finding it with a
metadata filter) writes it down here, and every process looks here first. ``simvue-otel send``,
a later online process adopting a spool, a restarted bridge and the process that reconnects to
a queued run all find the run this way, with the server's own filter as the fallback.

One small file per run key (named by a hash of the key, so any key string is safe: no name
can lead out of the directory), replaced atomically; readers never see half a file. A missing
or unreadable directory only costs the index: the server filter still finds the run.

Processes sharing the index find or create a run one at a time (:meth:`RunIndex.creating`, a
``flock`` per key): two uploaders of the same run (a bridge and a `send`, two bridges sharing a
spool) would otherwise both miss it and both create it. The directory is 0700, its files 0600,
and no link in it is followed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from .files import open_private, private_dir, read_private, replace_private

__all__ = ["RunIndex", "run_index_for"]

_LOG = logging.getLogger("simvue_otel.sink")


def _replace(path: Path, entry: dict[str, object]) -> None:
    """Write ``entry`` as the JSON content of ``path`` atomically (readers see the old file
    or the new one, never half of one)."""
    private_dir(path.parent)
    replace_private(path, json.dumps(entry).encode("utf-8"))


def _read(path: Path) -> object:
    return json.loads(read_private(path).decode("utf-8"))


class RunIndex:
    """A durable ``run key → server run id`` map (in memory only when ``directory`` is None)."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self._known: dict[str, str] = {}
        self._lock = threading.Lock()

    def _path(self, key: str) -> Path | None:
        if self.directory is None:
            return None
        return self.directory / hashlib.sha256(key.encode()).hexdigest()[:40]

    def get(self, key: str) -> str | None:
        """The server id recorded for ``key`` (by this process or any other), or None."""
        with self._lock:
            known = self._known.get(key)
        if known is not None:
            return known
        path = self._path(key)
        if path is None:
            return None
        try:
            entry = _read(path)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            _LOG.warning("run index entry %s is unreadable (%s); asking the server", path, exc)
            return None
        if not isinstance(entry, dict) or entry.get("key") != key or not entry.get("id"):
            return None
        run_id = str(entry["id"])
        with self._lock:
            self._known[key] = run_id
        return run_id

    def put(self, key: str, run_id: str) -> None:
        """Record that ``key`` is server run ``run_id`` (best effort on disk)."""
        with self._lock:
            if self._known.get(key) == run_id:
                return
            self._known[key] = run_id
        path = self._path(key)
        if path is None:
            return
        try:
            _replace(path, {"key": key, "id": run_id})
        except OSError as exc:
            _LOG.warning("cannot record run %s in %s (%s)", run_id, self.directory, exc)

    def step_base(self, key: str, counter: str) -> tuple[int, bool] | None:
        """The step offset (and whether times are re-measured) recorded for one count of
        instrument exports of run ``key``; None when no process has uploaded it yet."""
        path = self._path(key)
        if path is None:
            return None
        try:
            entry = _read(path.with_suffix(".steps"))
            assert isinstance(entry, dict)
            base, retimed = entry["bases"][counter]
        except (OSError, ValueError, KeyError, TypeError, AssertionError):
            return None
        if entry.get("key") != key or not isinstance(base, int):
            return None
        return base, bool(retimed)

    def put_step_base(self, key: str, counter: str, base: int, retimed: bool) -> None:
        """Record a count's offset before anything numbered with it is sent (best effort)."""
        path = self._path(key)
        if path is None:
            return
        steps = path.with_suffix(".steps")
        with self._lock:
            try:
                entry = _read(steps)
                assert isinstance(entry, dict)
                bases = entry["bases"] if entry.get("key") == key else {}
            except (OSError, ValueError, KeyError, TypeError, AttributeError, AssertionError):
                bases = {}
            if not isinstance(bases, dict):
                bases = {}
            bases[counter] = [base, retimed]
            try:
                _replace(steps, {"key": key, "bases": bases})
            except OSError as exc:
                _LOG.warning("cannot record step offsets in %s (%s)", self.directory, exc)

    @contextlib.contextmanager
    def creating(self, key: str, wait: float = 60.0) -> Iterator[None]:
        """Hold the right to find or create the run ``key`` (a ``flock`` on its lock file,
        shared by every process using this directory), so one creates it and the others find
        it in the index. After ``wait`` seconds (a holder stuck on a slow server) it goes on
        without, as before the lock existed; an unusable directory costs only the lock."""
        path = self._path(key)
        fd: int | None = None
        if path is not None:
            try:
                private_dir(path.parent)
                fd = open_private(path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT)
            except OSError as exc:
                _LOG.warning("cannot lock run %s in %s (%s)", key, self.directory, exc)
        try:
            if fd is not None:
                deadline = time.monotonic() + wait
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() > deadline:
                            _LOG.warning("run %s stayed locked for %.0f s; going on", key, wait)
                            break
                        time.sleep(0.05)
            yield
        finally:
            if fd is not None:
                os.close(fd)

    def forget(self, key: str) -> None:
        """Drop ``key`` (its run was deleted on the server)."""
        with self._lock:
            self._known.pop(key, None)
        path = self._path(key)
        if path is not None:
            for stale in (path, path.with_suffix(".steps")):
                with contextlib.suppress(OSError):
                    stale.unlink()


def run_index_for(spool_dir: Path) -> RunIndex:
    """The run index kept beside a server's spool (what ``send`` and later processes read)."""
    return RunIndex(spool_dir / "server_ids")
