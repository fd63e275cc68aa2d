"""Turns batches of records into Simvue REST calls: the one place that writes to a server.

Used by the online sink's worker and by ``simvue-otel send``. A batch is uploaded run by run:

* **The run** is found before it is ever created, since a Simvue server does not deduplicate
  runs: by the id this process (or any process, through the :class:`RunIndex` on disk)
  recorded for its run key, else by the ``metadata.simvue_otel_run_key == <key>`` filter; only
  then is it created, and its id recorded. The server's state of a found run (tags, metadata,
  visibility, status...) is read, so only what changes is sent.
* **Metric points and events** go in *parts* of at most 16,000 entries (one POST each, as the
  official client sends them). A :class:`Progress` records each part as ``sending`` before its
  POST and ``done`` after, so nothing the server acknowledged is sent again. A part whose
  outcome is unknown (timeout, reset connection, 5xx, a process killed meanwhile) is
  *reconciled* before it is sent again: what the server holds is read back and only the
  missing entries are sent. Where no answer came (a timeout, a reset connection, a process
  killed meanwhile), not before the *settle time* (``settle``) has passed since that POST
  began: a gateway may still hold it and pass it on later, and an entry read back as missing
  too early would be stored twice. Until then the part waits (:class:`Unsettled`) and the rest
  of the batch goes on. (A 5xx is an answer: whoever gave it holds the request no more.)
* **The run's state** (a PUT of the fields that changed) is applied last; PUTs are idempotent.

A transient failure raises :class:`RetryLater` and the caller keeps the batch with its progress.
Records the server refuses (4xx) can never succeed; they are written to ``rejected_dir`` with
the reason (:mod:`.rejected`), counted, logged once per run, and the upload goes on: a run
the server refuses to create (400, 409, 413, 422) is set aside with everything of it that
follows (its points and events have no run to go to), and other runs are not held back.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..client import MAX_BATCH_ENTRIES, SimvueClient, format_timestamp, maybe_delivered
from ..client import parse_timestamp as _parse_timestamp
from ..config import settle_seconds
from ..conventions import FINAL_STATUSES, RUN_KEY_METADATA
from ..errors import (
    AuthenticationError,
    NotFoundError,
    ServerError,
    ServerUnreachableError,
    SimvueHTTPError,
    TransportError,
)
from ..flatten import flatten
from ..mapping.records import EventRecord, MetricRecord, Record, RunRecord, RunRef
from ..names import name_for_key
from ..run_state import RUN_STATE_NAMES, created_fields, stated_fields
from .reconcile import missing_entries
from .run_index import RunIndex
from .steps import StepNumbering

__all__ = [
    "REFUSED_STATUSES",
    "PartlyTaken",
    "Progress",
    "RetryLater",
    "Unsettled",
    "UploadStats",
    "Uploader",
]

_LOG = logging.getLogger("simvue_otel.sink")

# Upload times per batch, seconds: a few milliseconds to a local server, seconds to a far or
# busy one (a batch is up to 16,000 points per part, several parts per run).
UPLOAD_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

_STATE_FIELDS = RUN_STATE_NAMES


# Seconds between two heartbeats of a run past which it may have been marked lost meanwhile
# (the sink beats every 30 s at most, and a third of a run's heartbeat timeout when shorter).
_BEAT_GAP = 60.0


class RetryLater(Exception):
    """The server cannot take the batch now (down, overloaded, token refused); keep it."""


class PartlyTaken(RetryLater):
    """The server answers, but one of its endpoints (metrics, events or runs) refused part of
    the batch for now (5xx, 429): the rest of the batch was delivered, so later batches may
    go too (their parts for that endpoint wait, untried, until the next pass)."""


class Unsettled(PartlyTaken):
    """Parts of the batch were sent before without an answer, too recently to be judged: a
    copy of that POST may still be on its way (held by a gateway). The rest of the batch was
    delivered; keep it, with its progress, and try it again at ``ready`` (``time.monotonic()``),
    when those parts are reconciled. Nothing is wrong with the server."""

    def __init__(self, ready: float, parts: int) -> None:
        wait = max(0.0, ready - time.monotonic())
        super().__init__(
            f"{parts} part(s) sent earlier without an answer are checked with the server in "
            f"{wait:.1f} s, once no copy of them can still be on its way"
        )
        self.ready = ready
        self.parts = parts


REFUSED_STATUSES = frozenset({400, 409, 413, 422})
"""Answers that refuse the request itself (malformed, conflicting, too large, invalid): sent
again it is refused again, so its records are set aside instead of retried. 401, 403 and 404
are a token, a permission or a URL to fix and 429/5xx are passing: those records wait."""


class _NotYet(Exception):
    """A part cannot be reconciled before ``ready`` (``time.monotonic()``)."""

    def __init__(self, ready: float) -> None:
        super().__init__(ready)
        self.ready = ready


class _Refused(Exception):
    """A run's records are to be set aside (its creation was refused)."""

    def __init__(self, reason: str, status: int | None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


@dataclass
class UploadStats:
    """Counters for progress reports and benchmarks."""

    runs_created: int = 0
    points: int = 0
    events: int = 0
    states: int = 0
    rejected: int = 0
    rejected_runs: dict[str, str] = field(default_factory=dict)
    """Runs some of whose records were set aside, as ``"name (key)"``: the first reason."""
    reconciled: int = 0
    """Parts whose outcome was unknown and were checked against the server."""
    unproven: int = 0
    """Entries of such parts that the server's read-back neither showed nor proved missing
    (an incomplete answer): not sent again, since they may be stored."""
    uploaded_batches: int = 0
    upload_seconds: list[int] = field(default_factory=lambda: [0] * (len(UPLOAD_BUCKETS) + 1))
    """Batches by upload time: counts per bucket of :data:`UPLOAD_BUCKETS` (the last: longer)."""
    upload_seconds_sum: float = 0.0
    failures: Counter[str] = field(default_factory=Counter)
    """Upload attempts that left their batch waiting, by reason: ``unreachable`` (no answer),
    ``server_error`` (5xx), ``token`` (401/403) or ``refused_run`` (the run cannot be made)."""

    def timed(self, seconds: float) -> None:
        """Count one batch that reached the server in ``seconds``."""
        self.uploaded_batches += 1
        self.upload_seconds_sum += seconds
        self.upload_seconds[bisect.bisect_left(UPLOAD_BUCKETS, seconds)] += 1


class Progress:
    """Which parts of one batch the server holds.

    ``states`` maps a part (``"<run>.m<chunk>"`` metrics, ``"<run>.e<chunk>"`` events) to
    ``done`` (acknowledged: never sent again) or ``sending`` (sent, no answer: reconciled
    before anything is sent again); ``began``, when each ``sending`` part's last POST began
    (``time.time()``; 0.0: long ago). Subclasses make the changes durable by overriding
    :meth:`record`.
    """

    def __init__(
        self, states: Mapping[str, str] | None = None, began: Mapping[str, float] | None = None
    ) -> None:
        self.states: dict[str, str] = dict(states or {})
        self.began: dict[str, float] = dict(began or {})

    def record(self, part: str, state: str) -> None:
        """Make one change durable (nothing to do for a batch held in memory); for
        ``sending``, :attr:`began` holds its time."""

    def set(self, part: str, state: str) -> None:
        if state == "clear":
            self.began.pop(part, None)
            if self.states.pop(part, None) is not None:
                self.record(part, state)
        elif state == "sending":  # every POST, even of a part already sending: its own time
            self.states[part] = state
            self.began[part] = time.time()
            self.record(part, state)
        elif self.states.get(part) != state:
            self.began.pop(part, None)
            self.states[part] = state
            self.record(part, state)

    def answered(self, part: str) -> None:
        """A ``sending`` part's POST was answered, with an error that leaves its outcome
        unknown (a 5xx): whoever answered is done with it, so no copy of it waits on the way
        any more, and it can be reconciled without waiting for the settle time."""
        if self.states.get(part) == "sending":
            self.began[part] = 0.0
            self.record(part, "sending")


@dataclass
class _RunPlan:
    ref: RunRef
    index: int
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


def _flatten(nested: Mapping[str, Any]) -> dict[str, Any]:
    """The server's nested metadata as dotted keys (the shape run states carry); an empty
    mapping the server holds is a leaf of its own, so it compares as a value."""
    return flatten(nested, empty_is_leaf=True)


def _top_values(merged: Mapping[str, Any], changed: Mapping[str, Any]) -> dict[str, Any]:
    """The metadata to PUT for ``changed`` keys: the whole top-level value of each key that
    changes, as the run now has it (``merged``, dotted keys). A server that merges metadata
    gets what it had plus the change; one that replaces each top-level value it is sent
    (no deep merge) loses no sibling of a changed key either."""
    nested = _unflatten(merged)
    return {
        top: value
        for top, value in nested.items()
        if any(k in changed for k in _flatten({top: value}))
    }


def _metric_entries(records: Sequence[Record]) -> list[dict[str, Any]]:
    """Metric records as the entries of a ``POST /api/metrics`` body."""
    stamp = format_timestamp
    return [
        {
            # the record's own dict (records are never changed once made), so no copy
            "values": p.values if p.values.__class__ is dict else dict(p.values),
            "step": p.step,
            "time": p.time,
            "timestamp": stamp(p.timestamp),
        }
        for p in records
        if p.__class__ is MetricRecord
    ]


def _event_entries(records: Sequence[Record]) -> list[dict[str, Any]]:
    """Event records as the entries of a ``POST /api/events`` body."""
    return [
        {"message": e.message, "log_level": e.level, "timestamp": format_timestamp(e.timestamp)}
        for e in records
        if isinstance(e, EventRecord)
    ]


def _entries(kind: str, records: Sequence[Record]) -> list[dict[str, Any]]:
    return _metric_entries(records) if kind == "metrics" else _event_entries(records)


def _parts(
    index: int, points: Sequence[Record], events: Sequence[Record]
) -> list[tuple[str, str, Sequence[Record]]]:
    """A run's records of one batch as its POSTs: ``("<run>.m<i>", "metrics", chunk)`` then
    ``("<run>.e<i>", "events", chunk)``; the ids are what :class:`Progress` records."""
    return [(f"{index}.m{i}", "metrics", chunk) for i, chunk in enumerate(_chunks(points))] + [
        (f"{index}.e{i}", "events", chunk) for i, chunk in enumerate(_chunks(events))
    ]


def _earliest(plan: _RunPlan) -> float | None:
    """The time of a run's earliest point or event in a batch: what proves it had started."""
    stamps = [p.timestamp for p in plan.points] + [e.timestamp for e in plan.events]
    return min(stamps) if stamps else None


def _chunks(items: Sequence[Any]) -> list[Sequence[Any]]:
    return [items[i : i + MAX_BATCH_ENTRIES] for i in range(0, len(items), MAX_BATCH_ENTRIES)]


class Uploader:
    """Uploads batches of records to one Simvue server; see the module docstring."""

    def __init__(
        self,
        client: SimvueClient,
        *,
        rejected_dir: Path | None = None,
        index: RunIndex | None = None,
        settle: float | None = None,
    ) -> None:
        self.client = client
        self.settle = settle_seconds() if settle is None else max(0.0, settle)
        """Seconds after a POST began before its part, if it got no answer, is reconciled
        (``SIMVUE_OTEL_SETTLE_SECONDS``): longer than a gateway may hold a request."""
        # (batch, part, its POST's start) -> when this uploader first found it unsettled
        # (time.monotonic()): a clock that stepped back never makes a part wait longer.
        self._unsettled: dict[tuple[str, str, float], float] = {}
        self._waits: list[float] = []  # per upload: when the parts found unsettled are ready
        self._batch = ""  # the batch being uploaded (names unsettled parts)
        self.rejected_dir = rejected_dir
        self.index = index or RunIndex(None)
        self.stats = UploadStats()
        self._ids: dict[str, str] = {}  # run key -> id, confirmed with the server
        self._sent: dict[str, dict[str, Any]] = {}  # the server's state as we know it
        self._observed: dict[str, float] = {}  # time of the last state applied, per run key
        self._created: set[str] = set()  # run keys this uploader created (nothing held before)
        self._steps = StepNumbering(client, self.index)  # instrument steps (conventions §7)
        self._told: set[str] = set()  # problems already logged once (not repeated per retry)
        self._refused: dict[str, tuple[str, int | None]] = {}  # run keys the server would not
        # create, with why: what follows for them is set aside too
        self._pool: ThreadPoolExecutor | None = None  # builds the next part's entries
        self._beaten: dict[str, float] = {}  # run key -> time of its last heartbeat
        self._failing: dict[str, ServerError] | None = None  # per pass: see begin_pass
        self._suspect: set[str] = set()  # runs that may have turned lost: status read once
        self._refused_state: dict[str, float] = {}  # run key -> time of a state set aside
        self.waits_for: frozenset[str] = frozenset()
        """Run keys another process creates (a forked child's parent's runs): never created
        here, their records wait until the server has the run."""

    # -- public ---------------------------------------------------------------------------

    def upload(
        self, records: Sequence[Record], batch_key: str, progress: Progress | None = None
    ) -> None:
        """Upload ``records`` (in order); ``progress`` holds (and receives) what the server
        already has of this batch. ``batch_key`` names the batch in logs."""
        progress = progress if progress is not None else Progress()
        began = time.perf_counter()
        # Endpoints that answered 5xx or 429: their parts wait, the other endpoints' go on
        # (one failing endpoint holds back nothing else). Kept for a whole pass when one is
        # open (see begin_pass), so later batches do not try them again meanwhile.
        failing = self._failing if self._failing is not None else {}
        whole = True  # every part of every run done, every state applied
        self._waits = []
        self._batch = batch_key
        for key, plan in self.plan(records).items():
            try:
                whole = self._upload_run(key, plan, progress, failing) and whole
            except ServerUnreachableError as exc:
                self.stats.failures["unreachable"] += 1
                self._suspect.update(self._ids)
                raise RetryLater(str(exc)) from exc
            except ServerError as exc:  # the run itself could not be found or made
                failing.setdefault("runs", exc)
                whole = False
                continue
            except RetryLater:
                self.stats.failures["refused_run"] += 1
                raise
            except AuthenticationError as exc:
                self.stats.failures["token"] += 1
                # Nothing to gain by dropping data over a token problem: keep it and say so,
                # once (the caller retries with backoff; the data waits on disk meanwhile).
                self._tell_once(
                    "token", "the Simvue server refused the token; data is kept: %s", exc
                )
                raise RetryLater(str(exc)) from exc
            except _Refused as exc:
                self._set_aside(plan, progress, exc.reason, exc.status)
            except SimvueHTTPError as exc:  # a refusal on the way (a read, a start time)
                if exc.status_code not in REFUSED_STATUSES:
                    self.stats.failures["refused_run"] += 1
                    self._tell_once(
                        f"http:{key}",
                        "the Simvue server answered %s for run %r; its records wait and are "
                        "tried again",
                        exc,
                        plan.ref.name or key,
                    )
                    raise RetryLater(str(exc)) from exc
                self._set_aside(plan, progress, f"the server refused: {exc}", exc.status_code)
        if not whole:
            self.stats.failures["server_error"] += 1
            self._suspect.update(self._ids)
            raise PartlyTaken("; ".join(str(e) for e in failing.values()))
        if self._waits:
            raise Unsettled(min(self._waits), len(self._waits))
        self._told.discard("token")
        self.stats.timed(time.perf_counter() - began)

    def begin_pass(self) -> None:
        """Start a pass over several batches (the sink's worker: its spool, then its memory):
        an endpoint that fails in one batch is not tried again by the later ones, which
        still deliver what the other endpoints take."""
        self._failing = {}

    def end_pass(self) -> None:
        """End the pass: every endpoint is tried again by the next batch."""
        self._failing = None

    @staticmethod
    def plan(records: Sequence[Record]) -> dict[str, _RunPlan]:
        """The batch grouped by run, in first-seen order (which numbers the parts)."""
        plans: dict[str, _RunPlan] = {}
        for record in records:
            plan = plans.get(record.run.key)
            if plan is None:
                plan = plans[record.run.key] = _RunPlan(record.run, len(plans))
            if type(record) is MetricRecord:  # (exact types: cheaper than isinstance)
                plan.points.append(record)
            elif type(record) is EventRecord:
                plan.events.append(record)
            elif isinstance(record, RunRecord) and (
                plan.state is None or record.observed >= plan.state.observed
            ):
                plan.state = record
        return plans

    def heartbeat(self, run_keys: Iterable[str], *, check_abort: bool = False) -> list[str]:
        """Tell the server these runs are alive (unknown keys are skipped); with
        ``check_abort``, also ask whether someone asked to abort them, and return those keys.

        A run whose heartbeats stopped for a while (an outage, a failed upload, a process
        that was stopped) may have been marked ``lost`` by the server meanwhile, and a
        heartbeat alone may not bring it back: its status is read once beats resume, and a
        ``lost`` run this process still has running is set back to ``running``."""
        aborted = []
        now = time.monotonic()
        for key in run_keys:
            run_id = self._ids.get(key)
            if run_id is None:
                continue
            try:
                if check_abort and self.client.abort_requested(run_id):
                    aborted.append(key)
                self.client.heartbeat(run_id)
                last, self._beaten[key] = self._beaten.get(key), now
                if key in self._suspect or (last is not None and now - last > self._gap(key)):
                    self._revive(key, run_id)
            except TransportError as exc:
                self._suspect.add(key)
                _LOG.debug("heartbeat for run %s failed: %s", run_id, exc)
        return aborted

    def _gap(self, key: str) -> float:
        """Time without heartbeats past which the run may have turned lost: half its heartbeat
        timeout (the sink beats every third of it), at most :data:`_BEAT_GAP`."""
        timeout = self._sent.get(key, {}).get("heartbeat_timeout")
        if isinstance(timeout, (int, float)) and timeout > 0:
            return min(_BEAT_GAP, timeout / 2)
        return _BEAT_GAP

    def _revive(self, key: str, run_id: str) -> None:
        """Set the run back to ``running`` if the server marked it ``lost`` while this
        process, which still has it running, could not tell it otherwise."""
        status = self.client.get_run(run_id).get("status")
        if status == "lost" and self._sent.get(key, {}).get("status") == "running":
            self.client.update_run(run_id, status="running")
            _LOG.warning(
                "run %s was marked lost while it could not be reached; set back to running",
                run_id,
            )
        self._suspect.discard(key)

    def run_id(self, key: str) -> str | None:
        """The server id of the run with this key, once it has been created or found."""
        return self._ids.get(key)

    # -- internals ------------------------------------------------------------------------

    def _upload_run(
        self, key: str, plan: _RunPlan, progress: Progress, failing: dict[str, ServerError]
    ) -> bool:
        """Upload one run's records; False when some wait for an endpoint in ``failing``
        (which gets the endpoints that answer 5xx or 429 meanwhile)."""
        parts = _parts(plan.index, plan.points, plan.events)
        if plan.state is None and all(progress.states.get(p) == "done" for p, _, _ in parts):
            return True
        earliest = _earliest(plan)
        refused = self._refused.get(key)
        if refused is not None:  # its run could not be made: nothing of it can go anywhere
            raise _Refused(*refused)
        if key not in self._ids and "runs" in failing:
            return False  # finding or making a run failed in this pass: this one waits too
        try:
            run_id = self._ensure_run(plan.ref, plan.state, earliest)
        except (ServerUnreachableError, ServerError, AuthenticationError):
            raise
        except SimvueHTTPError as exc:
            if exc.status_code in REFUSED_STATUSES:
                # The run itself is refused (a value the server will not take): it and what
                # follows for it are set aside, and the other runs carry on.
                self._refused[key] = (
                    f"the server refused to create the run: {exc}",
                    exc.status_code,
                )
                raise _Refused(*self._refused[key]) from exc
            # The server will not make the run now (a wrong URL path, no permission): every
            # record of it waits where it is, and the log says why.
            self._tell_once(
                f"run:{key}",
                "the Simvue server refused to create run %r (%s); its records wait and are "
                "tried again: check SIMVUE_URL and the token's permissions",
                plan.ref.name or plan.ref.key,
                exc,
            )
            raise RetryLater(str(exc)) from exc
        if any(p.counter is not None for p in plan.points):
            # Same parts (same ids), their instrument points numbered as the run's steps.
            started = self._sent.get(key, {}).get("started")
            numbered = self._steps.numbered(
                key, run_id, plan.points, created=key in self._created, started=started
            )
            parts = _parts(plan.index, numbered, plan.events)
        # While one part's POST waits for the server, the next part's entries are built in a
        # helper thread: the server's work and ours overlap instead of taking turns.
        ahead: Future[list[dict[str, Any]]] | None = None
        todo = [p for p in parts if progress.states.get(p[0]) != "done"]
        whole = True
        for i, (part, kind, chunk) in enumerate(todo):
            entries = ahead.result() if ahead is not None else None
            ahead = None
            if kind in failing:  # that endpoint failed in this pass: wait for the next one
                whole = False
                continue
            nxt = next((p for p in todo[i + 1 :] if p[1] not in failing), None)
            if nxt is not None:
                ahead = self._prepare(nxt[1], nxt[2])
            try:
                self._send_part(part, progress, run_id, kind, chunk, entries)
            except ServerError as exc:  # the server answers; this endpoint does not take data
                failing.setdefault(kind, exc)
                whole = False
            except _NotYet as wait:  # an earlier POST of it may still land: it waits
                self._waits.append(wait.ready)
        if ahead is not None:
            ahead.cancel()
        if "runs" in failing:
            return whole and plan.state is None
        try:
            # Applied even when another endpoint failed: a run's final status is not held
            # back by, say, its events (which follow when that endpoint takes them).
            if plan.state is not None:
                self._apply_state(key, run_id, plan.state)
            else:
                self._start_no_later(key, run_id, earliest)
        except ServerError as exc:
            failing.setdefault("runs", exc)
            return False
        return whole

    def _start_no_later(self, key: str, run_id: str, earliest: float | None) -> None:
        """A live run's start moves back to its earliest record (a batch that arrived late
        proves it began before it was created): ``started`` never follows its own data."""
        sent = self._sent.get(key, {})
        started = sent.get("started")
        if earliest is None or not isinstance(started, float) or earliest >= started - 1e-3:
            return
        if sent.get("status") != "running":
            return
        self.client.update_run(run_id, started=format_timestamp(earliest))
        sent["started"] = earliest

    def _prepare(self, kind: str, records: Sequence[Record]) -> Future[list[dict[str, Any]]] | None:
        """Build a part's entries in the helper thread; None when no thread can be started
        (at interpreter exit: the part then builds its own)."""
        try:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="simvue-otel-prepare")
            return self._pool.submit(_entries, kind, records)
        except RuntimeError:  # "cannot schedule new futures after interpreter shutdown"
            return None

    def close(self) -> None:
        """Stop the helper thread (if one was started)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None

    def _send_part(
        self,
        part: str,
        progress: Progress,
        run_id: str,
        kind: str,
        records: Sequence[Record],
        entries: list[dict[str, Any]] | None = None,
    ) -> None:
        """POST one part once: skipped when done, reconciled first when in doubt.
        ``entries``: the part's entries, when already built."""
        state = progress.states.get(part)
        if state == "done":
            return
        if entries is None:
            entries = _entries(kind, records)
        post = self.client.post_metrics if kind == "metrics" else self.client.post_events
        if state == "sending":
            self._settled(part, progress.began.get(part, 0.0))
            entries, unproven = missing_entries(self.client, run_id, kind, entries)
            self.stats.unproven += unproven
            self.stats.reconciled += 1
        if entries:
            progress.set(part, "sending")
            try:
                post(run_id, entries)
            except (ServerUnreachableError, ServerError, AuthenticationError) as exc:
                if not maybe_delivered(exc):
                    progress.set(part, "clear")
                elif not isinstance(exc, ServerUnreachableError):
                    progress.answered(part)  # (no answer: it may still be on its way)
                raise
            except SimvueHTTPError as exc:
                if maybe_delivered(exc):  # a 5xx outside the retried set: may be stored
                    progress.answered(part)
                    raise ServerError(exc.method, exc.url, exc.status_code, exc.detail) from exc
                self._reject(records, f"the server refused {kind}: {exc}", exc.status_code)
            else:
                if kind == "metrics":
                    self.stats.points += sum(map(len, [e["values"] for e in entries]))
                else:
                    self.stats.events += len(entries)
        progress.set(part, "done")

    def _settled(self, part: str, began: float) -> None:
        """Return when no copy of the part's last POST (begun at ``began``, epoch seconds) can
        still reach the server, so that what it lacks can be judged; else raise
        :class:`_NotYet` with when that will be. Measured by the wall clock (the POST may
        have been sent by a process that died), and never longer than the settle time from
        the first time this uploader found it unsettled (a clock that stepped back)."""
        age = time.time() - began
        key = (self._batch, part, began)
        if age < self.settle:
            now = time.monotonic()
            left = self.settle - max(age, now - self._unsettled.setdefault(key, now))
            if left > 0:
                raise _NotYet(now + left)
        self._unsettled.pop(key, None)

    def _tell_once(self, topic: str, message: str, *args: object) -> None:
        """Log a problem as an error the first time, at debug level while it persists."""
        level = logging.DEBUG if topic in self._told else logging.ERROR
        self._told.add(topic)
        _LOG.log(level, message, *args)

    def _ensure_run(self, ref: RunRef, state: RunRecord | None, earliest: float | None) -> str:
        """The server id for a run key, found or created by one process at a time (others
        sharing the run index wait, then find it there)."""
        run_id = self._ids.get(ref.key)
        if run_id is not None:
            return run_id
        with self.index.creating(ref.key):
            return self._find_or_create_run(ref, state, earliest)

    def _find_or_create_run(
        self, ref: RunRef, state: RunRecord | None, earliest: float | None
    ) -> str:
        """The server id for a run key: this process's, the index's (checked with a GET), the
        server filter's, or a new run (recorded in the index at once), started when its
        state says, else at its earliest record (``earliest``)."""
        run_id = self._ids.get(ref.key)
        if run_id is not None:
            return run_id
        doc: dict[str, Any] | None = None
        known = self.index.get(ref.key)
        if known is not None:
            try:
                doc = self.client.get_run(known)
            except NotFoundError:
                self.index.forget(ref.key)  # deleted on the server: made again below
            else:
                held = (doc.get("metadata") or {}).get(RUN_KEY_METADATA)
                if held is not None and held != ref.key:  # not this run (another server?)
                    self.index.forget(ref.key)
                    doc = None
        if doc is None:
            found = self.client.find_run_by_key(ref.key)
            if found is not None:
                doc = self.client.get_run(str(found["id"]))
        if doc is not None:
            run_id = str(doc.get("id") or known or "")
            self._learn(ref.key, run_id, doc)
            return run_id
        if ref.key in self.waits_for:
            raise RetryLater(f"run {ref.key} is not on the server yet (its own process makes it)")
        status = state.status if state is not None else "running"
        metadata = _unflatten(state.metadata) if state is not None else {}
        metadata[RUN_KEY_METADATA] = ref.key
        sent: dict[str, Any] = {
            **created_fields(state),
            # A run is created live or queued; a final status is applied once data is in.
            "status": "created" if status == "created" else "running",
        }
        started = None
        if sent["status"] == "running":
            started = state.started if state is not None and state.started else earliest
        run_id = self.client.create_run(
            name=ref.name or name_for_key(ref.key),
            folder=ref.folder,
            metadata=metadata,
            started=started,
            **sent,
        )
        self.index.put(ref.key, run_id)
        self._ids[ref.key] = run_id
        self._created.add(ref.key)
        sent["metadata"] = _flatten(metadata)
        sent["started"] = started if started is not None else time.time()
        self._sent[ref.key] = sent  # status as sent, never read back from the reply
        self.stats.runs_created += 1
        return run_id

    def _learn(self, key: str, run_id: str, doc: Mapping[str, Any]) -> None:
        """Take a found run's server state as the baseline: only changes are sent."""
        self.index.put(key, run_id)
        self._ids[key] = run_id
        known: dict[str, Any] = {name: doc.get(name) for name in _STATE_FIELDS}
        known["metadata"] = _flatten(doc.get("metadata") or {})
        known["status"] = doc.get("status")
        try:
            known["started"] = _parse_timestamp(doc["started"]) if doc.get("started") else None
        except (TypeError, ValueError):
            known["started"] = None
        self._sent[key] = known

    @staticmethod
    def _state_fields(state: RunRecord) -> dict[str, Any]:
        """The fields this state states (None = not stated, left as the run has it)."""
        return stated_fields(state)

    def _apply_state(self, key: str, run_id: str, state: RunRecord) -> None:
        if state.observed < self._observed.get(key, float("-inf")):
            return  # an older state arriving late (replayed spool, another replica's batch)
        if state.observed == self._refused_state.get(key):
            return  # this very state was refused and set aside (its frame is read again)
        wanted = self._state_fields(state)
        sent = self._sent.get(key, {})
        changes: dict[str, Any] = {}
        for name, value in wanted.items():
            if name == "metadata":
                had = sent.get("metadata") or {}
                changed = {k: v for k, v in value.items() if k not in had or had[k] != v}
                if changed:
                    changes["metadata"] = _top_values({**had, **value}, changed)
            elif sent.get(name) != value:
                changes[name] = value
        started = sent.get("started")
        if state.started is not None and (started is None or state.started < started - 1e-3):
            # The run began when its root span began, not when its first record reached us
            # (a bridge may see a metric point first): an earlier start corrects it.
            changes["started"] = format_timestamp(state.started)
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
            self.index.forget(key)
            self._reject([state], f"run {run_id} no longer exists on the server")
            return
        except (ServerUnreachableError, ServerError, AuthenticationError):
            raise
        except SimvueHTTPError as exc:
            self._reject([state], f"the server refused the run state: {exc}")
            # Set aside: not sent (nor set aside) again when its frame is read once more.
            self._refused_state[key] = state.observed
            return
        merged = dict(sent)
        for name, value in wanted.items():
            if name == "metadata":
                value = {**(sent.get("metadata") or {}), **value}
            merged[name] = value
        merged["status"] = changes.get("status", sent.get("status"))
        if "started" in changes:
            merged["started"] = state.started
        self._sent[key] = merged
        self._observed[key] = state.observed
        self.stats.states += 1

    def _set_aside(
        self, plan: _RunPlan, progress: Progress, reason: str, status: int | None
    ) -> None:
        """Set aside what of a run's batch the server does not hold (its parts not yet
        acknowledged, and its state), then mark the parts done: the batch goes on."""
        parts = _parts(plan.index, plan.points, plan.events)
        left: list[Record] = []
        for part, _kind, chunk in parts:
            if progress.states.get(part) != "done":
                left.extend(chunk)
        # The state is a part of its own here, so a frame read again (kept behind a frame
        # that waits) does not set it aside once more.
        state_part = f"{plan.index}.s"
        if plan.state is not None and progress.states.get(state_part) != "done":
            left.append(plan.state)
        if left:
            self._reject(left, reason, status)
        for part, _kind, _chunk in parts:
            progress.set(part, "done")
        if plan.state is not None:
            progress.set(state_part, "done")

    def _reject(self, records: Sequence[Record], reason: str, status: int | None = None) -> None:
        """Keep refused records on disk with the reason: refused is not the same as lost.
        Counted, and logged once per run; RetryLater when they cannot be written (they then
        stay where they were)."""
        path = None
        if self.rejected_dir is not None:
            from .rejected import set_aside  # local: only needed on this rare path

            try:
                path = set_aside(self.rejected_dir, records, reason, status=status)
            except OSError as exc:
                self._tell_once(
                    "rejected-dir",
                    "cannot set refused records aside in %s (%s); they are kept and tried again",
                    self.rejected_dir,
                    exc,
                )
                raise RetryLater(f"cannot write to {self.rejected_dir}: {exc}") from exc
        self.stats.rejected += len(records)
        for ref in dict.fromkeys(r.run for r in records):
            label = f"{ref.name} ({ref.key})" if ref.name else ref.key
            self.stats.rejected_runs.setdefault(label, reason)
            self._tell_once(
                f"rejected:{ref.key}",
                "%s; records of run %s set aside in %s (%d record(s) in this batch); other runs "
                "carry on",
                reason,
                label,
                path or "memory (no folder for them)",
                len(records),
            )
