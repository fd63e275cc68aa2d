"""Metric points kept in chunks (see ``points.py``): shapes, batches, and the summaries and
envelopes kept as points arrive, shared by the metric endpoints and the upgrade of older
databases."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from .. import points
from .db import Database

SLICE_BITS = 10
"""Steps per envelope slice: 2**10 = 1,024 (a million steps are a thousand slices)."""


class Chunks(Database):
    """The chunk tables, with the shape ids cached and the batches numbered."""

    def _open_chunks(self) -> None:
        """No shape ids cached yet; batches are numbered on from the last one stored."""
        self._shape_ids: dict[tuple[str, ...], int] = {}
        self._shape_names: dict[int, tuple[str, ...]] = {}
        last = self._conn.execute("SELECT MAX(batch) FROM metric_chunks").fetchone()[0]
        self._batches = int(last or 0)  # batches are numbered in the order stored

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

    @staticmethod
    def _summarise(db: sqlite3.Connection, run_id: str, batch: points.Batch) -> None:
        """Add a batch to the run's summaries and envelopes (inside the batch's transaction:
        both or neither)."""
        summary, slices = points.summarise(batch, SLICE_BITS)
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


def metric_summary(db: sqlite3.Connection, run_id: str) -> dict[str, Any]:
    """Per metric of the run: count, min, max, average, last value and its step."""
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
