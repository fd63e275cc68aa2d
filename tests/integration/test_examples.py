"""The programs under ``examples/`` run as a user would run them (a subprocess each, configured
only through the environment), and leave exactly the runs they promise on the local server."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from simvue_otel._internal.client import SimvueClient
from tests.helpers import Bridge, LocalServer, poll, user_metadata

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


# -- helpers ------------------------------------------------------------------------------


def example_env(
    tmp_path: Path, folder: str, server: LocalServer | None = None, **extra: str
) -> dict[str, str]:
    """A clean environment: no SIMVUE_*/OTEL_* from outside, a HOME and offline directory of
    the test's own, and the server's URL and token only when ``server`` is given."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIMVUE_", "OTEL_"))}
    env.update(
        PYTHONUNBUFFERED="1",
        HOME=str(home),
        SIMVUE_OFFLINE_DIRECTORY=str(tmp_path / "offline"),
        EXAMPLE_FOLDER=folder,
    )
    if server is not None:
        env.update(SIMVUE_URL=server.url, SIMVUE_TOKEN=server.token)
    env.update(extra)
    return env


def run_example(
    command: list[str], env: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"{command} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}"
    return out


def example(name: str, *args: str) -> list[str]:
    return [sys.executable, str(EXAMPLES / name), *args]


def runs_in(client: SimvueClient, folder: str) -> list[dict[str, Any]]:
    """Every run of the folder, in full."""
    return [client.get_run(r["id"]) for r in client.find_runs([f"folder.path == {folder}"])]


def only_run(client: SimvueClient, name: str, folder: str) -> dict[str, Any]:
    found = client.find_runs([f"name == {name}", f"folder.path == {folder}"])
    assert len(found) == 1, f"expected one run {name!r} in {folder}, found {len(found)}"
    return client.get_run(found[0]["id"])


def series(client: SimvueClient, run_id: str, name: str) -> list[tuple[int, float]]:
    """One metric as sorted (step, value) pairs."""
    return sorted((p["step"], p["value"]) for p in client.get_metrics(run_id, [name])[name])


def messages(client: SimvueClient, run_id: str) -> list[str]:
    return [e["message"] for e in client.get_events(run_id)]


# -- online examples ----------------------------------------------------------------------


def test_quickstart(
    local_server: LocalServer, client: SimvueClient, folder: str, tmp_path: Path
) -> None:
    out = run_example(
        example("quickstart.py"), example_env(tmp_path, folder, local_server), tmp_path
    )
    assert out.stdout.strip() == f"run quickstart-cooling in {folder}"
    run = only_run(client, "quickstart-cooling", folder)
    assert run["status"] == "completed"
    assert sorted(run["tags"]) == ["converged", "cooling", "quickstart"]
    assert run["description"].startswith("Newton's law of cooling")
    meta = user_metadata(run)
    final = meta.pop("result")["final_temperature"]
    assert meta == {"model": {"k": 0.1, "ambient": 20.0}, "steps": 50}
    assert final == pytest.approx(20.0 + 70.0 * 0.95**50, abs=1e-3)

    names = client.metric_names(run["id"])
    assert {"temperature", "error"} <= set(names)
    assert "resources/cpu.usage.memory" in names, "resource metrics are sampled by default"
    assert set(names) - {"temperature", "error"} <= {n for n in names if n.startswith("resources/")}
    temperature = series(client, run["id"], "temperature")
    assert [s for s, _ in temperature] == list(range(50))
    assert temperature[0][1] == pytest.approx(90.0 - 0.1 * 70.0 * 0.5)
    assert temperature[-1][1] == pytest.approx(final, abs=1e-3)
    assert len(series(client, run["id"], "error")) == 50
    assert messages(client, run["id"]) == [f"reached {final:.2f} degrees after 50 steps"]


def test_parameter_scan(
    local_server: LocalServer, client: SimvueClient, folder: str, tmp_path: Path
) -> None:
    out = run_example(
        example("parameter_scan.py"), example_env(tmp_path, folder, local_server), tmp_path
    )
    names = ["scan-rate-0.05", "scan-rate-0.1", "scan-rate-0.2"]
    assert out.stdout.split() == names
    assert len(runs_in(client, folder)) == 3
    for name, rate in zip(names, [0.05, 0.1, 0.2], strict=True):
        run = only_run(client, name, folder)
        assert run["status"] == "completed"
        assert run["tags"] == ["scan"]
        assert user_metadata(run) == {"learning_rate": rate, "steps": 20}
        assert sorted(client.metric_names(run["id"])) == ["loss", "x"], "no resource metrics"
        x, expected = 0.0, []
        for step in range(20):
            x -= rate * 2.0 * (x - 3.0)
            expected.append((step, pytest.approx(x)))
        assert series(client, run["id"], "x") == expected, f"{name} mixed with another run"
        assert len(series(client, run["id"], "loss")) == 20
        assert messages(client, run["id"]) == [f"rate {rate}: x = {x:.6f}"]


def test_queued_run_created_then_started_by_another_process(
    local_server: LocalServer, client: SimvueClient, folder: str, tmp_path: Path
) -> None:
    name = f"queued-{uuid.uuid4().hex[:8]}"
    env = example_env(tmp_path, folder, local_server)
    out = run_example(example("queued_run.py", "create", name), env, tmp_path)
    assert out.stdout.strip() == f"queued {name} (created)"
    queued = only_run(client, name, folder)
    assert queued["status"] == "created"
    assert queued["tags"] == ["queued"]
    assert user_metadata(queued) == {"cells": 1000}
    assert client.metric_names(queued["id"]) == []

    out = run_example(example("queued_run.py", "start", name), env, tmp_path)
    assert out.stdout.strip() == f"finished {name}"
    final = only_run(client, name, folder)
    assert final["id"] == queued["id"], "start reused the queued run"
    assert final["status"] == "completed"
    assert final["tags"] == ["queued"] and user_metadata(final) == {"cells": 1000}
    assert final["description"] == queued["description"]
    assert series(client, final["id"], "residual") == [(s, 0.5 ** (s + 1)) for s in range(10)]
    assert messages(client, final["id"]) == ["job finished"]


# -- offline, then send ------------------------------------------------------------------


def test_offline_worker_then_send(
    local_server: LocalServer, client: SimvueClient, folder: str, tmp_path: Path
) -> None:
    env = example_env(tmp_path, folder)  # the worker node: no URL, no token
    cache = tmp_path / "offline"
    out = run_example(example("offline_worker.py"), env, tmp_path)
    assert f"recorded offline-worker offline in {cache}" in out.stdout
    assert runs_in(client, folder) == [], "offline mode sent nothing"
    assert list((cache / "otel-spool").iterdir()), "the run is spooled on disk"

    # The command the example prints is pasted as it is, into a shell elsewhere: another
    # working directory, and no SIMVUE_OFFLINE_DIRECTORY (the server's settings only).
    hint = out.stdout.strip().splitlines()[-1].strip()
    assert hint.endswith(f"send --cache {cache}"), out.stdout
    send_env = example_env(tmp_path, folder, local_server)
    del send_env["SIMVUE_OFFLINE_DIRECTORY"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = run_example(["/bin/sh", "-c", hint], send_env, elsewhere)
    assert "1 run(s) created" in out.stdout, out.stdout
    cmd = [sys.executable, "-m", "simvue_otel", "send", "--cache", str(cache), "--quiet"]
    run = only_run(client, "offline-worker", folder)
    assert run["status"] == "completed"
    assert run["tags"] == ["offline", "worker"]
    assert user_metadata(run) == {"grid": 64, "solver": "jacobi"}
    assert run["description"] == "Jacobi sweeps on a node without network"
    changes = series(client, run["id"], "max_change")
    assert [s for s, _ in changes] == list(range(30))
    assert changes[0][1] == 0.5 and changes[-1][1] < changes[0][1]
    assert messages(client, run["id"]) == ["sweeps done; upload with `simvue-otel send`"]

    # Sending again stores nothing twice.
    run_example(cmd, send_env, tmp_path)
    assert len(series(client, run["id"], "max_change")) == 30


# -- zero-code: opentelemetry-instrument ------------------------------------------------


def test_otel_app_with_opentelemetry_instrument(
    fresh_venv: Path,
    local_server: LocalServer,
    client: SimvueClient,
    folder: str,
    tmp_path: Path,
) -> None:
    name = f"otel-app-{uuid.uuid4().hex[:8]}"
    env = example_env(
        tmp_path,
        folder,
        local_server,
        OTEL_TRACES_EXPORTER="simvue",
        OTEL_METRICS_EXPORTER="simvue",
        OTEL_LOGS_EXPORTER="simvue",
        OTEL_RESOURCE_ATTRIBUTES=f"simvue.run.name={name},simvue.run.folder={folder}",
    )
    bin_dir = fresh_venv / "bin"
    command = [
        str(bin_dir / "opentelemetry-instrument"),
        str(bin_dir / "python"),
        str(EXAMPLES / "otel_app.py"),
    ]
    run_example(command, env, tmp_path)
    run = only_run(client, name, folder)
    assert run["status"] == "completed"
    assert run["tags"] == ["otel-app", "relaxation"]
    assert run["description"] == "Relaxation solver instrumented with OpenTelemetry only"
    meta = user_metadata(run)
    assert meta["solver"] == {"factor": 0.8, "steps": 25}
    assert meta["resource"]["simvue"]["run"]["name"] == name

    residual = series(client, run["id"], "residual")
    assert [s for s, _ in residual] == list(range(25))
    assert [v for _, v in residual] == pytest.approx([0.8 ** (s + 1) for s in range(25)])
    assert len(series(client, run["id"], "log10_residual")) == 25
    assert series(client, run["id"], "cells_updated")[-1][1] == 2500
    assert series(client, run["id"], "step_seconds.count")[-1][1] == 25
    events = messages(client, run["id"])
    assert f"converged to a residual of {0.8**25:.3e}" in events
    assert any(m.startswith("span 'solve' ended after") for m in events), events
    assert any(m.startswith("span 'write-output' ended after") for m in events), events


# -- OTLP to simvue-otel bridge ----------------------------------------------------------


def finished_run(client: SimvueClient, name: str, folder: str, metric: str, n: int) -> Any:
    """The run, once the bridge has written its final status and all ``n`` points of
    ``metric`` (the bridge delivers after the sender has exited)."""

    def fetch() -> dict[str, Any] | None:
        found = client.find_runs([f"name == {name}", f"folder.path == {folder}"])
        return client.get_run(found[0]["id"]) if len(found) == 1 else None

    def ok(run: dict[str, Any] | None) -> bool:
        if run is None or run["status"] != "completed":
            return False
        return len(client.get_metrics(run["id"], [metric]).get(metric, [])) == n

    run = poll(fetch, ok, timeout=30.0)
    assert run is not None, f"no run {name} in {folder}"
    return run


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_otlp_run_to_bridge(
    bridge: Bridge, client: SimvueClient, folder: str, tmp_path: Path, protocol: str
) -> None:
    endpoint = bridge.url if protocol == "http/protobuf" else f"http://{bridge.grpc}"
    env = example_env(
        tmp_path,
        folder,  # no Simvue URL or token: only the bridge talks to the server
        OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
        OTEL_EXPORTER_OTLP_PROTOCOL=protocol,
    )
    out = run_example(example("otlp_to_bridge.py"), env, tmp_path)
    key = re.search(r"run key ([0-9a-f-]{36})", out.stdout)
    assert key is not None, out.stdout
    run = finished_run(client, "otlp-run", folder, "decay", 15)
    assert run["status"] == "completed"
    assert run["metadata"]["simvue_otel_run_key"] == key.group(1)
    assert run["tags"] == ["otlp", "bridge"]
    assert user_metadata(run) == {"transport": protocol}
    assert run["description"] == "Sent as OTLP to simvue-otel bridge"
    decay = series(client, run["id"], "decay")
    assert decay == [(s, pytest.approx(0.9 ** (s + 1))) for s in range(15)]
    assert client.metric_names(run["id"]) == ["decay"]
    assert messages(client, run["id"]) == ["sent through the bridge"]
    assert len(runs_in(client, folder)) == 1


def test_otlp_sdk_to_bridge(
    bridge: Bridge, client: SimvueClient, folder: str, tmp_path: Path
) -> None:
    env = example_env(tmp_path, folder, OTEL_EXPORTER_OTLP_ENDPOINT=bridge.url)
    out = run_example(example("otlp_sdk_to_bridge.py"), env, tmp_path)
    assert out.stdout.strip() == "sent otlp-sdk-run to the bridge"
    run = finished_run(client, "otlp-sdk-run", folder, "estimate", 20)
    assert run["tags"] == ["otlp", "sdk"]
    assert user_metadata(run) == {"method": "bisection"}
    assert run["description"].startswith("Plain OpenTelemetry SDK")
    estimate = series(client, run["id"], "estimate")
    assert [s for s, _ in estimate] == list(range(20))
    assert estimate[-1][1] == pytest.approx(2 ** (1 / 3), abs=1e-5)
    assert len(series(client, run["id"], "interval")) == 20
    assert series(client, run["id"], "iterations")[-1][1] == 20
    low, high = 1.0, 2.0
    for _ in range(20):  # the example's bisection, to know the message it ends with
        mid = (low + high) / 2
        low, high = (low, mid) if mid**3 > 2 else (mid, high)
    assert messages(client, run["id"]) == [f"cube root of 2 is about {mid:.6f}"]
