"""`simvue-otel bridge` end to end: official OTLP exporters (HTTP protobuf, HTTP JSON, gRPC) and
raw requests → a real bridge subprocess → the real local server, asserting the exact server state
(the same state the in-process exporters give for the same program)."""

from __future__ import annotations

import base64
import gzip
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests
from google.protobuf import json_format
from google.rpc import status_pb2
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    SimpleSpanProcessor,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from simvue_otel._internal.client import SimvueClient, parse_timestamp
from tests.helpers import (
    Bridge,
    LocalServer,
    cpu_seconds,
    free_port,
    make_app,
    run_program,
    run_state,
    start_bridge,
    start_server,
    stop_server,
)
from tests.helpers.bridges import bridge_poll, comparable, drained, health, state_of
from tests.helpers.otlp import NO_PROXY, T0, add_run, otlp_app, run_request

PROTOBUF = {"Content-Type": "application/x-protobuf"}
JSON = {"Content-Type": "application/json"}


# -- helpers -------------------------------------------------------------------------------


def folder_for(what: str) -> str:
    return f"/bridge/{what}-{uuid.uuid4().hex[:12]}"


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_bridge(
    local_server: LocalServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Bridge]:
    """One tokenless loopback bridge for the tests that do not stop or starve it."""
    bridge = start_bridge(tmp_path_factory.mktemp("shared-bridge"), local_server)
    yield bridge
    bridge.stop()


@pytest.fixture(scope="module")
def reference(
    local_server: LocalServer,
    module_client: SimvueClient,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[str, dict[str, Any]]:
    """The state `run_program` gives through the in-process exporters: (folder, state)."""
    folder = folder_for("same")
    app = make_app("online", tmp_path_factory.mktemp("ref"), local_server, "bridge-run", folder)
    run_program(app)
    assert app.close()
    state = comparable(run_state(module_client, app.key), app.key)
    assert state["status"] == "completed" and len(state["metrics"]["loss"]) == 50
    assert any(m == "span 'assemble'" for m, _ in state["events"])
    return folder, state


# -- 1, 2: official exporters give the in-process state --------------------------------------


@pytest.mark.parametrize(
    "kind", ["proto-gzip", "proto", "proto-deflate", "json", "json-gzip", "grpc", "grpc-gzip"]
)
def test_official_exporters_through_the_bridge_give_the_in_process_state(
    kind: str,
    shared_bridge: Bridge,
    client: SimvueClient,
    reference: tuple[str, dict[str, Any]],
) -> None:
    folder, expected = reference
    app = otlp_app(kind, "bridge-run", folder, shared_bridge)
    run_program(app)
    app.close()
    drained(shared_bridge)
    assert state_of(client, app.key, expected) == expected


# -- 3: token ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def token_bridge(
    local_server: LocalServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Bridge]:
    bridge = start_bridge(tmp_path_factory.mktemp("token-bridge"), local_server, token="s3cret")
    yield bridge
    bridge.stop()


@pytest.mark.parametrize(
    "authorization", [None, "Bearer nope", "Bearer s3cre", "Basic s3cret", "s3cret", "Bearer "]
)
def test_http_without_the_right_token_is_401(
    token_bridge: Bridge, authorization: str | None
) -> None:
    headers = dict(PROTOBUF)
    if authorization is not None:
        headers["Authorization"] = authorization
    body = run_request(str(uuid.uuid4()), "/bridge/never").SerializeToString()
    reply = requests.post(token_bridge.url + "/v1/traces", data=body, headers=headers, timeout=10)
    assert reply.status_code == 401
    assert reply.headers["WWW-Authenticate"] == "Bearer"
    status = status_pb2.Status.FromString(reply.content)
    assert status.code == 16  # UNAUTHENTICATED
    assert status.message

    json_headers = {**headers, **JSON}
    as_json = requests.post(token_bridge.url + "/v1/logs", data=b"{}", headers=json_headers,
                            timeout=10)  # fmt: skip
    assert as_json.status_code == 401
    assert as_json.json()["code"] == 16


def test_http_with_the_token_is_accepted(token_bridge: Bridge, client: SimvueClient) -> None:
    folder = folder_for("token")
    key = str(uuid.uuid4())
    headers = {**PROTOBUF, "Authorization": "Bearer s3cret"}
    body = run_request(key, folder, "with-token").SerializeToString()
    reply = requests.post(token_bridge.url + "/v1/traces", data=body, headers=headers, timeout=10)
    assert reply.status_code == 200
    assert not ExportTraceServiceResponse.FromString(reply.content).HasField("partial_success")
    found = bridge_poll(
        lambda: client.find_run_by_key(key), lambda r: r and r["status"] == "completed", 20
    )
    assert found is not None and found["status"] == "completed"

    # the official exporter, with and without the header
    recorder = InMemorySpanExporter()
    official = str(uuid.uuid4())
    resource = {"simvue.run.key": official, "simvue.run.folder": folder}
    tp = TracerProvider(resource=Resource.create(resource))
    tp.add_span_processor(SimpleSpanProcessor(recorder))
    with tp.get_tracer("t").start_as_current_span("simvue.run"):
        pass
    spans = recorder.get_finished_spans()
    endpoint = token_bridge.url + "/v1/traces"
    without = OTLPSpanExporter(endpoint=endpoint, timeout=5)
    assert without.export(spans) is SpanExportResult.FAILURE
    with_token = OTLPSpanExporter(
        endpoint=endpoint, headers={"Authorization": "Bearer s3cret"}, timeout=5
    )
    assert with_token.export(spans) is SpanExportResult.SUCCESS
    tp.shutdown()
    found = bridge_poll(
        lambda: client.find_run_by_key(official), lambda r: r and r["status"] == "completed", 20
    )
    assert found is not None and found["status"] == "completed"
    assert len(client.find_runs([f"folder.path == {folder}"])) == 2


def test_grpc_token(token_bridge: Bridge) -> None:
    request = ExportTraceServiceRequest()
    with grpc.insecure_channel(token_bridge.grpc, options=NO_PROXY) as channel:
        stub = trace_service_pb2_grpc.TraceServiceStub(channel)
        for metadata in [(), (("authorization", "Bearer nope"),)]:
            with pytest.raises(grpc.RpcError) as err:
                stub.Export(request, metadata=metadata, timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        reply = stub.Export(request, metadata=(("authorization", "Bearer s3cret"),), timeout=10)
        assert isinstance(reply, ExportTraceServiceResponse)
        assert not reply.HasField("partial_success")


@pytest.mark.parametrize("where", ["http", "grpc"])
def test_cli_refuses_to_listen_beyond_loopback_without_a_token(
    local_server: LocalServer, tmp_path: Path, where: str
) -> None:
    # Refused before anything is bound: nothing ever listens beyond loopback here.
    anywhere = "0.0.0.0"  # noqa: S104
    http = f"{anywhere if where == 'http' else '127.0.0.1'}:{free_port()}"
    grpc_at = f"{anywhere if where == 'grpc' else '127.0.0.1'}:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIMVUE_", "OTEL_"))}
    env.update(SIMVUE_URL=local_server.url, SIMVUE_TOKEN=local_server.token,
               SIMVUE_OFFLINE_DIRECTORY=str(tmp_path))  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-m", "simvue_otel", "bridge", "--listen", http, "--grpc-listen", grpc_at],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2, out
    assert "SIMVUE_OTEL_BRIDGE_TOKEN" in out.stderr


# -- 4: bad input --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_bridge(
    local_server: LocalServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Bridge]:
    bridge = start_bridge(
        tmp_path_factory.mktemp("small-bridge"), local_server, extra=["--max-body", "100000"]
    )
    yield bridge
    bridge.stop()


def _valid_body() -> bytes:
    return run_request(str(uuid.uuid4()), "/bridge/bad-input").SerializeToString()


BadRequest = tuple[str, str, "bytes | Callable[[], Iterator[bytes]]", dict[str, str], int]


def _bad_requests() -> list[BadRequest]:
    valid = _valid_body()
    bomb = gzip.compress(b"\0" * 50_000_000, 9)
    assert len(bomb) < 100_000
    return [
        ("malformed protobuf", "traces", b"\xff\xff\xff\xff", PROTOBUF, 400),
        ("protobuf with a short field", "logs", b"\x0a\x05abc", PROTOBUF, 400),
        ("truncated protobuf", "traces", valid[: len(valid) // 2], PROTOBUF, 400),
        ("invalid JSON", "traces", b'{"resourceSpans": [', JSON, 400),
        ("JSON not an object", "metrics", b"[]", JSON, 400),
        ("JSON of the wrong shape", "traces", b'{"resourceSpans": "x"}', JSON, 400),
        ("text/plain", "traces", valid, {"Content-Type": "text/plain"}, 415),
        ("no content type", "traces", valid, {}, 415),
        ("brotli", "traces", valid, {**PROTOBUF, "Content-Encoding": "br"}, 415),
        ("over --max-body", "traces", b"\0" * 150_000, PROTOBUF, 413),
        ("over --max-body, chunked", "traces",
         lambda: (b"\0" * 10_000 for _ in range(15)), PROTOBUF, 413),
        ("gzip bomb", "traces", bomb, {**PROTOBUF, "Content-Encoding": "gzip"}, 413),
        ("truncated gzip", "traces", gzip.compress(valid)[:-12],
         {**PROTOBUF, "Content-Encoding": "gzip"}, 400),
        ("not gzip at all", "traces", valid, {**PROTOBUF, "Content-Encoding": "gzip"}, 400),
        ("empty protobuf request", "traces", b"", PROTOBUF, 200),
        ("empty JSON request", "logs", b"{}", JSON, 200),
    ]  # fmt: skip


def test_bad_input_is_refused_and_the_bridge_keeps_serving(
    small_bridge: Bridge, client: SimvueClient
) -> None:
    for what, signal_name, body, headers, expected in _bad_requests():
        used = cpu_seconds(small_bridge.process)  # CPU time: not inflated by a busy machine
        data = body() if callable(body) else body
        reply = requests.post(
            f"{small_bridge.url}/v1/{signal_name}", data=data, headers=headers, timeout=20
        )
        cost = cpu_seconds(small_bridge.process) - used
        assert reply.status_code == expected, (what, reply.status_code, reply.text[:300])
        if expected != 200 and headers.get("Content-Type") == PROTOBUF["Content-Type"]:
            status = status_pb2.Status.FromString(reply.content)  # google.rpc.Status
            assert status.code != 0 and status.message, what
        elif expected != 200:
            assert reply.json()["code"] != 0, what
        if what == "gzip bomb":
            assert cost < 5, f"the gzip bomb cost the bridge {cost:.1f} s of CPU to refuse"
    assert small_bridge.process.poll() is None
    assert health(small_bridge)["status"] == "ok"

    folder = folder_for("after-bad")
    key = str(uuid.uuid4())
    body = run_request(key, folder, "after-bad", {"simvue.run.description": "still here"})
    reply = requests.post(
        small_bridge.url + "/v1/traces", data=body.SerializeToString(), headers=PROTOBUF,
        timeout=10,
    )  # fmt: skip
    assert reply.status_code == 200
    state = bridge_poll(lambda: run_state(client, key), lambda s: s["status"] == "completed", 20)
    assert state is not None
    assert (state["name"], state["folder"], state["description"]) == (
        "after-bad", folder, "still here"
    )  # fmt: skip
    assert state["events"] == [("span 'solve' ended after 2.0 ms", "info")]
    assert small_bridge.process.poll() is None


def test_wrong_paths_and_methods(small_bridge: Bridge) -> None:
    assert requests.post(small_bridge.url + "/v1/other", data=b"", headers=PROTOBUF,
                         timeout=10).status_code == 404  # fmt: skip
    assert requests.get(small_bridge.url + "/v1/traces", timeout=10).status_code == 405


def test_grpc_message_over_max_body_is_refused(small_bridge: Bridge) -> None:
    big = run_request(str(uuid.uuid4()), "/bridge/too-big", "x" * 200_000)
    with grpc.insecure_channel(small_bridge.grpc, options=NO_PROXY) as channel:
        stub = trace_service_pb2_grpc.TraceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.Export(big, timeout=10)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert stub.Export(ExportTraceServiceRequest(), timeout=10) is not None  # still serving


def test_a_multi_member_gzip_body_is_read_whole(small_bridge: Bridge, client: SimvueClient) -> None:
    """RFC 1952: a gzip body is a series of members (`cat a.gz b.gz`; Go's gzip reader, as in
    the collector, reads them all). Concatenated protobuf requests are one merged request, so
    this body carries both runs, and a 200 for it must mean both arrived, not only the first."""
    folder = folder_for("multi-gzip")
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    body = gzip.compress(run_request(first, folder, "first").SerializeToString()) + gzip.compress(
        run_request(second, folder, "second").SerializeToString()
    )
    assert len(ExportTraceServiceRequest.FromString(gzip.decompress(body)).resource_spans) == 2
    reply = requests.post(small_bridge.url + "/v1/traces", data=body, timeout=10,
                          headers={**PROTOBUF, "Content-Encoding": "gzip"})  # fmt: skip
    assert reply.status_code == 200, reply.content
    drained(small_bridge)
    runs = bridge_poll(
        lambda: client.find_runs([f"folder.path == {folder}"]), lambda r: len(r) >= 2, 60
    )
    assert sorted(r["name"] for r in runs or []) == ["first", "second"]


def _hex_request(key: str, folder: str, trace_id: str) -> dict[str, Any]:
    """A hand-written OTLP/JSON trace request: ids in hex, int64s as strings, enums as ints."""
    resource = {"attributes": [
        {"key": "simvue.run.key", "value": {"stringValue": key}},
        {"key": "simvue.run.name", "value": {"stringValue": "hex-ids"}},
        {"key": "simvue.run.folder", "value": {"stringValue": folder}},
    ]}  # fmt: skip
    spans = [
        {
            "traceId": trace_id, "spanId": "eee19b7ec3c1b174", "name": "simvue.run", "kind": 1,
            "startTimeUnixNano": str(T0), "endTimeUnixNano": str(T0 + 10_000_000),
            "attributes": [
                {"key": "simvue.run.description", "value": {"stringValue": "hex ids"}},
                {"key": "simvue.run.tags",
                 "value": {"arrayValue": {"values": [{"stringValue": "json"}]}}},
                {"key": "simvue.run.metadata.n", "value": {"intValue": "7"}},
            ],
            "status": {"code": 1},
        },
        {
            "traceId": trace_id, "spanId": "eee19b7ec3c1b175",
            "parentSpanId": "eee19b7ec3c1b174", "name": "solve", "kind": 1,
            "startTimeUnixNano": str(T0 + 1_000_000), "endTimeUnixNano": str(T0 + 3_500_000),
            "status": {"code": 2, "message": "diverged"},
        },
    ]  # fmt: skip
    return {"resourceSpans": [{"resource": resource, "scopeSpans": [{"spans": spans}]}]}


def test_otlp_json_hex_ids(small_bridge: Bridge, client: SimvueClient) -> None:
    folder = folder_for("hex")
    key = str(uuid.uuid4())
    # "zzzz..." is valid base64 (what protobuf's own JSON reader expects) but not hex: a 400
    # shows the bridge reads ids as OTLP/JSON's hex.
    refused = requests.post(
        small_bridge.url + "/v1/traces", headers=JSON, timeout=10,
        data=json.dumps(_hex_request(key, folder, "z" * 32)),
    )  # fmt: skip
    assert refused.status_code == 400
    assert "traceId" in refused.json()["message"]

    reply = requests.post(
        small_bridge.url + "/v1/traces", headers=JSON, timeout=10,
        data=json.dumps(_hex_request(key, folder, "5b8efff798038103d269b633813fc60c")),
    )  # fmt: skip
    assert reply.status_code == 200, reply.text
    assert reply.json() == {}
    state = bridge_poll(lambda: run_state(client, key), lambda s: s["status"] == "completed", 20)
    assert state is not None
    assert state["name"] == "hex-ids" and state["folder"] == folder
    assert state["status"] == "completed"
    assert state["description"] == "hex ids" and state["tags"] == ["json"]
    assert state["metadata"] == {"n": 7, "simvue_otel_run_key": key}
    assert state["events"] == [("span 'solve' ended after 2.5 ms with an error: diverged", "error")]
    assert state["metrics"] == {}


# -- 5: partial success --------------------------------------------------------------------


def test_an_unmappable_resource_is_refused_alone_with_partial_success(
    shared_bridge: Bridge, client: SimvueClient
) -> None:
    """`simvue.run.visibility.users` must be a string or a string array; an int cannot be
    mapped. The bridge refuses that Resource's spans (and says so), keeps the other's."""
    folder = folder_for("partial")
    good, bad = str(uuid.uuid4()), str(uuid.uuid4())
    request = run_request(good, folder, "good", {"simvue.run.description": "kept"})
    add_run(request, bad, folder, "bad", {"simvue.run.visibility.users": 5})

    reply = requests.post(shared_bridge.url + "/v1/traces", data=request.SerializeToString(),
                          headers=PROTOBUF, timeout=10)  # fmt: skip
    assert reply.status_code == 200
    partial = ExportTraceServiceResponse.FromString(reply.content).partial_success
    assert partial.rejected_spans == 2  # both spans of the bad Resource
    assert partial.error_message

    only_bad = {"resourceSpans": [_json_of(request)["resourceSpans"][1]]}
    as_json = requests.post(shared_bridge.url + "/v1/traces", headers=JSON, timeout=10,
                            data=json.dumps(only_bad))  # fmt: skip
    assert as_json.status_code == 200
    assert as_json.json()["partialSuccess"]["rejectedSpans"] == "2"

    good_too = str(uuid.uuid4())
    over_grpc = run_request(good_too, folder, "good-too", {"simvue.run.description": "kept"})
    add_run(over_grpc, str(uuid.uuid4()), folder, "bad", {"simvue.run.visibility.users": 5})
    with grpc.insecure_channel(shared_bridge.grpc, options=NO_PROXY) as channel:
        stub = trace_service_pb2_grpc.TraceServiceStub(channel)
        grpc_reply = stub.Export(over_grpc, timeout=10)
    assert grpc_reply.partial_success.rejected_spans == 2
    assert grpc_reply.partial_success.error_message

    drained(shared_bridge)
    for key in (good, good_too):
        state = bridge_poll(
            lambda k=key: run_state(client, k), lambda s: s["status"] == "completed", 20
        )
        assert state is not None and state["description"] == "kept"
        assert state["events"] == [("span 'solve' ended after 2.0 ms", "info")]
    assert len(client.find_runs([f"folder.path == {folder}"])) == 2  # none for the refused


def _json_of(request: ExportTraceServiceRequest) -> dict[str, Any]:
    """OTLP/JSON of a protobuf request (ids in hex, as OTLP/JSON has them)."""
    tree: dict[str, Any] = json_format.MessageToDict(request)
    for resource_spans in tree["resourceSpans"]:
        for scope_spans in resource_spans["scopeSpans"]:
            for span in scope_spans["spans"]:
                for k in ("traceId", "spanId", "parentSpanId"):
                    if k in span:
                        span[k] = base64.b64decode(span[k]).hex()
    return tree


def test_a_nan_retention_is_ignored_not_refused(
    shared_bridge: Bridge, client: SimvueClient
) -> None:
    """docs/conventions.md: `simvue.run.retention_seconds` is "ignored unless a number greater
    than 0"; NaN is not, so the run must be kept as if the attribute were absent."""
    folder = folder_for("nan")
    key = str(uuid.uuid4())
    request = run_request(key, folder, "nan", {"simvue.run.retention_seconds": float("nan"),
                                               "simvue.run.description": "nan ttl"})  # fmt: skip
    reply = requests.post(shared_bridge.url + "/v1/traces", data=request.SerializeToString(),
                          headers=PROTOBUF, timeout=10)  # fmt: skip
    assert reply.status_code == 200
    partial = ExportTraceServiceResponse.FromString(reply.content).partial_success
    assert partial.rejected_spans == 0, partial.error_message
    state = bridge_poll(lambda: run_state(client, key), lambda s: s["status"] == "completed", 20)
    assert state is not None and state["description"] == "nan ttl"


# -- 6: replicas ---------------------------------------------------------------------------


def test_three_replicas_twenty_runs_nothing_lost_nothing_doubled(
    local_server: LocalServer, client: SimvueClient, tmp_path: Path
) -> None:
    replicas = [start_bridge(tmp_path / f"replica-{i}", local_server) for i in range(3)]
    try:
        folder = f"/bridge/replicas-{uuid.uuid4()}"
        rng = random.Random(1234)
        # As the gateway's load-balancing exporter routes: every signal of a run to one
        # replica (the server does not deduplicate runs), the runs spread over all three.
        plans = [[rng.choice(replicas)] * 3 for _ in range(20)]
        assert len({id(b) for plan in plans for b in plan}) == 3  # every replica gets traffic
        apps = [
            otlp_app("proto-gzip", f"replica-{i}", folder, traces, logs, metrics)
            for i, (traces, logs, metrics) in enumerate(plans)
        ]

        def program(i: int) -> None:
            app = apps[i]
            work = app.meter_provider.get_meter("app").create_counter("work")
            with app.tracer.start_as_current_span(
                "simvue.run", attributes={"simvue.run.description": f"run {i}"}
            ):
                for step in range(50):
                    app.metrics({"x": float(step), "y": i + step / 100}, step, t=step * 0.5)
                    work.add(1)
                app.logger.emit(body=f"run {i} done", event_name="simvue.event")
            app.close()

        with ThreadPoolExecutor(max_workers=5) as pool:
            list(pool.map(program, range(20)))
        drained(*replicas)

        filters = [f"folder.path == {folder}"]
        runs = bridge_poll(
            lambda: client.find_runs(filters),
            lambda rs: len(rs) >= 20 and all(r["status"] == "completed" for r in rs),
            30,
        )
        assert runs is not None and len(runs) == 20
        for i, app in enumerate(apps):
            state = run_state(client, app.key)
            assert state["name"] == f"replica-{i}" and state["folder"] == folder
            assert state["status"] == "completed"
            assert state["description"] == f"run {i}"
            assert state["metrics"]["x"] == [(s, float(s), round(s * 0.5, 6)) for s in range(50)]
            assert [(s, v) for s, v, _ in state["metrics"]["y"]] == [
                (s, i + s / 100) for s in range(50)
            ]
            assert [(s, v) for s, v, _ in state["metrics"]["work"]] == [(0, 50)]
            assert state["events"] == [(f"run {i} done", "info")]
        assert len(client.find_runs(filters)) == 20
    finally:
        codes = [b.stop() for b in replicas]
    assert codes == [0, 0, 0]


# -- 7, 8: the server away -----------------------------------------------------------------


def test_server_down_while_the_bridge_receives(tmp_path: Path) -> None:
    server = start_server(tmp_path / "srv")
    port = int(server.url.rsplit(":", 1)[1])
    bridge = start_bridge(tmp_path / "bridge", server)
    try:
        stop_server(server)
        folder = folder_for("down")
        app = otlp_app("proto", "down", folder, bridge)
        with app.tracer.start_as_current_span("simvue.run"):
            for step in range(200):
                app.metrics({"x": float(step)}, step, t=step * 0.1)
                if step % 20 == 0:
                    app.logger.emit(body=f"event {step}", event_name="simvue.event")
        app.close()
        assert health(bridge)["backlog"] >= 1, "the data should wait in the bridge"
        server = start_server(tmp_path / "srv", port=port, db=server.db, first_token=server.token)
        with SimvueClient(server.url, server.token, retries=2) as c:
            state = bridge_poll(
                lambda: run_state(c, app.key),
                lambda s: s["status"] == "completed" and len(s["metrics"].get("x", [])) >= 200
                and len(s["events"]) >= 10,
                30,
            )  # fmt: skip
            drained(bridge, timeout=10)
            state = run_state(c, app.key)
        assert [s for s, _, _ in state["metrics"]["x"]] == list(range(200)), "each point once"
        assert state["events"] == sorted((f"event {s}", "info") for s in range(0, 200, 20))
        assert state["status"] == "completed"
    finally:
        assert bridge.stop() == 0
        stop_server(server)


def test_back_pressure_503_with_retry_after(tmp_path: Path) -> None:
    server = start_server(tmp_path / "srv")
    stop_server(server)
    bridge = start_bridge(tmp_path / "bridge", server, extra=["--max-backlog", "1"])
    try:
        assert health(bridge)["backed_up"] is False
        first = requests.post(
            bridge.url + "/v1/traces", headers=PROTOBUF, timeout=10,
            data=run_request(str(uuid.uuid4()), "/bridge/pressure").SerializeToString(),
        )  # fmt: skip
        assert first.status_code == 200
        for signal_name in ("traces", "logs", "metrics"):
            reply = requests.post(
                f"{bridge.url}/v1/{signal_name}", headers=PROTOBUF, timeout=10,
                data=run_request(str(uuid.uuid4()), "/bridge/pressure").SerializeToString()
                if signal_name == "traces" else b"",
            )  # fmt: skip
            assert reply.status_code == 503, signal_name
            assert int(reply.headers["Retry-After"]) > 0
            assert status_pb2.Status.FromString(reply.content).code == 14  # UNAVAILABLE
        as_json = requests.post(bridge.url + "/v1/logs", headers=JSON, data=b"{}", timeout=10)
        assert as_json.status_code == 503 and "Retry-After" in as_json.headers
        seen = health(bridge)
        assert seen["backed_up"] is True and seen["backlog"] >= 1
        with grpc.insecure_channel(bridge.grpc, options=NO_PROXY) as channel:
            stub = trace_service_pb2_grpc.TraceServiceStub(channel)
            with pytest.raises(grpc.RpcError) as err:
                stub.Export(ExportTraceServiceRequest(), timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        bridge.process.send_signal(signal.SIGKILL)  # its drain would wait 30 s for no server
        bridge.process.wait()


# -- 9: shutdown ---------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_drains_and_exits_0(
    local_server: LocalServer, client: SimvueClient, tmp_path: Path, signum: int
) -> None:
    bridge = start_bridge(tmp_path / "bridge", local_server)
    folder = folder_for("sigterm")
    app = otlp_app("proto", "sigterm", folder, bridge)
    with app.tracer.start_as_current_span("simvue.run"):
        for step in range(100):
            app.metrics({"x": float(step)}, step, t=float(step))
    app.close()
    if signum == signal.SIGTERM:
        assert bridge.stop() == 0  # Bridge.stop sends SIGTERM
    else:
        bridge.process.send_signal(signum)
        try:
            assert bridge.process.wait(timeout=30) == 0
        finally:
            if bridge.process.poll() is None:
                bridge.stop()
    log = bridge.log.read_text()
    assert "Traceback" not in log, log
    state = run_state(client, app.key)  # delivered before exiting: no waiting here
    assert [s for s, _, _ in state["metrics"]["x"]] == list(range(100))
    assert state["status"] == "completed"


def test_a_resent_request_is_stored_once_even_after_a_restart(
    local_server: LocalServer, tmp_path: Path
) -> None:
    """A collector that re-sends a request (its answer was lost) must not double the run's
    points and events, even when the bridge was killed and restarted in between: the server
    would store a second copy, so the bridge must recognise the request itself."""
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
    from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
    from opentelemetry.proto.resource.v1.resource_pb2 import Resource

    key = str(uuid.uuid4())

    def attr(name: str, value: Any) -> KeyValue:
        if isinstance(value, int):
            return KeyValue(key=name, value=AnyValue(int_value=value))
        return KeyValue(key=name, value=AnyValue(string_value=value))

    records = []
    now = time.time_ns()
    for step in range(30):
        body = AnyValue()
        body.kvlist_value.values.append(KeyValue(key="x", value=AnyValue(double_value=float(step))))
        records.append(
            LogRecord(time_unix_nano=now + step, event_name="simvue.metrics", body=body,
                      attributes=[attr("simvue.metrics.step", step)])
        )  # fmt: skip
    records.append(
        LogRecord(time_unix_nano=now, event_name="simvue.event",
                  body=AnyValue(string_value="once"))
    )  # fmt: skip
    request = ExportLogsServiceRequest(
        resource_logs=[
            ResourceLogs(
                resource=Resource(
                    attributes=[attr("simvue.run.key", key), attr("simvue.run.name", "resent"),
                                attr("simvue.run.folder", "/bridge/resent")]
                ),
                scope_logs=[ScopeLogs(log_records=records)],
            )
        ]
    ).SerializeToString()  # fmt: skip
    first = start_bridge(tmp_path / "b1", local_server)
    second: Bridge | None = None
    try:
        for _ in range(2):
            reply = requests.post(
                first.url + "/v1/logs", data=request,
                headers={"Content-Type": "application/x-protobuf"}, timeout=30,
            )  # fmt: skip
            assert reply.status_code == 200
        first.process.kill()
        first.process.wait(30)
        second = start_bridge(tmp_path / "b1", local_server)  # same offline directory
        reply = requests.post(
            second.url + "/v1/logs", data=request,
            headers={"Content-Type": "application/x-protobuf"}, timeout=30,
        )  # fmt: skip
        assert reply.status_code == 200
        with SimvueClient(local_server.url, local_server.token) as client:
            deadline = time.monotonic() + 20
            found = None
            while time.monotonic() < deadline:
                found = client.find_run_by_key(key)
                if found and len(client.get_metrics(found["id"], ["x"]).get("x", [])) >= 30:
                    break
                time.sleep(0.2)
            assert found is not None
            time.sleep(2.0)  # the other bridge's copy has had time to arrive
            points = client.get_metrics(found["id"], ["x"])["x"]
            assert sorted(p["step"] for p in points) == list(range(30)), "stored once"
            assert [e["message"] for e in client.get_events(found["id"])] == ["once"]
    finally:
        first.stop()
        if second is not None:
            second.stop()


def test_a_run_starts_when_its_root_span_started_not_when_the_bridge_first_heard_of_it(
    bridge: Bridge, client: SimvueClient
) -> None:
    """A metric point reaches the bridge first (the run is created then); the root span, which
    began 5.5 s earlier and has ended, comes after: the run's start and end are the span's."""
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )
    from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
    from opentelemetry.proto.resource.v1.resource_pb2 import Resource
    from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans

    key = str(uuid.uuid4())
    resource = Resource(
        attributes=[
            KeyValue(key="simvue.run.key", value=AnyValue(string_value=key)),
            KeyValue(key="simvue.run.name", value=AnyValue(string_value="late-root")),
        ]
    )
    end = time.time_ns()
    start = end - 5_500_000_000
    body = AnyValue()
    body.kvlist_value.values.append(KeyValue(key="x", value=AnyValue(double_value=1.0)))
    logs = ExportLogsServiceRequest(
        resource_logs=[
            ResourceLogs(
                resource=resource,
                scope_logs=[
                    ScopeLogs(
                        log_records=[
                            LogRecord(
                                time_unix_nano=start + 1_500_000_000,
                                event_name="simvue.metrics",
                                body=body,
                            )
                        ]
                    )
                ],
            )
        ]
    )
    headers = {"Content-Type": "application/x-protobuf"}
    reply = requests.post(
        bridge.url + "/v1/logs", data=logs.SerializeToString(), headers=headers, timeout=30
    )
    assert reply.status_code == 200
    found = bridge_poll(lambda: client.find_run_by_key(key), lambda r: r is not None, 20)
    assert found is not None
    root = Span(
        trace_id=uuid.uuid4().bytes,
        span_id=os.urandom(8),
        name="simvue.run",
        start_time_unix_nano=start,
        end_time_unix_nano=end,
    )
    spans = ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(resource=resource, scope_spans=[ScopeSpans(spans=[root])])]
    )
    reply = requests.post(
        bridge.url + "/v1/traces", data=spans.SerializeToString(), headers=headers, timeout=30
    )
    assert reply.status_code == 200
    run = bridge_poll(lambda: client.get_run(found["id"]), lambda r: r["status"] == "completed", 20)
    assert parse_timestamp(run["started"]) == pytest.approx(start / 1e9, abs=1e-3)
    assert parse_timestamp(run["endtime"]) == pytest.approx(end / 1e9, abs=1e-3)
