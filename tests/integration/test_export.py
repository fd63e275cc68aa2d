"""The export pipeline end to end: OTel SDK → Simvue exporters → mapping → sink → the real
local server over loopback HTTP (or the offline spool, then `simvue-otel send`)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from opentelemetry.trace import Status, StatusCode

from simvue_otel import (
    ConfigurationError,
    SimvueSpanExporter,
)
from simvue_otel._internal.client import SimvueClient
from simvue_otel._internal.config import resolve_config
from simvue_otel._internal.sink import create_sink
from tests.helpers import (
    ROOT_ATTRS,
    SERVER_CMD,
    LocalServer,
    make_app,
    run_program,
    run_state,
    start_server,
    stop_server,
)


def test_otel_only_app_in_process(
    local_server: LocalServer, client: SimvueClient, tmp_path: Path
) -> None:
    app = make_app("online", tmp_path, local_server, "otel-app", "/export/inproc")
    run_program(app)
    assert app.close()
    state = run_state(client, app.key)
    assert state["name"] == "otel-app" and state["folder"] == "/export/inproc"
    assert state["status"] == "completed"
    assert state["description"] == "an OTel-only app"
    assert state["tags"] == ["demo", "otel"]
    assert state["metadata"]["solver"] == {"tol": 1e-6, "name": "cg"}
    assert state["metadata"]["n"] == 64
    assert state["metadata"]["simvue_otel_run_key"] == app.key
    assert state["visibility"] == {"public": False, "tenant": True, "users": []}
    assert state["ttl"] == 3600
    assert state["metrics"]["loss"] == [(s, 1.0 / (s + 1), round(s * 0.1, 6)) for s in range(50)]
    assert [v for _, v, _ in state["metrics"]["residual"]] == [s * 0.5 for s in range(50)]
    assert [v for _, v, _ in state["metrics"]["iterations(phase=solve)"]][-1] == 50
    messages = dict(state["events"])
    assert messages["converged"] == "info"
    assert messages["mesh is coarse"] == "warning"
    assert any(m.startswith("span 'assemble' ended after") for m in messages)


def test_run_is_live_while_it_goes(
    local_server: LocalServer, client: SimvueClient, tmp_path: Path
) -> None:
    """The span processor reports the root span at its start: `running` long before it ends."""
    app = make_app("online", tmp_path, local_server, "live-run", "/export/live")
    span_cm = app.tracer.start_as_current_span("simvue.run", attributes=ROOT_ATTRS)
    span_cm.__enter__()
    try:
        deadline = time.monotonic() + 60
        found = None
        while time.monotonic() < deadline and found is None:
            found = client.find_run_by_key(app.key)
            time.sleep(0.2)
        assert found is not None, "the run did not show up while its root span was open"
        assert client.get_run(found["id"])["status"] == "running"
    finally:
        span_cm.__exit__(None, None, None)
    assert app.close()
    assert run_state(client, app.key)["status"] == "completed"


@pytest.mark.parametrize(
    ("how", "status"), [("exception", "failed"), ("error-status", "failed"), ("clean", "completed")]
)
def test_status_mapping(
    local_server: LocalServer, client: SimvueClient, tmp_path: Path, how: str, status: str
) -> None:
    app = make_app("online", tmp_path, local_server, f"status-{how}", "/export/status")
    try:
        with app.tracer.start_as_current_span("simvue.run") as span:
            if how == "exception":
                raise ValueError("the solver diverged")
            if how == "error-status":
                span.set_status(Status(StatusCode.ERROR, "bad residual"))
    except ValueError:
        pass
    assert app.close()
    state = run_state(client, app.key)
    assert state["status"] == status
    if how == "exception":
        (message, level), *_ = state["events"]
        assert message.startswith("ValueError: the solver diverged") and level == "error"
        assert "Traceback" in message


def test_100k_points_in_one_export_interval_all_arrive(
    local_server: LocalServer, client: SimvueClient, tmp_path: Path
) -> None:
    app = make_app("online", tmp_path, local_server, "burst", "/export/burst")
    n = 100_000
    with app.tracer.start_as_current_span("simvue.run"):
        for step in range(n):
            app.metrics({"x": float(step)}, step)
    assert app.close(120)
    found = client.find_run_by_key(app.key)
    assert found is not None
    points = client.get_metrics(found["id"], ["x"])["x"]
    assert len(points) == n
    assert sorted(p["step"] for p in points) == list(range(n))
    assert all(p["value"] == float(p["step"]) for p in points)


def test_server_restart_mid_run_loses_nothing_and_doubles_nothing(tmp_path: Path) -> None:
    server = start_server(tmp_path / "srv")
    port = int(server.url.rsplit(":", 1)[1])
    app = make_app("online", tmp_path / "off", server, "restart", "/export/restart")
    n = 3000
    try:
        with app.tracer.start_as_current_span("simvue.run"):
            for step in range(n):
                if step == 1000:
                    app.pipeline.flush(30)
                    stop_server(server)  # the server goes away mid-run...
                if step == 2000:
                    server = start_server(  # ...and comes back on the same port and database
                        tmp_path / "srv", port=port, db=server.db, first_token=server.token
                    )
                app.metrics({"x": float(step)}, step)
                if step % 100 == 0:
                    app.logger.emit(body=f"event {step}", event_name="simvue.event")
                if 1000 <= step < 2000:
                    time.sleep(0.001)
        assert app.close(120)
        with SimvueClient(server.url, server.token) as c:
            state = run_state(c, app.key)
    finally:
        stop_server(server)
    steps = [s for s, _, _ in state["metrics"]["x"]]
    assert sorted(steps) == list(range(n)), "every point exactly once"
    assert sorted(m for m, _ in state["events"]) == sorted(f"event {s}" for s in range(0, n, 100))
    assert state["status"] == "completed"


def _send(offline_dir: Path, server: LocalServer, *extra: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, SIMVUE_URL=server.url, SIMVUE_TOKEN=server.token)
    env.pop("SIMVUE_OFFLINE_DIRECTORY", None)
    cmd = [*SERVER_CMD[:-1], "send", "--cache", str(offline_dir), *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


def test_offline_spool_then_send_gives_the_online_state(
    local_server: LocalServer, client: SimvueClient, tmp_path: Path
) -> None:
    online = make_app("online", tmp_path / "a", local_server, "same-run", "/export/same")
    run_program(online)
    assert online.close()

    offline = make_app("offline", tmp_path / "b", None, "same-run", "/export/same")
    run_program(offline)
    assert offline.close()
    assert client.find_run_by_key(offline.key) is None, "offline mode sent nothing"
    assert list((tmp_path / "b" / "otel-spool").glob("*.done"))

    sent = _send(tmp_path / "b", local_server, "--quiet")
    assert sent.returncode == 0, sent.stderr
    assert "1 run(s) created" in sent.stdout

    expected, got = run_state(client, online.key), run_state(client, offline.key)
    for state in (expected, got):
        state["metadata"].pop("simvue_otel_run_key")
        state["events"] = [
            (m.split(" ended after")[0], lvl) for m, lvl in state["events"]
        ]  # span durations differ between the two runs
        state["metrics"]["iterations(phase=solve)"] = [
            (step, value) for step, value, _ in state["metrics"]["iterations(phase=solve)"]
        ]  # instrument times are clock readings
    assert got == expected

    again = _send(tmp_path / "b", local_server, "--quiet")  # a second send is harmless
    assert again.returncode == 0, again.stderr
    assert "sent 0 batch(es)" in again.stdout
    assert len(client.find_runs(["name == same-run", "folder.path == /export/same"])) == 2


def test_send_resumes_after_the_server_was_unreachable(tmp_path: Path) -> None:
    offline = make_app("offline", tmp_path, None, "resume", "/export/resume")
    with offline.tracer.start_as_current_span("simvue.run"):
        for step in range(500):
            offline.metrics({"x": float(step)}, step)
            if step % 50 == 49:
                offline.pipeline.flush(10)  # several frames in the spool
    assert offline.close()
    server = start_server(tmp_path / "srv")
    try:
        stop_server(server)
        down = _send(tmp_path, server, "--quiet", "--attempts", "2")
        assert down.returncode != 0
        assert "did not answer" in down.stderr or "stopped" in down.stderr
        server = start_server(
            tmp_path / "srv", port=int(server.url.rsplit(":", 1)[1]), db=server.db,
            first_token=server.token,
        )  # fmt: skip
        up = _send(tmp_path, server, "--quiet")
        assert up.returncode == 0, up.stderr
        with SimvueClient(server.url, server.token) as c:
            state = run_state(c, offline.key)
    finally:
        stop_server(server)
    assert [s for s, _, _ in state["metrics"]["x"]] == list(range(500))
    assert state["status"] == "completed"


def test_online_mode_without_a_server_is_a_clear_error(tmp_path: Path) -> None:
    config = resolve_config(offline_directory=tmp_path, environ={}, cwd=tmp_path, home=tmp_path)
    with pytest.raises(ConfigurationError) as err:
        create_sink("online", config)
    assert "SIMVUE_URL" in str(err.value)


def test_exporters_never_raise_after_shutdown(local_server: LocalServer, tmp_path: Path) -> None:
    app = make_app("online", tmp_path, local_server, "after", "/export/after")
    assert app.close()
    exporter = SimvueSpanExporter(pipeline=app.pipeline)
    from opentelemetry.sdk.trace.export import SpanExportResult

    assert exporter.export([]) is SpanExportResult.FAILURE  # refused, not raised
    assert exporter.force_flush(1000) is True  # nothing is pending
    exporter.shutdown()


def test_send_refuses_without_configuration(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIMVUE_")}
    env["HOME"] = str(tmp_path)
    out = subprocess.run(
        [sys.executable, "-m", "simvue_otel", "send", "--cache", str(tmp_path)],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2
    assert "SIMVUE_URL" in out.stderr
