"""Who may read and write a run: the rule every resource that keeps rows per run goes through
(another user's private run reads exactly like a missing one)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from ..auth import Identity
from .db import Database
from .errors import Forbidden, NotFound, invalid

# Visibility of runs, in SQL: owner, public, same tenant when shared with it, or named user.
VISIBLE = (
    "(r.owner = :user OR r.vis_public = 1 OR (r.vis_tenant = 1 AND r.tenant = :tenant) "
    "OR EXISTS (SELECT 1 FROM json_each(r.vis_users) WHERE json_each.value = :user))"
)


class RunAccess(Database):
    """Finding a run as the caller may see it, and may write to it."""

    def _load_run(self, db: sqlite3.Connection, who: Identity, run_id: str) -> sqlite3.Row:
        row = db.execute(
            f"SELECT * FROM runs r WHERE r.id = :id AND {VISIBLE}",  # noqa: S608
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

    def _run_for_write(self, db: sqlite3.Connection, who: Identity, run_id: Any) -> None:
        if not isinstance(run_id, str):
            raise invalid("run", "must be a run id")
        try:
            self._writable_run(db, who, run_id)
        except NotFound:
            # The official client expects 422 (a ValueError) for data posted to an unknown run.
            raise invalid("run", f"no run {run_id!r} you can write to") from None

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
