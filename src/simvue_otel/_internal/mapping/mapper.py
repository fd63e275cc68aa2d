"""The one mapping from OpenTelemetry telemetry to Simvue records.

Input is the neutral model (:mod:`.model`), so the in-process exporters and the OTLP bridge
share this code unchanged. The rules are those of :mod:`..conventions` and
``docs/conventions.md``:

- the run is named by the Resource: ``simvue.run.key`` (+ name, folder); telemetry without a
  key belongs to one run per service instance, keyed by a hash of its identifying attributes;
- the ``simvue.run`` root span carries the run's state and final status, ``simvue.run.snapshot``
  spans carry live state, and a root span seen at its start (through the span processor) shows
  the run live at once;
- ``simvue.metrics`` log records are exact metric points, ``simvue.event`` and every other log
  record are events; span events and (by policy) other spans become events too;
- the app's own instruments become metrics at each export (gauges and sums by value,
  histograms as count/sum/mean/min/max, summaries as count/sum/mean and one metric per
  quantile; attribute sets as a name suffix).

A Mapper keeps a little state per run (its time origin and step counters), bounded by
``max_runs`` so a long-lived bridge does not grow without limit. Records it skips (a
``simvue.metrics`` body that is not a map, a log record with no body) are counted by reason
(:meth:`Mapper.take_skipped`), so the bridge can report them as refused (OTLP partial success).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .. import conventions as cv
from ..errors import SimvueValidationError
from ..validation import clean_text, validate_folder
from . import state_attributes
from .model import STATUS_ERROR, HistogramValue, MetricRow, OtelLog, OtelMetric, OtelSpan
from .records import EventRecord, MetricRecord, Record, RunRecord, RunRef
from .system import CONSUMED, RESOURCE_METRICS, resource_metric, run_facts

__all__ = ["SPAN_EVENT_POLICIES", "Mapper", "RunState"]

_LOG = logging.getLogger("simvue_otel.mapping")

SPAN_EVENT_POLICIES = ("all", "errors", "none")
"""What becomes of spans other than the run's own: each one an event, only failed ones, none."""

# Runs of characters a run or metric name cannot hold (the complement of the name rules).
_NAME_BAD = re.compile(f"[^{cv.NAME_PATTERN[1:-2]}]+")
_METRIC_BAD = re.compile(f"[^{cv.METRIC_NAME_PATTERN[1:-2]}]+")
_FOREIGN_NAMESPACE = uuid.UUID("6f1c3c8e-4d0b-5d8a-9a53-2b6f4c1e9a10")


@dataclass
class RunState:
    """What a Mapper holds of one run: its identity, time origin and step counters."""

    ref: RunRef
    origin: float
    foreign: bool
    has_state: bool = False  # a root or snapshot span told its state
    metric_step: int = 0
    instrument_step: int = 0
    counter: str = ""  # names this state's count of instrument exports (see MetricRecord)
    last_seen: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return value
    return None


def _text(body: Any) -> str | None:
    if body is None:
        return None
    if isinstance(body, str):
        return body
    if isinstance(body, bytes):
        return body.decode("utf-8", "replace")
    try:
        return json.dumps(body, default=str, sort_keys=True)
    except (TypeError, ValueError):
        return str(body)


def _exception_message(attributes: Mapping[str, Any]) -> str:
    kind = attributes.get("exception.type") or "Exception"
    message = attributes.get("exception.message") or ""
    text = f"{kind}: {message}" if message else str(kind)
    trace = attributes.get("exception.stacktrace")
    return f"{text}\n{trace}" if trace else text


class Mapper:
    """Turns batches of neutral telemetry into Simvue records (see the module docstring)."""

    def __init__(
        self,
        *,
        span_events: str = "all",
        max_runs: int = 10_000,
        clock: Any = time.time,
    ) -> None:
        if span_events not in SPAN_EVENT_POLICIES:
            raise SimvueValidationError(
                "span_events", f"must be one of {', '.join(SPAN_EVENT_POLICIES)}", span_events
            )
        self.span_events = span_events
        self.max_runs = max_runs
        self.unset_status = "completed"
        """Final status of a root span that ends OK or UNSET with no ``simvue.run.status``:
        ``terminated`` once the process is being stopped by a signal (SIGTERM leaves spans
        UNSET, as a clean end does)."""
        self._clock = clock
        self._runs: OrderedDict[str, RunState] = OrderedDict()
        self._refs: dict[int, tuple[Mapping[str, Any], RunState]] = {}
        self._warned: set[str] = set()
        self._metric_names: set[str] = set()  # names known to pass the metric-name rule
        self._skipped: Counter[str] = Counter()
        # Instrument exports are counted per run state; each count is named by this mapper's
        # epoch and the state's number, so the uploader can continue a run's steps from what
        # the server holds when a count was not the run's first (a restarted bridge, another
        # replica, a state forgotten and made again).
        self._epoch = uuid.uuid4().hex[:12]
        self.runs_seen = 0
        """Runs this mapper has registered since it was made (including runs it forgot since)."""

    def take_skipped(self) -> dict[str, int]:
        """Records skipped since the last call, by reason (and forget them): what a receiver
        reports as refused. Reasons are a few fixed phrases, so this never grows with the data."""
        skipped, self._skipped = dict(self._skipped), Counter()
        return skipped

    @property
    def tracked_runs(self) -> int:
        """Runs whose step counters and time origin are held now (at most ``max_runs``)."""
        return len(self._runs)

    def _skip(self, reason: str) -> None:
        self._skipped[reason] += 1

    # -- run identity ---------------------------------------------------------------------

    def _warn_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._warned:
            if len(self._warned) > 10_000:  # hostile input: bounded, at worst said again
                self._warned.clear()
            self._warned.add(key)
            _LOG.warning(message, *args)

    def _state(self, resource: Mapping[str, Any], when: float, out: list[Record]) -> RunState:
        """The run a Resource names (registering it, and announcing foreign runs, on first
        sight). Resources are compared by identity first: adapters share one dict per batch."""
        cached = self._refs.get(id(resource))
        if cached is not None and cached[0] is resource:
            state = cached[1]
            state.last_seen = when
            if when < state.origin:
                state.origin = when
            self._runs.move_to_end(state.ref.key)
            return state
        key, foreign = self._run_key(resource)
        state_or_none = self._runs.get(key)
        if state_or_none is None:
            state = RunState(self._run_ref(key, resource, foreign), when, foreign, last_seen=when)
            state.counter = f"{self._epoch}.{self.runs_seen}"
            state.extra["facts"] = run_facts(resource)
            self._runs[key] = state
            self.runs_seen += 1
            while len(self._runs) > self.max_runs:
                self._runs.popitem(last=False)
            if foreign:
                announced = self._foreign_state(state, resource, when)
                state.extra["record"] = announced
                out.append(announced)
        else:
            state = state_or_none
            self._runs.move_to_end(key)
            state.last_seen = when
            if when < state.origin:
                state.origin = when
        if len(self._refs) > 64:
            self._refs.clear()
        self._refs[id(resource)] = (resource, state)
        return state

    @staticmethod
    def _run_key(resource: Mapping[str, Any]) -> tuple[str, bool]:
        key = resource.get(cv.RUN_KEY)
        if isinstance(key, str) and key.strip():
            return clean_text(key.strip()[:128], cv.RUN_KEY), False
        chosen = {k: resource[k] for k in cv.FOREIGN_RUN_KEY_ATTRIBUTES if k in resource}
        if set(chosen) <= {cv.SERVICE_NAME}:
            chosen = dict(resource)
        canonical = json.dumps(chosen, sort_keys=True, default=str, ensure_ascii=True)
        return str(uuid.uuid5(_FOREIGN_NAMESPACE, canonical)), True

    def _run_ref(self, key: str, resource: Mapping[str, Any], foreign: bool) -> RunRef:
        name = resource.get(cv.RUN_NAME)
        if not isinstance(name, str) or not name:
            name = resource.get(cv.SERVICE_NAME) if foreign else None
        if isinstance(name, str):
            name = _NAME_BAD.sub("-", name).strip("-.")[:255] or None
        folder_attr = resource.get(cv.RUN_FOLDER)
        folder = cv.FOREIGN_FOLDER if foreign and folder_attr is None else "/"
        if folder_attr is not None:
            try:
                folder = validate_folder(folder_attr, field=cv.RUN_FOLDER)
            except SimvueValidationError as exc:
                self._warn_once(f"folder:{key}", "%s; using folder %r", exc, folder)
        return RunRef(key=key, name=name, folder=folder)

    def _foreign_state(
        self, state: RunState, resource: Mapping[str, Any], when: float
    ) -> RunRecord:
        system, metadata = state.extra["facts"]
        metadata = dict(metadata)
        for k, v in resource.items():
            if k not in CONSUMED and isinstance(v, str | int | float | bool | list | tuple):
                metadata[f"resource.{k}"] = state_attributes.metadata_value(v)
        service = resource.get(cv.SERVICE_NAME, "an OpenTelemetry service")
        return state_attributes.clean_state(
            RunRecord(
                run=state.ref,
                status="running",
                observed=when,
                description=f"Telemetry of {service}",
                tags=("otel",),
                metadata=metadata,
                started=when,
                system=system,
            ),
            self._warn_once,
        )

    # -- spans ----------------------------------------------------------------------------

    def spans(self, spans: Iterable[OtelSpan]) -> list[Record]:
        """Records for ended spans, in order."""
        out: list[Record] = []
        for span in spans:
            when = span.end if span.end is not None else span.start
            state = self._state(span.resource, span.start, out)
            if span.name == cv.ROOT_SPAN:
                out.append(self._run_record(state, span, final=span.end is not None))
                out.extend(self._span_events(state, span))
            elif span.name == cv.SNAPSHOT_SPAN:
                out.append(self._run_record(state, span, final=False, observed=when))
            else:
                out.extend(self._foreign_span(state, span))
        return out

    def pending_span(self, span: OtelSpan) -> list[Record]:
        """Records for a span that has just started: a root span shows its run live."""
        out: list[Record] = []
        state = self._state(span.resource, span.start, out)
        if span.name == cv.ROOT_SPAN:
            out.append(self._run_record(state, span, final=False, observed=span.start))
        return out

    def _run_record(
        self, state: RunState, span: OtelSpan, *, final: bool, observed: float | None = None
    ) -> RunRecord:
        attrs = span.attributes
        status = attrs.get(cv.RUN_STATUS)
        if final:
            if status not in cv.FINAL_STATUSES:
                status = "failed" if span.status == STATUS_ERROR else self.unset_status
        elif status not in cv.LIVE_STATUSES:
            status = "running"
        state.origin = min(state.origin, span.start)
        state.has_state = True
        key = state.ref.key
        description = state_attributes.str_attr(attrs, cv.RUN_DESCRIPTION)
        tags = state_attributes.tags_attr(key, attrs, self._warn_once)
        metadata = state_attributes.metadata_attrs(attrs)
        system, facts = state.extra["facts"]
        announced = state.extra.get("record")
        if isinstance(announced, RunRecord):  # a foreign run: keep what its Resource said
            description = description or announced.description
            tags = tags if tags is not None else announced.tags
            metadata = {**announced.metadata, **metadata}
        elif facts:
            metadata = {**facts, **metadata}  # the user's own keys win
        return state_attributes.clean_state(
            RunRecord(
                run=state.ref,
                status=str(status),
                observed=observed if observed is not None else (span.end or span.start),
                description=description,
                tags=tags,
                metadata=metadata,
                visibility=state_attributes.visibility_attr(key, attrs, self._warn_once),
                ttl=state_attributes.seconds_attr(key, attrs, cv.RUN_RETENTION, self._warn_once),
                heartbeat_timeout=state_attributes.seconds_attr(
                    key, attrs, cv.RUN_HEARTBEAT_TIMEOUT, self._warn_once
                ),
                started=span.start if status != "created" else None,
                ended=span.end if final else None,
                system=system,
            ),
            self._warn_once,
        )

    def _span_events(self, state: RunState, span: OtelSpan) -> list[EventRecord]:
        out = []
        for event in span.events:
            if event.name == cv.EXCEPTION_EVENT:
                text = clean_text(_exception_message(event.attributes), "an exception event")
                out.append(EventRecord(state.ref, text, event.timestamp, "error"))
            else:
                extra = " ".join(f"{k}={v}" for k, v in sorted(event.attributes.items()))
                message = clean_text(f"{event.name} {extra}".strip(), "a span event")
                out.append(EventRecord(state.ref, message, event.timestamp, "info"))
        return out

    def _foreign_span(self, state: RunState, span: OtelSpan) -> list[Record]:
        """A span that is not the run's own: an event (by policy), plus its span events."""
        failed = span.status == STATUS_ERROR
        if self.span_events == "none" or (self.span_events == "errors" and not failed):
            return []
        end = span.end if span.end is not None else span.start
        text = f"span {span.name!r} ended after {(end - span.start) * 1000:.1f} ms"
        if failed:
            text += f" with an error: {span.status_message}" if span.status_message else " in error"
        text = clean_text(text, "a span's event")
        out: list[Record] = [EventRecord(state.ref, text, end, "error" if failed else "info")]
        out.extend(self._span_events(state, span))
        return out

    # -- logs -----------------------------------------------------------------------------

    def logs(self, logs: Iterable[OtelLog]) -> list[Record]:
        """Records for log records, in order: metric points and events.

        Every record's run is looked at first, so a run's time origin is the earliest of the
        whole batch before any point's default ``time`` is measured from it.
        """
        out: list[Record] = []
        batch = logs if isinstance(logs, list) else list(logs)
        for log in batch:
            self._state(log.resource, log.timestamp, out)
        for log in batch:
            state = self._state(log.resource, log.timestamp, out)
            event_name = log.event_name or log.attributes.get("event.name")
            if event_name == cv.METRICS_EVENT:
                record = self.metric_record(state, log.body, log.attributes, log.timestamp)
                if record is not None:
                    out.append(record)
                continue
            message = _text(log.body)
            if not message:
                self._skip("log record with an empty body")
                continue
            if "exception.type" in log.attributes and event_name != cv.EVENT_EVENT:
                message = f"{message}\n{_exception_message(log.attributes)}"
            level = cv.log_level_for(log.severity_number)
            message = clean_text(message, "a log record's body")
            out.append(EventRecord(state.ref, message, log.timestamp, level))
        return out

    def run_state(self, resource: Mapping[str, Any], when: float, out: list[Record]) -> RunState:
        """The run a Resource names (for adapters with a fast path; see ``logs``)."""
        return self._state(resource, when, out)

    def metric_record(
        self, state: RunState, body: Any, attributes: Mapping[str, Any], timestamp: float
    ) -> MetricRecord | None:
        """One ``simvue.metrics`` log record's point (the rules of section 5 of the
        conventions); ``logs`` uses it, and so does the SDK adapter's fast path."""
        if not isinstance(body, Mapping):
            self._warn_once(
                f"mbody:{state.ref.key}",
                "a %s log record's body must be a map of metric values, not %s; skipped",
                cv.METRICS_EVENT,
                type(body).__name__,
            )
            self._skip(f"{cv.METRICS_EVENT} record whose body is not a map of metric values")
            return None
        # Fast path: every value already a float or int (the Run layer's case).
        if all(raw.__class__ is float or raw.__class__ is int for raw in body.values()):
            values: dict[str, float] = dict(body)
        else:
            values = self._numeric_values(state, body)
        good = self._metric_names
        if not all(name in good for name in values):
            values = self._named(state, values)
        if not values:
            self._skip(f"{cv.METRICS_EVENT} record with no numeric value")
            return None
        return _metric_point(
            state,
            values,
            attributes.get(cv.METRICS_STEP),
            attributes.get(cv.METRICS_TIME),
            timestamp,
        )

    def metric_rows(self, rows: Iterable[MetricRow]) -> list[Record]:
        """Records for ``simvue.metrics`` log records given by their fields (a
        :data:`~.model.MetricRow`), the form in which a ``Run`` hands its records to an
        in-process pipeline (one tuple per call, no SDK object). The body is a dict of int
        and float values (validated by the ``Run``); the step and time rules are those of
        ``metric_record``, in :func:`_metric_point`."""
        out: list[Record] = []
        state_for = self._state
        point = _metric_point
        last: Mapping[str, Any] | None = None
        state: RunState | None = None
        append = out.append
        for resource, body, step, elapsed, stamp in rows:
            if resource is not last or state is None:
                state = state_for(resource, stamp, out)
                last = resource
            else:
                state.last_seen = stamp
                if stamp < state.origin:
                    state.origin = stamp
            append(point(state, body, step, elapsed, stamp))
        return out

    def _named(self, state: RunState, values: Mapping[Any, float]) -> dict[str, float]:
        """Values under names a server takes (the official client's rule, conventions §5):
        a name that breaks it has each run of refused characters (a lone surrogate too)
        replaced with ``_`` and is cut to 255 characters, logged once; a name that is left
        empty is left out."""
        good = self._metric_names
        if len(good) > 100_000:
            good.clear()
        out: dict[str, float] = {}
        for name, value in values.items():
            text = str(name)
            if text not in good:
                fixed = _METRIC_BAD.sub("_", text)[: cv.MAX_NAME_LENGTH]
                if fixed != text:
                    self._warn_once(
                        f"mname:{state.ref.key}:{text[:100]}",
                        "metric name %r of run %s holds characters a Simvue metric name "
                        "cannot (or is longer than %d): sent as %r",
                        text[:300],
                        state.ref.key,
                        cv.MAX_NAME_LENGTH,
                        fixed,
                    )
                    text = fixed
                if not text:
                    continue
                good.add(text)
            out[text] = value
        return out

    def _numeric_values(self, state: RunState, body: Mapping[str, Any]) -> dict[str, float]:
        values: dict[str, float] = {}
        for name, raw in body.items():
            number = _number(raw)
            if number is None:
                self._warn_once(
                    f"mval:{state.ref.key}:{name}",
                    "metric %r of run %s has a non-numeric value %r; left out",
                    name,
                    state.ref.key,
                    raw,
                )
                continue
            values[str(name)] = number
        return values

    # -- metrics from the app's own instruments -------------------------------------------

    def metrics(self, metrics: Iterable[OtelMetric]) -> list[Record]:
        """One metric record per run and export time, holding every instrument's value.

        The run of a metric is looked up once for all its points (they share its Resource):
        its time origin is then moved back to the metric's earliest point, as looking it up
        at each point would, before any point's ``time`` is measured from it.
        """
        out: list[Record] = []
        grouped: dict[tuple[str, int], tuple[RunState, float, dict[str, float]]] = {}
        for metric in metrics:
            points = metric.points
            if not points:
                continue
            state = self._state(metric.resource, points[0].timestamp, out)
            key = state.ref.key
            resources = metric.name in RESOURCE_METRICS
            base_name = metric.name
            if base_name not in self._metric_names:
                base_name = next(iter(self._named(state, {base_name: 0.0})), "metric")
            room = 240 - len(base_name)
            earliest = state.origin
            for point in points:
                stamp = point.timestamp
                if stamp < earliest:
                    earliest = stamp
                slot = (key, int(stamp * 1000))
                entry = grouped.get(slot)
                if entry is None:
                    entry = grouped[slot] = (state, stamp, {})
                values = entry[2]
                value = point.value
                attributes = point.attributes
                if isinstance(value, HistogramValue):
                    name = base_name + _suffix(attributes, room) if attributes else base_name
                    _histogram_values(name, value, values)
                    continue
                if resources:
                    simvue = resource_metric(base_name, attributes, value, metric.resource)
                    if simvue is not None:  # OTel's resource metric as Simvue's (section 8)
                        values[simvue[0]] = simvue[1]
                        continue
                name = base_name + _suffix(attributes, room) if attributes else base_name
                values[name] = value
            state.origin = earliest
            state.last_seen = points[-1].timestamp
        for (_key, _ms), (state, stamp, values) in sorted(grouped.items(), key=lambda i: i[0][1]):
            if not values:
                continue
            step = state.instrument_step
            state.instrument_step += 1
            elapsed = max(0.0, stamp - state.origin)
            out.append(MetricRecord(state.ref, values, step, elapsed, stamp, state.counter))
        return out

    # -- end of process -------------------------------------------------------------------

    def finish_foreign(self, status: str | None = None, when: float | None = None) -> list[Record]:
        """Final state for every run this process fed without a ``simvue.run`` span (foreign
        runs, and keyed runs that only sent data): the exporting process is ending, and
        without this they would wait for the server to call them lost."""
        now = when if when is not None else self._clock()
        status = status or self.unset_status
        out: list[Record] = []
        for s in self._runs.values():
            if s.has_state:
                continue
            if s.foreign and "record" in s.extra:
                out.append(
                    dataclasses.replace(s.extra["record"], status=status, observed=now, ended=now)
                )
            elif not s.foreign:
                out.append(
                    RunRecord(run=s.ref, status=status, observed=now, started=s.origin, ended=now)
                )
        return out


def _metric_point(
    state: RunState,
    values: Mapping[str, float],
    step_attr: Any,
    time_attr: Any,
    timestamp: float,
) -> MetricRecord:
    """A point of validated ``values`` at the ``simvue.metrics.step`` and ``.time``
    attributes given (or the run's next step, and time since its origin): the one step
    and time rule of every way a metric point comes in."""
    if step_attr.__class__ is int and step_attr >= 0:
        step = step_attr
        if step >= state.metric_step:
            state.metric_step = step + 1
    else:
        step = state.metric_step
        state.metric_step += 1
    if time_attr.__class__ is not float:
        time_attr = _number(time_attr)
    elapsed = time_attr if time_attr is not None else max(0.0, timestamp - state.origin)
    return MetricRecord(state.ref, values, step, elapsed, timestamp)


def _histogram_values(name: str, value: HistogramValue, out: dict[str, float]) -> None:
    """A histogram or summary point as Simvue metrics (conventions section 7): count, sum,
    mean, min and max when known, and one metric per summary quantile."""
    out[f"{name}.count"] = value.count
    if value.sum is not None:
        out[f"{name}.sum"] = value.sum
        if value.count:
            out[f"{name}.mean"] = value.sum / value.count
    for part in ("min", "max"):
        extreme = getattr(value, part)
        if extreme is not None and math.isfinite(extreme) and value.count:
            out[f"{name}.{part}"] = extreme
    for quantile, number in value.quantiles:
        if math.isfinite(number) and value.count:
            out[cv.quantile_metric(name, quantile)] = number


def _suffix(attributes: Mapping[str, Any], room: int = 255) -> str:
    """An attribute set as a metric-name suffix Simvue accepts: ``(k=v k2=v2)``, cut to
    fit ``room`` characters (Simvue metric names are at most 255 long)."""
    if not attributes:
        return ""
    parts = [
        _METRIC_BAD.sub("_", f"{k}={v}") for k, v in sorted(attributes.items(), key=lambda i: i[0])
    ]
    text = "(" + " ".join(parts) + ")"
    if len(text) > room:
        text = text[: max(0, room - 4)] + "...)"
    return text
