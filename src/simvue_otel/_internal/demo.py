"""``simvue-otel demo``: the whole product in a minute, on a local server of its own.

It starts the local server (a temporary database unless ``--db`` is given), records a small
simulation through ``Run`` (metrics over steps, events, tags, metadata, resource metrics), a
parameter scan of a few runs, and an app instrumented only with OpenTelemetry whose telemetry
goes through ``simvue-otel bridge``; then it prints a summary of the runs with the address of
each run's page, and keeps serving until Ctrl-C (``--exit`` stops at once).
"""

from __future__ import annotations

import contextlib
import getpass
import math
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, TextIO

import requests

from .config import child_environment

__all__ = ["run_demo"]


def _user() -> str:
    """The demo's user name on its server: the login name, else ``demo``."""
    try:
        return getpass.getuser() or "demo"
    except (KeyError, OSError):  # no name for this uid (some containers)
        return "demo"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


SIMULATION_SECONDS = 3.0
"""How long the demo's main simulation takes: long enough for resource metrics, sampled every
:data:`RESOURCE_INTERVAL` seconds, to draw lines rather than single points."""
RESOURCE_INTERVAL = 1.0


def _heat_equation(
    run: Any, diffusivity: float, steps: int = 120, cells: int = 50, seconds: float = 0.0
) -> None:
    """An explicit 1-D heat equation: the run's metrics are what a scientist would watch.
    With ``seconds``, the steps are paced to take that long, as a real solver's would."""
    u = [math.sin(math.pi * i / (cells - 1)) for i in range(cells)]
    dt = 0.4 / diffusivity / (cells - 1) ** 2
    began = time.monotonic()
    for step in range(steps):
        if seconds > 0:
            time.sleep(max(0.0, began + seconds * step / steps - time.monotonic()))
        new = u[:]
        for i in range(1, cells - 1):
            new[i] = u[i] + diffusivity * dt * (cells - 1) ** 2 * (u[i - 1] - 2 * u[i] + u[i + 1])
        residual = max(abs(a - b) for a, b in zip(new, u, strict=True))
        u = new
        run.log_metrics(
            {"energy": sum(x * x for x in u) / cells, "peak": max(u), "residual": residual},
            step=step,
        )
        if step == steps // 2:
            run.log_event(f"half way: peak temperature {max(u):.4f}")
    run.log_event("converged" if residual < 1e-3 else f"stopped with residual {residual:.2e}")


def _instrumented_app(bridge_url: str, folder: str) -> None:
    """An app that knows only OpenTelemetry, exporting OTLP/HTTP to the bridge."""
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create(
        {
            "service.name": "mesh-service",
            "simvue.run.key": str(uuid.uuid4()),
            "simvue.run.name": "mesh-service-demo",
            "simvue.run.folder": folder,
        }
    )
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(f"{bridge_url}/v1/traces"))
    )
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(
        BatchLogRecordProcessor(OTLPLogExporter(f"{bridge_url}/v1/logs"))
    )
    reader = PeriodicExportingMetricReader(
        OTLPMetricExporter(f"{bridge_url}/v1/metrics"), export_interval_millis=500
    )
    meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
    tracer = tracer_provider.get_tracer("mesh")
    logger = logger_provider.get_logger("mesh")
    cells = meter_provider.get_meter("mesh").create_counter("cells_generated")
    with tracer.start_as_current_span(
        "simvue.run",
        attributes={"simvue.run.tags": ["otel", "bridge"], "simvue.run.description":
                    "An OpenTelemetry-instrumented service, through simvue-otel bridge"},
    ):  # fmt: skip
        for level in range(6):
            with tracer.start_as_current_span("refine", attributes={"level": level}):
                time.sleep(0.05)
                cells.add(4**level)
                logger.emit(
                    body={"quality": 1 - 0.5**level, "cells": float(4**level)},
                    event_name="simvue.metrics",
                    attributes={"simvue.metrics.step": level},
                )
        logger.emit(body="mesh ready", event_name="simvue.event")
    meter_provider.shutdown()
    logger_provider.shutdown()
    tracer_provider.shutdown()


def run_demo(db: Path | None, port: int, *, exit_at_once: bool, out: TextIO = sys.stdout) -> int:
    """Run the demo (see the module docstring); returns the exit code."""
    import uvicorn

    from .. import Run
    from .client import SimvueClient
    from .hints import command
    from .server.app import create_app
    from .server.auth import issue_token
    from .server.store import Store
    from .server.web import issue_login_code

    if not 0 < port < 65536:
        print(f"simvue-otel demo: --port must be between 1 and 65535, not {port}", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="simvue-otel-demo-"))
    db = db or workdir / "demo.db"
    if not _port_free(port):
        chosen = _free_port()
        print(f"port {port} is busy; using {chosen}", file=out)
        port = chosen
    store = Store(db)
    identity, _ = store.ensure_user(_user(), "default")
    token = issue_token(store.secret(), identity.user, identity.tenant)
    url = f"http://127.0.0.1:{port}"
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(store, sweep_interval=2.0), host="127.0.0.1", port=port,
            log_level="warning", access_log=False,
        )
    )  # fmt: skip
    thread = threading.Thread(target=server.run, name="simvue-otel-demo-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            print("the demo server did not start", file=sys.stderr)
            return 1
        time.sleep(0.05)
    print(f"simvue-otel demo: local Simvue server at {url} (database {db})", file=out)
    folder = f"/demo/{time.strftime('%Y%m%d-%H%M%S')}"
    settings: dict[str, Any] = {
        "server_url": url,
        "server_token": token,
        "offline_directory": workdir / "offline",
    }

    print("1. a simulation through Run ...", file=out, flush=True)
    with Run(**settings) as run:
        run.init(
            name="heat-equation",
            folder=folder,
            tags=["demo", "heat"],
            metadata={"solver": {"scheme": "explicit", "cells": 50}, "diffusivity": 1.0},
            description="A 1-D heat equation, recorded through OpenTelemetry",
            resources_metrics_interval=RESOURCE_INTERVAL,
        )
        _heat_equation(run, 1.0, seconds=SIMULATION_SECONDS)

    print("2. a parameter scan (three runs) ...", file=out, flush=True)
    for diffusivity in (0.5, 2.0, 4.0):
        with Run(**settings) as run:
            run.init(
                folder=f"{folder}/scan",
                tags=["demo", "scan"],
                metadata={"diffusivity": diffusivity},
                resources_metrics_interval=None,
            )
            _heat_equation(run, diffusivity, steps=60)

    print("3. an OpenTelemetry-instrumented app through simvue-otel bridge ...", file=out,
          flush=True)  # fmt: skip
    bridge_port = _free_port()
    env = child_environment(
        drop=("SIMVUE_", "OTEL_"),
        SIMVUE_URL=url, SIMVUE_TOKEN=token, SIMVUE_OFFLINE_DIRECTORY=str(workdir / "bridge"),
    )  # fmt: skip
    bridge = subprocess.Popen(
        [sys.executable, "-m", "simvue_otel", "bridge", "--listen", f"127.0.0.1:{bridge_port}",
         "--no-grpc"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    bridge_url = f"http://127.0.0.1:{bridge_port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(requests.RequestException):
                if requests.get(bridge_url + "/health", timeout=1).ok:
                    break
            if time.monotonic() > deadline or bridge.poll() is not None:
                print("the bridge did not start", file=sys.stderr)
                return 1
            time.sleep(0.1)
        _instrumented_app(bridge_url, f"{folder}/otel")
    finally:
        bridge.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            bridge.wait(30)

    with SimvueClient(url, token) as client:
        runs = client.find_runs([], sorting=[{"id": "created", "desc": False}], metrics=True)
        runs = [r for r in runs if str(r.get("folder", "")).startswith(folder)]
        print(file=out)
        header = f"{'name':<22} {'folder':<34} {'status':<10} {'tags':<18} {'metric points':>13}"
        print(header, file=out)
        print("-" * len(header), file=out)
        for r in runs:
            points = sum(int(m.get("count", 0)) for m in (r.get("metrics") or {}).values())
            print(
                f"{r['name']:<22} {r['folder']:<34} {r['status']:<10} "
                f"{','.join(r.get('tags') or []):<18} {points:>13}",
                file=out,
            )
        print(file=out)
        print("Run pages:", file=out)
        for r in runs:
            print(f"  {url}/runs/{r['id']}", file=out)
    code = issue_login_code(store.secret(), identity)
    print(f"\nSign in to the web view (link valid 1 hour): {url}/login?code={code}", file=out)
    # Pasteable as it is: the token is minted from the demo's database when the line runs.
    mint = command("server", "token", "--db", db, "--user", identity.user)
    print(f"API: export SIMVUE_URL={url} SIMVUE_TOKEN=$({mint})", file=out)
    out.flush()
    try:
        if not exit_at_once:
            print("Serving; press Ctrl-C to stop.", file=out, flush=True)
            while thread.is_alive():
                time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.should_exit = True
        thread.join(10)
        store.close()
    return 0
