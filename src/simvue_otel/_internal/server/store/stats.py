"""Statistics of a user's objects, as the official client's ``Stats`` reads them."""

from __future__ import annotations

from ..auth import Identity
from .common import RUN_STATUSES
from .lifecycle import Lifecycle


class Statistics(Lifecycle):
    """Counts of the caller's runs and objects."""

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
