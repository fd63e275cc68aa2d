"""Aborting a run from the server (its UI or API): the heartbeat sees the request; the run's
``abort_callback`` is called, or without one the process ends and the run is ``terminated``."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests

from simvue_otel import Run
from simvue_otel._internal.client import SimvueClient
from tests.helpers import LocalServer, newest_run


def _request_abort(server: LocalServer, run_id: str) -> None:
    reply = requests.put(
        f"{server.api}/runs/{run_id}/abort",
        json={"reason": "stopped from the test"},
        headers=server.headers(),
        timeout=10,
    )
    assert reply.status_code == 200, reply.text


def test_abort_callback_is_called(
    local_server: LocalServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SIMVUE_URL", local_server.url)
    monkeypatch.setenv("SIMVUE_TOKEN", local_server.token)
    monkeypatch.setenv("SIMVUE_OFFLINE_DIRECTORY", str(tmp_path))
    called = threading.Event()
    seen: list[Run] = []

    def on_abort(run: Run) -> None:
        seen.append(run)
        called.set()

    with Run(abort_callback=on_abort) as run:
        run.init(
            folder=f"/abort/{uuid.uuid4().hex[:8]}", timeout=3, resources_metrics_interval=None
        )
        run_id = run.id
        assert run_id is not None
        _request_abort(local_server, run_id)
        assert called.wait(15), "the abort request reached the run"
    assert seen == [run]


def test_abort_without_callback_terminates_the_process(
    local_server: LocalServer, tmp_path: Path
) -> None:
    name = f"aborted-{uuid.uuid4().hex[:8]}"
    script = textwrap.dedent(
        f"""
        import time
        from simvue_otel import Run
        with Run() as run:
            run.init(name={name!r}, folder="/abort", timeout=3, resources_metrics_interval=None)
            run.log_metrics({{"x": 1.0}})
            print("ready", flush=True)
            time.sleep(60)
        print("not reached", flush=True)
        """
    )
    env = dict(os.environ, SIMVUE_URL=local_server.url, SIMVUE_TOKEN=local_server.token,
               SIMVUE_OFFLINE_DIRECTORY=str(tmp_path))  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        with SimvueClient(local_server.url, local_server.token) as client:
            deadline = time.monotonic() + 60
            found = None
            while found is None and time.monotonic() < deadline:
                found = newest_run(client, name, "/abort")
                time.sleep(0.2)
            assert found is not None
            _request_abort(local_server, found["id"])
            out, _ = proc.communicate(timeout=30)
            assert "not reached" not in out
            assert proc.returncode != 0
            run = client.get_run(found["id"])
            assert run["status"] == "terminated"
            assert client.get_metrics(found["id"], ["x"])["x"][0]["value"] == 1.0
    finally:
        if proc.poll() is None:
            proc.kill()
