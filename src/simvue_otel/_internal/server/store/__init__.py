"""SQLite storage of the local Simvue-compatible server.

Every read and write takes the caller's :class:`~..auth.Identity` and enforces run visibility
here, so no endpoint can forget it.

:class:`Store` is one class per resource, each in a module of its own (accounts, folders and
tags, runs, metrics, events, statistics), all over one :class:`~.db.Database`: one SQLite
file, one write connection and its lock, a pool of read connections, and one transaction
helper. The tables are in :mod:`.schema`, the upgrades of older files in :mod:`.upgrades`. A
resource added later (artifacts, alerts, grids) is one more module and one more base of
:class:`Store`, with its tables in :mod:`.schema` (and in ``RUN_OWNED`` when a run owns its
rows).
"""

from __future__ import annotations

from pathlib import Path

from .accounts import Accounts
from .common import MAX_FOLDER_DEPTH, MAX_FOLDER_LENGTH, MAX_SECONDS, RUN_STATUSES
from .errors import (
    RETRY_AFTER_FULL,
    Conflict,
    DiskFull,
    Forbidden,
    Invalid,
    NotFound,
    StoreError,
)
from .events import Events
from .folders import Folders, Tags
from .metrics import Metrics
from .runs import Runs
from .schema import SCHEMA
from .stats import Statistics
from .upgrades import Upgrades

__all__ = [
    "MAX_FOLDER_DEPTH",
    "MAX_FOLDER_LENGTH",
    "MAX_SECONDS",
    "RETRY_AFTER_FULL",
    "RUN_STATUSES",
    "Conflict",
    "DiskFull",
    "Forbidden",
    "Invalid",
    "NotFound",
    "Store",
    "StoreError",
]


class Store(Accounts, Folders, Tags, Runs, Metrics, Events, Statistics, Upgrades):
    """All state of the local server, in one SQLite file, readable by its owner alone."""

    def __init__(self, path: Path | str) -> None:
        super().__init__(path)  # the file, its connections (see db.Database)
        with self._lock:
            self._conn.executescript(SCHEMA)
            self._upgrade_tables()
            self._open_chunks()
            self._upgrade_metrics()
