"""What a user meets on a first mistake: one clear message, a bounded exit, nothing lost.

Each case is a real program (a subprocess) tracking against the real local server: a wrong
token, the API address copied as SIMVUE_URL, an address that is not a Simvue server, a server
that is down (then `simvue-otel send`), a token refused in the middle of a run, and a program
that exits without closing its run. Output lines and exit times are asserted with margins.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import re
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from simvue_otel._internal.client import SimvueClient
from simvue_otel._internal.errors import ConfigurationError, ServerUnreachableError
from tests.helpers import (
    LocalServer,
    free_port,
    make_app,
    run_program,
    start_bridge,
    start_server,
    stop_server,
)
from tests.proxy import Proxy, as_server

PROGRAM = """
    import sys, time
    from simvue_otel import Run
    started = time.monotonic()
    with Run() as run:
        run.config(suppress_errors={suppress})
        ok = run.init(name={name!r}, folder="/first-contact", resources_metrics_interval=None,
                      timeout={timeout})
        for step in range({steps}):
            run.log_metrics({{"x": float(step)}})
        run.log_event("done")
    print("init returned", ok, "status", run.status, "after", round(time.monotonic() - started, 1))
    sys.exit(3)  # the program's own exit status must survive
"""


def _env(url: str, token: str, offline: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIMVUE_", "OTEL_"))}
    env.update(
        SIMVUE_URL=url,
        SIMVUE_TOKEN=token,
        SIMVUE_OFFLINE_DIRECTORY=str(offline),
        SIMVUE_OTEL_SHUTDOWN_TIMEOUT="5",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def _run(
    env: dict[str, str],
    cwd: Path,
    *,
    name: str,
    steps: int = 500,
    suppress: bool = False,
    timeout: int = 180,
    code: str = PROGRAM,
) -> tuple[subprocess.CompletedProcess[str], float]:
    source = textwrap.dedent(code).format(
        name=name, steps=steps, suppress=suppress, timeout=timeout
    )
    start = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-c", source], env=env, cwd=cwd, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    return out, time.monotonic() - start


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def _runs(client: SimvueClient, name: str) -> list[dict[str, object]]:
    return client.find_runs([f"name == {name}"])


def test_a_wrong_token_is_one_clear_error_at_init(
    local_server: LocalServer, client: SimvueClient, tmp_path: Path
) -> None:
    name = f"wrong-token-{uuid.uuid4().hex[:8]}"
    out, took = _run(_env(local_server.url, "not-a-token", tmp_path / "off"), tmp_path, name=name)
    assert out.returncode == 1, out.stderr
    assert took < 15, f"took {took:.1f} s"
    last = _lines(out.stderr)[-1]
    assert "ConfigurationError" in last and "refused the token" in last and "SIMVUE_TOKEN" in last
    assert out.stderr.count("refused the token") == 1
    assert "not-a-token" not in out.stderr
    assert _runs(client, name) == []


def test_a_wrong_token_with_suppressed_errors_logs_once_and_goes_on(
    local_server: LocalServer, client: SimvueClient, tmp_path: Path
) -> None:
    name = f"wrong-token-quiet-{uuid.uuid4().hex[:8]}"
    env = _env(local_server.url, "not-a-token", tmp_path / "off")
    out, took = _run(env, tmp_path, name=name, suppress=True)
    assert out.returncode == 3, out.stderr  # the program's own status
    assert "init returned False" in out.stdout
    assert out.stderr.count("refused the token") == 1, out.stderr
    assert len(_lines(out.stderr)) <= 2, out.stderr
    assert took < 15


def test_the_api_address_as_simvue_url_is_the_same_server(
    local_server: LocalServer, client: SimvueClient, tmp_path: Path
) -> None:
    name = f"api-url-{uuid.uuid4().hex[:8]}"
    for url in (local_server.url + "/api", local_server.url + "/api/"):
        out, _ = _run(_env(url, local_server.token, tmp_path / "off"), tmp_path, name=name)
        assert out.returncode == 3, out.stderr
        assert _lines(out.stderr) == [], out.stderr
    runs = _runs(client, name)
    assert len(runs) == 2 and {r["status"] for r in runs} == {"completed"}


def test_an_address_that_is_not_simvue_is_one_clear_error(
    bridge: object, local_server: LocalServer, tmp_path: Path
) -> None:
    """The bridge's address is a web server, but not a Simvue API."""
    from tests.helpers import Bridge

    assert isinstance(bridge, Bridge)
    name = f"not-simvue-{uuid.uuid4().hex[:8]}"
    env = _env(bridge.url, local_server.token, tmp_path / "off")
    out, took = _run(env, tmp_path, name=name)
    assert out.returncode == 1
    last = _lines(out.stderr)[-1]
    assert "is not a Simvue server" in last and "SIMVUE_URL" in last
    assert took < 15


def test_a_server_that_is_down_is_the_quiet_path_and_send_delivers_later(
    tmp_path: Path,
) -> None:
    """Nothing answers at SIMVUE_URL: a warning at start, a summary at exit with the command
    that sends the data, an exit within the shutdown timeout, the program's status kept; the
    server comes up and `simvue-otel send` (no arguments, same environment) delivers once."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(tmp_path / "srv", port=port)
    token = server.token
    stop_server(server)  # the server is down while the program runs
    name = f"down-{uuid.uuid4().hex[:8]}"
    env = _env(url, token, tmp_path / "off")
    out, took = _run(env, tmp_path, name=name, steps=2000)
    assert out.returncode == 3, out.stderr
    assert took < 5 + 8, f"took {took:.1f} s with a 5 s shutdown timeout"
    lines = _lines(out.stderr)
    assert len(lines) == 2, out.stderr
    assert "does not answer" in lines[0]
    kept = re.search(r"(\d+) record\(s\)", lines[1])
    assert kept and int(kept.group(1)) >= 2001, lines[1]  # the points, the event, the states
    assert "simvue-otel send --cache" in lines[1]
    server = start_server(tmp_path / "srv", port=port, first_token=token)
    try:
        sent = subprocess.run(
            [sys.executable, "-m", "simvue_otel", "send", "--quiet"],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert sent.returncode == 0, sent.stderr
        with SimvueClient(url, token) as client:
            (run,) = _runs(client, name)
            points = client.get_metrics(str(run["id"]), ["x"])["x"]
            assert sorted(p["step"] for p in points) == list(range(2000))
            assert client.get_run(str(run["id"]))["status"] == "completed"
    finally:
        stop_server(server)


def test_a_token_refused_mid_run_is_said_once_and_the_data_kept(
    proxy: Proxy, local_server: LocalServer, client: SimvueClient, tmp_path: Path
) -> None:
    """The token works at init, then the server refuses it (revoked): one error line, the
    exit within the shutdown timeout, and every record kept for `send`."""
    name = f"revoked-{uuid.uuid4().hex[:8]}"
    env = _env(proxy.url, local_server.token, tmp_path / "off")
    go = tmp_path / "go"
    code = f"""
        import os, sys, time
        from simvue_otel import Run
        with Run() as run:
            run.init(name={name!r}, folder="/first-contact", resources_metrics_interval=None)
            print("ready", flush=True)
            while not os.path.exists({str(go)!r}):
                time.sleep(0.05)
            for step in range(3000):
                run.log_metrics({{"x": float(step)}})
        sys.exit(3)
    """
    started = time.monotonic()
    program = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=tmp_path,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert program.stdout is not None and program.stdout.readline().strip() == "ready"
    deadline = time.monotonic() + 60  # until the run is on the server, however busy the machine
    while not _runs(client, name):
        assert time.monotonic() < deadline, "the run never reached the server"
        time.sleep(0.1)
    proxy.rules = [("*", "/", 401)] * 10_000  # from now on the token is refused
    go.touch()
    _, stderr = program.communicate(timeout=60)
    took = time.monotonic() - started
    assert program.returncode == 3, stderr
    assert took < 1.5 + 5 + 8, f"took {took:.1f} s"
    assert stderr.count("refused the token") == 1, stderr
    assert len(_lines(stderr)) <= 2, stderr
    proxy.rules = []
    sent = subprocess.run(
        [sys.executable, "-m", "simvue_otel", "send", "--quiet"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    (run,) = _runs(client, name)
    points = client.get_metrics(str(run["id"]), ["x"])["x"]
    assert sorted(p["step"] for p in points) == list(range(3000))


def test_a_run_never_closed_is_delivered_and_turns_lost(
    local_server: LocalServer, client: SimvueClient, tmp_path: Path
) -> None:
    name = f"unclosed-{uuid.uuid4().hex[:8]}"
    code = """
        from simvue_otel import Run
        run = Run()
        run.init(name={name!r}, folder="/first-contact", resources_metrics_interval=None,
                 timeout={timeout})
        for step in range({steps}):
            run.log_metrics({{"x": float(step)}})
        run.log_event("no close")
        # the program ends here without run.close() ({suppress})
    """
    env = _env(local_server.url, local_server.token, tmp_path / "off")
    out, _ = _run(env, tmp_path, name=name, steps=300, timeout=2, code=code)
    assert out.returncode == 0, out.stderr
    lines = _lines(out.stderr)
    assert len(lines) == 1 and "was not closed" in lines[0] and "lost" in lines[0], out.stderr
    (found,) = _runs(client, name)
    run_id = str(found["id"])
    points = client.get_metrics(run_id, ["x"])["x"]
    assert sorted(p["step"] for p in points) == list(range(300))
    assert [e["message"] for e in client.get_events(run_id)] == ["no close"]
    deadline = time.monotonic() + 20
    status = client.get_run(run_id)["status"]
    while status != "lost" and time.monotonic() < deadline:
        time.sleep(0.5)
        status = client.get_run(run_id)["status"]
    assert status == "lost"


def test_spooled_data_is_only_ever_uploaded_under_the_identity_it_was_logged_with(
    proxy: Proxy, local_server: LocalServer, tmp_path: Path
) -> None:
    """Alice's run cannot reach the server (every request refused with 503) and leaves its
    data spooled; Bob, sharing the offline directory, runs against the same server: his run
    does not adopt Alice's data, and his `send` leaves it alone, naming whose it is. Alice's
    `send` uploads it as Alice; `--as-current-user` is Bob's explicit way to take it."""
    alice, bob = f"alice-{uuid.uuid4().hex[:6]}", f"bob-{uuid.uuid4().hex[:6]}"
    alice_token, bob_token = local_server.token_for(alice), local_server.token_for(bob)
    offline = tmp_path / "shared-offline"
    name = f"alices-run-{uuid.uuid4().hex[:8]}"
    proxy.rules = [("*", "/api/version", "pass")] + [("*", "/", 503)] * 10_000
    out, _ = _run(_env(proxy.url, alice_token, offline), tmp_path, name=name, steps=200)
    assert out.returncode == 3, out.stderr
    assert "kept in" in out.stderr
    proxy.rules = []

    bobs = f"bobs-run-{uuid.uuid4().hex[:8]}"
    out, _ = _run(_env(proxy.url, bob_token, offline), tmp_path, name=bobs, steps=10)
    assert out.returncode == 3, out.stderr
    with SimvueClient(local_server.url, bob_token) as as_bob:
        assert len(_runs(as_bob, bobs)) == 1
        assert _runs(as_bob, name) == [], "Bob's run adopted Alice's data"

    send = [sys.executable, "-m", "simvue_otel", "send", "--quiet"]
    refused = subprocess.run(
        send, env=_env(proxy.url, bob_token, offline), capture_output=True, text=True, timeout=120
    )
    assert refused.returncode == 1, refused.stderr
    assert f"logged as {alice}@default" in refused.stderr and "--as-current-user" in refused.stderr
    assert "not-a-token" not in refused.stderr and alice_token not in refused.stderr
    with SimvueClient(local_server.url, bob_token) as as_bob:
        assert _runs(as_bob, name) == []

    mine = subprocess.run(
        send, env=_env(proxy.url, alice_token, offline), capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert mine.returncode == 0, mine.stderr
    assert f"as {alice}@default" in mine.stdout
    with SimvueClient(local_server.url, alice_token) as as_alice:
        (run,) = _runs(as_alice, name)
        assert run["status"] == "completed"
        points = as_alice.get_metrics(str(run["id"]), ["x"])["x"]
        assert sorted(p["step"] for p in points) == list(range(200))

    # Bob may take such data, but only when he says so.
    again = f"alices-second-{uuid.uuid4().hex[:8]}"
    proxy.rules = [("*", "/api/version", "pass")] + [("*", "/", 503)] * 10_000
    out, _ = _run(_env(proxy.url, alice_token, offline), tmp_path, name=again, steps=20)
    assert out.returncode == 3, out.stderr
    proxy.rules = []
    taken = subprocess.run(
        [*send, "--as-current-user"], env=_env(proxy.url, bob_token, offline),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert taken.returncode == 0, taken.stderr
    with SimvueClient(local_server.url, bob_token) as as_bob:
        (run,) = _runs(as_bob, again)
        assert len(as_bob.get_metrics(str(run["id"]), ["x"])["x"]) == 20


@pytest.mark.parametrize("mode", ["offline", "online"])
def test_a_full_disk_never_crashes_the_program_and_never_hides_a_loss(
    small_disk: Path, proxy: Proxy, local_server: LocalServer, tmp_path: Path, mode: str
) -> None:
    """100,000 steps into a 2 MiB spool directory (offline; or online with the server down):
    the program keeps its own exit status, says once that data is being lost and at the end
    how much; once there is room again, `send` uploads the run `completed` with an event
    saying exactly how many records were lost, and the points that were kept."""
    name = f"full-disk-{mode}-{uuid.uuid4().hex[:8]}"
    env = _env(proxy.url, local_server.token, small_disk)
    if mode == "offline":
        env["SIMVUE_OTEL_MODE"] = "offline"
    else:  # the server answers the version check, then nothing more (503) until the end
        proxy.rules = [("*", "/api/version", "pass")] + [("*", "/", 503)] * 100_000
    code = PROGRAM.replace("for step in range({steps}):", 'run.log_event("start")\n'
                           "        for step in range({steps}):")  # fmt: skip
    code = code.replace('{{"x": float(step)}}', '{{"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0}}')
    out, _ = _run(env, tmp_path, name=name, steps=100_000, code=code)
    proxy.rules = []
    assert out.returncode == 3, out.stderr
    assert "Traceback" not in out.stderr
    lost_said = re.findall(r"(\d+) record\(s\) could (?:not be written|neither reach)", out.stderr)
    assert len(lost_said) == 1, out.stderr
    assert out.stderr.count("records are being lost") == 1, out.stderr
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    sent = subprocess.run(
        [sys.executable, "-m", "simvue_otel", "send", "--quiet"],
        env=_env(proxy.url, local_server.token, small_disk),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    with SimvueClient(local_server.url, local_server.token) as client:
        (run,) = _runs(client, name)
        run_id = str(run["id"])
        assert client.get_run(run_id)["status"] == "completed", out.stderr
        events = client.get_events(run_id)
        told = [e for e in events if e["message"].startswith("simvue-otel lost data:")]
        assert told and {e["log_level"] for e in told} == {"error"}, events
        counts = [re.search(r"(\d+) record\(s\) of this run", e["message"]) for e in told]
        lost = sum(int(c.group(1)) for c in counts if c)
        kept = client.get_metrics(run_id, ["a"]).get("a", [])
        kept_points = len(kept)
        assert len({p["step"] for p in kept}) == kept_points, "a point stored twice"
        kept_events = len([e for e in events if e["message"] in ("start", "done")])
        assert 0 < kept_points < 100_000
        # 100,000 metric records and two events ("start", "done"): each kept or counted lost
        assert kept_points + kept_events + lost == 100_002, "every record kept or counted"
        assert int(lost_said[0]) == lost


# -- a server not answering now, behind a gateway, is not a wrong URL ---------------------------

NOT_NOW = [429, 502, 503, 504, "html-502", "html-503", "stored-then-reset"]
"""What a restarting or overloaded server, or a gateway (nginx) in front of one, answers to the
first request: a status that says "not now" (nginx's 502 page is HTML), or a connection cut
before the answer."""


@pytest.mark.parametrize("action", NOT_NOW, ids=str)
def test_the_first_contact_tells_not_now_from_a_wrong_url(
    proxy: Proxy, local_server: LocalServer, action: int | str
) -> None:
    """The version check itself: a "not now" answer is a server that does not answer (the
    quiet path), not a configuration error; the server behind is fine at the next request."""
    proxy.rules = [("GET", "/api/version", action)]
    with SimvueClient(proxy.url, local_server.token) as client:
        with pytest.raises(ServerUnreachableError) as caught:
            client.check()
        assert proxy.applied[str(action)] == 1
        if isinstance(action, int) or action.startswith("html-"):
            assert f"HTTP {str(action).removeprefix('html-')}" in caught.value.reason
        assert client.check()  # the same URL, answering again: a Simvue server


@pytest.mark.parametrize(
    ("action", "said"),
    [
        (401, "refused the token (HTTP 401"),
        (404, "is not a Simvue server: GET"),
        ("html-404", "gave HTTP 404;"),
        ("html-200", "gave an answer that is not Simvue's;"),
    ],
    ids=str,
)
def test_the_first_contact_still_refuses_a_configuration_mistake(
    proxy: Proxy, local_server: LocalServer, action: int | str, said: str
) -> None:
    proxy.rules = [("GET", "/api/version", action)]
    client = SimvueClient(proxy.url, local_server.token)
    with client, pytest.raises(ConfigurationError, match=re.escape(said)):
        client.check()
    assert proxy.applied[str(action)] == 1


@pytest.mark.parametrize("action", [503, 504, "html-502"], ids=str)
def test_a_run_behind_a_gateway_that_says_not_now_at_init_goes_on_and_delivers(
    proxy: Proxy, local_server: LocalServer, client: SimvueClient, tmp_path: Path, action: int | str
) -> None:
    """The server restarts behind a gateway as a program starts: one warning that it does not
    answer, the program goes on with its own exit status, and everything is delivered."""
    name = f"gateway-{action!s}-{uuid.uuid4().hex[:8]}"
    proxy.rules = [("GET", "/api/version", action)]
    out, _ = _run(_env(proxy.url, local_server.token, tmp_path / "off"), tmp_path, name=name)
    assert proxy.applied[str(action)] == 1
    assert out.returncode == 3, out.stderr
    lines = _lines(out.stderr)
    assert len(lines) == 1, out.stderr
    status = str(action).removeprefix("html-")
    assert f"does not answer (HTTP {status}" in lines[0] and "kept in" in lines[0], lines[0]
    assert "not a Simvue server" not in out.stderr
    (run,) = _runs(client, name)
    assert run["status"] == "completed"
    points = client.get_metrics(str(run["id"]), ["x"])["x"]
    assert sorted(p["step"] for p in points) == list(range(500))
    assert [e["message"] for e in client.get_events(str(run["id"]))] == ["done"]


@pytest.mark.parametrize("action", [503, "html-502"], ids=str)
def test_exporters_starting_behind_a_gateway_that_says_not_now_deliver(
    proxy: Proxy, local_server: LocalServer, client: SimvueClient, tmp_path: Path, action: int | str
) -> None:
    """The exporters share the first contact (their sink makes it): a "not now" at their
    start is no error, and what they export is delivered."""
    proxy.rules = [("GET", "/api/version", action)]
    app = make_app("online", tmp_path / "off", as_server(proxy, local_server), "gw", "/gateway")
    assert proxy.applied[str(action)] == 1
    run_program(app, n_steps=20)
    assert app.close()
    run = client.find_run_by_key(app.key)
    assert run is not None
    points = client.get_metrics(str(run["id"]), ["loss"])["loss"]
    assert sorted(p["step"] for p in points) == list(range(20))


def test_a_bridge_starting_behind_a_gateway_that_says_not_now_serves_and_delivers(
    proxy: Proxy, local_server: LocalServer, client: SimvueClient, tmp_path: Path
) -> None:
    """`simvue-otel bridge` shares the first contact: nginx's HTML 502 at its start is a
    warning, not an exit; it listens, and what it takes reaches the server."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    proxy.rules = [("GET", "/api/version", "html-502")]
    bridge = start_bridge(tmp_path / "bridge", as_server(proxy, local_server))
    try:
        assert proxy.applied["html-502"] == 1
        said = bridge.log.read_text()
        assert "does not answer (HTTP 502" in said and "not a Simvue server" not in said, said
        key = str(uuid.uuid4())
        resource = Resource.create({"simvue.run.key": key, "simvue.run.name": "gw-bridge",
                                    "simvue.run.folder": "/gateway"})  # fmt: skip
        provider = TracerProvider(resource=resource)
        exporter = OTLPSpanExporter(endpoint=f"{bridge.url}/v1/traces", timeout=30)
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        with provider.get_tracer("t").start_as_current_span("simvue.run"):
            pass
        provider.shutdown()
        deadline = time.monotonic() + 60
        while client.find_run_by_key(key) is None:
            assert time.monotonic() < deadline, "the bridge's run never reached the server"
            time.sleep(0.2)
    finally:
        assert bridge.stop() == 0


# -- a URL that is really wrong still fails at once ---------------------------------------------


@contextlib.contextmanager
def _web_server(status: int) -> Iterator[str]:
    """A plain web server on loopback (not a Simvue API): an HTML page with ``status`` for
    every path."""

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            page = f"<html><body><h1>{status}</h1>Welcome</body></html>".encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("status", "said"), [(404, "gave HTTP 404;"), (200, "gave an answer that is not Simvue's;")]
)
def test_a_plain_web_server_as_simvue_url_fails_at_once(
    local_server: LocalServer, tmp_path: Path, status: int, said: str
) -> None:
    """A web site (or a wrong path) answers 404 or an HTML 200: one clear error at init, and
    the bridge refuses to start, naming SIMVUE_URL."""
    with _web_server(status) as url:
        env = _env(url, local_server.token, tmp_path / "off")
        out, took = _run(env, tmp_path, name=f"web-{status}")
        assert out.returncode == 1, out.stderr
        last = _lines(out.stderr)[-1]
        assert "ConfigurationError" in last and "is not a Simvue server" in last, last
        assert said in last and "SIMVUE_URL" in last, last
        assert took < 15, f"took {took:.1f} s"
        cmd = [sys.executable, "-m", "simvue_otel", "bridge", "--listen",
               f"127.0.0.1:{free_port()}", "--no-grpc"]  # fmt: skip
        bridge = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
        assert bridge.returncode == 2, bridge.stderr
        assert "is not a Simvue server" in bridge.stderr and said in bridge.stderr


def test_an_answer_cut_off_midway_at_the_first_contact_is_a_server_not_answering(
    local_server: LocalServer,
) -> None:
    """A server killed while it answers: the headers came, the body was cut off. Not a
    configuration error, and not an exception from the HTTP library either."""
    listener = socket.create_server(("127.0.0.1", 0))

    def answer_half() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100\r\n\r\n{\"vers")  # fmt: skip

    thread = threading.Thread(target=answer_half, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        client = SimvueClient(url, local_server.token)
        with client, pytest.raises(ServerUnreachableError):
            client.check()
    finally:
        thread.join(10)
        listener.close()


def test_https_for_a_server_that_speaks_http_fails_at_once(
    local_server: LocalServer, client: SimvueClient, tmp_path: Path
) -> None:
    """A wrong scheme is a configuration mistake, not a server that is down: one clear error
    at init naming the fix, not data spooled for a server that will never answer."""
    url = local_server.url.replace("http://", "https://", 1)
    name = f"wrong-scheme-{uuid.uuid4().hex[:8]}"
    out, took = _run(_env(url, local_server.token, tmp_path / "off"), tmp_path, name=name)
    assert out.returncode == 1, out.stderr
    last = _lines(out.stderr)[-1]
    assert "ConfigurationError" in last and "does not speak https" in last, last
    assert "with http://" in last and "does not answer" not in out.stderr, out.stderr
    assert took < 15, f"took {took:.1f} s"
    assert _runs(client, name) == []
