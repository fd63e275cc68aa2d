"""Tags: made on their own or as a run names them, listed, read, updated, and deleted (from
the runs that hold them too)."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..auth import Identity
from ..filters import Predicate
from .common import format_time, formatted, new_id, paged, sort_items
from .db import Database
from .errors import Conflict, NotFound, invalid

TAG_SORT_COLUMNS = ("created", "name")
"""What tags can be sorted on (as the official client allows)."""


def _optional_text(body: Mapping[str, Any], key: str, default: Any = None) -> Any:
    """``body[key]`` when it is a string or null (``default`` when absent), else 422."""
    value = body.get(key, default)
    if value is not None and not isinstance(value, str):
        raise invalid(key, "must be a string or null")
    return value


def ensure_tags(db: sqlite3.Connection, who: Identity, names: Iterable[str]) -> None:
    now = time.time()
    db.executemany(
        "INSERT OR IGNORE INTO tags (id, owner, name, colour, description, created) "
        "VALUES (?, ?, ?, NULL, NULL, ?)",
        [(new_id(), who.user, name, now) for name in names],
    )


class Tags(Database):
    """The tags of each user."""

    def create_tag(self, who: Identity, body: Mapping[str, Any]) -> tuple[str, bool]:
        if not isinstance(body, Mapping):
            raise invalid("body", "a tag must be a JSON object {name, colour, description}")
        name = body.get("name")
        if not isinstance(name, str) or not name:
            raise invalid("name", "a tag needs a non-empty name")
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
        found = [t for t in formatted(rows, self._tag_api) if predicate(t, who.user)]
        sort_items(found, sorting, TAG_SORT_COLUMNS, "tags")
        return paged(found, start, count), len(found)

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
            raise invalid("body", "an update must be a JSON object")
        current = self.get_tag(who, tag_id)
        name = changes.get("name", current["name"])
        if not isinstance(name, str) or not name:
            raise invalid("name", "a tag needs a non-empty name")
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
