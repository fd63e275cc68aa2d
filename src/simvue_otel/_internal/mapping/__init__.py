"""OTel telemetry → Simvue records: the neutral model, its adapters, and the one mapping."""

from .mapper import SPAN_EVENT_POLICIES, Mapper
from .model import OtelEvent, OtelLog, OtelMetric, OtelPoint, OtelSpan
from .records import EventRecord, MetricRecord, Record, RunRecord, RunRef

__all__ = [
    "SPAN_EVENT_POLICIES",
    "EventRecord",
    "Mapper",
    "MetricRecord",
    "OtelEvent",
    "OtelLog",
    "OtelMetric",
    "OtelPoint",
    "OtelSpan",
    "Record",
    "RunRecord",
    "RunRef",
]
