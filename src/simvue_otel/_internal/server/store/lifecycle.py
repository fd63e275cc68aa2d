"""The sweep: silent running runs marked lost, runs past their retention period removed,
expired web sessions and sign-in links forgotten."""

from __future__ import annotations

import sqlite3
import time

from .db import Database
from .schema import delete_runs


class Lifecycle(Database):
    """The sweep, run by the server's background thread and lazily before reads."""

    _last_sweep = 0.0
    """When the last sweep began (epoch seconds); 0 before the first."""

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
                delete_runs(db, [str(r["id"]) for r in expired])
