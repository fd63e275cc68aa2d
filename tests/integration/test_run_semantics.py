"""Run behaviours beyond the documented API basics: a reused metrics dict, a program that
dies of an uncaught exception with a run open, the mode from SIMVUE_OTEL_MODE."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from simvue_otel import Run, SimvueValidationError
from simvue_otel._internal.client import SimvueClient
from tests.helpers import LocalServer, newest_run


@pytest.fixture
def online_tmp_spool(
    local_server: LocalServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> LocalServer:
    """The conftest's ``online``, but with ``tmp_path`` itself the offline directory: the
    tests here look for the spool at ``tmp_path / "otel-spool"``."""
    monkeypatch.setenv("SIMVUE_URL", local_server.url)
    monkeypatch.setenv("SIMVUE_TOKEN", local_server.token)
    monkeypatch.setenv("SIMVUE_OFFLINE_DIRECTORY", str(tmp_path))
    monkeypatch.delenv("SIMVUE_OTEL_MODE", raising=False)
    return local_server


def test_a_reused_and_mutated_dict_records_each_call_as_it_was(
    online_tmp_spool: LocalServer,
) -> None:
    folder = f"/semantics/{uuid.uuid4().hex[:8]}"
    values = {"x": 0.0}
    with Run() as run:
        run.init(folder=folder, resources_metrics_interval=None)
        for step in range(100):
            values["x"] = float(step)  # the usual pattern: one dict, updated in place
            run.log_metrics(values)
        run_id = run.id
    assert run_id is not None
    with SimvueClient(online_tmp_spool.url, online_tmp_spool.token) as client:
        points = client.get_metrics(run_id, ["x"])["x"]
    assert [(p["step"], p["value"]) for p in points] == [(s, float(s)) for s in range(100)]


def test_an_uncaught_exception_ends_an_unclosed_run_failed(
    online_tmp_spool: LocalServer, tmp_path: Path
) -> None:
    name = f"uncaught-{uuid.uuid4().hex[:8]}"
    script = textwrap.dedent(
        f"""
        from simvue_otel import Run
        run = Run()
        run.init(name={name!r}, folder="/semantics", resources_metrics_interval=None)
        run.log_metrics({{"x": 1.0}})
        raise ValueError("the mesh is inverted")
        """
    )
    env = dict(os.environ)
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1 and "the mesh is inverted" in done.stderr
    with SimvueClient(online_tmp_spool.url, online_tmp_spool.token) as client:
        found = newest_run(client, name, "/semantics")
        assert found is not None
        assert client.get_run(found["id"])["status"] == "failed"
        messages = [e["message"] for e in client.get_events(found["id"])]
        assert any(m.startswith("ValueError: the mesh is inverted") for m in messages), messages


def test_mode_comes_from_the_environment_when_not_given(
    online_tmp_spool: LocalServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SIMVUE_OTEL_MODE", "offline")
    with Run() as run:
        run.init(folder="/semantics/env-mode", resources_metrics_interval=None)
        run.log_metrics({"x": 1.0})
    assert list((tmp_path / "otel-spool").glob("*.done")), "the run went to the offline spool"
    monkeypatch.setenv("SIMVUE_OTEL_MODE", "sometimes")
    with pytest.raises(SimvueValidationError) as err:
        Run()
    assert err.value.field == "SIMVUE_OTEL_MODE"
    assert "otlp" in str(err.value)


def test_set_pid_after_init_is_an_error(online_tmp_spool: LocalServer) -> None:
    with Run() as run:
        run.init(folder="/semantics/pid", resources_metrics_interval=None)
        with pytest.raises(RuntimeError, match="before init"):
            run.set_pid(os.getpid())


def test_time_must_be_a_number(online_tmp_spool: LocalServer) -> None:
    with Run() as run:
        run.init(folder="/semantics/time", resources_metrics_interval=None)
        with pytest.raises(SimvueValidationError) as err:
            run.log_metrics({"x": 1.0}, time="soon")  # type: ignore[arg-type]
        assert err.value.field == "time"
