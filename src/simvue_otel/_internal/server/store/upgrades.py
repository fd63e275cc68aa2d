"""A database written by an older version, brought up to date once when it is opened."""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterable
from typing import Any

from .. import points
from .chunks import SLICE_BITS, Chunks


class Upgrades(Chunks):
    """The steps from each older layout to the current one; each does nothing when done."""

    def _upgrade_tables(self) -> None:
        """Columns added to tables since a database was made."""
        columns = {r["name"] for r in self._conn.execute("PRAGMA table_info(users)")}
        if "tokens_after" not in columns:  # a database made before revocation existed
            self._conn.execute("ALTER TABLE users ADD COLUMN tokens_after REAL")

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
                (SLICE_BITS, SLICE_BITS),
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
