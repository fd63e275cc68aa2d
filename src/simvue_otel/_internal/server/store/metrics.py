"""Metric points: stored a batch at a time, all or nothing, read back per run and metric, and
drawn (an envelope past a few thousand points). Every field of every entry is checked before
any is kept: integers must fit SQLite's 64 bits and times must be ones that can be formatted
back."""

from __future__ import annotations

import json
import math
import re
import sqlite3
from collections.abc import Sequence
from typing import Any

from ... import conventions as cv
from .. import points
from ..auth import Identity
from .access import RunAccess
from .chunks import Chunks
from .common import MAX_SECONDS
from .errors import invalid

_MAX_INT = 2**63 - 1
"""SQLite integers are signed 64-bit; larger Python ints cannot be stored as integers."""
_METRIC_NAME_RE = re.compile(cv.METRIC_NAME_PATTERN)


def _valid_metric_name(name: str) -> bool:
    return len(name) <= cv.MAX_METRIC_NAME_LENGTH and _METRIC_NAME_RE.fullmatch(name) is not None


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


class Metrics(RunAccess, Chunks):
    """Metric points of runs, with their summaries and plots."""

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
            invalid=invalid,
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
            raise invalid(
                "metrics",
                f"a run may hold at most {limit} distinct metric names: run {run_id} holds "
                f"{held} and this batch would add {len(names)} new ones (such as "
                f"{example[:100]!r})",
            )

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
