"""Adapters from OTLP (protobuf messages, or OTLP/JSON) to the neutral model.

The bridge decodes each request here and hands the result to the same :class:`Mapper` the
in-process exporters use. OTLP/JSON is read by rewriting its hex trace and span ids to the
base64 that protobuf's JSON reader expects and then parsing into the same protobuf messages:
``json_format`` alone would silently mis-read the hex ids as base64 (OTLP/JSON differs from
proto3 JSON there). The same pass replaces lone surrogates (which JSON escapes can spell but
protobuf strings cannot hold) with U+FFFD.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from ..validation import clean_text
from .model import (
    STATUS_ERROR,
    STATUS_OK,
    STATUS_UNSET,
    HistogramValue,
    OtelEvent,
    OtelLog,
    OtelMetric,
    OtelPoint,
    OtelSpan,
)

__all__ = [
    "OtlpDecodeError",
    "decode_request",
    "logs_from_otlp",
    "metrics_from_otlp",
    "spans_from_otlp",
]

_ID_KEYS = frozenset({"traceId", "spanId", "parentSpanId"})
_NS = 1e-9
_STATUS = {0: STATUS_UNSET, 1: STATUS_OK, 2: STATUS_ERROR}


class OtlpDecodeError(ValueError):
    """The body is not a valid OTLP request of the expected kind."""


def _hex_ids_to_base64(node: Any) -> Any:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key in _ID_KEYS and isinstance(value, str) and value:
                try:
                    value = base64.b64encode(bytes.fromhex(value)).decode("ascii")
                except ValueError:
                    raise OtlpDecodeError(f"{key} must be hex, not {value[:40]!r}") from None
            else:
                value = _hex_ids_to_base64(value)
            out[key] = value
        return out
    if isinstance(node, list):
        return [_hex_ids_to_base64(item) for item in node]
    if isinstance(node, str):  # JSON's "\udce9" escapes give lone surrogates: U+FFFD instead
        return clean_text(node, "OTLP/JSON text")  # (conventions, "Text"), not a 400
    return node


def decode_request(
    request_type: type[Message], signal: str, body: bytes, content_type: str
) -> Message:
    """An Export*ServiceRequest (``request_type``, of ``signal`` for messages) from a protobuf
    or OTLP/JSON body."""
    message = request_type()
    if content_type == "json":
        try:
            tree = json.loads(body)
        except (UnicodeDecodeError, ValueError) as exc:
            raise OtlpDecodeError(f"the body is not JSON: {exc}") from None
        except RecursionError:  # nesting no OTLP request has: a 400, not a crash
            raise OtlpDecodeError("the body is not OTLP/JSON: it is nested too deeply") from None
        if not isinstance(tree, dict):
            raise OtlpDecodeError("the body must be a JSON object")
        try:
            json_format.ParseDict(_hex_ids_to_base64(tree), message, ignore_unknown_fields=True)
        except json_format.ParseError as exc:
            raise OtlpDecodeError(f"not an OTLP/JSON {signal} request: {exc}") from None
        except RecursionError:
            raise OtlpDecodeError("the body is not OTLP/JSON: it is nested too deeply") from None
        return message
    try:
        message.ParseFromString(body)
    except Exception as exc:  # protobuf raises DecodeError (and sometimes others)
        raise OtlpDecodeError(f"not an OTLP protobuf {signal} request: {exc}") from None
    return message


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind)


def _attrs(attributes: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in attributes}


def _id(raw: bytes) -> int:
    return int.from_bytes(raw, "big")


def spans_from_otlp(request: Any) -> Iterator[tuple[int, list[OtelSpan]]]:
    """Per Resource: (span count, spans), so a failure can be counted against its group."""
    for resource_spans in request.resource_spans:
        resource = _attrs(resource_spans.resource.attributes)
        spans = []
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                end = span.end_time_unix_nano
                spans.append(
                    OtelSpan(
                        resource=resource,
                        name=span.name,
                        trace_id=_id(span.trace_id),
                        span_id=_id(span.span_id),
                        parent_span_id=_id(span.parent_span_id) if span.parent_span_id else None,
                        start=span.start_time_unix_nano * _NS,
                        end=end * _NS if end else None,
                        attributes=_attrs(span.attributes),
                        status=_STATUS.get(span.status.code, STATUS_UNSET),
                        status_message=span.status.message,
                        events=tuple(
                            OtelEvent(e.name, e.time_unix_nano * _NS, _attrs(e.attributes))
                            for e in span.events
                        ),
                    )
                )
        yield len(spans), spans


def logs_from_otlp(request: Any) -> Iterator[tuple[int, list[OtelLog]]]:
    """Per Resource: (record count, log records)."""
    for resource_logs in request.resource_logs:
        resource = _attrs(resource_logs.resource.attributes)
        logs = []
        for scope_logs in resource_logs.scope_logs:
            for record in scope_logs.log_records:
                stamp = record.time_unix_nano or record.observed_time_unix_nano
                logs.append(
                    OtelLog(
                        resource=resource,
                        body=_value(record.body) if record.HasField("body") else None,
                        timestamp=stamp * _NS,
                        attributes=_attrs(record.attributes),
                        event_name=record.event_name or None,
                        severity_number=record.severity_number or None,
                        severity_text=record.severity_text or None,
                        trace_id=_id(record.trace_id) if record.trace_id else None,
                    )
                )
        yield len(logs), logs


def _number_points(points: Any) -> tuple[OtelPoint, ...]:
    # Per data point, on the bridge's hot path: every protobuf field read costs, so each is
    # read once, and an empty attribute list (the common case) is not walked.
    out: list[OtelPoint] = []
    append = out.append
    for point in points:
        value = point.as_int if point.HasField("as_int") else point.as_double
        start = point.start_time_unix_nano
        attributes = point.attributes
        append(
            OtelPoint(
                _attrs(attributes) if attributes else {},
                point.time_unix_nano * _NS,
                start * _NS if start else None,
                value,
            )
        )
    return tuple(out)


def _histogram_points(points: Any, summary: bool = False) -> tuple[OtelPoint, ...]:
    out = []
    for point in points:
        has = point.HasField
        value = HistogramValue(
            count=int(point.count),
            sum=point.sum if summary or has("sum") else None,
            min=None if summary or not has("min") else point.min,
            max=None if summary or not has("max") else point.max,
            quantiles=tuple((q.quantile, q.value) for q in point.quantile_values)
            if summary
            else (),
        )
        start = point.start_time_unix_nano * _NS if point.start_time_unix_nano else None
        out.append(OtelPoint(_attrs(point.attributes), point.time_unix_nano * _NS, start, value))
    return tuple(out)


def metrics_from_otlp(request: Any) -> Iterator[tuple[int, list[OtelMetric]]]:
    """Per Resource: (data point count, metrics)."""
    for resource_metrics in request.resource_metrics:
        resource = _attrs(resource_metrics.resource.attributes)
        metrics = []
        count = 0
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                kind = metric.WhichOneof("data")
                if kind == "gauge":
                    points = _number_points(metric.gauge.data_points)
                    item = OtelMetric(resource, metric.name, "gauge", points)
                elif kind == "sum":
                    points = _number_points(metric.sum.data_points)
                    item = OtelMetric(
                        resource,
                        metric.name,
                        "sum",
                        points,
                        monotonic=metric.sum.is_monotonic,
                        cumulative=metric.sum.aggregation_temporality != 1,  # 1 = DELTA
                    )
                elif kind in ("histogram", "exponential_histogram"):
                    data = getattr(metric, kind)
                    points = _histogram_points(data.data_points)
                    item = OtelMetric(
                        resource,
                        metric.name,
                        "histogram",
                        points,
                        cumulative=data.aggregation_temporality != 1,
                    )
                elif kind == "summary":
                    points = _histogram_points(metric.summary.data_points, summary=True)
                    item = OtelMetric(resource, metric.name, "histogram", points)
                else:
                    continue
                count += len(points)
                metrics.append(item)
        yield count, metrics
