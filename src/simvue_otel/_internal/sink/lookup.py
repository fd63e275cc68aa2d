"""Finding a run on the server by id or name, for ``Run.reconnect``.

Through the same client and run index the online sink's uploader uses: the run's key is
recorded where this process's uploader (and ``simvue-otel send``) look for it, so records sent
under the key go to the found run and no second run is made.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from ..client import SimvueClient
from ..config import SimvueConfig
from ..conventions import RUN_KEY_METADATA
from ..errors import NotFoundError, SimvueValidationError
from . import online_spool_directory
from .run_index import run_index_for

__all__ = ["find_server_run"]

_ID_SHAPE = re.compile(r"^[A-Za-z0-9]{22}$")
"""The shape of a Simvue run id (``OBJECT_ID`` of the official client)."""


def find_server_run(config: SimvueConfig, run: str, *, index: bool) -> tuple[str, dict[str, Any]]:
    """The run with this id (one GET), else the one run with this name (a filter): its key
    and its document. A run made by another client is given a key. With ``index``, the key
    is recorded in this server's run index (online mode: the uploader sends to that run)."""
    with SimvueClient.from_config(config) as client:
        doc: dict[str, Any] | None = None
        if _ID_SHAPE.match(run):
            try:
                doc = client.get_run(run)
            except NotFoundError:
                doc = None
        if doc is None:
            named = client.find_runs_by_name(run)
            if not named:
                raise SimvueValidationError("run", "no run with this name or id on the server", run)
            if len(named) > 1:
                # Several runs share the name: the one still queued is the one to resume.
                queued = [r for r in named if r.get("status") == "created"]
                if len(queued) != 1:
                    ids = ", ".join(f"{r.get('id')} ({r.get('status')})" for r in named[:20])
                    more = f" and {len(named) - 20} more" if len(named) > 20 else ""
                    raise SimvueValidationError(
                        "run",
                        f"{len(named)} runs have this name and {len(queued)} of them is "
                        f"queued (created); reconnect by id: {ids}{more}",
                        run,
                    )
                named = queued
            doc = client.get_run(str(named[0]["id"]))
        run_id = str(doc.get("id") or run)
        metadata = doc.get("metadata") or {}
        key = metadata.get(RUN_KEY_METADATA) if isinstance(metadata, dict) else None
        if not isinstance(key, str) or not key:
            # A run made by another client: give it a key so our records find it.
            key = str(uuid.uuid4())
            client.update_metadata(run_id, {RUN_KEY_METADATA: key})
        if index:
            # Tell this process's uploader which run the key is (no second run made).
            run_index_for(online_spool_directory(config)).put(key, run_id)
        return key, doc
