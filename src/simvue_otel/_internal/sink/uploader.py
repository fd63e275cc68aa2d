"""Turns batches of records into Simvue REST calls: the one place that writes to a server.

Used by the online sink's worker and by ``simvue-otel send``. A batch is uploaded run by run:
the run is found (by its run key) or created, its metric points and events are posted with
idempotency keys derived from the batch key, then its latest state is applied. A transient
failure raises :class:`RetryLater` and the caller keeps the whole batch: posting it again is
safe, because the server stores each keyed batch once. Records the server refuses (4xx) can
never succeed; they are written to ``rejected_dir`` with the reason, and logged.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..client import SimvueClient, format_timestamp
from ..conventions import FINAL_STATUSES, SERVER_RUN_KEY_METADATA
from ..errors import (
    AuthenticationError,
    NotFoundError,
    ServerError,
    ServerUnreachableError,
    SimvueHTTPError,
    TransportError,
)
from ..mapping.records import EventRecord, MetricRecord, Record, RunRecord, RunRef

__all__ = ["RetryLater", "UploadStats", "Uploader"]

_LOG = logging.getLogger("simvue_otel.sink")


class RetryLater(Exception):
    """The server cannot take the batch now (down, overloaded, token refused); keep it."""


@dataclass
class UploadStats:
    """Counters for progress reports and benchmarks."""

    runs_created: int = 0
    points: int = 0
    events: int = 0
    states: int = 0
    rejected: int = 0


@dataclass
class _RunPlan:
    ref: RunRef
    points: list[MetricRecord] = field(default_factory=list)
    events: list[EventRecord] = field(default_factory=list)
    state: RunRecord | None = None


def _unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted metadata keys back into the nested dict Simvue stores (``a.b`` → ``{a: {b}}``);
    a leaf that a deeper key would have to pass through keeps its dotted form."""
    nested: dict[str, Any] = {}
    for key in sorted(flat, key=lambda k: k.count(".")):
        parts = key.split(".")
        node = nested
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                node[".".join(parts[i:])] = flat[key]
                break
            node = child
        else:
            node[parts[-1]] = flat[key]
    return nested


def _visibility(state: RunRecord | None) -> dict[str, Any]:
    if state is None or state.visibility is None:
        return {"public": False, "tenant": False, "users": []}
    return dict(state.visibility)


class Uploader:
    """Uploads batches of records to one Simvue server; remembers run ids by run key."""

    def __init__(self, client: SimvueClient, *, rejected_dir: Path | None = None) -> None:
        self.client = client
        self.rejected_dir = rejected_dir
        self.stats = UploadStats()
        self._ids: dict[str, str] = {}
        self._sent: dict[str, dict[str, Any]] = {}  # last state fields sent, per run key
        self._observed: dict[str, float] = {}  # time of the last state applied, per run key

    # -- public ---------------------------------------------------------------------------

    def upload(self, records: Sequence[Record], batch_key: str) -> None:
        """Upload ``records`` (in order) under ``batch_key``; see the module docstring."""
        plans: dict[str, _RunPlan] = {}
        for record in records:
            plan = plans.get(record.run.key)
            if plan is None:
                plan = plans[record.run.key] = _RunPlan(record.run)
            if isinstance(record, MetricRecord):
                plan.points.append(record)
            elif isinstance(record, EventRecord):
                plan.events.append(record)
            elif plan.state is None or record.observed >= plan.state.observed:
                plan.state = record
        for key, plan in plans.items():
            try:
                self._upload_run(key, plan, batch_key)
            except (ServerUnreachableError, ServerError) as exc:
                raise RetryLater(str(exc)) from exc
            except AuthenticationError as exc:
                # Nothing to gain by dropping data over a token problem: keep it and say so.
                _LOG.error("the Simvue server refused the token; data is kept for later: %s", exc)
                raise RetryLater(str(exc)) from exc

    def heartbeat(self, run_keys: Iterable[str], *, check_abort: bool = False) -> list[str]:
        """Tell the server these runs are alive (unknown keys are skipped); with
        ``check_abort``, also ask whether someone asked to abort them, and return those keys."""
        aborted = []
        for key in run_keys:
            run_id = self._ids.get(key)
            if run_id is None:
                continue
            try:
                if check_abort and self.client.abort_requested(run_id):
                    aborted.append(key)
                self.client.heartbeat(run_id)
            except TransportError as exc:
                _LOG.debug("heartbeat for run %s failed: %s", run_id, exc)
        return aborted

    def run_id(self, key: str) -> str | None:
        """The server id of the run with this key, once it has been created or found."""
        return self._ids.get(key)

    # -- internals ------------------------------------------------------------------------

    def _upload_run(self, key: str, plan: _RunPlan, batch_key: str) -> None:
        try:
            run_id = self._ensure_run(plan.ref, plan.state)
        except (ServerUnreachableError, ServerError, AuthenticationError):
            raise
        except SimvueHTTPError as exc:
            # The server will not make the run (a wrong URL path, no permission, a value it
            # refuses): every record of it waits on disk, never dropped, and the log says why.
            _LOG.error(
                "the Simvue server refused to create run %r (%s); its data is kept for "
                "`simvue-otel send`: check SIMVUE_URL and the run's settings",
                plan.ref.name or plan.ref.key,
                exc,
            )
            raise RetryLater(str(exc)) from exc
        suffix = f"{batch_key}:{key}"
        if plan.points:
            points = [
                {
                    "values": dict(p.values),
                    "step": p.step,
                    "time": p.time,
                    "timestamp": format_timestamp(p.timestamp),
                }
                for p in plan.points
            ]
            self._post(
                lambda: self.client.post_metrics(run_id, points, idempotency_key=suffix),
                "metrics",
                plan.points,
            )
            self.stats.points += sum(len(p.values) for p in plan.points)
        if plan.events:
            events = [
                {
                    "message": e.message,
                    "log_level": e.level,
                    "timestamp": format_timestamp(e.timestamp),
                }
                for e in plan.events
            ]
            self._post(
                lambda: self.client.post_events(run_id, events, idempotency_key=suffix),
                "events",
                plan.events,
            )
            self.stats.events += len(plan.events)
        if plan.state is not None:
            self._apply_state(key, run_id, plan.state)

    def _post(self, call: Any, what: str, records: Sequence[Record]) -> None:
        try:
            call()
        except (ServerUnreachableError, ServerError, AuthenticationError):
            raise
        except SimvueHTTPError as exc:
            self._reject(records, f"the server refused {what}: {exc}")

    def _ensure_run(self, ref: RunRef, state: RunRecord | None) -> str:
        """The server id for a run key: created on first sight, idempotently (the server
        answers 409 with the existing id when another process or replica made it first)."""
        run_id = self._ids.get(ref.key)
        if run_id is not None:
            return run_id
        status = state.status if state is not None else "running"
        metadata = _unflatten(state.metadata) if state is not None else {}
        metadata.setdefault(SERVER_RUN_KEY_METADATA[0], {})[SERVER_RUN_KEY_METADATA[1]] = ref.key
        created = self.client.create_run(
            name=ref.name,
            folder=ref.folder,
            description=state.description if state else None,
            tags=list(state.tags) if state and state.tags is not None else None,
            metadata=metadata,
            # A run is created live or queued; a final status is applied once data is in.
            status="created" if status == "created" else "running",
            visibility=_visibility(state),
            ttl=state.ttl if state else None,
            heartbeat_timeout=state.heartbeat_timeout
            if state and state.heartbeat_timeout
            else None,
            started=state.started if state else None,
        )
        run_id = self._ids[ref.key] = str(created["id"])
        if created.get("existing"):
            # Made earlier (by us before a restart, or by another replica): learn its status
            # so a replayed live state never reopens a finished run; apply our state in full.
            try:
                current = self.client.get_run(run_id)
            except NotFoundError:
                current = {}
            self._sent[ref.key] = {"status": current.get("status")}
        else:
            self.stats.runs_created += 1
            if state is not None:
                self._sent[ref.key] = self._state_fields(state) | {"status": created.get("status")}
        return run_id

    @staticmethod
    def _state_fields(state: RunRecord) -> dict[str, Any]:
        """The fields this state states (None = not stated, left as the run has it)."""
        fields: dict[str, Any] = {
            "description": state.description,
            "tags": None if state.tags is None else list(state.tags),
            "metadata": dict(state.metadata) if state.metadata else None,
            "visibility": None if state.visibility is None else dict(state.visibility),
            "ttl": state.ttl,
            "heartbeat_timeout": state.heartbeat_timeout,
        }
        return {k: v for k, v in fields.items() if v is not None}

    def _apply_state(self, key: str, run_id: str, state: RunRecord) -> None:
        if state.observed < self._observed.get(key, float("-inf")):
            return  # an older state arriving late (replayed spool, another replica's batch)
        wanted = self._state_fields(state)
        sent = self._sent.get(key, {})
        changes: dict[str, Any] = {}
        for name, value in wanted.items():
            if sent.get(name) != value:
                changes[name] = _unflatten(value) if name == "metadata" else value
        reopen = sent.get("status") in FINAL_STATUSES and state.status not in FINAL_STATUSES
        if sent.get("status") != state.status and not reopen:
            changes["status"] = state.status
            if state.status in FINAL_STATUSES:
                changes["endtime"] = format_timestamp(state.ended or time.time())
        if not changes:
            self._observed[key] = state.observed
            return
        try:
            self.client.update_run(run_id, **changes)
        except NotFoundError:
            # The run was deleted on the server (or expired); forget it so data recreates it.
            self._ids.pop(key, None)
            self._sent.pop(key, None)
            self._reject([state], f"run {run_id} no longer exists on the server")
            return
        except (ServerUnreachableError, ServerError, AuthenticationError):
            raise
        except SimvueHTTPError as exc:
            self._reject([state], f"the server refused the run state: {exc}")
            return
        self._sent[key] = sent | wanted | {"status": changes.get("status", sent.get("status"))}
        self._observed[key] = state.observed
        self.stats.states += 1

    def _reject(self, records: Sequence[Record], reason: str) -> None:
        """Keep refused records on disk with the reason: refused is not the same as lost."""
        self.stats.rejected += len(records)
        _LOG.error("%s (%d record(s) set aside)", reason, len(records))
        if self.rejected_dir is None:
            return
        from .codec import encode_records  # local: the codec is only needed on this rare path

        self.rejected_dir.mkdir(parents=True, exist_ok=True)
        stem = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
        (self.rejected_dir / f"{stem}.records").write_bytes(encode_records(records))
        (self.rejected_dir / f"{stem}.reason.json").write_text(
            json.dumps({"reason": reason, "count": len(records)}, indent=2)
        )
