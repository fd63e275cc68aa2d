"""Folders and tags, the ways a user groups runs.

Folders are made with their missing parents (by path), listed, read, updated, and deleted with
their subfolders and runs; tags are made on their own or as a run names them, and deleting
one takes it off the runs that hold it."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..auth import Identity
from ..filters import Predicate
from .common import (
    as_epoch,
    check_folder,
    check_tags,
    check_ttl,
    format_time,
    formatted,
    merged_metadata,
    new_id,
    paged,
    public_fields,
    sort_items,
)
from .db import Database
from .errors import Conflict, NotFound, invalid
from .schema import delete_runs

FOLDER_SORT_COLUMNS = ("created", "modified", "path", "name", "metadata.<key>")
"""What folders can be sorted on (the official client allows created, modified, path and
metadata.*)."""


def ensure_folder(db: sqlite3.Connection, who: Identity, path: str) -> tuple[str, bool]:
    """The folder ``path`` and its missing parents (walked up in a loop, not recursion,
    then created from the top down); returns (id, created)."""
    missing: list[str] = []
    current = path
    while True:
        row = db.execute(
            "SELECT id FROM folders WHERE owner = ? AND path = ?", (who.user, current)
        ).fetchone()
        if row is not None and not missing:
            return str(row["id"]), False
        if row is not None:
            break
        missing.append(current)
        if current == "/":
            break
        current = current.rsplit("/", 1)[0] or "/"
    now = time.time()
    folder_id = ""
    for folder in reversed(missing):
        folder_id = new_id()
        doc: dict[str, Any] = {
            "description": None,
            "tags": [],
            "metadata": {},
            "starred": False,
            "ttl": None,
            "name": folder.rsplit("/", 1)[-1] or "/",
        }
        db.execute(
            "INSERT INTO folders (id, owner, tenant, path, doc, created) VALUES (?,?,?,?,?,?)",
            (folder_id, who.user, who.tenant, folder, json.dumps(doc), now),
        )
    return folder_id, True


class Folders(Database):
    """The folders of each user."""

    def create_folder(self, who: Identity, path: str) -> tuple[str, bool]:
        """Create ``path`` and its missing parents; returns (id, created)."""
        path = check_folder(path, "path")
        with self._tx() as db:
            return ensure_folder(db, who, path)

    def _folder_api(self, row: sqlite3.Row) -> dict[str, Any]:
        doc = json.loads(row["doc"])
        modified = as_epoch(doc.get("modified"))
        if modified is None:
            modified = as_epoch(row["created"])
        return {
            "id": row["id"],
            "path": row["path"],
            "name": doc.get("name"),
            "description": doc.get("description"),
            "tags": doc.get("tags", []),
            "metadata": doc.get("metadata", {}),
            "starred": doc.get("starred", False),
            "ttl": doc.get("ttl"),
            "created": format_time(row["created"]),
            "modified": format_time(modified),
            "user": row["owner"],
            "visibility": {"public": False, "tenant": False, "users": []},
            # numeric epochs for sorting; dropped before serving
            "_created": as_epoch(row["created"]),
            "_modified": modified,
        }

    def list_folders(
        self,
        who: Identity,
        predicate: Predicate,
        start: int = 0,
        count: int | None = None,
        sorting: Sequence[Mapping[str, Any]] = (),
    ) -> tuple[list[dict[str, Any]], int]:
        """The caller's folders, newest first unless ``sorting`` says otherwise (as the
        official client expects: ``Folder.get(count=10)`` must hold a folder just made)."""
        with self._read() as db:
            rows = db.execute(
                "SELECT * FROM folders WHERE owner = ? ORDER BY created DESC, rowid DESC",
                (who.user,),
            ).fetchall()
        found = [f for f in formatted(rows, self._folder_api) if predicate(f, who.user)]
        sort_items(found, sorting, FOLDER_SORT_COLUMNS, "folders")
        return [public_fields(f) for f in paged(found, start, count)], len(found)

    def get_folder(self, who: Identity, folder_id: str) -> dict[str, Any]:
        with self._read() as db:
            row = db.execute(
                "SELECT * FROM folders WHERE id = ? AND owner = ?", (folder_id, who.user)
            ).fetchone()
        if row is None:
            raise NotFound(f"folder {folder_id!r} not found")
        return public_fields(self._folder_api(row))

    def update_folder(self, who: Identity, folder_id: str, changes: Mapping[str, Any]) -> None:
        if not isinstance(changes, Mapping):
            raise invalid("body", "an update must be a JSON object")
        with self._tx() as db:
            row = db.execute(
                "SELECT doc FROM folders WHERE id = ? AND owner = ?", (folder_id, who.user)
            ).fetchone()
            if row is None:
                raise NotFound(f"folder {folder_id!r} not found")
            doc = json.loads(row["doc"])
            for key, value in changes.items():
                if key == "metadata":
                    doc["metadata"] = merged_metadata(doc, value)
                elif key == "tags":
                    doc["tags"] = check_tags(value)
                elif key == "ttl":
                    doc["ttl"] = check_ttl(value, "ttl")
                elif key in ("description", "name", "starred"):
                    doc[key] = value
            doc["modified"] = time.time()
            db.execute("UPDATE folders SET doc = ? WHERE id = ?", (json.dumps(doc), folder_id))

    def delete_folder(
        self, who: Identity, folder_id: str, *, recursive: bool, runs: bool, runs_only: bool
    ) -> dict[str, list[str]]:
        with self._tx() as db:
            row = db.execute(
                "SELECT path FROM folders WHERE id = ? AND owner = ?", (folder_id, who.user)
            ).fetchone()
            if row is None:
                raise NotFound(f"folder {folder_id!r} not found")
            path = str(row["path"])
            prefix = path.rstrip("/") + "/"
            targets = db.execute(
                "SELECT id, path FROM folders WHERE owner = ? AND (path = ? OR "
                "(? AND substr(path, 1, ?) = ?))",
                (who.user, path, recursive, len(prefix), prefix),
            ).fetchall()
            if (
                not recursive
                and db.execute(
                    "SELECT 1 FROM folders WHERE owner = ? AND substr(path, 1, ?) = ? LIMIT 1",
                    (who.user, len(prefix), prefix),
                ).fetchone()
            ):
                raise Conflict(f"folder {path!r} has subfolders: delete with recursive=True")
            paths = [str(t["path"]) for t in targets]
            marks = ",".join("?" * len(paths))
            run_rows = db.execute(
                f"SELECT id FROM runs WHERE owner = ? AND folder IN ({marks})",  # noqa: S608
                (who.user, *paths),
            ).fetchall()
            run_ids = [str(r["id"]) for r in run_rows]
            if run_ids and not (runs or runs_only):
                raise Conflict(f"folder {path!r} holds runs: delete with runs=True")
            if runs or runs_only:
                delete_runs(db, run_ids)
            folder_ids: list[str] = []
            if not runs_only:
                folder_ids = [str(t["id"]) for t in targets]
                db.executemany("DELETE FROM folders WHERE id = ?", [(f,) for f in folder_ids])
            return {"folders": folder_ids, "runs": run_ids}


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
