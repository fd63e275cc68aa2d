"""Nothing is lost when the server misbehaves: 5xx and 429 answers, answers slower than the
client's timeout (the server stored the batch, the client never heard), a server that is
down while memory fills, and runs with short heartbeat timeouts. A scripted proxy on
loopback stands between the exporters and the real local server."""

from __future__ import annotations

import contextlib
import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from simvue_otel._internal.client import SimvueClient
from tests.helpers import LocalServer, make_app, run_state, start_server, stop_server


class Proxy:
    """Forwards to `upstream`; `plan` decides, per request, to answer itself or forward."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.rules: list[tuple[str, str, Any]] = []  # (method, path prefix, action)
        self.refused = 0
        self.delayed = 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                action = proxy.take(self.command, self.path)
                if isinstance(action, int):  # answer with this status, forward nothing
                    proxy.refused += 1
                    payload = b'{"detail": "scripted refusal"}'
                    self.send_response(action)
                    if action == 429:
                        self.send_header("Retry-After", "1")
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                reply = requests.request(
                    self.command, proxy.upstream + self.path, data=body, headers=headers,
                    timeout=30,
                )  # fmt: skip
                if action == "late":  # stored upstream, but the answer comes too late
                    proxy.delayed += 1
                    time.sleep(3.0)
                self.send_response(reply.status_code)
                self.send_header("Content-Type", reply.headers.get("Content-Type", "text/plain"))
                self.send_header("Content-Length", str(len(reply.content)))
                self.end_headers()
                with contextlib.suppress(OSError):  # the client may have given up waiting
                    self.wfile.write(reply.content)

            do_GET = do_POST = do_PUT = do_DELETE = _handle

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def take(self, method: str, path: str) -> Any:
        for i, (m, prefix, action) in enumerate(self.rules):
            if m == method and path.startswith(prefix):
                del self.rules[i]
                return action
        return None

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def counting_proxy(local_server: LocalServer) -> Iterator[Proxy]:
    """This file's own proxy in front of the session's server: it refuses or answers late on
    cue, and counts both (``refused``, ``delayed``), where tests/proxy.py records requests."""
    p = Proxy(local_server.url)
    yield p
    p.close()


def _via(proxy: Proxy, server: LocalServer) -> LocalServer:
    return LocalServer(
        url=proxy.url, db=server.db, token=server.token, process=server.process, log=server.log
    )


def _program(app: Any, n: int) -> None:
    with app.tracer.start_as_current_span("simvue.run"):
        for step in range(n):
            app.metrics({"x": float(step)}, step)
            if step % 100 == 0:
                app.logger.emit(body=f"event {step}", event_name="simvue.event")
            if step % 500 == 499:
                app.pipeline.flush(60)  # several batches, each meeting the proxy


def _check(client: SimvueClient, key: str, n: int) -> None:
    state = run_state(client, key)
    assert sorted(s for s, _, _ in state["metrics"]["x"]) == list(range(n)), "exactly once"
    assert sorted(m for m, _ in state["events"]) == sorted(f"event {s}" for s in range(0, n, 100))
    assert state["status"] == "completed"


def test_5xx_and_429_answers_cost_nothing(
    counting_proxy: Proxy, local_server: LocalServer, tmp_path: Path
) -> None:
    counting_proxy.rules = [
        ("POST", "/api/metrics", 503),
        ("POST", "/api/metrics", 502),
        ("POST", "/api/events", 504),
        ("POST", "/api/metrics", 429),
        ("PUT", "/api/runs", 500),
        ("POST", "/api/metrics", 503),
    ]
    app = make_app(
        "online", tmp_path, _via(counting_proxy, local_server), "flaky", "/resilience/5xx"
    )
    _program(app, 2000)
    assert app.close(120)
    assert counting_proxy.refused == 6 and not counting_proxy.rules
    with SimvueClient(local_server.url, local_server.token) as client:
        _check(client, app.key, 2000)


def test_answers_slower_than_the_timeout_are_not_stored_twice(
    counting_proxy: Proxy, local_server: LocalServer, tmp_path: Path
) -> None:
    """The server stores the batch but the answer misses the client's timeout: the batch
    is reconciled against what the server holds before anything is sent again: stored once."""
    counting_proxy.rules = [("POST", "/api/metrics", "late"), ("POST", "/api/events", "late")]
    from simvue_otel._internal.config import resolve_config
    from simvue_otel._internal.pipeline import Pipeline
    from simvue_otel._internal.sink import create_sink

    app = make_app(
        "online", tmp_path, _via(counting_proxy, local_server), "slow", "/resilience/slow"
    )
    config = resolve_config(
        url=counting_proxy.url, token=local_server.token, offline_directory=tmp_path, environ={}
    )
    app.pipeline.sink = create_sink("online", config, timeout=1.0, flush_interval=0.2)
    assert isinstance(app.pipeline, Pipeline)
    _program(app, 1500)
    assert app.close(120)
    assert counting_proxy.delayed == 2
    with SimvueClient(local_server.url, local_server.token) as client:
        _check(client, app.key, 1500)


def test_memory_stays_bounded_while_the_server_is_down(tmp_path: Path) -> None:
    from simvue_otel._internal.config import resolve_config
    from simvue_otel._internal.sink import create_sink

    server = start_server(tmp_path / "srv")
    port = int(server.url.rsplit(":", 1)[1])
    app = make_app("online", tmp_path / "off", server, "bounded", "/resilience/memory")
    config = resolve_config(
        url=server.url, token=server.token, offline_directory=tmp_path / "off", environ={}
    )
    sink = create_sink(
        "online", config, max_memory_points=1000, flush_interval=0.2, segment_bytes=64 * 1024
    )  # small segments: the overflow spans several, rotated (renamed .done) while spilling
    app.pipeline.sink = sink
    spool = tmp_path / "off" / "otel-spool"
    n = 20_000
    try:
        with app.tracer.start_as_current_span("simvue.run"):
            app.pipeline.flush(30)
            stop_server(server)
            for step in range(n):
                app.metrics({"x": float(step)}, step)
            time.sleep(1.0)
            spooled = sum(f.stat().st_size for f in spool.rglob("*.seg"))
            spooled += sum(f.stat().st_size for f in spool.rglob("*.done"))
            rotated = len(list(spool.rglob("*.done")))
            held = sink._buffered  # type: ignore[attr-defined]  # memory-held values
            server = start_server(
                tmp_path / "srv", port=port, db=server.db, first_token=server.token
            )
        assert app.close(120)
        with SimvueClient(server.url, server.token) as client:
            _check_points(client, app.key, n)
    finally:
        stop_server(server)
    assert spooled > 0, "the overflow went to disk"
    assert rotated >= 2, "the test meant to cover rotated segments"
    assert not list(spool.rglob("*.done")) and not list(spool.rglob("*.seg")), "nothing left"
    assert held <= 1000, f"memory held {held} values past the 1000 limit"


def _check_points(client: SimvueClient, key: str, n: int) -> None:
    state = run_state(client, key)
    assert sorted(s for s, _, _ in state["metrics"]["x"]) == list(range(n))
    assert state["status"] == "completed"


def test_heartbeats_keep_a_short_timeout_run_alive(tmp_path: Path) -> None:
    server = start_server(tmp_path / "srv", extra=["--sweep-interval", "0.3"])
    try:
        app = make_app("online", tmp_path / "off", server, "beating", "/resilience/heartbeat")
        with SimvueClient(server.url, server.token) as client:
            with app.tracer.start_as_current_span(
                "simvue.run", attributes={"simvue.run.heartbeat_timeout_seconds": 2}
            ):
                statuses = []
                for _ in range(12):  # 6 s: three times the heartbeat timeout
                    time.sleep(0.5)
                    found = client.find_run_by_key(app.key)
                    statuses.append(found["status"] if found else None)
            assert app.close(60)
            assert set(statuses[2:]) == {"running"}, statuses
            assert run_state(client, app.key)["status"] == "completed"
    finally:
        stop_server(server)


def test_a_killed_process_spool_is_adopted_by_the_next_run_to_that_server(
    tmp_path: Path,
) -> None:
    """A process dies (SIGKILL) while the server is down, its data spooled; the next process
    sending to the same server uploads it, exactly once, with no `simvue-otel send`."""
    import os
    import signal
    import subprocess
    import sys
    import textwrap

    from simvue_otel import Run

    server = start_server(tmp_path / "srv")
    port = int(server.url.rsplit(":", 1)[1])
    stop_server(server)  # down from the start: everything the first process logs is spooled
    offline = tmp_path / "offline"
    script = textwrap.dedent(
        """
        import os, signal, sys, time
        from simvue_otel import Run
        run = Run()
        run.init(name="killed", folder="/resilience/adopt", resources_metrics_interval=None)
        for step in range(500):
            run.log_metrics({"x": float(step)})
        run.log_event("before the kill")
        time.sleep(1.5)  # the worker has met the absent server and spooled the data
        print(run.key, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    env = dict(
        os.environ, SIMVUE_URL=server.url, SIMVUE_TOKEN=server.token,
        SIMVUE_OFFLINE_DIRECTORY=str(offline),
    )  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    key = done.stdout.strip()
    assert list((offline / "otel-spool").rglob("*.seg")), "the killed process left a spool"

    server = start_server(tmp_path / "srv", port=port, db=server.db, first_token=server.token)
    try:
        with Run(server_url=server.url, server_token=server.token,
                 offline_directory=offline) as run:  # fmt: skip
            run.init(name="next", folder="/resilience/adopt", resources_metrics_interval=None)
            run.log_metrics({"y": 1.0})
        with SimvueClient(server.url, server.token) as client:
            deadline = time.monotonic() + 20
            found = None
            while time.monotonic() < deadline:
                found = client.find_run_by_key(key)
                if found and len(client.get_metrics(found["id"], ["x"]).get("x", [])) == 500:
                    break
                time.sleep(0.2)
            assert found is not None, "the killed run's data was adopted"
            points = client.get_metrics(found["id"], ["x"])["x"]
            assert sorted(p["step"] for p in points) == list(range(500))
            assert [e["message"] for e in client.get_events(found["id"])] == ["before the kill"]
    finally:
        stop_server(server)
    assert not list((offline / "otel-spool").rglob("*.seg")), "the adopted spool is gone"
