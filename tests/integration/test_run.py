"""``simvue_otel.Run`` end to end: Simvue's Run API, recorded through OpenTelemetry, checked
against the real local server (or the offline spool, then ``simvue-otel send``)."""

from __future__ import annotations

import datetime as dt
import functools
import logging
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from simvue_otel import ConfigurationError, NotFoundError, Run, SimvueValidationError
from simvue_otel._internal.client import SimvueClient, parse_timestamp
from tests import helpers
from tests.helpers import (
    LocalServer,
    free_port,
    newest_run,
    start_server,
    stop_server,
    user_metadata,
)
from tests.helpers.cli import no_server_env, send, subprocess_env

# -- helpers ------------------------------------------------------------------------------


poll = functools.partial(helpers.poll, interval=0.1, ignoring=(NotFoundError,))
"""The suite's `poll` as these tests wait: a run not on the server yet is no answer."""


def only_run(client: SimvueClient, name: str, folder: str) -> dict[str, Any]:
    """The one run of this name in this folder (asserting there is exactly one), in full."""
    found = client.find_runs([f"name == {name}", f"folder.path == {folder}"])
    assert len(found) == 1, f"expected one run {name!r} in {folder}, found {len(found)}"
    return client.get_run(found[0]["id"])


def run_script(
    code: str, env: dict[str, str], cwd: Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert out.returncode == 0, f"script failed ({out.returncode}):\n{out.stdout}\n{out.stderr}"
    return out


def points(client: SimvueClient, run_id: str) -> dict[str, list[tuple[int, float]]]:
    """Every metric of the run as sorted (step, value) pairs."""
    return {
        name: sorted((p["step"], p["value"]) for p in pts)
        for name, pts in client.get_metrics(run_id).items()
    }


# -- 1. init: every field reaches the server ----------------------------------------------


def test_init_records_every_field(online: LocalServer, client: SimvueClient, folder: str) -> None:
    name = f"full-{uuid.uuid4().hex[:8]}"
    metadata = {"solver": {"tol": 1e-6, "name": "cg", "opts": {"restart": 30}}, "n": 64}
    assert client.find_folder(folder) is None
    with Run() as run:
        assert run.init(
            name=name,
            metadata=metadata,
            tags=["cfd", "mesh-1"],
            description="a full run",
            folder=folder,
            retention_period="1 hour",
            visibility="tenant",
            resources_metrics_interval=None,
        )
        assert run.name == name
        run_id = run.id
        assert run_id is not None
    got = only_run(client, name, folder)
    assert got["id"] == run_id
    assert got["name"] == name
    assert got["folder"] == folder
    assert got["description"] == "a full run"
    assert sorted(got["tags"]) == ["cfd", "mesh-1"]
    assert user_metadata(got) == metadata
    assert got["ttl"] == 3600
    assert got["visibility"] == {"public": False, "tenant": True, "users": []}
    assert got["status"] == "completed"
    assert got["endtime"]
    assert client.find_folder(folder) is not None


def test_init_without_a_name_generates_one(
    online: LocalServer, client: SimvueClient, folder: str
) -> None:
    with Run() as run:
        assert run.init(folder=folder, resources_metrics_interval=None)
        name = run.name
        run_id = run.id
    assert name is not None and re.fullmatch(r"^[a-z]+-[a-z]+$", name), name
    got = only_run(client, name, folder)
    assert got["id"] == run_id
    assert got["status"] == "completed"


# -- 2. visibility ------------------------------------------------------------------------


def test_visibility_shares_with_named_users_only(
    online: LocalServer, client: SimvueClient, folder: str
) -> None:
    with Run() as run:
        assert run.init(
            name="shared", folder=folder, visibility=["run-bob"], resources_metrics_interval=None
        )
        shared_id = run.id
    with Run() as run:
        assert run.init(name="private", folder=folder, resources_metrics_interval=None)
        private_id = run.id
    assert shared_id and private_id
    assert client.get_run(shared_id)["visibility"] == {
        "public": False,
        "tenant": False,
        "users": ["run-bob"],
    }
    with (
        SimvueClient(online.url, online.token_for("run-bob"), retries=0) as bob,
        SimvueClient(online.url, online.token_for("run-carol"), retries=0) as carol,
    ):
        assert bob.get_run(shared_id)["name"] == "shared"
        with pytest.raises(NotFoundError):
            carol.get_run(shared_id)
        with pytest.raises(NotFoundError):
            bob.get_run(private_id)  # private by default
    assert client.get_run(private_id)["name"] == "private"  # the owner still sees it


# -- 3. live updates ----------------------------------------------------------------------


def test_updates_show_while_the_run_is_open(
    online: LocalServer, client: SimvueClient, folder: str
) -> None:
    def tags_are(expected: list[str]) -> Callable[[Any], bool]:
        return lambda r: r is not None and sorted(r["tags"]) == expected

    def meta_is(expected: dict[str, Any]) -> Callable[[Any], bool]:
        return lambda r: r is not None and user_metadata(r) == expected

    with Run() as run:
        assert run.init(
            name="live",
            folder=folder,
            tags=["a", "b"],
            metadata={"keep": 1, "change": "old", "nested": {"x": 1, "y": 2}},
            resources_metrics_interval=None,
        )
        run_id = run.id
        assert run_id is not None
        fetch = lambda: client.get_run(run_id)  # noqa: E731

        got = poll(fetch, lambda r: r is not None and r["status"] == "running")
        assert got["status"] == "running"

        assert run.update_tags(["c", "a"]) is True
        got = poll(fetch, tags_are(["a", "b", "c"]))
        assert sorted(got["tags"]) == ["a", "b", "c"]
        assert got["status"] == "running"

        assert run.set_tags(["x", "y"]) is True
        got = poll(fetch, tags_are(["x", "y"]))
        assert sorted(got["tags"]) == ["x", "y"]

        assert run.update_metadata({"change": "new", "added": 2.5, "nested": {"y": 3}}) is True
        merged = {"keep": 1, "change": "new", "added": 2.5, "nested": {"x": 1, "y": 3}}
        got = poll(fetch, meta_is(merged))
        assert user_metadata(got) == merged
        assert got["status"] == "running"
    final = client.get_run(run_id)
    assert final["status"] == "completed"
    assert sorted(final["tags"]) == ["x", "y"]
    assert user_metadata(final) == merged


# -- 4. log_metrics and log_event ---------------------------------------------------------


def test_log_metrics_steps_times_and_timestamps(
    online: LocalServer, client: SimvueClient, folder: str
) -> None:
    stamp = dt.datetime(2024, 1, 2, 3, 4, 5, 123456)
    with Run() as run:
        assert run.init(name="metrics", folder=folder, resources_metrics_interval=None)
        before = time.time()
        assert run.log_metrics({"x": 0.5})  # step 0
        assert run.log_metrics({"x": 1.5}, step=10)
        assert run.log_metrics({"x": 2.5})  # the counter advanced: step 2
        assert run.log_metrics({"t": 1.0}, time=123.25)  # step 3
        assert run.log_metrics({"d": 7.0}, timestamp=stamp)  # step 4
        assert run.log_metrics({"s": 8}, timestamp="2023-06-07T08:09:10.654321")  # step 5
        assert run.log_metrics({"z": 9.0}, timestamp="2023-06-07T08:09:10.654321+02:00")
        assert run.log_event("careful now", log_level="warning")
        assert run.log_event("plain")
        assert run.log_event("stamped", timestamp=stamp, log_level="error")
        after = time.time()
        run_id = run.id
    assert run_id is not None
    metrics = client.get_metrics(run_id)
    assert set(metrics) == {"x", "t", "d", "s", "z"}

    x = metrics["x"]
    assert sorted((p["step"], p["value"]) for p in x) == [(0, 0.5), (2, 2.5), (10, 1.5)]
    by_step = {p["step"]: p for p in x}
    in_call_order = [by_step[0], by_step[10], by_step[2]]
    times = [p["time"] for p in in_call_order]
    assert times == sorted(times), "time since init is monotone"
    assert times[0] >= 0 and times[-1] <= after - before + 1.0, times
    for p in in_call_order:
        assert before - 1 <= parse_timestamp(p["timestamp"]) <= after + 1

    (t,) = metrics["t"]
    assert (t["step"], t["value"], t["time"]) == (3, 1.0, 123.25)
    (d,) = metrics["d"]
    assert (d["step"], d["value"]) == (4, 7.0)
    assert d["timestamp"] == "2024-01-02T03:04:05.123456"
    expected = stamp.replace(tzinfo=dt.timezone.utc).timestamp()
    assert parse_timestamp(d["timestamp"]) == pytest.approx(expected, abs=1e-7)
    assert 0 <= d["time"] <= after - before + 1.0  # time still counts from init
    (s,) = metrics["s"]
    assert (s["step"], s["value"]) == (5, 8.0)
    assert s["timestamp"] == "2023-06-07T08:09:10.654321"
    (z,) = metrics["z"]
    assert z["step"] == 6
    assert z["timestamp"] == "2023-06-07T06:09:10.654321", "a zoned time is converted to UTC"

    events = {e["message"]: e for e in client.get_events(run_id)}
    assert events["careful now"]["log_level"] == "warning"
    assert events["plain"]["log_level"] == "info"
    assert events["stamped"]["log_level"] == "error"
    assert events["stamped"]["timestamp"] == "2024-01-02T03:04:05.123456"
    assert before - 1 <= parse_timestamp(events["plain"]["timestamp"]) <= after + 1


# -- 5. how a run ends --------------------------------------------------------------------


class Boom(Exception):
    pass


@pytest.mark.parametrize("how", ["exception", "keyboard-interrupt", "close", "set-status"])
def test_exit_status(online: LocalServer, client: SimvueClient, folder: str, how: str) -> None:
    name = f"exit-{how}"
    run = Run()
    if how == "close":
        assert run.init(name=name, folder=folder, resources_metrics_interval=None)
        assert run.status == "running"
        assert run.close() is True
        expected = "completed"
    elif how == "set-status":
        with run:
            assert run.init(name=name, folder=folder, resources_metrics_interval=None)
            assert run.set_status("failed") is True
        expected = "failed"
    elif how == "exception":
        with pytest.raises(Boom), run:
            assert run.init(name=name, folder=folder, resources_metrics_interval=None)
            raise Boom("the solver diverged at step 7")
        expected = "failed"
    else:
        with pytest.raises(KeyboardInterrupt), run:
            assert run.init(name=name, folder=folder, resources_metrics_interval=None)
            raise KeyboardInterrupt
        expected = "terminated"
    assert run.status == expected
    got = only_run(client, name, folder)
    assert got["status"] == expected
    assert got["endtime"]
    if how == "exception":
        messages = [e["message"] for e in client.get_events(got["id"])]
        assert any(
            "Boom" in m and "the solver diverged at step 7" in m and "Traceback" in m
            for m in messages
        ), messages


# -- 6. SIGTERM ---------------------------------------------------------------------------


def test_sigterm_ends_the_run_terminated(
    online: LocalServer, client: SimvueClient, folder: str, tmp_path: Path
) -> None:
    code = f"""
        import time
        from simvue_otel import Run
        with Run() as run:
            run.init(name="sigterm", folder={folder!r}, resources_metrics_interval=None)
            run.log_metrics({{"x": 1.0}})
            print("ready", flush=True)
            time.sleep(60)
        print("not reached", flush=True)
    """
    env = subprocess_env(
        SIMVUE_URL=online.url,
        SIMVUE_TOKEN=online.token,
        SIMVUE_OFFLINE_DIRECTORY=str(tmp_path / "offline"),
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "ready", proc.stderr.read() if proc.stderr else ""
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "not reached" not in out
    assert proc.returncode != 0, err
    got = poll(
        lambda: newest_run(client, "sigterm", folder),
        lambda r: r is not None and r["status"] == "terminated",
        timeout=20,
    )
    assert got is not None and got["status"] == "terminated", (got, err)
    assert points(client, got["id"]) == {"x": [(0, 1.0)]}


# -- 7. lost ------------------------------------------------------------------------------


def test_a_killed_process_turns_lost(tmp_path: Path, folder: str) -> None:
    server = start_server(tmp_path / "srv", extra=["--sweep-interval", "0.3"])
    code = f"""
        import os, signal, time
        from simvue_otel import Run
        run = Run()
        run.init(name="doomed", folder={folder!r}, timeout=2, resources_metrics_interval=None)
        for i in range(5):
            run.log_metrics({{"x": float(i)}})
        time.sleep(1.5)
        os.kill(os.getpid(), signal.SIGKILL)
    """
    env = subprocess_env(
        SIMVUE_URL=server.url,
        SIMVUE_TOKEN=server.token,
        SIMVUE_OFFLINE_DIRECTORY=str(tmp_path / "offline"),
    )
    try:
        out = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code)],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert out.returncode == -signal.SIGKILL, out.stderr
        with SimvueClient(server.url, server.token, retries=2) as c:
            got = poll(
                lambda: newest_run(c, "doomed", folder),
                lambda r: r is not None and r["status"] == "lost",
                timeout=15,
            )
            assert got is not None and got["status"] == "lost", got
            assert got["heartbeat_timeout"] == 2
            assert points(c, got["id"]) == {"x": [(i, float(i)) for i in range(5)]}
    finally:
        stop_server(server)


# -- 8. queued runs -----------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["online", "offline"])
def test_queued_run_is_started_by_another_process(
    local_server: LocalServer, client: SimvueClient, folder: str, tmp_path: Path, mode: str
) -> None:
    name = f"queued-{uuid.uuid4().hex[:8]}"
    offline_dir = tmp_path / "offline"
    if mode == "online":
        env = subprocess_env(
            SIMVUE_URL=local_server.url,
            SIMVUE_TOKEN=local_server.token,
            SIMVUE_OFFLINE_DIRECTORY=str(offline_dir),
        )
    else:
        home = tmp_path / "home"
        home.mkdir()
        env = subprocess_env(HOME=str(home), SIMVUE_OFFLINE_DIRECTORY=str(offline_dir))
    process_a = f"""
        from simvue_otel import Run
        with Run(mode={mode!r}) as run:
            assert run.init(
                name={name!r}, folder={folder!r}, running=False, tags=["queued", "a"],
                metadata={{"setup": {{"n": 8}}, "who": "a"}}, description="from A",
                resources_metrics_interval=None,
            )
            assert run.status == "created", run.status
    """
    process_b = f"""
        from simvue_otel import Run
        with Run(mode={mode!r}) as run:
            run.config(disable_resources_metrics=True)
            assert run.reconnect({name!r})
            assert run.status == "running", run.status
            run.log_metrics({{"loss": 0.5}})
            run.log_metrics({{"loss": 0.25}})
            run.log_event("from B")
    """
    run_script(process_a, env, tmp_path)
    if mode == "offline":
        assert client.find_runs([f"name == {name}"]) == [], "offline sent nothing"
        send(offline_dir, local_server)
    queued = only_run(client, name, folder)
    assert queued["status"] == "created"
    assert sorted(queued["tags"]) == ["a", "queued"]

    run_script(process_b, env, tmp_path)
    if mode == "offline":
        send(offline_dir, local_server)
    final = only_run(client, name, folder)
    assert final["id"] == queued["id"]
    assert final["status"] == "completed"
    assert sorted(final["tags"]) == ["a", "queued"]
    assert user_metadata(final) == {"setup": {"n": 8}, "who": "a"}
    assert final["description"] == "from A"
    assert points(client, final["id"]) == {"loss": [(0, 0.5), (1, 0.25)]}
    assert [e["message"] for e in client.get_events(final["id"])] == ["from B"]


# -- 9. several runs in one program -------------------------------------------------------


def test_parameter_scan_runs_do_not_mix(
    online: LocalServer, client: SimvueClient, folder: str
) -> None:
    ids = []
    for index in range(5):
        with Run() as run:
            assert run.init(
                name=f"scan-{index}",
                folder=folder,
                metadata={"index": index},
                resources_metrics_interval=None,
            )
            for _ in range(3):
                run.log_metrics({"x": float(index)})
            run.log_event(f"run {index}")
            ids.append(run.id)
    assert len(set(ids)) == 5
    assert len(client.find_runs([f"folder.path == {folder}"])) == 5
    for index in range(5):
        got = only_run(client, f"scan-{index}", folder)
        assert got["status"] == "completed"
        assert user_metadata(got) == {"index": index}
        assert points(client, got["id"]) == {"x": [(s, float(index)) for s in range(3)]}
        assert [e["message"] for e in client.get_events(got["id"])] == [f"run {index}"]


def test_hundred_runs_leak_no_threads_or_files(tmp_path: Path) -> None:
    code = """
        import os, threading
        from simvue_otel import Run

        def counts():
            return threading.active_count(), len(os.listdir("/proc/self/fd"))

        for i in range(100):
            with Run(mode="offline") as run:
                run.init(name=f"leak-{i}", folder="/leak", resources_metrics_interval=None)
                run.log_metrics({"x": float(i)})
                run.log_event("e")
            if i == 9:
                print("after10", *counts())
        print("after100", *counts())
    """
    home = tmp_path / "home"
    home.mkdir()
    env = subprocess_env(HOME=str(home), SIMVUE_OFFLINE_DIRECTORY=str(tmp_path / "offline"))
    out = run_script(code, env, tmp_path, timeout=120)
    lines = {ln.split()[0]: [int(v) for v in ln.split()[1:]] for ln in out.stdout.splitlines()}
    threads10, fds10 = lines["after10"]
    threads100, fds100 = lines["after100"]
    assert threads100 <= threads10 + 2, (threads10, threads100)
    assert fds100 <= fds10 + 2, (fds10, fds100)


# -- 10. disabled -------------------------------------------------------------------------


def test_disabled_mode_does_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    no_server_env(monkeypatch, home)
    offline_dir = tmp_path / "offline"
    monkeypatch.setenv("SIMVUE_OFFLINE_DIRECTORY", str(offline_dir))
    threads_before = set(threading.enumerate())
    count_before = threading.active_count()
    with Run(mode="disabled") as run:
        results = [
            run.config(suppress_errors=False),
            run.init(
                name="off",
                folder="/off",
                tags=["t"],
                metadata={"a": 1},
                resources_metrics_interval=1,
            ),
            run.update_tags(["u"]),
            run.set_tags(["v"]),
            run.update_metadata({"b": 2}),
            run.log_metrics({"x": 1.0}),
            run.log_metrics({"x": 2.0}, step=5, time=1.0),
            run.log_event("hello", log_level="warning"),
            run.set_status("failed"),
            run.close(),
        ]
        time.sleep(0.2)
        new_threads = set(threading.enumerate()) - threads_before
        count_inside = threading.active_count()
    assert results == [True] * len(results)
    assert new_threads == set(), new_threads
    assert count_inside <= count_before
    assert run.id is None
    assert not offline_dir.exists() or list(offline_dir.rglob("*")) == []
    assert list(home.rglob("*")) == []


# -- 11. offline gives the same run as online ---------------------------------------------


def _program(run: Run, folder: str) -> None:
    assert run.init(
        name="same-program",
        folder=folder,
        tags=["scan", "v1"],
        metadata={"solver": {"tol": 1e-6, "kind": "cg"}, "n": 16, "ok": True},
        description="offline or online",
        retention_period="2 days",
        visibility="tenant",
        resources_metrics_interval=None,
    )
    for step in range(20):
        run.log_metrics({"loss": 1.0 / (step + 1), "res": step * 0.5}, time=step * 0.1)
    run.log_metrics({"late": 3.0}, step=100, time=9.5)
    run.log_event("converged")
    run.log_event("mesh is coarse", log_level="warning")
    run.update_tags(["extra"])
    run.update_metadata({"n": 32, "post": "yes", "solver": {"tol": 1e-8}})
    run.set_tags(["final", *["scan", "extra"]])
    run.log_metrics({"stamped": 1.0}, timestamp="2024-05-06T07:08:09.101112", time=1.0)


def _comparable(client: SimvueClient, run_id: str) -> dict[str, Any]:
    run = client.get_run(run_id)
    metrics = client.get_metrics(run_id)
    return {
        **{k: run[k] for k in ("name", "folder", "status", "description", "visibility", "ttl")},
        "heartbeat_timeout": run.get("heartbeat_timeout"),
        "tags": sorted(run["tags"]),
        "metadata": user_metadata(run),
        "metrics": {
            name: sorted((p["step"], p["value"], p["time"]) for p in pts)
            for name, pts in metrics.items()
        },
        "stamped": [p["timestamp"] for p in metrics.get("stamped", [])],
        "events": sorted((e["message"], e["log_level"]) for e in client.get_events(run_id)),
    }


def test_offline_then_send_equals_online(
    local_server: LocalServer,
    client: SimvueClient,
    folder: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with monkeypatch.context() as m:
        m.setenv("SIMVUE_URL", local_server.url)
        m.setenv("SIMVUE_TOKEN", local_server.token)
        m.setenv("SIMVUE_OFFLINE_DIRECTORY", str(tmp_path / "online-cache"))
        with Run() as online_run:
            _program(online_run, folder)
            online_key = online_run.key
    home = tmp_path / "home"
    no_server_env(monkeypatch, home)
    with Run(mode="offline") as offline_run:
        _program(offline_run, folder)
        offline_key = offline_run.key
        assert offline_run.id is None
    assert online_key and offline_key and online_key != offline_key
    assert client.find_run_by_key(offline_key) is None, "offline mode sent nothing"
    cache = home / ".simvue"
    assert list((cache / "otel-spool").iterdir()), "the spool is under $HOME/.simvue"
    send(cache, local_server)
    online_found = client.find_run_by_key(online_key)
    offline_found = client.find_run_by_key(offline_key)
    assert online_found is not None and offline_found is not None
    expected = _comparable(client, online_found["id"])
    got = _comparable(client, offline_found["id"])
    assert expected["status"] == "completed"
    assert expected["metrics"]["late"] == [(100, 3.0, 9.5)]
    assert expected["stamped"] == ["2024-05-06T07:08:09.101112"]
    assert sorted(expected["tags"]) == ["extra", "final", "scan"]
    assert expected["metadata"] == {
        "solver": {"tol": 1e-8, "kind": "cg"},
        "n": 32,
        "ok": True,
        "post": "yes",
    }
    assert got == expected


# -- 12. errors ---------------------------------------------------------------------------


INVALID_INIT = [
    ({"name": "bad name!"}, "name", "bad name!"),
    ({"folder": "nofolder"}, "folder", "nofolder"),
    ({"tags": "notalist"}, "tags", "notalist"),
    ({"metadata": {"a": [1, 2]}}, "metadata", [1, 2]),
    ({"retention_period": "soon"}, "retention_period", "soon"),
    ({"visibility": "everyone"}, "visibility", "everyone"),
]


@pytest.mark.parametrize(("kwargs", "field", "value"), INVALID_INIT, ids=lambda p: repr(p))
def test_invalid_init_raises_and_sends_nothing(
    online: LocalServer,
    client: SimvueClient,
    folder: str,
    kwargs: dict[str, Any],
    field: str,
    value: Any,
) -> None:
    name = f"invalid-{uuid.uuid4().hex[:8]}"
    args: dict[str, Any] = {"name": name, "folder": folder, **kwargs}
    run = Run()
    with pytest.raises(SimvueValidationError) as err:
        run.init(**args, resources_metrics_interval=None)
    assert isinstance(err.value, ValueError)
    assert err.value.field.split(".")[0].split("[")[0] == field, err.value.field
    assert repr(value) in str(err.value), str(err.value)
    run.close()
    time.sleep(0.3)
    assert client.find_runs([f"name == {name}"]) == []
    assert client.find_runs([f"folder.path == {folder}"]) == []
    assert client.find_folder(folder) is None


INVALID_DATA: list[tuple[str, Callable[[Run], Any], str, Any]] = [
    ("bad-key", lambda r: r.log_metrics({"bad key!": 1}), "metrics", "bad key!"),
    ("str-value", lambda r: r.log_metrics({"a": "x"}), "metrics", "x"),
    ("negative-step", lambda r: r.log_metrics({"a": 1}, step=-1), "step", -1),
    ("fatal-level", lambda r: r.log_event("x", log_level="fatal"), "log_level", "fatal"),
]


@pytest.mark.parametrize(
    ("call", "field", "value"), [p[1:] for p in INVALID_DATA], ids=[p[0] for p in INVALID_DATA]
)
def test_invalid_data_raises_and_records_nothing(
    online: LocalServer,
    client: SimvueClient,
    folder: str,
    call: Callable[[Run], Any],
    field: str,
    value: Any,
) -> None:
    with Run() as run:
        assert run.init(name="data", folder=folder, resources_metrics_interval=None)
        with pytest.raises(SimvueValidationError) as err:
            call(run)
        assert run.log_metrics({"good": 1.0})  # the run goes on
        run_id = run.id
    assert isinstance(err.value, ValueError)
    assert err.value.field.split("[")[0] == field, err.value.field
    assert repr(value) in str(err.value), str(err.value)
    assert run_id is not None
    assert points(client, run_id) == {"good": [(0, 1.0)]}
    assert client.get_events(run_id) == []
    assert client.get_run(run_id)["status"] == "completed"


def test_suppress_errors_disables_an_invalid_run(
    online: LocalServer,
    client: SimvueClient,
    folder: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    run = Run()
    assert run.config(suppress_errors=True) is True
    with caplog.at_level(logging.ERROR):
        assert run.init(name="bad name!", folder=folder) is False
    assert any("bad name!" in rec.getMessage() for rec in caplog.records), caplog.text
    later = [
        run.log_metrics({"x": 1.0}),
        run.log_metrics({"bad key!": "x"}),
        run.log_event("hi"),
        run.update_tags(["t"]),
        run.set_tags(["t"]),
        run.update_metadata({"a": 1}),
        run.set_status("completed"),
        run.close(),
    ]
    assert all(isinstance(r, bool) for r in later), later
    time.sleep(0.3)
    assert client.find_runs([f"folder.path == {folder}"]) == []


def test_suppress_errors_on_a_live_run_returns_false_and_goes_on(
    online: LocalServer, client: SimvueClient, folder: str, caplog: pytest.LogCaptureFixture
) -> None:
    with Run() as run:
        run.config(suppress_errors=True)
        assert run.init(name="suppressed", folder=folder, resources_metrics_interval=None)
        with caplog.at_level(logging.ERROR):
            assert run.log_metrics({"a": "x"}) is False
            assert run.log_event("x", log_level="fatal") is False
        assert "'x'" in caplog.text and "'fatal'" in caplog.text
        assert run.log_metrics({"a": 2.0}) is True
        run_id = run.id
    assert run_id is not None
    assert points(client, run_id) == {"a": [(0, 2.0)]}
    assert client.get_run(run_id)["status"] == "completed"
    assert run.log_metrics({"a": 3.0}) is True  # after close, with suppress_errors: a no-op


def test_online_without_url_is_a_configuration_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_server_env(monkeypatch, tmp_path / "home")
    with pytest.raises(ConfigurationError) as err:
        Run()
    assert "SIMVUE_URL" in str(err.value)


def test_unreachable_server_never_raises_and_keeps_the_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, folder: str
) -> None:
    port = free_port()
    offline_dir = tmp_path / "offline"
    monkeypatch.setenv("SIMVUE_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("SIMVUE_TOKEN", "not-a-token-anyone-checks")
    monkeypatch.setenv("SIMVUE_OFFLINE_DIRECTORY", str(offline_dir))
    monkeypatch.setenv("SIMVUE_OTEL_SHUTDOWN_TIMEOUT", "2")
    monkeypatch.delenv("SIMVUE_OTEL_MODE", raising=False)
    started = time.monotonic()
    with Run() as run:
        assert run.init(name="nobody-home", folder=folder, resources_metrics_interval=None)
        for step in range(100):
            assert run.log_metrics({"x": float(step)})
        assert run.log_event("still going")
        key = run.key
    elapsed = time.monotonic() - started
    assert elapsed < 15, f"init + 100 log_metrics + close took {elapsed:.1f} s"
    spool = offline_dir / "otel-spool"
    assert spool.is_dir() and any(p.stat().st_size > 0 for p in spool.rglob("*") if p.is_file())

    # The server comes up on that port: what was kept on disk is all there after a send. It
    # was logged under another token than the server's: sending it as this user is explicit.
    server = start_server(tmp_path / "srv", port=port)
    try:
        send(offline_dir, server, "--as-current-user")
        with SimvueClient(server.url, server.token, retries=2) as c:
            found = c.find_run_by_key(key or "")
            assert found is not None
            got = c.get_run(found["id"])
            assert (got["name"], got["folder"], got["status"]) == (
                "nobody-home",
                folder,
                "completed",
            )
            assert points(c, got["id"]) == {"x": [(s, float(s)) for s in range(100)]}
            assert [e["message"] for e in c.get_events(got["id"])] == ["still going"]
    finally:
        stop_server(server)


# -- 13. resource metrics -----------------------------------------------------------------

CPU = "resources/cpu.usage.percentage"
MEMORY = "resources/cpu.usage.memory"


def test_resource_metrics_are_sampled(
    online: LocalServer, client: SimvueClient, folder: str
) -> None:
    with Run() as run:
        assert run.init(name="resources", folder=folder, resources_metrics_interval=1)
        run_id = run.id
        assert run_id is not None
        poll(  # two samples of each, however long a busy machine takes to give them
            lambda: client.get_metrics(run_id),
            lambda m: m is not None and all(len(m.get(n, [])) >= 2 for n in (CPU, MEMORY)),
        )
    assert run_id is not None
    metrics = client.get_metrics(run_id)
    assert CPU in metrics and MEMORY in metrics, sorted(metrics)
    assert len(metrics[CPU]) >= 2 and len(metrics[MEMORY]) >= 2
    assert all(p["value"] > 0 for p in metrics[MEMORY])  # this process uses some memory


def test_no_resource_metrics_when_interval_is_none(
    online: LocalServer, client: SimvueClient, folder: str
) -> None:
    with Run() as run:
        assert run.init(name="no-resources", folder=folder, resources_metrics_interval=None)
        run.log_metrics({"x": 1.0})
        time.sleep(1.2)
        run_id = run.id
    assert run_id is not None
    assert set(client.metric_names(run_id)) == {"x"}


def test_set_pid_monitors_another_process(
    online: LocalServer, client: SimvueClient, folder: str
) -> None:
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        with Run() as run:
            run.set_pid(child.pid)
            assert run.init(name="pid", folder=folder, resources_metrics_interval=0.5)
            time.sleep(2.5)
            run_id = run.id
    finally:
        child.kill()
        child.wait()
    assert run_id is not None
    cpu = [p["value"] for p in client.get_metrics(run_id, [CPU])[CPU]]
    assert cpu and max(cpu) > 5, cpu  # a busy child; the monitoring process itself sleeps
