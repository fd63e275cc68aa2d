"""Finding a run again for ``Run.reconnect``: the offline registry and the server.

An offline run is found by name from a small file holding its state (there is no server to
ask), rewritten at each change; an online one is looked up on the server through the sink
layer (:mod:`.sink.lookup`). Either way the result is a :class:`FoundRun`: the run's identity
and the state (:mod:`.run_state`) it already has.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from . import conventions as cv
from .config import SimvueConfig
from .errors import SimvueValidationError
from .run_state import RunState, registry_entry, state_from_registry, state_from_server
from .sink.files import private_dir, read_private, replace_private

__all__ = ["FoundRun", "find_run", "write_registry"]

_LOG = logging.getLogger("simvue_otel.run")

_REGISTRY_DIR = "otel-runs"


def _registry_file(name: str) -> str:
    """A run's registry file: its name, with what a file name cannot hold (``/``, and ``%``
    itself) percent-encoded, so ``step/1`` is ``step%2F1.json``."""
    return quote(name, safe=" -_.:") + ".json"


@dataclass(frozen=True)
class FoundRun:
    """A run found for ``reconnect``: its identity and the state it already has."""

    key: str
    name: str
    folder: str
    status: str | None
    state: RunState

    @classmethod
    def from_registry(cls, entry: Mapping[str, Any]) -> FoundRun:
        return cls(
            key=str(entry["key"]),
            name=str(entry["name"]),
            folder=str(entry.get("folder") or "/"),
            status=entry.get("status"),
            state=state_from_registry(entry),
        )

    @classmethod
    def from_server(cls, key: str, doc: Mapping[str, Any]) -> FoundRun:
        """The server's run as this object's state (see ``run_state.state_from_server``)."""
        return cls(
            key=key,
            name=str(doc.get("name") or ""),
            folder=str(doc.get("folder") or "/"),
            status=doc.get("status"),
            state=state_from_server(doc),
        )


def write_registry(
    config: SimvueConfig, key: str | None, name: str, folder: str, status: str | None,
    state: RunState,
) -> None:  # fmt: skip
    """Record an offline run's identity and state in its registry file."""
    directory = config.offline_directory / _REGISTRY_DIR
    try:
        private_dir(directory)
    except OSError as exc:
        _LOG.warning("cannot record offline run %s in %s: %s", name, directory, exc)
        return
    entry = {"key": key, "name": name, "folder": folder, "status": status}
    entry.update(registry_entry(state))
    try:  # under the encoded name: no run name leads out of the directory
        replace_private(directory / _registry_file(name), json.dumps(entry).encode())
    except OSError as exc:  # a full disk: the run goes on; only reconnect-by-name suffers
        _LOG.warning("cannot record offline run %s in %s: %s", name, directory, exc)


def _find_offline(config: SimvueConfig, run: str) -> FoundRun:
    directory: Path = config.offline_directory / _REGISTRY_DIR
    path = directory / _registry_file(run)
    if not path.exists():
        raise SimvueValidationError("run", f"no offline run of that name in {directory}", run)
    try:
        entry = json.loads(read_private(path))
    except (OSError, ValueError) as exc:
        raise SimvueValidationError(
            "run", f"the record of this offline run in {directory} is unusable: {exc}", run
        ) from None
    return FoundRun.from_registry(entry)


def find_run(mode: str, config: SimvueConfig | None, run: str) -> FoundRun:
    """The run ``reconnect(run)`` resumes (by name offline; by id or name online), refused
    with the reason when there is none or it has ended."""
    if not isinstance(run, str) or not run:
        raise SimvueValidationError("run", "must be a run name or id", run)
    if mode == "otlp":
        raise SimvueValidationError(
            "mode", "reconnect() needs online or offline mode (it asks the server)", "otlp"
        )
    assert config is not None
    if mode == "offline":
        found = _find_offline(config, run)
    else:
        from .sink.lookup import find_server_run

        found = FoundRun.from_server(*find_server_run(config, run, index=mode == "online"))
    if found.status in cv.FINAL_STATUSES:
        raise SimvueValidationError(
            "run",
            f"run {found.name!r} has ended ({found.status}); reconnect() resumes a queued or "
            "lost run: start a new run instead",
            run,
        )
    return found
