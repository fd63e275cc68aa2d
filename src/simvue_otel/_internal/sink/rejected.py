"""Records a Simvue server refused for good, set aside under a spool's ``rejected/`` folder.

A refusal (400, 409, 413 or 422: the request itself is wrong, so no retry can succeed) must
neither block the records behind it nor lose the refused ones: they are written here, with
the reason, and the upload goes on. Each set-aside is a pair of files named by the time and
a random suffix:

* ``<stem>.records``: the records, in the codec's blob form (:func:`~.codec.decode_records`);
* ``<stem>.reason.json``: what a person reads first: the reason (the server's answer), the
  HTTP status, the runs concerned (key, name, folder), and how many points, events and run
  states were set aside.

The folder is made 0700 and the files 0600, and nothing is written through a link: the
folder is opened with ``O_NOFOLLOW`` and each file created with ``O_EXCL | O_NOFOLLOW``
inside it, so a link planted in the spool can neither redirect nor overwrite anything.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..mapping.records import EventRecord, MetricRecord, Record, RunRecord, RunRef
from .codec import encode_records

__all__ = ["REASON_SUFFIX", "RECORDS_SUFFIX", "set_aside"]

REASON_SUFFIX = ".reason.json"
RECORDS_SUFFIX = ".records"

_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)
_FILE_FLAGS = (
    os.O_WRONLY
    | os.O_CREAT
    | os.O_EXCL
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_CLOEXEC", 0)
)


def _open_folder(directory: Path) -> int:
    """A descriptor of the ``rejected`` folder, made 0700 if new; refused (OSError) when it
    is a link, not a folder, or another user's."""
    with contextlib.suppress(FileExistsError):
        # (the spool folder itself may not exist yet: a refusal before anything was spooled)
        directory.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.mkdir(directory, 0o700)
    fd = os.open(directory, _DIR_FLAGS)  # a link here fails (ELOOP) instead of being followed
    try:
        info = os.fstat(fd)
        if not stat.S_ISDIR(info.st_mode):
            raise NotADirectoryError(f"{directory} is not a folder")
        if hasattr(os, "getuid") and info.st_uid != os.getuid():
            raise PermissionError(f"{directory} belongs to another user; nothing written there")
        if stat.S_IMODE(info.st_mode) & 0o077:
            os.fchmod(fd, 0o700)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _write(folder: int, name: str, data: bytes) -> None:
    """Create ``name`` (new, 0600, never through a link) in the folder and write ``data``."""
    fd = os.open(name, _FILE_FLAGS, 0o600, dir_fd=folder)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _summary(records: Sequence[Record]) -> dict[str, Any]:
    runs: dict[RunRef, None] = {}
    points = events = states = 0
    for record in records:
        runs.setdefault(record.run, None)
        if isinstance(record, MetricRecord):
            points += len(record.values)
        elif isinstance(record, EventRecord):
            events += 1
        elif isinstance(record, RunRecord):
            states += 1
    return {
        "runs": [{"key": r.key, "name": r.name, "folder": r.folder} for r in runs],
        "count": len(records),
        "metric_values": points,
        "events": events,
        "run_states": states,
    }


def set_aside(
    directory: Path, records: Sequence[Record], reason: str, *, status: int | None = None
) -> Path:
    """Write ``records`` and why they were refused under ``directory`` (see the module
    docstring); returns the reason file. Raises OSError when they cannot be written (the
    caller then keeps them where they were)."""
    stem = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
    doc = {
        "reason": reason,
        "status": status,
        **_summary(records),
        "records_file": stem + RECORDS_SUFFIX,
        "set_aside_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    folder = _open_folder(directory)
    try:
        _write(folder, stem + RECORDS_SUFFIX, encode_records(records))
        # The reason last: a reason file always has its records beside it.
        _write(folder, stem + REASON_SUFFIX, json.dumps(doc, indent=2).encode())
    finally:
        os.close(folder)
    return directory / (stem + REASON_SUFFIX)
