"""A ``Run`` used from child processes: ``multiprocessing`` pools (fork and spawn start
methods) and a plain ``os.fork``, online to the real local server and offline then ``send``.

Each program runs as a subprocess under a timeout (a hang fails the test instead of the
suite). A forked child logs into its parent's run, what it logs arrives exactly once, and the
run's status is the one its parent gives it, whatever the child does at exit.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from simvue_otel._internal.client import SimvueClient
from tests.helpers import Bridge, LocalServer

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

WORKERS = 4
POINTS = 10_000

APP = textwrap.dedent(
    """
    import json, multiprocessing as mp, os, sys
    from simvue_otel import Run

    METHOD, FINISH, MODE, NAME, FOLDER = sys.argv[1:6]
    WORKERS, POINTS = int(sys.argv[6]), int(sys.argv[7])
    RUN = None

    def work(i):
        for step in range(POINTS):
            RUN.log_metrics({f"worker{i}.x": float(step)})
        RUN.log_event(f"worker {i} done")
        try:
            RUN.update_metadata({"child": i})
        except RuntimeError as exc:
            refused = str(exc)
        else:
            refused = ""
        if FINISH == "join":
            RUN.close()  # in a child: delivers what it logged; the run stays the parent's
        return os.getpid(), refused

    if __name__ == "__main__":
        ctx = mp.get_context(METHOD)
        with Run(mode=MODE) as run:
            run.init(name=NAME, folder=FOLDER, resources_metrics_interval=None)
            RUN = run
            run.log_metrics({"parent.x": 1.0})
            if FINISH == "join":
                pool = ctx.Pool(WORKERS)
                results = pool.map(work, range(WORKERS))
                pool.close()
                pool.join()
            else:
                # The with block ends the pool with terminate(): SIGTERM to its workers, which
                # did not call close(): what they logged is delivered as they exit.
                with ctx.Pool(WORKERS) as pool:
                    results = pool.map(work, range(WORKERS))
            mid = {}
            if MODE == "online":  # what the server holds once the workers have exited
                from simvue_otel._internal.client import SimvueClient

                with SimvueClient(os.environ["SIMVUE_URL"], os.environ["SIMVUE_TOKEN"]) as c:
                    run_id = run.id
                    mid["status"] = c.get_run(run_id)["status"]
                    held = c.get_metrics(run_id, [f"worker{i}.x" for i in range(WORKERS)])
                    mid["counts"] = {k: len(v) for k, v in held.items()}
            run.log_metrics({"parent.x": 2.0})
            status = run.status
        print(json.dumps({"results": results, "status": status, "final": run.status, "mid": mid}))
    """
)


def bounded(cmd: list[str], env: dict[str, str], cwd: Path, timeout: float = 240) -> Any:
    """Run ``cmd`` in a session of its own; on timeout (a hung child, the bug guarded
    against) kill the whole session, workers included, and fail with what it printed."""
    proc = subprocess.Popen(
        cmd,
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{cmd[1:3]} hung for {timeout} s:\n{out}\n{err}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def run_app(
    tmp_path: Path, env: dict[str, str], method: str, finish: str, mode: str, name: str, folder: str
) -> dict[str, Any]:
    script = tmp_path / "forking_app.py"
    script.write_text(APP)
    args = [method, finish, mode, name, folder, str(WORKERS), str(POINTS)]
    out = bounded([sys.executable, str(script), *args], env, tmp_path)
    assert out.returncode == 0, f"the app failed ({out.returncode}):\n{out.stdout}\n{out.stderr}"
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    result["stderr"] = out.stderr
    return result


def environment(server: LocalServer, offline: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIMVUE_", "OTEL_"))}
    env.update(
        SIMVUE_URL=server.url,
        SIMVUE_TOKEN=server.token,
        SIMVUE_OFFLINE_DIRECTORY=str(offline),
        PYTHONUNBUFFERED="1",
    )
    return env


def check_run(client: SimvueClient, name: str, folder: str) -> None:
    """One run; every worker's points exactly once, with the steps it logged; its events
    once each; the status the parent gave it."""
    found = client.find_runs([f"name == {name}", f"folder.path == {folder}"])
    assert len(found) == 1, f"expected one run {name!r}, found {len(found)}"
    run = client.get_run(found[0]["id"])
    assert run["status"] == "completed"
    assert "child" not in run["metadata"]  # a child's state change was refused
    metrics = client.get_metrics(run["id"])
    for i in range(WORKERS):
        got = sorted((p["step"], p["value"]) for p in metrics.get(f"worker{i}.x", []))
        assert len(got) == POINTS, f"worker {i}: {len(got)} of {POINTS} points"
        assert [v for _, v in got] == [float(s) for s in range(POINTS)]
        assert len({s for s, _ in got}) == POINTS  # no step twice
    assert sorted(p["value"] for p in metrics["parent.x"]) == [1.0, 2.0]
    events = [e["message"] for e in client.get_events(run["id"])]
    for i in range(WORKERS):
        assert events.count(f"worker {i} done") == 1, events


@pytest.mark.parametrize("finish", ["join", "terminate"])
def test_fork_pool_workers_log_into_the_parents_run(
    local_server: LocalServer, client: SimvueClient, tmp_path: Path, finish: str
) -> None:
    name, folder = f"fork-{finish}-{uuid.uuid4().hex[:8]}", f"/fork-tests/{uuid.uuid4().hex[:8]}"
    env = environment(local_server, tmp_path / "offline")
    result = run_app(tmp_path, env, "fork", finish, "online", name, folder)
    assert result["status"] == "running" and result["final"] == "completed"
    # The workers delivered everything before they exited, and none of them ended the run.
    assert result["mid"]["status"] == "running"
    expected = {f"worker{i}.x": POINTS for i in range(WORKERS)}
    assert result["mid"]["counts"] == expected, result["stderr"]
    pids = {pid for pid, _ in result["results"]}
    assert os.getpid() not in pids
    for _, refused in result["results"]:
        assert re.search(r"update_metadata\(\) changes the run's state.*forked child", refused)
    check_run(client, name, folder)


def test_fork_pool_offline_then_send(
    local_server: LocalServer, client: SimvueClient, tmp_path: Path
) -> None:
    name, folder = f"fork-off-{uuid.uuid4().hex[:8]}", f"/fork-tests/{uuid.uuid4().hex[:8]}"
    offline = tmp_path / "offline"
    env = environment(local_server, offline)
    run_app(tmp_path, env, "fork", "join", "offline", name, folder)
    assert client.find_runs([f"name == {name}"]) == []  # nothing sent yet
    send = [sys.executable, "-m", "simvue_otel", "send", "--cache", str(offline)]
    out = bounded(send, env, tmp_path)
    assert out.returncode == 0, f"send failed:\n{out.stdout}\n{out.stderr}"
    check_run(client, name, folder)


def test_fork_pool_over_otlp_to_the_bridge(
    local_server: LocalServer, bridge: Bridge, client: SimvueClient, tmp_path: Path
) -> None:
    """``mode="otlp"``: the children's records go through forwarders of their own."""
    name, folder = f"fork-otlp-{uuid.uuid4().hex[:8]}", f"/fork-tests/{uuid.uuid4().hex[:8]}"
    env = environment(local_server, tmp_path / "offline")
    env["OTEL_EXPORTER_OTLP_ENDPOINT"] = bridge.url
    run_app(tmp_path, env, "fork", "join", "otlp", name, folder)
    deadline = time.monotonic() + 120  # the bridge delivers on its own schedule
    while True:
        try:
            check_run(client, name, folder)
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def run_child_app(
    server: LocalServer, client: SimvueClient, tmp_path: Path, app: str, prefix: str
) -> dict[str, Any]:
    """Run one of the single-child apps above; check that the child's 100 points and its
    event reached the run exactly once; return the app's last JSON line (or {})."""
    name, folder = f"{prefix}-{uuid.uuid4().hex[:8]}", f"/fork-tests/{uuid.uuid4().hex[:8]}"
    script = tmp_path / f"{prefix}_app.py"
    script.write_text(app)
    env = environment(server, tmp_path / "offline")
    out = bounded([sys.executable, str(script), name, folder], env, tmp_path)
    assert out.returncode == 0, f"the app failed ({out.returncode}):\n{out.stdout}\n{out.stderr}"
    found = client.find_runs([f"name == {name}", f"folder.path == {folder}"])
    assert len(found) == 1
    run_id = found[0]["id"]
    points = client.get_metrics(run_id, ["child.x"]).get("child.x", [])
    assert sorted(p["step"] for p in points) == list(range(100)), out.stderr
    assert [e["message"] for e in client.get_events(run_id)].count("child done") == 1
    lines = out.stdout.strip().splitlines()
    result: dict[str, Any] = json.loads(lines[-1]) if lines else {}
    result["stderr"] = out.stderr
    return result


EXIT_RACE_APP = textwrap.dedent(
    """
    import json, multiprocessing as mp, multiprocessing.util as mp_util, os, signal, sys
    from simvue_otel import Run

    NAME, FOLDER = sys.argv[1:3]
    RUN = None

    def work():
        # Pool.terminate's SIGTERM reaching a worker that got its sentinel and is leaving:
        # it arrives while multiprocessing runs the worker's exit finalizers.
        mp_util.Finalize(None, os.kill, (os.getpid(), signal.SIGTERM), exitpriority=1000)
        for step in range(100):
            RUN.log_metrics({"child.x": float(step)})
        RUN.log_event("child done")

    if __name__ == "__main__":
        with Run(mode="online") as run:
            run.init(name=NAME, folder=FOLDER, resources_metrics_interval=None)
            RUN = run
            child = mp.get_context("fork").Process(target=work)
            child.start()
            child.join()
            print(json.dumps({"exitcode": child.exitcode}))
    """
)


def test_a_sigterm_while_a_child_runs_its_exit_finalizers_does_not_skip_its_delivery(
    local_server: LocalServer, client: SimvueClient, tmp_path: Path
) -> None:
    """The SIGTERM handler raised inside multiprocessing's exit finalizers, which catch only
    ``Exception``: the finalizer that delivers what the child recorded was skipped, and its
    points and events were lost (seen as a pool worker's missing event under load)."""
    result = run_child_app(local_server, client, tmp_path, EXIT_RACE_APP, "exit-race")
    assert result["exitcode"] == 0, result["stderr"]


STRAY_SIGTERM_APP = textwrap.dedent(
    """
    import json, multiprocessing as mp, signal, sys, threading, time
    from simvue_otel import Run

    NAME, FOLDER = sys.argv[1:3]
    RUN = None

    def work(lock):
        for step in range(100):
            RUN.log_metrics({"child.x": float(step)})
        RUN.log_event("child done")

        def stray():
            # SIGTERM taken by a thread other than the main one while the main thread waits
            # in a semaphore (as when it reaches a pool worker just before its wait): the
            # main thread's Python handler never runs.
            time.sleep(0.5)
            signal.pthread_kill(threading.get_ident(), signal.SIGTERM)

        threading.Thread(target=stray, daemon=True).start()
        lock.acquire()  # held by the parent: the main thread waits in sem_wait

    if __name__ == "__main__":
        with Run(mode="online") as run:
            run.init(name=NAME, folder=FOLDER, resources_metrics_interval=None)
            RUN = run
            ctx = mp.get_context("fork")
            lock = ctx.Lock()
            lock.acquire()
            child = ctx.Process(target=work, args=(lock,))
            child.start()
            child.join(60)
            hung = child.is_alive()
            if hung:
                child.kill()
                child.join()
            print(json.dumps({"exitcode": child.exitcode, "hung": hung}))
    """
)


def test_a_sigterm_the_childs_main_thread_never_takes_still_delivers_and_ends_it(
    local_server: LocalServer, client: SimvueClient, tmp_path: Path
) -> None:
    """``Pool.terminate`` hung forever (one run in about thirty under load): its SIGTERM was
    tripped while the worker's main thread was about to wait for its next task, so the Python
    handler never ran. The child's watcher delivers what it recorded and ends it (143)."""
    result = run_child_app(local_server, client, tmp_path, STRAY_SIGTERM_APP, "stray")
    assert (result["exitcode"], result["hung"]) == (143, False), result["stderr"]


def test_spawn_refuses_to_send_a_run_clearly(local_server: LocalServer, tmp_path: Path) -> None:
    """A Run cannot cross into a spawned process: the error says so, in the parent, before
    any child runs, and names the way that works."""
    script = tmp_path / "spawning_app.py"
    script.write_text(
        textwrap.dedent(
            """
            import multiprocessing as mp
            from simvue_otel import Run

            def work(run, i):
                run.log_metrics({"x": i})

            if __name__ == "__main__":
                with Run(mode="offline") as run:
                    run.init(name="spawned", resources_metrics_interval=None)
                    with mp.get_context("spawn").Pool(2) as pool:
                        try:
                            pool.apply(work, (run, 1))
                        except TypeError as exc:
                            print("REFUSED:", exc)
            """
        )
    )
    env = environment(local_server, tmp_path / "offline")
    out = bounded([sys.executable, str(script)], env, tmp_path)
    assert out.returncode == 0, out.stderr
    assert "REFUSED: a simvue_otel.Run cannot be pickled" in out.stdout
    assert "fork start method" in out.stdout


def test_os_fork_child_exits_normally(
    local_server: LocalServer, client: SimvueClient, tmp_path: Path
) -> None:
    """A plain ``os.fork`` child that logs and returns (``sys.exit``: atexit runs) delivers
    what it logged and does not end the run; the parent does."""
    name, folder = f"osfork-{uuid.uuid4().hex[:8]}", f"/fork-tests/{uuid.uuid4().hex[:8]}"
    script = tmp_path / "os_fork_app.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import os, sys, time
            from simvue_otel import Run

            with Run() as run:
                run.init(name={name!r}, folder={folder!r}, resources_metrics_interval=None)
                pid = os.fork()
                if pid == 0:
                    for step in range({POINTS}):
                        run.log_metrics({{"child.x": float(step)}})
                    sys.exit(0)  # the with block ends in the child: it must not end the run
                _, code = os.waitpid(pid, 0)
                assert code == 0, code
                from simvue_otel._internal.client import SimvueClient

                with SimvueClient(os.environ["SIMVUE_URL"], os.environ["SIMVUE_TOKEN"]) as c:
                    held = c.get_metrics(run.id, ["child.x"]).get("child.x", [])
                    print(c.get_run(run.id)["status"], len(held))
            """
        )
    )
    env = environment(local_server, tmp_path / "offline")
    out = bounded([sys.executable, str(script)], env, tmp_path)
    assert out.returncode == 0, out.stderr
    # After the child exited: it delivered all it logged, and the run is still running.
    assert out.stdout.strip().splitlines()[-1] == f"running {POINTS}"
    found = client.find_runs([f"name == {name}", f"folder.path == {folder}"])
    assert len(found) == 1
    run = client.get_run(found[0]["id"])
    assert run["status"] == "completed"
    got = sorted(p["step"] for p in client.get_metrics(run["id"])["child.x"])
    assert got == list(range(POINTS))


SHARED_APP = textwrap.dedent(
    """
    # The zero-code chain without the command: SDK providers, the Simvue processors and the
    # exporters on the shared pipeline, a run span, and a fork pool started as it begins.
    import multiprocessing as mp, os, sys
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from simvue_otel import (SimvueLogExporter, SimvueLogRecordProcessor, SimvueSpanExporter,
                             SimvueSpanProcessor)

    KEY, WORKERS, POINTS = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    resource = Resource.create({"simvue.run.key": KEY, "simvue.run.name": "shared-" + KEY[:8]})
    tp = TracerProvider(resource=resource)
    tp.add_span_processor(SimvueSpanProcessor(SimvueSpanExporter()))
    lp = LoggerProvider(resource=resource)
    lp.add_log_record_processor(SimvueLogRecordProcessor(SimvueLogExporter()))
    logger = lp.get_logger("app")

    def work(i):
        for step in range(POINTS):
            logger.emit(body={f"worker{i}.x": float(step)}, event_name="simvue.metrics",
                        attributes={"simvue.metrics.step": step})
        return os.getpid()

    if __name__ == "__main__":
        with tp.get_tracer("app").start_as_current_span("simvue.run"):
            with mp.get_context("fork").Pool(WORKERS) as pool:
                pool.map(work, range(WORKERS))
        tp.shutdown()
        lp.shutdown()
    """
)


def test_fork_pool_on_the_shared_pipeline(
    local_server: LocalServer, client: SimvueClient, tmp_path: Path
) -> None:
    """Exporters on the shared pipeline (as ``opentelemetry-instrument`` makes them): the
    children's records reach the parent's run once, no child makes a run of its own or ends
    the parent's, and the run ends as the parent's span does."""
    key = str(uuid.uuid4())
    script = tmp_path / "shared_app.py"
    script.write_text(SHARED_APP)
    env = environment(local_server, tmp_path / "offline")
    out = bounded([sys.executable, str(script), key, str(WORKERS), str(POINTS)], env, tmp_path)
    assert out.returncode == 0, out.stderr
    runs = client.find_runs([f"name == shared-{key[:8]}"])
    assert len(runs) == 1, runs
    run = client.get_run(runs[0]["id"])
    assert run["status"] == "completed"
    metrics = client.get_metrics(run["id"])
    for i in range(WORKERS):
        got = sorted(p["step"] for p in metrics.get(f"worker{i}.x", []))
        assert got == list(range(POINTS)), f"worker {i}: {len(got)} points"
