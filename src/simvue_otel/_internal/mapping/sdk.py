"""Adapters from OpenTelemetry SDK objects to the neutral model.

Kept apart from the mapping so that the bridge (OTLP protobuf in) never imports SDK export
types, and so the SDK's shapes are read in exactly one place.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from ..conventions import METRICS_EVENT
from . import model
from .mapper import Mapper
from .records import Record

__all__ = [
    "attributes_from_sdk",
    "logs_from_sdk",
    "map_sdk_logs",
    "metrics_from_sdk",
    "span_from_sdk",
    "spans_from_sdk",
]

_NS = 1e-9


def attributes_from_sdk(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    """SDK attributes (a Resource's, a span's) as the mapping reads them: arrays as lists."""
    if not attributes:
        return {}
    out: dict[str, Any] = {}
    for key, value in attributes.items():
        out[key] = list(value) if isinstance(value, tuple) else value
    return out


def _status(span: Any) -> tuple[str, str]:
    status = getattr(span, "status", None)
    if status is None:
        return model.STATUS_UNSET, ""
    name = getattr(status.status_code, "name", "UNSET")
    code = {"OK": model.STATUS_OK, "ERROR": model.STATUS_ERROR}.get(name, model.STATUS_UNSET)
    return code, status.description or ""


def span_from_sdk(
    span: Any, resource_cache: dict[int, dict[str, Any]] | None = None
) -> model.OtelSpan:
    """One SDK span (``ReadableSpan``, or a live ``Span`` seen at start) in the neutral model."""
    resource = span.resource
    if resource_cache is not None:
        attrs = resource_cache.get(id(resource))
        if attrs is None:
            attrs = resource_cache[id(resource)] = attributes_from_sdk(resource.attributes)
    else:
        attrs = attributes_from_sdk(resource.attributes)
    code, message = _status(span)
    parent = span.parent
    end = span.end_time
    return model.OtelSpan(
        resource=attrs,
        name=span.name,
        trace_id=span.context.trace_id,
        span_id=span.context.span_id,
        parent_span_id=parent.span_id if parent is not None else None,
        start=(span.start_time or 0) * _NS,
        end=end * _NS if end is not None else None,
        attributes=attributes_from_sdk(span.attributes),
        status=code,
        status_message=message,
        events=tuple(
            model.OtelEvent(e.name, e.timestamp * _NS, attributes_from_sdk(e.attributes))
            for e in span.events
        ),
    )


def spans_from_sdk(spans: Iterable[Any]) -> list[model.OtelSpan]:
    """SDK ``ReadableSpan`` objects in the neutral model (resources converted once each)."""
    cache: dict[int, dict[str, Any]] = {}
    return [span_from_sdk(s, cache) for s in spans]


def logs_from_sdk(records: Iterable[Any]) -> list[model.OtelLog]:
    """SDK ``ReadableLogRecord``/``ReadWriteLogRecord`` objects in the neutral model."""
    cache: dict[int, dict[str, Any]] = {}
    out: list[model.OtelLog] = []
    for item in records:
        record = item.log_record
        resource = item.resource
        attrs = cache.get(id(resource))
        if attrs is None:
            attrs = cache[id(resource)] = attributes_from_sdk(
                resource.attributes if resource else None
            )
        stamp = record.timestamp or record.observed_timestamp or 0
        severity = record.severity_number
        out.append(
            model.OtelLog(
                resource=attrs,
                body=record.body,
                timestamp=stamp * _NS,
                attributes=record.attributes or {},
                event_name=getattr(record, "event_name", None),
                severity_number=severity.value if severity is not None else None,
                severity_text=record.severity_text,
                trace_id=record.trace_id or None,
            )
        )
    return out


def map_sdk_logs(mapper: Mapper, records: Sequence[Any]) -> list[Record]:
    """``mapper.logs(logs_from_sdk(records))``, with a fast path for ``simvue.metrics``
    records (the bulk of a run's data): their fields go straight to the mapping's
    ``metric_record``, without the intermediate neutral object. Same records, same order."""
    cache: dict[int, dict[str, Any]] = {}
    out: list[Record] = []
    for item in records:
        record = item.log_record
        if record.event_name != METRICS_EVENT or record.body.__class__ is not dict:
            out.extend(mapper.logs(logs_from_sdk([item])))
            continue
        resource = item.resource
        attrs = cache.get(id(resource))
        if attrs is None:
            attrs = cache[id(resource)] = attributes_from_sdk(
                resource.attributes if resource else None
            )
        stamp = (record.timestamp or record.observed_timestamp or 0) * _NS
        state = mapper.run_state(attrs, stamp, out)
        point = mapper.metric_record(state, record.body, record.attributes or {}, stamp)
        if point is not None:
            out.append(point)
    return out


def _points(data: Any) -> Iterator[model.OtelPoint]:
    for point in data.data_points:
        start = point.start_time_unix_nano * _NS if point.start_time_unix_nano else None
        value: float | model.HistogramValue
        if hasattr(point, "value"):
            value = point.value
        else:
            value = model.HistogramValue(
                count=int(point.count),
                sum=point.sum,
                min=getattr(point, "min", None),
                max=getattr(point, "max", None),
            )
        yield model.OtelPoint(
            attributes_from_sdk(point.attributes), point.time_unix_nano * _NS, start, value
        )


def metrics_from_sdk(metrics_data: Any) -> list[model.OtelMetric]:
    """An SDK ``MetricsData`` in the neutral model: one entry per instrument and Resource."""
    out: list[model.OtelMetric] = []
    for resource_metrics in metrics_data.resource_metrics:
        resource = attributes_from_sdk(resource_metrics.resource.attributes)
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                data = metric.data
                kind_name = type(data).__name__
                if kind_name == "Gauge":
                    kind = "gauge"
                elif kind_name == "Sum":
                    kind = "sum"
                elif kind_name in ("Histogram", "ExponentialHistogram"):
                    kind = "histogram"
                else:
                    continue
                temporality = getattr(data, "aggregation_temporality", None)
                out.append(
                    model.OtelMetric(
                        resource=resource,
                        name=metric.name,
                        kind=kind,
                        points=tuple(_points(data)),
                        monotonic=bool(getattr(data, "is_monotonic", False)),
                        cumulative=getattr(temporality, "name", "CUMULATIVE") == "CUMULATIVE",
                    )
                )
    return out
