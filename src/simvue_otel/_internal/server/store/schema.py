"""The store's tables, and what a run owns (deleted with it).

A resource that keeps rows of its own adds its tables here; if they belong to a run (by
``run_id``), it names them in :data:`RUN_OWNED` too, so deleting a run deletes them.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY, tenant TEXT NOT NULL, created REAL NOT NULL, tokens_after REAL);
CREATE TABLE IF NOT EXISTS folders (
    id TEXT PRIMARY KEY, owner TEXT NOT NULL, tenant TEXT NOT NULL, path TEXT NOT NULL,
    doc TEXT NOT NULL, created REAL NOT NULL, UNIQUE (owner, path));
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY, owner TEXT NOT NULL, tenant TEXT NOT NULL, name TEXT NOT NULL,
    folder TEXT NOT NULL, status TEXT NOT NULL, run_key TEXT,
    vis_public INTEGER NOT NULL, vis_tenant INTEGER NOT NULL, vis_users TEXT NOT NULL,
    created REAL NOT NULL, modified REAL NOT NULL, last_heartbeat REAL,
    heartbeat_timeout REAL, ttl REAL, doc TEXT NOT NULL);
-- Older databases enforced one run per simvue-otel run key: Simvue does not, so neither do we.
DROP INDEX IF EXISTS runs_key;
CREATE INDEX IF NOT EXISTS runs_owner ON runs (owner, name);
CREATE INDEX IF NOT EXISTS runs_status ON runs (status);
-- Metric points in chunks (see points.py): per run, batch and shape (the metric names of an
-- entry, kept once), packed columns of steps, times, timestamps, positions and values.
CREATE TABLE IF NOT EXISTS metric_shapes (id INTEGER PRIMARY KEY, names TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS metric_chunks (
    run_id TEXT NOT NULL, shape INTEGER NOT NULL, batch INTEGER NOT NULL, n INTEGER NOT NULL,
    lo INTEGER NOT NULL, hi INTEGER NOT NULL, ascending INTEGER NOT NULL,
    steps BLOB NOT NULL, times BLOB NOT NULL, stamps TEXT NOT NULL, positions BLOB NOT NULL,
    vals BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS metric_chunks_run ON metric_chunks (run_id, shape);
-- Per run and metric, kept up to date as points arrive, so that run documents and listings cost
-- the same whatever a run holds: count, non-NaN count, min, max, sum, and the value at the
-- highest step (the latest stored of equal steps).
CREATE TABLE IF NOT EXISTS metric_summary (
    run_id TEXT NOT NULL, name TEXT NOT NULL, n INTEGER NOT NULL, finite INTEGER NOT NULL,
    lo REAL, hi REAL, total REAL, step INTEGER NOT NULL, last REAL,
    PRIMARY KEY (run_id, name));
-- Per run, metric and slice of 1,024 steps: the lowest and highest value and the slice's first
-- and last step, kept as points arrive, so a run page plots a metric of a million points from
-- about a thousand rows.
CREATE TABLE IF NOT EXISTS metric_envelope (
    run_id TEXT NOT NULL, name TEXT NOT NULL, slice INTEGER NOT NULL,
    lo REAL NOT NULL, hi REAL NOT NULL, x0 INTEGER NOT NULL, x1 INTEGER NOT NULL,
    PRIMARY KEY (run_id, name, slice));
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL, message TEXT NOT NULL,
    log_level TEXT NOT NULL, timestamp TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_run ON events (run_id, seq);
DROP TABLE IF EXISTS batches;
CREATE TABLE IF NOT EXISTS tags (
    id TEXT PRIMARY KEY, owner TEXT NOT NULL, name TEXT NOT NULL, colour TEXT,
    description TEXT, created REAL NOT NULL, UNIQUE (owner, name));
-- Web sessions (the cookie holds a random id; only its hash is kept here).
CREATE TABLE IF NOT EXISTS sessions (
    key TEXT PRIMARY KEY, user TEXT NOT NULL, tenant TEXT NOT NULL,
    created REAL NOT NULL, expires REAL NOT NULL);
-- Sign-in links already used (each works once), kept until they would have expired.
CREATE TABLE IF NOT EXISTS used_codes (jti TEXT PRIMARY KEY, expires REAL NOT NULL);
"""

RUN_OWNED = ("metric_chunks", "metric_summary", "metric_envelope", "events")
"""Tables of rows that belong to a run (by ``run_id``), deleted with it, in this order."""


def delete_runs(db: sqlite3.Connection, run_ids: Sequence[str]) -> None:
    """Delete the runs ``run_ids`` and every row they own (inside the caller's transaction)."""
    rows = [(r,) for r in run_ids]
    for table in RUN_OWNED:
        db.executemany(f"DELETE FROM {table} WHERE run_id = ?", rows)  # noqa: S608
    db.executemany("DELETE FROM runs WHERE id = ?", rows)
