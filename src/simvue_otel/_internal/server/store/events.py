"""Events (log lines) of a run: stored a batch at a time, read back in order and filtered."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from ..auth import Identity
from ..filters import Predicate
from .access import RunAccess
from .common import format_time, paged
from .errors import invalid


class Events(RunAccess):
    """The events of runs."""

    def add_events(self, who: Identity, run_id: Any, entries: Any) -> int:
        if not isinstance(entries, list):
            raise invalid("events", "must be a list of {message, timestamp, log_level}")
        rows: list[tuple[Any, ...]] = []
        for i, entry in enumerate(entries):
            if not isinstance(entry, Mapping) or not isinstance(entry.get("message"), str):
                raise invalid(f"events.{i}.message", "must be a string")
            stamp = entry.get("timestamp") or format_time(time.time())
            if not isinstance(stamp, str):
                raise invalid(f"events.{i}.timestamp", "must be a timestamp string")
            level = entry.get("log_level") or "info"
            if level not in ("debug", "info", "warning", "error", "critical"):
                raise invalid(f"events.{i}.log_level", "must be debug|info|warning|error|critical")
            rows.append((run_id, entry["message"], level, stamp))
        with self._tx() as db:
            self._run_for_write(db, who, run_id)
            db.executemany(
                "INSERT INTO events (run_id, message, log_level, timestamp) VALUES (?,?,?,?)", rows
            )
        return len(rows)

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
        return paged(found, start, count), len(found)
