"""Zero-code use: `opentelemetry-instrument` with `OTEL_*_EXPORTER=simvue`, in a fresh virtual
environment holding only this project (installed from its own files) and the instrument
command, so that no package that happens to be installed here can make it pass."""

from __future__ import annotations

import os
import subprocess
import textwrap
import uuid
from pathlib import Path

import pytest

from simvue_otel._internal.client import SimvueClient
from tests.helpers import LocalServer

APP = textwrap.dedent(
    """
    # Uses the OpenTelemetry API only: no simvue_otel import anywhere.
    import sys
    from opentelemetry import _logs, metrics, trace

    tracer = trace.get_tracer("app")
    logger = _logs.get_logger("app")
    counter = metrics.get_meter("app").create_counter("cells")
    n = int(sys.argv[1])
    with tracer.start_as_current_span(
        "simvue.run",
        attributes={"simvue.run.tags": ["zero-code"], "simvue.run.metadata.grid": 128,
                    "simvue.run.description": "instrumented"},
    ):
        for step in range(n):  # a burst far larger than the SDK batch queue (2048)
            logger.emit(body={"energy": step * 0.5}, event_name="simvue.metrics",
                        attributes={"simvue.metrics.step": step})
        counter.add(n)
        logger.emit(body="finished", event_name="simvue.event")
        with tracer.start_as_current_span("write-output"):
            pass
    """
)


def _simvue_env(server: LocalServer, tmp: Path, **extra: str) -> dict[str, str]:
    """This environment without OTEL_* and SIMVUE_*, then every signal to ``simvue`` and the
    server, with the offline directory and HOME under ``tmp``, and ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "SIMVUE_"))}
    env.update(
        OTEL_TRACES_EXPORTER="simvue",
        OTEL_METRICS_EXPORTER="simvue",
        OTEL_LOGS_EXPORTER="simvue",
        SIMVUE_URL=server.url,
        SIMVUE_TOKEN=server.token,
        SIMVUE_OFFLINE_DIRECTORY=str(tmp / "offline"),
        HOME=str(tmp),
        **extra,
    )
    return env


def _instrumented(
    venv: Path,
    server: LocalServer,
    tmp: Path,
    env_extra: dict[str, str],
    n: int,
    app: str = APP,
    args: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[str]:
    (tmp / "app.py").write_text(app)
    env = _simvue_env(server, tmp, **env_extra)
    return subprocess.run(
        [str(venv / "bin" / "opentelemetry-instrument"), str(venv / "bin" / "python"), "app.py",
         str(n), *args],
        cwd=tmp, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_opentelemetry_instrument_with_simvue_exporters(
    fresh_venv: Path, local_server: LocalServer, tmp_path: Path
) -> None:
    key = str(uuid.uuid4())
    n = 20_000
    done = _instrumented(
        fresh_venv,
        local_server,
        tmp_path,
        {"OTEL_RESOURCE_ATTRIBUTES": f"simvue.run.key={key},simvue.run.name=zero-code,"
         "simvue.run.folder=/zero/code"},
        n,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    with SimvueClient(local_server.url, local_server.token) as client:
        found = client.find_run_by_key(key)
        assert found is not None, f"no run; app stderr:\n{done.stderr}"
        run = client.get_run(found["id"])
        assert (run["name"], run["folder"], run["status"]) == (
            "zero-code",
            "/zero/code",
            "completed",
        )
        assert run["tags"] == ["zero-code"] and run["description"] == "instrumented"
        assert run["metadata"]["grid"] == 128
        energy = client.get_metrics(found["id"], ["energy"])["energy"]
        assert sorted(p["step"] for p in energy) == list(range(n)), "no point dropped"
        assert client.get_metrics(found["id"], ["cells"])["cells"][-1]["value"] == n
        messages = [e["message"] for e in client.get_events(found["id"])]
        assert "finished" in messages
        assert any(m.startswith("span 'write-output' ended after") for m in messages)


def test_foreign_app_becomes_one_run_per_service_instance(
    fresh_venv: Path, local_server: LocalServer, tmp_path: Path
) -> None:
    """Telemetry without simvue.run.* attributes: one run for the process, named after the
    service, in /otel, completed when the process ends."""
    service = f"svc-{uuid.uuid4().hex[:8]}"
    done = _instrumented(fresh_venv, local_server, tmp_path, {"OTEL_SERVICE_NAME": service}, 10)
    assert done.returncode == 0, done.stderr
    with SimvueClient(local_server.url, local_server.token) as client:
        runs = client.find_runs([f"name == {service}"])
        assert len(runs) == 1, runs
        run = client.get_run(runs[0]["id"])
        assert run["folder"] == "/otel" and run["status"] == "completed"
        assert run["metadata"]["resource"]["service"]["name"] == service
        # its simvue.run span still sets tags and metadata beside the Resource's
        assert run["tags"] == ["zero-code"] and run["metadata"]["grid"] == 128
        points = client.get_metrics(run["id"], ["energy"])["energy"]
        assert len(points) == 10


HTTP_APP = textwrap.dedent(
    """
    # An app that calls an HTTP service once, then works for a few seconds while its
    # telemetry is uploaded: only its own call may show up in its run.
    import sys, time
    import requests
    from opentelemetry import _logs, trace

    tracer = trace.get_tracer("app")
    logger = _logs.get_logger("app")
    with tracer.start_as_current_span("simvue.run"):
        requests.get(sys.argv[2] + "/health", timeout=10)
        for step in range(int(sys.argv[1])):
            logger.emit(body={"x": float(step)}, event_name="simvue.metrics",
                        attributes={"simvue.metrics.step": step})
            time.sleep(0.05)
        time.sleep(3.0)
    """
)


def test_the_exporters_own_uploads_are_not_traced_back_into_the_run(
    fresh_venv: Path, local_server: LocalServer, tmp_path: Path
) -> None:
    key = str(uuid.uuid4())
    done = _instrumented(
        fresh_venv, local_server, tmp_path,
        {"OTEL_RESOURCE_ATTRIBUTES": f"simvue.run.key={key},simvue.run.name=http-app"},
        60, HTTP_APP, (local_server.url,),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    with SimvueClient(local_server.url, local_server.token) as client:
        found = client.find_run_by_key(key)
        assert found is not None, done.stderr
        messages = [e["message"] for e in client.get_events(found["id"])]
        http = [m for m in messages if m.startswith(("span 'GET'", "span 'POST'", "span 'PUT'"))]
        assert http == [m for m in http if m.startswith("span 'GET'")] and len(http) == 1, (
            f"only the app's own GET may be traced: {http}"
        )
        names = client.metric_names(found["id"])
        assert len(client.get_metrics(found["id"], ["x"])["x"]) == 60
        duration = [n for n in names if n.startswith("http.client")]
        for name in duration:  # the app's one call, never the uploads (other ports, PUT, POST)
            assert "POST" not in name and "PUT" not in name, names


def test_without_the_configurator_nothing_would_be_exported(fresh_venv: Path) -> None:
    """The reason simvue-otel ships a configurator: check the fresh environment has no other
    one, so the test above proves ours is what made `=simvue` work."""
    probe = (
        "from importlib.metadata import entry_points;"
        "print(sorted(e.value for e in entry_points(group='opentelemetry_configurator')))"
    )
    out = subprocess.run(
        [str(fresh_venv / "bin" / "python"), "-c", probe],
        check=True, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.stdout.strip() == "['simvue_otel._internal.autoconf:SimvueConfigurator']"


SIGTERM_APP = textwrap.dedent(
    """
    import sys, time
    from opentelemetry import _logs, trace

    tracer = trace.get_tracer("app")
    logger = _logs.get_logger("app")
    emitted = 0
    try:
        with tracer.start_as_current_span("simvue.run"):
            print("started", flush=True)
            for step in range(int(sys.argv[1])):
                logger.emit(body=f"event {step}", event_name="simvue.event")
                emitted += 1
                time.sleep(0.002)
    finally:
        print("emitted", emitted, flush=True)
    """
)


def test_sigterm_delivers_everything_and_ends_the_run_terminated(
    fresh_venv: Path, local_server: LocalServer, tmp_path: Path
) -> None:
    """An app under opentelemetry-instrument stopped with SIGTERM (as a batch scheduler
    does): every event it emitted reaches the run, which ends `terminated`."""
    import signal

    key = str(uuid.uuid4())
    (tmp_path / "app.py").write_text(SIGTERM_APP)
    env = _simvue_env(local_server, tmp_path, OTEL_RESOURCE_ATTRIBUTES=f"simvue.run.key={key}")
    app = subprocess.Popen(
        [str(fresh_venv / "bin" / "opentelemetry-instrument"),
         str(fresh_venv / "bin" / "python"), "app.py", "1000000"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert app.stdout is not None and app.stdout.readline().strip() == "started"
    import time

    time.sleep(2.0)
    app.send_signal(signal.SIGTERM)
    out, err = app.communicate(timeout=60)
    assert app.returncode == 143, err
    emitted = int(out.split("emitted")[-1].strip())
    assert emitted > 100
    with SimvueClient(local_server.url, local_server.token) as client:
        found = client.find_run_by_key(key)
        assert found is not None, err
        run = client.get_run(found["id"])
        assert run["status"] == "terminated"
        events = [e["message"] for e in client.get_events(found["id"])]
        assert len([m for m in events if m.startswith("event ")]) == emitted, "events lost"


DISTRO_APP = textwrap.dedent(
    """
    # Spans, metrics and logs through the OpenTelemetry API only. Each step's records and its
    # count are made with SIGTERM blocked, so the count printed is exactly what was recorded.
    import signal, sys, time
    from opentelemetry import _logs, metrics, trace

    tracer = trace.get_tracer("app")
    logger = _logs.get_logger("app")
    counter = metrics.get_meter("app").create_counter("cycles")
    emitted = 0
    try:
        with tracer.start_as_current_span(
            "simvue.run", attributes={"simvue.run.tags": ["zero-code"]}
        ):
            with tracer.start_as_current_span("setup"):
                for step in range(20_000):  # a burst far past the SDK's batch queue (2048)
                    logger.emit(body={"energy": step * 0.5}, event_name="simvue.metrics",
                                attributes={"simvue.metrics.step": step})
            print("started", flush=True)
            for step in range(int(sys.argv[1])):
                signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
                logger.emit(body=f"event {step}", event_name="simvue.event")
                counter.add(1)
                emitted += 1
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
                time.sleep(0.002)
    finally:
        print("emitted", emitted, flush=True)
    """
)


@pytest.mark.parametrize(
    ("install", "configurator"),
    [
        ("plain", None),  # simvue-otel's configurator, the only one
        ("distro", None),  # whichever of the two the loader finds first
        ("distro", "configurator"),  # opentelemetry-distro's, chosen by name
    ],
)
def test_sigterm_gives_the_same_result_whichever_configurator_loads(
    request: pytest.FixtureRequest,
    local_server: LocalServer,
    tmp_path: Path,
    install: str,
    configurator: str | None,
) -> None:
    """`OTEL_*_EXPORTER=simvue` under `opentelemetry-instrument`, with and without
    `opentelemetry-distro` installed, stopped with SIGTERM mid-run: every span, metric point,
    counter and event arrives, the run ends `terminated`, and the loader's warning about the
    configurator it skipped is not recorded as an event of the run."""
    import signal
    import time

    venv: Path = request.getfixturevalue("fresh_venv" if install == "plain" else "distro_venv")
    key = str(uuid.uuid4())
    (tmp_path / "app.py").write_text(DISTRO_APP)
    env = _simvue_env(
        local_server,
        tmp_path,
        OTEL_RESOURCE_ATTRIBUTES=f"simvue.run.key={key}",
        # Python logging reaches the run: the loader's warning would become an event.
        OTEL_PYTHON_LOGGING_AUTO_INSTRUMENTATION_ENABLED="true",
    )
    if configurator is not None:
        env["OTEL_PYTHON_CONFIGURATOR"] = configurator
    app = subprocess.Popen(
        [str(venv / "bin" / "opentelemetry-instrument"), str(venv / "bin" / "python"),
         "app.py", "1000000"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert app.stdout is not None and app.stdout.readline().strip() == "started"
        # The run shows live with its state while it runs (the Simvue span processor reports
        # a run span when it starts; the SDK's batch processor only when it ends).
        deadline = time.monotonic() + 60
        with SimvueClient(local_server.url, local_server.token) as client:
            live: dict[str, object] = {}
            while time.monotonic() < deadline:
                found = client.find_run_by_key(key)
                live = client.get_run(found["id"]) if found else {}
                if live.get("tags") == ["zero-code"]:
                    break
                time.sleep(0.2)
        assert (live.get("status"), live.get("tags")) == ("running", ["zero-code"]), live
        app.send_signal(signal.SIGTERM)
        out, err = app.communicate(timeout=120)
    finally:
        if app.poll() is None:
            app.kill()
    assert app.returncode == 143, f"exit {app.returncode}:\n{err}"
    emitted = int(out.split("emitted")[-1].strip())
    assert emitted > 0
    with SimvueClient(local_server.url, local_server.token) as client:
        found = client.find_run_by_key(key)
        assert found is not None, err
        run = client.get_run(found["id"])
        assert run["status"] == "terminated", err
        messages = [e["message"] for e in client.get_events(found["id"])]
        assert len([m for m in messages if m.startswith("event ")]) == emitted, "events lost"
        assert any(m.startswith("span 'setup' ended after") for m in messages), messages[:5]
        loader = [m for m in messages if "configurator" in m.lower() or "not loaded" in m]
        assert loader == [], loader
        energy = client.get_metrics(found["id"], ["energy"])["energy"]
        assert sorted(p["step"] for p in energy) == list(range(20_000)), "points dropped"
        cycles = client.get_metrics(found["id"], ["cycles"])["cycles"]
        assert max(p["value"] for p in cycles) == emitted
