"""Exactly once against a server that deduplicates nothing (the local server, like Simvue's).

A proxy stands between simvue-otel and the server and loses answers on cue: it forwards a
metrics or events POST (the server stores it) and then answers 504, or cuts the connection. The
client cannot tell whether anything was stored; it must reconcile (read back what the server
holds) before sending again. Every point and event must be on the server exactly once, every
run exactly once, and no metrics POST may hold more than the official client's 16,000 entries.
Also: reconnect (online and offline) makes no second run and keeps the run's tags and
visibility, and a killed ``simvue-otel send`` resumed later stores nothing twice.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from simvue_otel import Run
from simvue_otel._internal.client import SimvueClient
from tests.helpers import LocalServer
from tests.proxy import Proxy

SEND = [sys.executable, "-m", "simvue_otel", "send", "--cache"]


def _env(url: str, token: str, offline: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIMVUE_")}
    env.update(SIMVUE_URL=url, SIMVUE_TOKEN=token, SIMVUE_OFFLINE_DIRECTORY=str(offline))
    env.update(extra)
    return env


def _script(code: str, env: dict[str, str], timeout: float = 180) -> None:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert out.returncode == 0, f"script failed:\n{out.stdout}\n{out.stderr}"


def _runs(client: SimvueClient, name: str, folder: str) -> list[dict[str, object]]:
    return client.find_runs([f"name == {name}", f"folder.path == {folder}"])


def _one_run(client: SimvueClient, name: str, folder: str) -> dict[str, object]:
    found = _runs(client, name, folder)
    assert len(found) == 1, f"expected one run {name!r}, found {len(found)}"
    return client.get_run(str(found[0]["id"]))


def _steps(client: SimvueClient, run_id: str, metric: str) -> Counter[int]:
    return Counter(int(p["step"]) for p in client.get_metrics(run_id, [metric])[metric])


def _largest_metrics_post(proxy: Proxy) -> int:
    sizes = [
        len(r.body["metrics"])
        for r in proxy.requests
        if r.method == "POST" and r.path == "/api/metrics" and isinstance(r.body, dict)
    ]
    assert sizes, "no metrics POST went through the proxy"
    return max(sizes)


def test_answers_lost_after_storing_cost_no_duplicate(
    proxy: Proxy, local_server: LocalServer, client: SimvueClient, tmp_path: Path
) -> None:
    """40,000 steps (several POST parts per batch); the first two metrics POSTs and the first
    events POST are stored and answered 504, a later metrics POST is stored and its connection
    cut, one is answered 503 before storing: each step and event is stored exactly once."""
    proxy.rules = [
        ("POST", "/api/metrics", "stored-then-504"),
        ("POST", "/api/metrics", "stored-then-504"),
        ("POST", "/api/events", "stored-then-504"),
        ("POST", "/api/metrics", 503),
        ("POST", "/api/metrics", "stored-then-reset"),
    ]
    name, folder = f"lost-answers-{uuid.uuid4().hex[:8]}", "/exactly-once"
    # Five faults in a row back off for about 30 s: give the close room to finish online.
    env = _env(
        proxy.url, local_server.token, tmp_path / "offline", SIMVUE_OTEL_SHUTDOWN_TIMEOUT="120"
    )
    _script(
        f"""
        from simvue_otel import Run
        with Run() as run:
            run.init(name={name!r}, folder={folder!r}, resources_metrics_interval=None)
            for step in range(40_000):
                run.log_metrics({{"x": float(step), "y": 1.0}})
                if step % 1000 == 0:
                    run.log_event(f"event {{step}}")
        """,
        env,
    )
    assert not proxy.rules, f"faults not all met: {proxy.rules}"
    run = _one_run(client, name, folder)
    assert run["status"] == "completed"
    for metric in ("x", "y"):
        steps = _steps(client, str(run["id"]), metric)
        assert set(steps) == set(range(40_000)), f"{metric}: steps missing"
        assert max(steps.values()) == 1, f"{metric}: {sum(steps.values()) - 40_000} duplicates"
    events = Counter(e["message"] for e in client.get_events(str(run["id"])))
    assert events == Counter(f"event {s}" for s in range(0, 40_000, 1000))
    assert _largest_metrics_post(proxy) <= 16_000
    reads = [
        r for r in proxy.requests if r.method == "GET" and r.path in ("/api/metrics", "/api/events")
    ]
    assert reads, "the unknown outcomes were never reconciled against the server"


def test_the_run_post_whose_answer_is_lost_makes_one_run(
    proxy: Proxy, local_server: LocalServer, client: SimvueClient, tmp_path: Path
) -> None:
    """The server makes the run but its answer never arrives: the run is found, not remade."""
    proxy.rules = [("POST", "/api/runs", "stored-then-reset")]
    name, folder = f"lost-create-{uuid.uuid4().hex[:8]}", "/exactly-once"
    env = _env(proxy.url, local_server.token, tmp_path / "offline")
    _script(
        f"""
        from simvue_otel import Run
        with Run() as run:
            run.init(name={name!r}, folder={folder!r}, resources_metrics_interval=None)
            for step in range(100):
                run.log_metrics({{"x": float(step)}})
        """,
        env,
    )
    assert proxy.applied["stored-then-reset"] == 1
    run = _one_run(client, name, folder)
    assert run["status"] == "completed"
    assert set(_steps(client, str(run["id"]), "x").values()) == {1}
    assert len(_steps(client, str(run["id"]), "x")) == 100


@pytest.mark.parametrize("mode", ["online", "offline"])
def test_reconnect_makes_one_run_and_keeps_its_state(
    local_server: LocalServer, client: SimvueClient, tmp_path: Path, mode: str
) -> None:
    """Queued with tags a, b and tenant visibility; reconnected in another process, which adds
    tag c: one run, tags a, b, c, still tenant-visible, its metadata kept and merged."""
    name, folder = f"requeue-{uuid.uuid4().hex[:8]}", "/exactly-once"
    offline = tmp_path / "offline"
    env = _env(local_server.url, local_server.token, offline, SIMVUE_OTEL_MODE=mode)
    _script(
        f"""
        from simvue_otel import Run
        with Run() as run:
            run.init(name={name!r}, folder={folder!r}, running=False, tags=["a", "b"],
                     visibility="tenant", metadata={{"n": 1, "keep": "me"}},
                     resources_metrics_interval=None)
        """,
        env,
    )
    send = [*SEND, str(offline), "--quiet"]
    if mode == "offline":
        subprocess.run(send, env=env, check=True, timeout=120, capture_output=True)
    queued = _one_run(client, name, folder)
    assert queued["status"] == "created"
    _script(
        f"""
        from simvue_otel import Run
        with Run() as run:
            run.config(disable_resources_metrics=True)
            assert run.reconnect({name!r})
            run.update_tags(["c"])
            run.update_metadata({{"n": 2}})
            run.log_metrics({{"x": 1.0}})
        """,
        env,
    )
    if mode == "offline":
        subprocess.run(send, env=env, check=True, timeout=120, capture_output=True)
    run = _one_run(client, name, folder)
    assert run["id"] == queued["id"]
    assert run["status"] == "completed"
    assert sorted(run["tags"]) == ["a", "b", "c"]
    assert run["visibility"] == {"public": False, "tenant": True, "users": []}
    metadata = dict(run["metadata"])
    assert metadata.pop("simvue_otel_run_key")
    assert metadata.pop("python")["environment"]  # recorded by init, kept by reconnect
    metadata.pop("git", None)
    assert metadata == {"n": 2, "keep": "me"}
    assert _steps(client, str(run["id"]), "x") == Counter({0: 1})


def test_reconnect_refuses_an_ended_run_and_an_ambiguous_name(
    local_server: LocalServer, client: SimvueClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SIMVUE_URL", local_server.url)
    monkeypatch.setenv("SIMVUE_TOKEN", local_server.token)
    monkeypatch.setenv("SIMVUE_OFFLINE_DIRECTORY", str(tmp_path / "offline"))
    name, folder = f"ended-{uuid.uuid4().hex[:8]}", "/exactly-once"
    with Run() as run:
        run.init(name=name, folder=folder, resources_metrics_interval=None)
    with pytest.raises(ValueError, match=r"has ended \(completed\)"):
        Run().reconnect(name)
    twice = f"twice {uuid.uuid4().hex[:8]}: a/b"  # the official client's name characters
    for _ in range(2):
        with Run() as run:
            run.init(name=twice, folder=folder, running=False, resources_metrics_interval=None)
    queued = _runs(client, twice, folder)
    assert len(queued) == 2
    with pytest.raises(ValueError, match="2 runs have this name and 2 of them") as refused:
        Run().reconnect(twice)
    for candidate in queued:  # the error lists every candidate, to reconnect by id
        assert f"{candidate['id']} (created)" in str(refused.value)
    assert len(_runs(client, twice, folder)) == 2


def test_reconnect_by_a_shared_name_picks_the_one_queued_run(
    local_server: LocalServer, client: SimvueClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SIMVUE_URL", local_server.url)
    monkeypatch.setenv("SIMVUE_TOKEN", local_server.token)
    monkeypatch.setenv("SIMVUE_OFFLINE_DIRECTORY", str(tmp_path / "offline"))
    name, folder = f"my run {uuid.uuid4().hex[:8]}", "/exactly-once"
    with Run() as run:
        run.init(name=name, folder=folder, resources_metrics_interval=None)  # ended
    with Run() as run:
        run.init(name=name, folder=folder, running=False, resources_metrics_interval=None)
    (queued,) = [r for r in _runs(client, name, folder) if r["status"] == "created"]
    with Run() as run:
        assert run.reconnect(name)
        run.log_metrics({"x": 1.0})
    assert [r["status"] for r in _runs(client, name, folder)] == ["completed", "completed"]
    assert _steps(client, str(queued["id"]), "x") == Counter({0: 1})


def test_a_send_killed_mid_upload_resumes_without_duplicates(
    proxy: Proxy, local_server: LocalServer, client: SimvueClient, tmp_path: Path
) -> None:
    """An offline run of 60,000 steps; `send` is killed while a metrics POST it made is being
    stored (the proxy holds the answer back), then run again: every step once."""
    name, folder = f"killed-send-{uuid.uuid4().hex[:8]}", "/exactly-once"
    offline = tmp_path / "offline"
    env = _env(proxy.url, local_server.token, offline, SIMVUE_OTEL_MODE="offline")
    _script(
        f"""
        from simvue_otel import Run
        with Run() as run:
            run.init(name={name!r}, folder={folder!r}, resources_metrics_interval=None)
            for step in range(60_000):
                run.log_metrics({{"x": float(step)}})
            run.log_event("done")
        """,
        env,
    )
    proxy.late_seconds = 30.0
    proxy.rules = [("POST", "/api/metrics", "pass"), ("POST", "/api/metrics", "late")]
    first = subprocess.Popen([*SEND, str(offline), "--quiet"], env=env)
    deadline = time.monotonic() + 60
    while proxy.delayed == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert proxy.delayed == 1, "the send never reached the held-back POST"
    time.sleep(2.0)  # the held-back POST is stored upstream; its answer is not yet given
    first.send_signal(signal.SIGKILL)
    first.wait(30)
    proxy.rules = []
    again = subprocess.run(
        [*SEND, str(offline), "--quiet"], env=env, capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 0, again.stderr
    run = _one_run(client, name, folder)
    steps = _steps(client, str(run["id"]), "x")
    assert set(steps) == set(range(60_000))
    assert max(steps.values()) == 1, f"{sum(steps.values()) - 60_000} duplicates"
    assert [e["message"] for e in client.get_events(str(run["id"]))] == ["done"]
    assert _largest_metrics_post(proxy) <= 16_000


def _otlp_metric_logs(key: str, name: str, folder: str, steps: range) -> bytes:
    """One OTLP/protobuf logs request holding a `simvue.metrics` record per step."""
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
    from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
    from opentelemetry.proto.resource.v1.resource_pb2 import Resource

    def text(k: str, v: str) -> KeyValue:
        return KeyValue(key=k, value=AnyValue(string_value=v))

    now = time.time_ns()
    records = []
    for step in steps:
        body = AnyValue()
        body.kvlist_value.values.append(KeyValue(key="x", value=AnyValue(double_value=step)))
        step_attr = KeyValue(key="simvue.metrics.step", value=AnyValue(int_value=step))
        records.append(
            LogRecord(time_unix_nano=now + step * 1000, event_name="simvue.metrics", body=body,
                      attributes=[step_attr])
        )  # fmt: skip
    resource = Resource(
        attributes=[
            text("simvue.run.key", key),
            text("simvue.run.name", name),
            text("simvue.run.folder", folder),
        ]
    )
    return ExportLogsServiceRequest(
        resource_logs=[ResourceLogs(resource=resource, scope_logs=[ScopeLogs(log_records=records)])]
    ).SerializeToString()


def test_a_bridge_killed_while_a_post_is_unanswered_resumes_without_duplicates(
    proxy: Proxy, local_server: LocalServer, client: SimvueClient, tmp_path: Path
) -> None:
    """The bridge wrote a 20,000-point request to its spool and answered 200; its first
    metrics POST is stored but held unanswered when the bridge is killed (SIGKILL). A new
    bridge on the same offline directory adopts the spool, reconciles the unanswered part
    and sends the rest: one run, every step once."""
    import requests

    from tests.helpers import start_bridge
    from tests.proxy import as_server

    key, name, folder = str(uuid.uuid4()), f"bridge-kill-{uuid.uuid4().hex[:8]}", "/exactly-once"
    proxy.late_seconds = 60.0
    proxy.rules = [("POST", "/api/metrics", "late")]
    upstream = as_server(proxy, local_server)
    first = start_bridge(tmp_path / "bridge", upstream)
    try:
        reply = requests.post(
            first.url + "/v1/logs",
            data=_otlp_metric_logs(key, name, folder, range(20_000)),
            headers={"Content-Type": "application/x-protobuf"},
            timeout=60,
        )
        assert reply.status_code == 200
        deadline = time.monotonic() + 60
        while proxy.delayed == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proxy.delayed == 1, "the bridge never made the held-back POST"
        time.sleep(2.0)  # stored upstream, answer held back
    finally:
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(30)
    second = start_bridge(tmp_path / "bridge", upstream)
    try:
        deadline = time.monotonic() + 60
        steps: Counter[int] = Counter()
        while time.monotonic() < deadline:
            found = client.find_run_by_key(key)
            if found is not None:
                steps = _steps(client, str(found["id"]), "x")
                if sum(steps.values()) >= 20_000:
                    break
            time.sleep(0.5)
        time.sleep(2.0)  # anything sent twice would have landed by now
        assert len(_runs(client, name, folder)) == 1
        found = client.find_run_by_key(key)
        assert found is not None
        steps = _steps(client, str(found["id"]), "x")
        assert set(steps) == set(range(20_000))
        assert max(steps.values()) == 1, f"{sum(steps.values()) - 20_000} duplicates"
    finally:
        second.stop()
