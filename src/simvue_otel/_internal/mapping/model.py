"""A neutral, minimal view of OTel telemetry: what the mapping reads, whatever the source.

The in-process exporters build it from OTel SDK objects (:mod:`.sdk`), the bridge from OTLP
protobuf; the mapping (:mod:`.mapper`) only ever sees these classes, which is what lets both
share it unchanged. Times are epoch seconds (floats); ids are ints; attribute values are plain
Python (str, bool, int, float, lists of those, dicts for OTLP maps).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Attributes",
    "HistogramValue",
    "MetricRow",
    "OtelEvent",
    "OtelLog",
    "OtelMetric",
    "OtelPoint",
    "OtelSpan",
]

Attributes = Mapping[str, Any]

MetricRow = tuple[Attributes, dict[str, float], int, float, float]
"""A ``simvue.metrics`` log record given by its fields: ``(Resource attributes, body, step,
time, timestamp)``, as a ``Run`` hands it to an in-process pipeline (a plain tuple: it is
made once per call on the caller's thread). The mapping reads it as it reads the record."""

STATUS_UNSET = "unset"
STATUS_OK = "ok"
STATUS_ERROR = "error"


@dataclass(slots=True)
class OtelEvent:
    """A span event."""

    name: str
    timestamp: float
    attributes: Attributes = field(default_factory=dict)


@dataclass(slots=True)
class OtelSpan:
    """An ended span, or (``end`` None) a span that has just started."""

    resource: Attributes
    name: str
    trace_id: int
    span_id: int
    parent_span_id: int | None
    start: float
    end: float | None
    attributes: Attributes = field(default_factory=dict)
    status: str = STATUS_UNSET
    status_message: str = ""
    events: Sequence[OtelEvent] = ()


@dataclass(slots=True)
class OtelLog:
    """A log record (``event_name`` is OTel's first-class field, or the ``event.name``
    attribute older senders use)."""

    resource: Attributes
    body: Any
    timestamp: float
    attributes: Attributes = field(default_factory=dict)
    event_name: str | None = None
    severity_number: int | None = None
    severity_text: str | None = None
    trace_id: int | None = None


@dataclass(slots=True)
class HistogramValue:
    """The parts of a histogram (or summary) point that become Simvue metrics; ``quantiles``
    are a summary's ``(quantile, value)`` pairs."""

    count: int
    sum: float | None
    min: float | None = None
    max: float | None = None
    quantiles: tuple[tuple[float, float], ...] = ()


@dataclass(slots=True)
class OtelPoint:
    """One data point: a number (gauge, sum) or a histogram."""

    attributes: Attributes
    timestamp: float
    start: float | None
    value: float | HistogramValue


@dataclass(slots=True)
class OtelMetric:
    """One instrument's points from one export; ``kind`` is gauge, sum or histogram."""

    resource: Attributes
    name: str
    kind: str
    points: Sequence[OtelPoint]
    monotonic: bool = False
    cumulative: bool = True
