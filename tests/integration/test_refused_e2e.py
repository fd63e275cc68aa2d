"""Refused data never blocks or swallows other data, end to end: the official OTLP exporters
into a real `simvue-otel bridge`, `simvue_otel.Run` online and offline, and `simvue-otel send`,
all against the real local server (through tests/proxy.py where the server must refuse what
simvue-otel no longer sends it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.exporter.otlp.json.http._log_exporter import (
    OTLPLogExporter as JsonLogExporter,
)
from opentelemetry.exporter.otlp.json.http.trace_exporter import (
    OTLPSpanExporter as JsonSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from simvue_otel import Run, SimvueValidationError
from simvue_otel._internal.client import SimvueClient
from simvue_otel._internal.mapping.records import (
    EventRecord,
    MetricRecord,
    Record,
    RunRecord,
    RunRef,
)
from simvue_otel._internal.sink.offline import OfflineSink
from tests.helpers import Bridge, LocalServer, poll, start_bridge, user_metadata
from tests.proxy import Proxy, as_server, serve

CAFE = os.fsdecode(b"caf\xe9")  # "caf\udce9": a Latin-1 file name on a UTF-8 file system
SEND = [sys.executable, "-m", "simvue_otel", "send", "--cache"]


def _deep(levels: int) -> dict[str, Any]:
    tree: dict[str, Any] = {"leaf": 1}
    for _ in range(levels - 1):
        tree = {"level": tree}
    return tree


def run_by_key(client: SimvueClient, key: str) -> dict[str, Any] | None:
    found = client.find_run_by_key(key)
    return None if found is None else client.get_run(str(found["id"]))


def point_count(client: SimvueClient, key: str) -> int:
    found = client.find_run_by_key(key)
    if found is None:
        return 0
    return sum(len(p) for p in client.get_metrics(str(found["id"])).values())


def completed_with_points(client: SimvueClient, key: str, points: int) -> dict[str, Any]:
    """The run of ``key``, asserted to hold ``points`` points and then to be completed (each
    polled for)."""
    assert poll(lambda: point_count(client, key), lambda n: n == points) == points
    got = poll(lambda: run_by_key(client, key), lambda r: r and r["status"] == "completed")
    assert got is not None and got["status"] == "completed"
    return got


def reasons(root: Path) -> list[dict[str, Any]]:
    """Every reason file under a ``rejected`` folder below ``root``."""
    return [json.loads(p.read_text()) for p in sorted(root.rglob("rejected/*.reason.json"))]


class OtlpRun:
    """One run sent by an app instrumented with the OTel SDK alone, through the official
    OTLP/HTTP exporters (protobuf) to a bridge."""

    def __init__(self, bridge: Bridge, name: str, folder: str, root: dict[str, Any]) -> None:
        self.key = str(uuid.uuid4())
        resource = Resource.create(
            {"simvue.run.key": self.key, "simvue.run.name": name, "simvue.run.folder": folder}
        )
        self.tp = TracerProvider(resource=resource)
        self.tp.add_span_processor(
            SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{bridge.url}/v1/traces", timeout=10))
        )
        self.lp = LoggerProvider(resource=resource)
        self.lp.add_log_record_processor(
            SimpleLogRecordProcessor(OTLPLogExporter(endpoint=f"{bridge.url}/v1/logs", timeout=10))
        )
        self.root = root

    def run(self, steps: range, *, state_first: bool = False) -> None:
        """The root span (exported at its end) with ``steps`` metric points and an event;
        ``state_first``: the span ends (so the bridge sees the run's state) before them."""
        with self.tp.get_tracer("app").start_as_current_span("simvue.run", attributes=self.root):
            if not state_first:
                self.data(steps)
        if state_first:
            self.data(steps)

    def data(self, steps: range) -> None:
        logger = self.lp.get_logger("app")
        for step in steps:
            logger.emit(
                body={"loss": 1.0 / (step + 1)},
                event_name="simvue.metrics",
                attributes={"simvue.metrics.step": step},
            )
        logger.emit(body=f"done {steps.stop}", event_name="simvue.event")

    def close(self) -> None:
        self.lp.shutdown()
        self.tp.shutdown()


# -- item 4: a run the server refuses blocks nothing else ---------------------------------


def test_bridge_mends_a_run_the_server_would_refuse_and_the_next_run_flows(
    bridge: Bridge, client: SimvueClient
) -> None:
    """The issue's inputs: retention 2**62 and metadata 80 deep on a root span. They once made
    the server refuse the run (422) and every later batch of every run in the bridge wait
    forever; now the values no server takes are left out (logged) and both runs arrive."""
    folder = f"/refused/{uuid.uuid4().hex[:8]}"
    bad = OtlpRun(
        bridge,
        "bad-run",
        folder,
        {
            "simvue.run.retention_seconds": 2**62,
            "simvue.run.metadata": json.dumps({"deep": _deep(80), "fine": 1}),
        },
    )
    good = OtlpRun(bridge, "good-run", folder, {"simvue.run.metadata.fine": 2})
    try:
        bad.run(range(20), state_first=True)  # its state is the first the bridge hears of it
        good.run(range(50))
    finally:
        bad.close()
        good.close()
    got = completed_with_points(client, good.key, 50)
    assert user_metadata(got) == {"fine": 2}
    mended = poll(lambda: point_count(client, bad.key), lambda n: n == 20)
    mended = run_by_key(client, bad.key)
    assert mended is not None and mended["ttl"] is None
    assert user_metadata(mended) == {"fine": 1}
    assert point_count(client, bad.key) == 20
    log = bridge.log.read_text()
    assert "simvue.run.retention_seconds" in log and "deeper than 32 levels" in log


@pytest.fixture
def refusing(local_server: LocalServer) -> Iterator[Proxy]:
    yield from serve(local_server.url)


def test_bridge_sets_a_refused_run_aside_and_the_good_run_arrives_whole(
    refusing: Proxy, local_server: LocalServer, client: SimvueClient, tmp_path: Path
) -> None:
    """A server refusing a run simvue-otel cannot foresee (the proxy answers the first
    `POST /api/runs` 422): that run and what follows for it go to rejected/ with the
    reason; the good run sent after it arrives whole."""
    bridge = start_bridge(tmp_path / "bridge", as_server(refusing, local_server))
    folder = f"/refused/{uuid.uuid4().hex[:8]}"
    try:
        refusing.rules.append(("POST", "/api/runs", 422))
        bad = OtlpRun(bridge, "refused-run", folder, {"simvue.run.metadata.x": 1})
        good = OtlpRun(bridge, "good-run", folder, {"simvue.run.metadata.x": 2})
        try:
            bad.run(range(10))
            assert poll(lambda: reasons(bridge.offline), lambda r: len(r) >= 1)
            good.run(range(200))
            bad.run(range(10, 20))  # more of the refused run, after it was refused
        finally:
            bad.close()
            good.close()
        got = completed_with_points(client, good.key, 200)
        assert user_metadata(got) == {"x": 2}
        assert client.find_run_by_key(bad.key) is None
        aside = poll(
            lambda: reasons(bridge.offline),
            lambda r: sum(x["metric_values"] for x in r) == 20,
        )
        assert sum(x["metric_values"] for x in aside) == 20
        assert all(x["runs"][0]["key"] == bad.key for x in aside)
        assert all(x["status"] == 422 and "HTTP 422" in x["reason"] for x in aside)
        log = bridge.log.read_text()
        assert sum(bad.key in line and "set aside" in line for line in log.splitlines()) == 1
    finally:
        bridge.stop()


def test_run_refuses_what_the_server_would_refuse_before_sending_and_the_next_run_arrives(
    refusing: Proxy,
    local_server: LocalServer,
    client: SimvueClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SIMVUE_URL", refusing.url)
    monkeypatch.setenv("SIMVUE_TOKEN", local_server.token)
    monkeypatch.setenv("SIMVUE_OFFLINE_DIRECTORY", str(tmp_path / "offline"))
    monkeypatch.delenv("SIMVUE_OTEL_MODE", raising=False)
    folder = f"/refused/{uuid.uuid4().hex[:8]}"
    bad_calls: list[tuple[dict[str, Any], str, str]] = [
        ({"retention_period": 2**62}, "retention_period", "2147483647"),
        ({"retention_period": "100 years"}, "retention_period", "100 years"),
        ({"metadata": {"deep": _deep(80)}}, "metadata", "32 levels"),
        ({"metadata": {"blob": "x" * 2**20}}, "metadata", "1048576 bytes"),
        ({"timeout": 2**62}, "timeout", str(2**62)),
        ({"name": "n" * 256}, "name", "255"),
    ]
    for kwargs, field, shown in bad_calls:
        run = Run()
        with pytest.raises(SimvueValidationError) as info:
            run.init(**{"name": "refused", "folder": folder, **kwargs})
        assert info.value.field == field and shown in str(info.value), str(info.value)
        run.close()
    assert not [r for r in refusing.requests if r.method == "POST" and r.path == "/api/runs"]
    with Run() as run:
        run.init(name="valid", folder=folder, resources_metrics_interval=None)
        with pytest.raises(SimvueValidationError) as info:
            run.log_metrics({"m" * 256: 1.0})
        assert info.value.field == "metrics"
        with pytest.raises(SimvueValidationError):
            run.update_metadata({"deep": _deep(40)})
        for step in range(100):
            run.log_metrics({"loss": float(step)})
        many = {f"m{i}": 0.0 for i in range(9_999)}  # with "loss": the most a run may hold
        run.log_metrics(many, step=0)
        with pytest.raises(SimvueValidationError) as info:
            run.log_metrics({"one.too.many": 1.0})
        assert info.value.field == "metrics" and "10000 distinct" in info.value.rule
        key = run.key
    assert key is not None
    found = client.find_runs([f"folder.path == {folder}"])
    assert [r["name"] for r in found] == ["valid"]
    run_id = found[0]["id"]
    assert len(client.get_metrics(run_id, ["loss"])["loss"]) == 100
    assert len(client.metric_names(run_id)) == 10_000


def _old_spool(cache: Path, folder: str) -> tuple[str, str]:
    """An offline spool as a release before the bounds wrote it: a run the server refuses
    (retention 2**62) and a good run, both with points and events."""
    bad = RunRef(str(uuid.uuid4()), "old-refused", folder)
    good = RunRef(str(uuid.uuid4()), "old-good", folder)
    now = time.time()
    records: list[Record] = []
    for ref, ttl in ((bad, 2**62), (good, 3600)):
        records.append(RunRecord(run=ref, status="running", observed=now, ttl=ttl, started=now))
        records += [MetricRecord(ref, {"x": float(i)}, i, float(i), now + i) for i in range(30)]
        records.append(EventRecord(ref, "hello", now))
        records.append(
            RunRecord(run=ref, status="completed", observed=now + 40, ttl=ttl, ended=now + 40)
        )
    sink = OfflineSink(cache / "otel-spool")
    sink.submit(records[:33])
    sink.submit(records[33:])
    sink.close()
    return bad.key, good.key


def test_send_sets_a_refused_run_aside_delivers_the_rest_and_names_the_run(
    local_server: LocalServer, client: SimvueClient, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    folder = f"/refused/{uuid.uuid4().hex[:8]}"
    bad, good = _old_spool(cache, folder)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIMVUE_")}
    env.update(SIMVUE_URL=local_server.url, SIMVUE_TOKEN=local_server.token)
    first = subprocess.run(
        [*SEND, str(cache)], env=env, capture_output=True, text=True, timeout=120
    )
    assert first.returncode == 3, first.stderr
    assert f"old-refused ({bad})" in first.stderr and "422" in first.stderr
    assert "old-good" not in first.stderr
    got = run_by_key(client, good)
    assert got is not None and got["status"] == "completed" and got["ttl"] == 3600
    assert point_count(client, good) == 30
    assert len(client.get_events(got["id"])) == 1
    assert client.find_run_by_key(bad) is None
    aside = reasons(cache)
    assert sum(x["metric_values"] for x in aside) == 30
    assert sum(x["run_states"] for x in aside) == 1 and sum(x["events"] for x in aside) == 1
    # Not retried forever: the spool is done, a second send has nothing left to do.
    again = subprocess.run(
        [*SEND, str(cache)], env=env, capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 0, again.stderr
    assert point_count(client, good) == 30


# -- item 5: no input loses a run silently ------------------------------------------------


def _assert_cafe_run(client: SimvueClient, run: dict[str, Any] | None) -> None:
    assert run is not None, "the run never arrived"
    assert run["description"] == "read caf\ufffd"
    assert run["folder"].endswith("/caf\ufffd")
    meta = user_metadata(run)
    assert meta["input"] == {"file": "/data/caf\ufffd.dat"}
    assert meta["caf\ufffd"] == 1
    events = [e["message"] for e in client.get_events(run["id"])]
    assert "opened caf\ufffd" in events
    assert sum(len(p) for p in client.get_metrics(run["id"]).values()) == 10


RUN_CAFE = """
import os, sys
from simvue_otel import Run
cafe = os.fsdecode(b"caf\\xe9")
with Run(mode=sys.argv[1]) as run:
    run.init(
        name="cafe", folder=sys.argv[2] + "/" + cafe, description="read " + cafe,
        metadata={"input": {"file": "/data/" + cafe + ".dat"}, cafe: 1},
        resources_metrics_interval=None,
    )
    run.log_event("opened " + cafe)
    for step in range(10):
        run.log_metrics({"x": float(step)})
print("KEY", run.key)
"""


@pytest.mark.parametrize("mode", ["online", "offline"])
def test_a_run_with_non_utf8_file_names_arrives_with_u_fffd(
    mode: str, local_server: LocalServer, client: SimvueClient, tmp_path: Path
) -> None:
    """Metadata, a folder, a description and an event holding ``os.fsdecode(b'caf\\xe9')``:
    the run once vanished (422 online, CodecError offline, a log saying it was kept); now
    each such character is U+FFFD, and the user is told once per field."""
    folder = f"/refused/{uuid.uuid4().hex[:8]}"
    cache = tmp_path / "cache"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIMVUE_", "OTEL_"))}
    env.update(
        SIMVUE_URL=local_server.url,
        SIMVUE_TOKEN=local_server.token,
        SIMVUE_OFFLINE_DIRECTORY=str(cache),
        PYTHONUNBUFFERED="1",
    )
    out = subprocess.run(
        [sys.executable, "-c", RUN_CAFE, mode, folder],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    key = out.stdout.split("KEY ")[-1].strip()
    assert "replaced with U+FFFD" in out.stderr
    assert "kept" not in out.stderr, out.stderr
    if mode == "offline":
        sent = subprocess.run(
            [*SEND, str(cache)], env=env, capture_output=True, text=True, timeout=120
        )
        assert sent.returncode == 0, sent.stderr
    _assert_cafe_run(client, poll(lambda: run_by_key(client, key), lambda r: r is not None))
    assert not reasons(cache)


def test_bridge_replaces_non_utf8_text_from_otlp_json(bridge: Bridge, client: SimvueClient) -> None:
    """The official OTLP/JSON exporter writes a lone surrogate as a ``\\udce9`` escape, which
    JSON decodes back to one: the run once got 422 and blocked the bridge; now it arrives."""
    folder = f"/refused/{uuid.uuid4().hex[:8]}"
    key = str(uuid.uuid4())
    resource = Resource.create(
        {"simvue.run.key": key, "simvue.run.name": "cafe", "simvue.run.folder": f"{folder}/{CAFE}"}
    )
    tp = TracerProvider(resource=resource)
    tp.add_span_processor(
        SimpleSpanProcessor(JsonSpanExporter(endpoint=f"{bridge.url}/v1/traces", timeout=10))
    )
    lp = LoggerProvider(resource=resource)
    lp.add_log_record_processor(
        SimpleLogRecordProcessor(JsonLogExporter(endpoint=f"{bridge.url}/v1/logs", timeout=10))
    )
    attributes = {
        "simvue.run.description": f"read {CAFE}",
        "simvue.run.metadata.input.file": f"/data/{CAFE}.dat",
        f"simvue.run.metadata.{CAFE}": 1,
    }
    with tp.get_tracer("app").start_as_current_span("simvue.run", attributes=attributes) as span:
        span.add_event("opened " + CAFE)
        logger = lp.get_logger("app")
        for step in range(10):
            logger.emit(
                body={"x": float(step)},
                event_name="simvue.metrics",
                attributes={"simvue.metrics.step": step},
            )
    lp.shutdown()
    tp.shutdown()
    got = poll(lambda: run_by_key(client, key), lambda r: r and r["status"] == "completed")
    _assert_cafe_run(client, got)
    assert not reasons(bridge.offline)


def test_a_run_the_server_still_refuses_is_set_aside_and_the_next_run_arrives(
    refusing: Proxy,
    local_server: LocalServer,
    client: SimvueClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What a stricter server refuses past the bounds (the proxy answers the first `POST
    /api/runs` 422): that Run's records are set aside, and the next Run, whose sink picks up
    what the first left in the spool, is delivered instead of waiting behind it for ever."""
    offline = tmp_path / "offline"
    monkeypatch.setenv("SIMVUE_URL", refusing.url)
    monkeypatch.setenv("SIMVUE_TOKEN", local_server.token)
    monkeypatch.setenv("SIMVUE_OFFLINE_DIRECTORY", str(offline))
    monkeypatch.delenv("SIMVUE_OTEL_MODE", raising=False)
    folder = f"/refused/{uuid.uuid4().hex[:8]}"
    refusing.rules.append(("POST", "/api/runs", 422))
    with Run() as first:
        first.init(name="refused", folder=folder, resources_metrics_interval=None)
        for step in range(50):
            first.log_metrics({"loss": float(step)})
        first_key = first.key
    with Run() as second:
        second.init(name="valid", folder=folder, resources_metrics_interval=None)
        for step in range(100):
            second.log_metrics({"loss": float(step)})
        second_key = second.key
    assert first_key is not None and second_key is not None
    got = poll(lambda: run_by_key(client, second_key), lambda r: r and r["status"] == "completed")
    assert got is not None and got["status"] == "completed"
    assert point_count(client, second_key) == 100
    assert client.find_run_by_key(first_key) is None
    aside = reasons(offline)
    assert aside and all(x["runs"][0]["key"] == first_key for x in aside)
    assert sum(x["metric_values"] for x in aside) == 50
