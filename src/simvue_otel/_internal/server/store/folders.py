"""Folders: made with their missing parents (by path), listed, read, updated, and deleted
with their subfolders and runs."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Mapping, Sequence
from typing import Any

from ..auth import Identity
from ..filters import Predicate
from .common import (
    as_epoch,
    check_folder,
    check_tags,
    check_ttl,
    deep_merge,
    format_time,
    formatted,
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
                    if not isinstance(value, Mapping):
                        raise invalid("metadata", "must be an object")
                    doc["metadata"] = deep_merge(doc.get("metadata", {}), value)
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
