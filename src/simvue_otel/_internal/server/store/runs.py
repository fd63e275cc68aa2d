"""Runs: created, read and listed (with their metric summaries), updated, deleted with all
they own; heartbeats, abort requests and stars.

What is stored must stay readable by every later query: names, folders, tags and times are
checked before they are kept, so one bad value never fails a listing."""

from __future__ import annotations

import json
import math
import re
import secrets
import sqlite3
import time
from collections.abc import Mapping, Sequence
from typing import Any

from ... import conventions as cv
from ...names import generate_run_name
from ..auth import Identity
from ..filters import Predicate
from .access import VISIBLE, RunAccess
from .chunks import metric_summary
from .common import (
    RUN_STATUSES,
    as_epoch,
    check_folder,
    check_tags,
    check_ttl,
    dig,
    format_time,
    formatted,
    merged_metadata,
    new_id,
    order_key,
    paged,
    parse_time,
    public_fields,
)
from .errors import invalid
from .folders import ensure_folder, ensure_tags
from .lifecycle import Lifecycle
from .schema import delete_runs

_NAME_RE = re.compile(rf"^{cv.NAME_PATTERN}$")


def _visibility(value: Any) -> dict[str, Any]:
    if value is None:
        return {"public": False, "tenant": False, "users": []}
    if not isinstance(value, Mapping):
        raise invalid("visibility", "must be an object {public, tenant, users}")
    users = value.get("users", value.get("user")) or []
    if not isinstance(users, list) or not all(isinstance(u, str) for u in users):
        raise invalid("visibility.users", "must be a list of user names")
    return {
        "public": bool(value.get("public", False)),
        "tenant": bool(value.get("tenant", False)),
        "users": list(dict.fromkeys(users)),
    }


def _format_duration(seconds: float) -> str | None:
    if not math.isfinite(seconds):
        return None
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{int(hours):02d}:{int(minutes):02d}:{secs:09.6f}"


class Runs(RunAccess, Lifecycle):
    """The runs of every user, each read with the caller's visibility."""

    def create_run(self, who: Identity, body: Mapping[str, Any]) -> dict[str, Any]:
        """Create a run. Every POST makes a new run, as on a Simvue server (no deduplication)."""
        if not isinstance(body, Mapping):
            raise invalid("body", "a run must be a JSON object")
        name = body.get("name")
        if name is not None and (not isinstance(name, str) or not _NAME_RE.match(name)):
            raise invalid("name", f"must match {_NAME_RE.pattern}")
        folder = check_folder(body.get("folder", "/"))
        status = body.get("status") or "running"
        if status not in RUN_STATUSES:
            raise invalid("status", f"must be one of {', '.join(RUN_STATUSES)}")
        metadata = body.get("metadata") or {}
        if not isinstance(metadata, Mapping):
            raise invalid("metadata", "must be an object")
        tags = check_tags(body.get("tags"))
        visibility = _visibility(body.get("visibility"))
        ttl = check_ttl(body.get("ttl"), "ttl")
        heartbeat_timeout = check_ttl(body.get("heartbeat_timeout", 180), "heartbeat_timeout")
        now = time.time()
        with self._tx() as db:
            if name is None:
                name = self._unique_name(db, who)
            ensure_folder(db, who, folder)
            ensure_tags(db, who, tags)
            doc = {
                "description": body.get("description"),
                "tags": tags,
                "metadata": dict(metadata),
                "notifications": body.get("notifications") or {"state": "none"},
                "alerts": body.get("alerts") or [],
                "system": body.get("system") or {},
                "started": parse_time(body.get("started"), "started")
                or (now if status == "running" else None),
                "endtime": parse_time(body.get("endtime"), "endtime"),
                "starred": False,
                "abort": False,
                "ttl": ttl,
                "heartbeat_timeout": heartbeat_timeout,
                "visibility": visibility,
            }
            run_id = new_id()
            db.execute(
                "INSERT INTO runs (id, owner, tenant, name, folder, status, run_key, vis_public, "
                "vis_tenant, vis_users, created, modified, last_heartbeat, heartbeat_timeout, "
                "ttl, doc) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    run_id,
                    who.user,
                    who.tenant,
                    name,
                    folder,
                    status,
                    None,  # run_key: a column older databases have; nothing reads it
                    int(visibility["public"]),
                    int(visibility["tenant"]),
                    json.dumps(visibility["users"]),
                    now,
                    now,
                    now if status == "running" else None,
                    heartbeat_timeout,
                    ttl,
                    json.dumps(doc),
                ),
            )
        return {"id": run_id, "name": name}

    def _unique_name(self, db: sqlite3.Connection, who: Identity) -> str:
        for _ in range(50):
            name = generate_run_name()
            if not db.execute(
                "SELECT 1 FROM runs WHERE owner = ? AND name = ?", (who.user, name)
            ).fetchone():
                return name
        return f"{generate_run_name()}-{secrets.token_hex(3)}"

    def _run_api(self, db: sqlite3.Connection, row: sqlite3.Row, metrics: bool) -> dict[str, Any]:
        doc = json.loads(row["doc"])
        started, endtime = as_epoch(doc.get("started")), as_epoch(doc.get("endtime"))
        runtime = None
        if started is not None:
            end = endtime if endtime is not None else time.time()
            runtime = _format_duration(max(0.0, end - started))
        return {
            "id": row["id"],
            "name": row["name"],
            "status": row["status"],
            "folder": row["folder"],
            "description": doc.get("description"),
            "tags": doc.get("tags", []),
            "metadata": doc.get("metadata", {}),
            "ttl": doc.get("ttl"),
            "heartbeat_timeout": doc.get("heartbeat_timeout"),
            "notifications": doc.get("notifications", {"state": "none"}),
            "visibility": doc.get("visibility"),
            "alerts": doc.get("alerts", []),
            "created": format_time(row["created"]),
            "modified": format_time(row["modified"]),
            "started": format_time(started),
            "endtime": format_time(endtime),
            "runtime": runtime,
            "system": doc.get("system", {}),
            "user": row["owner"],
            "starred": doc.get("starred", False),
            "metrics": metric_summary(db, row["id"]) if metrics else {},
            "events": {},
            # numeric epochs for the age-window filters; dropped before serving
            "_created": row["created"],
            "_started": started,
            "_endtime": endtime,
            "_modified": row["modified"],
        }

    def get_run(self, who: Identity, run_id: str) -> dict[str, Any]:
        self.sweep()
        with self._read() as db:
            return public_fields(self._run_api(db, self._load_run(db, who, run_id), metrics=True))

    def list_runs(
        self,
        who: Identity,
        predicate: Predicate,
        *,
        sorting: Sequence[Mapping[str, Any]] = (),
        start: int = 0,
        count: int | None = None,
        metrics: bool = True,
    ) -> tuple[list[dict[str, Any]], int]:
        self.sweep()
        # Metric summaries are the costly part of a run: made for every run only when a filter
        # or the sorting reads them, else only for the page served.
        fields = getattr(predicate, "fields", None)
        keys = [str(spec.get("id", "")) for spec in sorting]
        early = metrics and (
            fields is None or any(k.startswith("metrics") for k in (*fields, *keys))
        )
        with self._read() as db:
            rows = db.execute(
                f"SELECT * FROM runs r WHERE {VISIBLE} ORDER BY r.created",  # noqa: S608
                {"user": who.user, "tenant": who.tenant},
            ).fetchall()
            runs = formatted(rows, lambda r: self._run_api(db, r, metrics=early))
            found = [r for r in runs if predicate(r, who.user)]
            self._sort_runs(found, sorting)
            page = paged(found, start, count)
            if metrics and not early:
                for run in page:
                    run["metrics"] = metric_summary(db, run["id"])
        return [public_fields(r) for r in page], len(found)

    @staticmethod
    def _sort_runs(found: list[dict[str, Any]], sorting: Sequence[Mapping[str, Any]]) -> None:
        for spec in reversed(list(sorting)):
            key = str(spec.get("id", "created"))
            numeric = {
                "created": "_created",
                "started": "_started",
                "endtime": "_endtime",
                "modified": "_modified",
            }.get(key)

            def sort_key(run: dict[str, Any], k: str = key, n: str | None = numeric) -> Any:
                return order_key(run[n] if n else dig(run, k))

            found.sort(key=sort_key, reverse=bool(spec.get("desc", False)))

    def update_run(self, who: Identity, run_id: str, changes: Mapping[str, Any]) -> None:
        """A partial update: only the keys given change; metadata merges into what is there."""
        if not isinstance(changes, Mapping):
            raise invalid("body", "an update must be a JSON object")
        with self._tx() as db:
            row = self._writable_run(db, who, run_id)
            doc = json.loads(row["doc"])
            cols: dict[str, Any] = {}
            now = time.time()
            for key, value in changes.items():
                if key == "metadata":
                    doc["metadata"] = merged_metadata(doc, value)
                elif key == "tags":
                    doc["tags"] = check_tags(value)
                    ensure_tags(db, who, doc["tags"])
                elif key == "status":
                    if value not in RUN_STATUSES:
                        raise invalid("status", f"must be one of {', '.join(RUN_STATUSES)}")
                    cols["status"] = value
                    if value == "running":
                        doc["started"] = doc.get("started") or now
                        doc["endtime"] = None
                        cols["last_heartbeat"] = now
                    elif value in cv.FINAL_STATUSES and "endtime" not in changes:
                        doc["endtime"] = now
                elif key in ("endtime", "started"):
                    doc[key] = parse_time(value, key)
                elif key == "visibility":
                    vis = _visibility(value)
                    doc["visibility"] = vis
                    cols["vis_public"] = int(vis["public"])
                    cols["vis_tenant"] = int(vis["tenant"])
                    cols["vis_users"] = json.dumps(vis["users"])
                elif key in ("ttl", "heartbeat_timeout"):
                    doc[key] = check_ttl(value, key)
                    cols[key] = doc[key]
                elif key == "name":
                    if not isinstance(value, str) or not _NAME_RE.match(value):
                        raise invalid("name", f"must match {_NAME_RE.pattern}")
                    cols["name"] = value
                elif key == "folder":
                    cols["folder"] = check_folder(value)
                    ensure_folder(db, who, cols["folder"])
                elif key in ("description", "system", "notifications", "alerts"):
                    doc[key] = value
                # other keys (e.g. client-side bookkeeping) are accepted and ignored
            cols["doc"] = json.dumps(doc)
            cols["modified"] = now
            assignments = ", ".join(f"{c} = :{c}" for c in cols)
            db.execute(
                f"UPDATE runs SET {assignments} WHERE id = :id",  # noqa: S608
                {**cols, "id": run_id},
            )

    def delete_run(self, who: Identity, run_id: str) -> None:
        with self._tx() as db:
            self._writable_run(db, who, run_id)
            delete_runs(db, [run_id])

    def heartbeat(self, who: Identity, run_id: str) -> None:
        """Record a heartbeat; a run marked lost while its client was cut off comes back."""
        with self._tx() as db:
            row = self._writable_run(db, who, run_id)
            status = "running" if row["status"] == "lost" else row["status"]
            db.execute(
                "UPDATE runs SET last_heartbeat = ?, status = ? WHERE id = ?",
                (time.time(), status, run_id),
            )

    def set_abort(self, who: Identity, run_id: str, reason: str | None) -> None:
        with self._tx() as db:
            row = self._writable_run(db, who, run_id)
            doc = json.loads(row["doc"])
            doc["abort"] = True
            doc["abort_reason"] = reason
            db.execute("UPDATE runs SET doc = ? WHERE id = ?", (json.dumps(doc), run_id))

    def abort_requested(self, who: Identity, run_id: str) -> bool:
        with self._read() as db:
            return bool(json.loads(self._load_run(db, who, run_id)["doc"]).get("abort"))

    def set_starred(self, who: Identity, run_id: str, starred: bool) -> None:
        with self._tx() as db:
            row = self._writable_run(db, who, run_id)
            doc = json.loads(row["doc"])
            doc["starred"] = bool(starred)
            db.execute("UPDATE runs SET doc = ? WHERE id = ?", (json.dumps(doc), run_id))
