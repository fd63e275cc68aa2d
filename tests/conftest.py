"""Shared fixtures: a real `simvue-otel server` on a free loopback port, started as a subprocess."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests
from opentelemetry._logs import SeverityNumber
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from simvue_otel import (
    SimvueLogExporter,
    SimvueLogRecordProcessor,
    SimvueMetricExporter,
    SimvueSpanExporter,
    SimvueSpanProcessor,
)
from simvue_otel._internal.client import SimvueClient
from simvue_otel._internal.config import resolve_config
from simvue_otel._internal.pipeline import Pipeline
from simvue_otel._internal.sink import create_sink


def _port_range() -> range:
    """Ports this suite hands out: below the kernel's ephemeral range, so that no port-0 bind
    (a proxy, a client's outgoing connection) can take one between its handing out and its use."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return range(max(1024, low - 12000), max(2048, low - 12000 + 10000))


_PORTS = _port_range()
_PORT_LOCKS = Path(tempfile.gettempdir()) / f"simvue-otel-test-ports-{os.getuid()}.lock"
_port_lock_file: Any = None  # held open for the life of the process: closing it drops its locks
_handed_out: set[int] = set()
_port_guard = threading.Lock()


def free_port() -> int:
    """A loopback TCP port no other caller gets: not this process (each call a new port, so a
    bridge's HTTP and gRPC ports differ), not another pytest-xdist worker nor another test
    session (each port handed out is locked, a byte of a shared lock file per port, until
    this process exits), and free to bind now. Servers bind it a moment later; as the range lies
    below the ephemeral ports, nothing else on the machine is handed it meanwhile."""
    global _port_lock_file
    with _port_guard:
        if _port_lock_file is None:
            _port_lock_file = _PORT_LOCKS.open("a+b")
        start = (os.getpid() * 97 + len(_handed_out)) % len(_PORTS)
        for i in range(len(_PORTS)):
            port = _PORTS[(start + i) % len(_PORTS)]
            if port in _handed_out:
                continue
            try:  # a byte range lock: held by this process, dropped when it exits
                fcntl.lockf(_port_lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, port)
            except OSError:
                continue  # another worker or session holds this port
            _handed_out.add(port)  # never again in this process, even if it is busy now
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    continue  # something outside the suite listens here
            return port
    raise RuntimeError(f"no free port left in {_PORTS}")


def in_foreground(cmd: list[str]) -> list[str]:
    """``cmd`` started as a shell starts a foreground job: with SIGINT at its default action.

    A process inherits an ignored SIGINT (a suite started in the background, under ``nohup``,
    or by a runner that ignores it), and Python then never raises KeyboardInterrupt; a test
    that sends Ctrl-C must not depend on how the suite was started. A small launcher resets the
    signal and then execs ``cmd`` (thread-safe, unlike ``preexec_fn``)."""
    launcher = (
        "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
        "os.execvp(sys.argv[1], sys.argv[1:])"
    )
    return [sys.executable, "-c", launcher, *cmd]


def cpu_seconds(process: subprocess.Popen[bytes]) -> float:
    """CPU time (user + system) ``process`` has used so far. What a request cost a server is
    the difference across it: unlike wall-clock time, it does not grow when a busy machine
    makes the server wait for a core."""
    times = psutil.Process(process.pid).cpu_times()
    return float(times.user + times.system)


@dataclass
class LocalServer:
    """A running `simvue-otel server` subprocess and the means to mint tokens for it."""

    url: str
    db: Path
    token: str
    process: subprocess.Popen[bytes]
    log: Path
    _tokens: dict[tuple[str, str | None], str] = field(default_factory=dict)

    @property
    def api(self) -> str:
        return self.url + "/api"

    def token_for(self, user: str, tenant: str | None = None) -> str:
        """A bearer token for `user` (created if needed), minted by the CLI as a user would."""
        key = (user, tenant)
        if key not in self._tokens:
            cmd = [*SERVER_CMD, "token", "--db", str(self.db), "--user", user]
            if tenant:
                cmd += ["--tenant", tenant]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60)
            self._tokens[key] = out.stdout.strip().splitlines()[-1]
        return self._tokens[key]

    def headers(self, user: str = "", tenant: str | None = None) -> dict[str, str]:
        token = self.token_for(user, tenant) if user else self.token
        return {"Authorization": f"Bearer {token}"}


SERVER_CMD = [sys.executable, "-m", "simvue_otel", "server"]


def start_server(
    tmp: Path,
    *,
    port: int | None = None,
    db: Path | None = None,
    extra: list[str] | None = None,
    first_token: str | None = None,
) -> LocalServer:
    """Start a server and wait until it answers `/health`; on a new database the first user's
    token is read from the server's own startup output, exactly as a person would copy it
    (a restarted server prints none: pass the token it printed before as `first_token`)."""
    tmp.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    db = db or tmp / "simvue.db"
    log = tmp / f"server-{port}.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [*SERVER_CMD, "--host", "127.0.0.1", "--port", str(port), "--db", str(db), *(extra or [])]
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, proc, log, "server")
    token = first_token or token_from_output(log)
    return LocalServer(url=url, db=db, token=token, process=proc, log=log)


def wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path, what: str) -> None:
    """Wait until a started server or bridge answers ``/health`` (its log on failure)."""
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited early:\n{log.read_text()}")
        try:
            if requests.get(url + "/health", timeout=1).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"{what} did not start:\n{log.read_text()}")
        time.sleep(0.1)


def token_from_output(log: Path) -> str:
    """The token the server prints on its first start (`export SIMVUE_TOKEN=...`)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            text = line.strip().removeprefix("export ").strip()
            if text.startswith("SIMVUE_TOKEN="):
                return text.split("=", 1)[1]
        time.sleep(0.05)
    raise RuntimeError(f"server printed no token:\n{log.read_text()}")


def stop_server(server: LocalServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


@pytest.fixture(scope="session")
def local_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """One server for the whole session; tests isolate themselves by unique names/folders."""
    server = start_server(tmp_path_factory.mktemp("server"))
    yield server
    stop_server(server)


@pytest.fixture
def client(local_server: LocalServer) -> Iterator[SimvueClient]:
    """Our REST client on the session's server, as its first user."""
    with SimvueClient(local_server.url, local_server.token, retries=2) as c:
        yield c


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[LocalServer]:
    """A server of its own, for tests that need an empty database or stop/restart it."""
    server = start_server(tmp_path)
    yield server
    stop_server(server)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs: a disk that fills up. Mounting needs the privilege to mount (root in a
    sandbox, as in CI); without it the test is skipped, and CI sets SIMVUE_OTEL_REQUIRE_TMPFS=1
    to make that a failure."""
    where = tmp_path / "small-disk"
    where.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)],
        capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode != 0:
        reason = (
            f"cannot mount a tmpfs here ({done.stderr.strip()}): run as root to test a full disk"
        )
        if os.environ.get("SIMVUE_OTEL_REQUIRE_TMPFS"):
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@dataclass
class Bridge:
    """A running `simvue-otel bridge` subprocess writing to a local server."""

    url: str
    grpc: str
    process: subprocess.Popen[bytes]
    log: Path
    offline: Path
    token: str | None = None

    def stop(self, timeout: float = 30) -> int:
        self.process.terminate()
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def start_bridge(
    tmp: Path,
    server: LocalServer,
    *,
    token: str | None = None,
    extra: list[str] | None = None,
    env_extra: dict[str, str] | None = None,
    ports: tuple[int, int] | None = None,
) -> Bridge:
    """Start `simvue-otel bridge` on free loopback ports (or on ``ports``, HTTP and gRPC: a
    bridge restarted where its clients send) and wait until it answers."""
    tmp.mkdir(parents=True, exist_ok=True)
    http_port, grpc_port = ports or (free_port(), free_port())
    log = tmp / f"bridge-{http_port}.log"
    offline = tmp / "bridge-offline"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIMVUE_", "OTEL_"))}
    env.update(
        PYTHONUNBUFFERED="1",
        SIMVUE_URL=server.url,
        SIMVUE_TOKEN=server.token,
        SIMVUE_OFFLINE_DIRECTORY=str(offline),
        **(env_extra or {}),
    )
    if token:
        env["SIMVUE_OTEL_BRIDGE_TOKEN"] = token
    cmd = [
        sys.executable, "-m", "simvue_otel", "bridge",
        "--listen", f"127.0.0.1:{http_port}", "--grpc-listen", f"127.0.0.1:{grpc_port}",
        *(extra or []),
    ]  # fmt: skip
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=tmp)
    url = f"http://127.0.0.1:{http_port}"
    wait_healthy(url, proc, log, "bridge")
    return Bridge(url, f"127.0.0.1:{grpc_port}", proc, log, offline, token)


@pytest.fixture
def bridge(local_server: LocalServer, tmp_path: Path) -> Iterator[Bridge]:
    """A bridge of its own (no token: loopback), writing to the session's server."""
    b = start_bridge(tmp_path / "bridge", local_server)
    yield b
    b.stop()


def user_metadata(run: dict[str, Any]) -> dict[str, Any]:
    """A run's metadata less the run key simvue-otel adds and the facts every `Run` records
    without being asked (its Python packages; its git checkout when it runs in one: see
    tests/compat/test_system_parity.py)."""
    meta = dict(run["metadata"])
    assert meta.pop("simvue_otel_run_key", None), "the run key is missing"
    meta.pop("python", None)
    meta.pop("git", None)
    return meta


def newest_run(client: SimvueClient, name: str, folder: str | None = None) -> dict[str, Any] | None:
    """The most recently created visible run with this name (in ``folder``), or None."""
    found = client.find_runs_by_name(name, folder)
    return found[0] if found else None


# -- an OTel-only app in process, and what the server holds of its run ---------------------------


@dataclass
class App:
    """An app instrumented with the OTel SDK only, exporting to Simvue through one pipeline."""

    key: str
    pipeline: Pipeline
    tracer_provider: TracerProvider
    logger_provider: LoggerProvider
    meter_provider: MeterProvider

    @property
    def tracer(self) -> Any:
        return self.tracer_provider.get_tracer("app")

    @property
    def logger(self) -> Any:
        return self.logger_provider.get_logger("app")

    def metrics(self, values: dict[str, float], step: int, t: float | None = None) -> None:
        attrs: dict[str, Any] = {"simvue.metrics.step": step}
        if t is not None:
            attrs["simvue.metrics.time"] = t
        self.logger.emit(body=values, event_name="simvue.metrics", attributes=attrs)

    def close(self, timeout: float = 60.0) -> bool:
        self.meter_provider.shutdown()
        self.logger_provider.shutdown()
        self.tracer_provider.shutdown()
        return self.pipeline.close(timeout)


def make_app(
    mode: str, offline_dir: Path, server: LocalServer | None, name: str, folder: str
) -> App:
    config = resolve_config(
        url=server.url if server else None,
        token=server.token if server else None,
        offline_directory=offline_dir,
        environ={},
    )
    pipeline = Pipeline(create_sink(mode, config, flush_interval=0.2))
    key = str(uuid.uuid4())
    resource = Resource.create(
        {"simvue.run.key": key, "simvue.run.name": name, "simvue.run.folder": folder}
    )
    tp = TracerProvider(resource=resource)
    tp.add_span_processor(SimvueSpanProcessor(SimvueSpanExporter(pipeline=pipeline)))
    lp = LoggerProvider(resource=resource)
    lp.add_log_record_processor(SimvueLogRecordProcessor(SimvueLogExporter(pipeline=pipeline)))
    reader = PeriodicExportingMetricReader(
        SimvueMetricExporter(pipeline=pipeline), export_interval_millis=3_600_000
    )
    mp = MeterProvider(resource=resource, metric_readers=[reader])
    return App(key, pipeline, tp, lp, mp)


ROOT_ATTRS = {
    "simvue.run.description": "an OTel-only app",
    "simvue.run.tags": ["otel", "demo"],
    "simvue.run.metadata.solver.tol": 1e-6,
    "simvue.run.metadata.solver.name": "cg",
    "simvue.run.metadata.n": 64,
    "simvue.run.visibility": "tenant",
    "simvue.run.retention_seconds": 3600,
}


def run_program(app: App, n_steps: int = 50) -> None:
    """The same small program for every mode: a run span, metric points, events, an
    instrument, a child span."""
    counter = app.meter_provider.get_meter("app").create_counter("iterations")
    with app.tracer.start_as_current_span("simvue.run", attributes=ROOT_ATTRS):
        for step in range(n_steps):
            app.metrics({"loss": 1.0 / (step + 1), "residual": step * 0.5}, step, t=step * 0.1)
            counter.add(1, {"phase": "solve"})
        app.logger.emit(body="converged", event_name="simvue.event")
        app.logger.emit(body="mesh is coarse", severity_number=SeverityNumber.WARN)
        with app.tracer.start_as_current_span("assemble"):
            pass
        app.meter_provider.force_flush()


def poll(fetch: Callable[[], Any], ok: Callable[[Any], bool], timeout: float = 60.0) -> Any:
    """Call ``fetch`` until ``ok`` accepts its answer or ``timeout`` passes; the last answer."""
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if ok(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def run_state(client: SimvueClient, key: str) -> dict[str, Any]:
    """Everything the server holds for the run with this key, minus ids and clock times."""
    found = client.find_run_by_key(key)
    assert found is not None, f"no run with key {key}"
    run = client.get_run(found["id"])
    metrics = client.get_metrics(found["id"])
    events = client.get_events(found["id"])
    return {
        "name": run["name"],
        "folder": run["folder"],
        "status": run["status"],
        "description": run["description"],
        "tags": sorted(run["tags"]),
        "metadata": run["metadata"],
        "visibility": run["visibility"],
        "ttl": run["ttl"],
        "metrics": {
            name: sorted((p["step"], p["value"], round(p["time"], 6)) for p in points)
            for name, points in metrics.items()
        },
        "events": sorted((e["message"], e["log_level"]) for e in events),
    }


def python_json(
    script: str, args: list[str], env: dict[str, str], cwd: Path, timeout: float = 240
) -> Any:
    """Run a Python script (one using the official client, typically) in a subprocess, as a
    user's would run; the JSON its last output line holds."""
    out = subprocess.run(
        [sys.executable, "-c", script, *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == 0, f"the script failed:\n{out.stdout}\n{out.stderr}"
    return json.loads(out.stdout.strip().splitlines()[-1])
