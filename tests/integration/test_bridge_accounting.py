"""What the bridge answers for what it keeps: partial success counts every record it refused or
skipped (with the reason), OTLP summaries keep their quantiles, a point's default ``time`` never
collapses to 0 when an earlier batch arrives late, and ``Retry-After`` is what the docs say.

Real bridge subprocesses and the real local server; requests are protobuf and OTLP/JSON built
as the specification shows, and gRPC through the generated stubs, so the replies can be read.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests
from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    Metric,
    ResourceMetrics,
    ScopeMetrics,
    Summary,
    SummaryDataPoint,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from simvue_otel._internal.client import SimvueClient
from tests.helpers import Bridge, LocalServer, start_bridge
from tests.helpers.bridges import bridge_poll, drained
from tests.helpers.otlp import NO_PROXY, run_request

PROTOBUF = {"Content-Type": "application/x-protobuf"}
JSON = {"Content-Type": "application/json"}
DOCS = Path(__file__).resolve().parents[2] / "docs"


def _value(value: Any) -> AnyValue:
    if isinstance(value, dict):
        out = AnyValue()
        out.kvlist_value.values.extend(KeyValue(key=k, value=_value(v)) for k, v in value.items())
        return out
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    return AnyValue(string_value=value)


def _resource(key: str, name: str) -> Resource:
    return Resource(
        attributes=[
            KeyValue(key="simvue.run.key", value=_value(key)),
            KeyValue(key="simvue.run.name", value=_value(name)),
            KeyValue(key="simvue.run.folder", value=_value("/bridge/accounting")),
        ]
    )


def _record(stamp_ns: int, body: Any, event: str | None = None, **attrs: Any) -> LogRecord:
    record = LogRecord(
        time_unix_nano=stamp_ns,
        event_name=event or "",
        attributes=[KeyValue(key=k.replace("_", "."), value=_value(v)) for k, v in attrs.items()],
    )
    if body is not None:
        record.body.CopyFrom(_value(body))
    return record


def _logs(key: str, name: str, records: list[LogRecord]) -> ExportLogsServiceRequest:
    return ExportLogsServiceRequest(
        resource_logs=[
            ResourceLogs(resource=_resource(key, name), scope_logs=[ScopeLogs(log_records=records)])
        ]
    )


@pytest.fixture(scope="module")
def accounting_bridge(
    local_server: LocalServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Bridge]:
    bridge = start_bridge(tmp_path_factory.mktemp("accounting-bridge"), local_server)
    yield bridge
    bridge.stop()


def _points(client: SimvueClient, key: str, names: list[str], count: int) -> dict[str, Any]:
    """The run's points of ``names`` once each has ``count`` of them."""

    def fetch() -> dict[str, Any]:
        found = client.find_run_by_key(key)
        assert found is not None
        return client.get_metrics(found["id"], names)

    result = bridge_poll(fetch, lambda m: all(len(m.get(n, [])) >= count for n in names), 20)
    assert result is not None, f"no run {key}"
    return dict(result)


# -- partial success: every record refused or skipped is counted ----------------------------


def _mixed_request(key: str) -> ExportLogsServiceRequest:
    """One good metric point, one `simvue.metrics` record with a string body, one with no
    numeric value, one log record with no body, one good event."""
    now = time.time_ns()
    return _logs(
        key,
        "partial",
        [
            _record(now, {"x": 1.0}, "simvue.metrics", simvue_metrics_step=0),
            _record(now + 1, "x=2", "simvue.metrics", simvue_metrics_step=1),
            _record(now + 2, {"x": "two"}, "simvue.metrics", simvue_metrics_step=2),
            _record(now + 3, None),
            _record(now + 4, "kept", "simvue.event"),
        ],
    )


@pytest.mark.parametrize("transport", ["protobuf", "json", "grpc"])
def test_skipped_records_are_refused_in_partial_success(
    accounting_bridge: Bridge, client: SimvueClient, transport: str
) -> None:
    key = str(uuid.uuid4())
    request = _mixed_request(key)
    if transport == "grpc":
        with grpc.insecure_channel(accounting_bridge.grpc, options=NO_PROXY) as channel:
            stub = logs_service_pb2_grpc.LogsServiceStub(channel)
            reply = stub.Export(request, timeout=30)
    elif transport == "protobuf":
        answer = requests.post(accounting_bridge.url + "/v1/logs", headers=PROTOBUF, timeout=30,
                               data=request.SerializeToString())  # fmt: skip
        assert answer.status_code == 200, answer.content
        reply = ExportLogsServiceResponse.FromString(answer.content)
    else:
        tree = json_format.MessageToDict(request)
        answer = requests.post(accounting_bridge.url + "/v1/logs", headers=JSON, json=tree,
                               timeout=30)  # fmt: skip
        assert answer.status_code == 200, answer.content
        reply = json_format.ParseDict(answer.json(), ExportLogsServiceResponse())
    partial = reply.partial_success
    assert partial.rejected_log_records == 3, partial
    message = partial.error_message
    assert "simvue.metrics record whose body is not a map" in message, message
    assert "simvue.metrics record with no numeric value" in message, message
    assert "log record with an empty body" in message, message
    assert "3 log record(s)" not in message  # each reason counted on its own
    drained(accounting_bridge)
    points = _points(client, key, ["x"], 1)
    assert [(p["step"], p["value"]) for p in points["x"]] == [(0, 1.0)]
    run = client.find_run_by_key(key)
    assert run is not None
    assert [e["message"] for e in client.get_events(run["id"])] == ["kept"]


def test_a_clean_request_has_no_partial_success(accounting_bridge: Bridge) -> None:
    request = _logs(str(uuid.uuid4()), "clean",
                    [_record(time.time_ns(), {"x": 1.0}, "simvue.metrics")])  # fmt: skip
    answer = requests.post(accounting_bridge.url + "/v1/logs", headers=PROTOBUF, timeout=30,
                           data=request.SerializeToString())  # fmt: skip
    assert answer.status_code == 200
    assert not ExportLogsServiceResponse.FromString(answer.content).HasField("partial_success")


# -- summaries: their quantiles become metrics ----------------------------------------------


def test_summary_quantiles_become_metrics(accounting_bridge: Bridge, client: SimvueClient) -> None:
    key = str(uuid.uuid4())
    now = time.time_ns()
    quantiles = [(0.0, 1.5), (0.5, 4.0), (0.99, 9.5), (1.0, 10.0)]
    point = SummaryDataPoint(
        start_time_unix_nano=now - 10**9,
        time_unix_nano=now,
        count=8,
        sum=40.0,
        attributes=[KeyValue(key="route", value=_value("/solve"))],
        quantile_values=[
            SummaryDataPoint.ValueAtQuantile(quantile=q, value=v) for q, v in quantiles
        ],
    )
    request = ExportMetricsServiceRequest(
        resource_metrics=[
            ResourceMetrics(
                resource=_resource(key, "summary"),
                scope_metrics=[
                    ScopeMetrics(
                        metrics=[Metric(name="latency", summary=Summary(data_points=[point]))]
                    )
                ],
            )
        ]
    )
    answer = requests.post(accounting_bridge.url + "/v1/metrics", headers=PROTOBUF, timeout=30,
                           data=request.SerializeToString())  # fmt: skip
    assert answer.status_code == 200
    reply = ExportMetricsServiceResponse.FromString(answer.content)
    assert not reply.HasField("partial_success"), reply
    base = "latency(route=/solve)"
    expected = {
        f"{base}.count": 8, f"{base}.sum": 40.0, f"{base}.mean": 5.0,
        f"{base}.q0": 1.5, f"{base}.q0.5": 4.0, f"{base}.q0.99": 9.5, f"{base}.q1": 10.0,
    }  # fmt: skip
    points = _points(client, key, list(expected), 1)
    assert {name: [p["value"] for p in points[name]] for name in expected} == {
        name: [value] for name, value in expected.items()
    }


# -- time origin: a late batch of earlier points -------------------------------------------


def test_points_of_a_late_earlier_batch_keep_their_times(
    accounting_bridge: Bridge, client: SimvueClient
) -> None:
    """Points without `simvue.metrics.time` are timed from the run's origin. A batch of points
    logged earlier that arrives after a later batch moves the origin back: its points are
    timed from their own first one, never all 0."""
    key = str(uuid.uuid4())
    t0 = time.time_ns() - 60 * 10**9
    later = [_record(t0 + (10 + i) * 10**9, {"y": float(10 + i)}, "simvue.metrics",
                     simvue_metrics_step=10 + i) for i in range(5)]  # fmt: skip
    earlier = [_record(t0 + i * 10**9, {"y": float(i)}, "simvue.metrics",
                       simvue_metrics_step=i) for i in range(5)]  # fmt: skip
    for batch in (later, earlier):
        answer = requests.post(accounting_bridge.url + "/v1/logs", headers=PROTOBUF, timeout=30,
                               data=_logs(key, "late", batch).SerializeToString())  # fmt: skip
        assert answer.status_code == 200
    points = _points(client, key, ["y"], 10)
    times = {p["step"]: round(p["time"], 6) for p in points["y"]}
    assert [times[s] for s in range(5)] == [0.0, 1.0, 2.0, 3.0, 4.0]
    # The later batch was timed from the origin known when it arrived: its own first point.
    assert [times[s] for s in range(10, 15)] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert all(t >= 0 for t in times.values())


def test_an_unsorted_batch_is_timed_from_its_earliest_point(
    accounting_bridge: Bridge, client: SimvueClient
) -> None:
    key = str(uuid.uuid4())
    t0 = time.time_ns() - 60 * 10**9
    order = [3, 0, 4, 1, 2]
    batch = [_record(t0 + i * 10**9, {"z": float(i)}, "simvue.metrics",
                     simvue_metrics_step=i) for i in order]  # fmt: skip
    answer = requests.post(accounting_bridge.url + "/v1/logs", headers=PROTOBUF, timeout=30,
                           data=_logs(key, "unsorted", batch).SerializeToString())  # fmt: skip
    assert answer.status_code == 200
    points = _points(client, key, ["z"], 5)
    assert sorted((p["step"], round(p["time"], 6)) for p in points["z"]) == [
        (i, float(i)) for i in range(5)
    ]


# -- Retry-After: the answer and the docs agree ---------------------------------------------


def test_retry_after_is_what_the_docs_say(local_server: LocalServer, tmp_path: Path) -> None:
    from tests.helpers import start_server, stop_server

    mentioned = {
        int(n)
        for page in DOCS.glob("*.md")
        for n in re.findall(r"Retry-After: (\d+)", page.read_text())
    }
    assert len(mentioned) == 1, f"the docs give several Retry-After values: {mentioned}"
    server = start_server(tmp_path / "srv")
    stop_server(server)
    bridge = start_bridge(tmp_path / "bridge", server, extra=["--max-backlog", "1"])
    try:
        body = run_request(str(uuid.uuid4()), "/bridge/retry-after").SerializeToString()
        first = requests.post(bridge.url + "/v1/traces", headers=PROTOBUF, data=body, timeout=10)
        assert first.status_code == 200
        second = requests.post(bridge.url + "/v1/traces", headers=PROTOBUF, data=body, timeout=10)
        assert second.status_code == 503
        assert {int(second.headers["Retry-After"])} == mentioned
    finally:
        bridge.process.kill()  # its drain would wait for a server that is gone
        bridge.process.wait()


# -- system facts from any producer's Resource ---------------------------------------------------


def test_a_resource_with_host_name_fills_the_run_system_through_the_bridge(
    accounting_bridge: Bridge, client: SimvueClient
) -> None:
    """An OTel-only app (no simvue.* attributes) whose SDK ran the host and os detectors: the
    run the bridge makes for it says which host and platform it ran on."""
    service = f"svc-{uuid.uuid4().hex[:8]}"
    resource = Resource(
        attributes=[
            KeyValue(key=k, value=_value(v))
            for k, v in {
                "service.name": service,
                "service.instance.id": str(uuid.uuid4()),
                "host.name": "node17",
                "host.arch": "aarch64",
                "os.type": "linux",
                "os.version": "6.1.0",
            }.items()
        ]
    )
    request = ExportLogsServiceRequest(
        resource_logs=[
            ResourceLogs(
                resource=resource,
                scope_logs=[ScopeLogs(log_records=[_record(time.time_ns(), "started")])],
            )
        ]
    )
    reply = requests.post(
        accounting_bridge.url + "/v1/logs",
        data=request.SerializeToString(),
        headers={"Content-Type": "application/x-protobuf"},
        timeout=30,
    )
    assert reply.status_code == 200
    found = bridge_poll(lambda: client.find_runs_by_name(service), lambda r: len(r) == 1, 20)
    assert found, f"no run named {service}"
    run = client.get_run(str(found[0]["id"]))
    assert run["system"] == {
        "hostname": "node17",
        "platform": {"system": "Linux", "release": "6.1.0"},
        "cpu": {"arch": "aarch64"},
    }
