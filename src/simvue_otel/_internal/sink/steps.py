"""Instrument steps: an export's process-local counts numbered as its run's steps.

Instrument points are numbered by the mapping process alone, which may not be the first to
write their run (a restarted bridge, another replica, a reconnect); see conventions §7.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..client import SimvueClient
from ..mapping.records import MetricRecord
from .run_index import RunIndex

__all__ = ["StepNumbering"]


class StepNumbering:
    """Each count's offset into its run's steps (kept in the run index), whether its times
    are re-measured from the run's start, and each run's next free step."""

    def __init__(self, client: SimvueClient, index: RunIndex) -> None:
        self.client = client
        self.index = index
        self._bases: dict[tuple[str, str], tuple[int, bool]] = {}
        self._next_step: dict[str, int] = {}

    def numbered(
        self,
        key: str,
        run_id: str,
        points: Sequence[MetricRecord],
        *,
        created: bool,
        started: Any,
    ) -> list[Any]:
        """Instrument points with the run's steps instead of their process-local counts.

        Each count (one mapping process's exports for one run) gets an offset the first time
        it is uploaded: 0 for a run this uploader created, else the step after the highest the
        server holds for those metrics (or after what this process already uploaded). The
        offset is written to the run index before anything is sent with it, so a later process
        uploading the rest of that count's spool numbers it alike and reconciliation still
        recognises what was stored. A count that continues a run started elsewhere also
        measures its points' times from the run's start as the server has it, not from what
        its own process saw first.
        """
        out: list[MetricRecord] = []
        nxt = self._next_step.get(key)
        for point in points:
            counter = point.counter
            if counter is None:
                out.append(point)
                continue
            entry = self._bases.get((key, counter)) or self.index.step_base(key, counter)
            if entry is None:
                if nxt is None:
                    nxt = 0 if created else self._held_next(run_id, points)
                entry = (nxt - point.step, nxt > 0)
                self.index.put_step_base(key, counter, *entry)
            self._bases[(key, counter)] = entry
            base, retimed = entry
            step = base + point.step
            nxt = step + 1 if nxt is None or step >= nxt else nxt
            elapsed = point.time
            if retimed and isinstance(started, float):
                elapsed = max(0.0, point.timestamp - started)
            out.append(MetricRecord(point.run, point.values, step, elapsed, point.timestamp))
        if nxt is not None:
            self._next_step[key] = nxt
        return out

    def _held_next(self, run_id: str, points: Sequence[MetricRecord]) -> int:
        """The step after the highest the server holds for these points' metrics (0: none)."""
        names = sorted({name for p in points if p.counter is not None for name in p.values})
        steps = [
            point.get("step")
            for held in self.client.read_metrics(run_id, names)[0].values()
            for point in held
        ]
        return max((s + 1 for s in steps if isinstance(s, int)), default=0)
