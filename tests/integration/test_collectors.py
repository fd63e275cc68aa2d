"""The collector configurations under ``collector-config/``, and a real collector in the path.

What is checked, and how far:

* ``rotel-agent.env`` + ``rotel-agent.sh`` — EXECUTED. ``rotel`` (a Rust OTLP collector from
  PyPI) is started through the shipped launcher and settings, on free loopback ports, in front of
  a real ``simvue-otel bridge`` that requires a bearer token; the official OTel SDK exporters
  send a run to rotel, and the run must land on the server exactly as the in-process exporters
  put it there.
* ``agent.yaml`` and ``bridge-direct.yaml`` (distribution ``otelcol``) and ``gateway.yaml``
  (distribution ``otelcol-contrib``) — STRUCTURE ONLY. No OpenTelemetry Collector build with an
  OTLP receiver (let alone the ``loadbalancing`` exporter) can be installed where these tests run,
  so these files are never executed here. The tests check that they parse, that every component
  exists in the distribution the file names in its ``# distribution:`` line (table below), that
  the pipelines refer only to defined components, that every hop towards a bridge uses the port
  and protocol the bridge really listens on (OTLP/gRPC for ``loadbalancing``, OTLP/HTTP for
  ``otlp_http``), that every such hop carries the bridge's token, and that the load-balancing
  routing keys keep a run on one replica. Component names are accepted under their current
  names and their deprecated aliases (``otlp_http``/``otlphttp``, ``otlp_grpc``/``otlp``,
  ``load_balancing``/``loadbalancing``); the shipped files use the current OTLP exporter names.
  Validate them with ``otelcol validate`` on the build you deploy.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from simvue_otel._internal.bridge import parse_listen
from simvue_otel._internal.cli import build_parser
from simvue_otel._internal.client import SimvueClient
from tests.helpers import (
    App,
    LocalServer,
    free_port,
    make_app,
    poll,
    run_program,
    run_state,
    start_bridge,
)

CONFIG_DIR = Path(__file__).resolve().parents[2] / "collector-config"
YAML_CONFIGS = ["agent.yaml", "bridge-direct.yaml", "gateway.yaml"]
ROTEL_ENV = CONFIG_DIR / "rotel-agent.env"
ROTEL_SH = CONFIG_DIR / "rotel-agent.sh"
TOKEN_REF = "Bearer ${env:SIMVUE_OTEL_BRIDGE_TOKEN}"

# Component type names of the two distributions (the part of an id before any `/name`). A small
# explicit subset — enough for what collector-config/ may use; extend it with care, from the
# distribution's manifest (opentelemetry-collector-releases, distributions/<name>/manifest.yaml).
_CORE: dict[str, set[str]] = {
    "receivers": {"otlp", "nop"},
    "processors": {"batch", "memory_limiter"},
    # `otlp_grpc` and `otlp_http` are the names since collector v0.144.0; `otlp` and `otlphttp`
    # stay as deprecated aliases (a warning at start).
    "exporters": {"debug", "nop", "otlp", "otlp_grpc", "otlphttp", "otlp_http"},
    "extensions": {"memory_limiter", "zpages"},
    "connectors": {"forward"},
}
_CONTRIB_EXTRA: dict[str, set[str]] = {
    "receivers": {"filelog", "hostmetrics", "prometheus"},
    "processors": {"attributes", "filter", "groupbytrace", "resource", "transform"},
    # `load_balancing` is the newest releases' name; `loadbalancing` stays as an alias.
    "exporters": {"file", "loadbalancing", "load_balancing"},
    "extensions": {"bearertokenauth", "file_storage", "health_check", "pprof"},
    "connectors": {"routing"},
}
DISTRIBUTIONS: dict[str, dict[str, set[str]]] = {
    "otelcol": _CORE,
    "otelcol-contrib": {kind: _CORE[kind] | _CONTRIB_EXTRA[kind] for kind in _CORE},
}
KINDS = ("receivers", "processors", "exporters", "extensions", "connectors")
SIGNALS = ("traces", "metrics", "logs")
LOADBALANCING = {"loadbalancing", "load_balancing"}
OTLP_HTTP = {"otlp_http", "otlphttp"}
OTLP_GRPC = {"otlp_grpc", "otlp"}
# Deprecated exporter names the shipped files must not use, and their current names. The
# `loadbalancing` alias stays allowed: `load_balancing` exists only in the newest contrib releases.
DEPRECATED_EXPORTERS = {"otlphttp": "otlp_http", "otlp": "otlp_grpc"}

# The routing keys of the load-balancing exporter that keep a run's data of one signal on one
# replica (see gateway.yaml for the release notes behind this table). `service` is valid too but
# would pile every run of a service onto one replica, so it is not accepted here; `attributes`
# must name simvue.run.key.
ROUTING_KEYS: dict[str, set[str]] = {
    "traces": {"traceID", "attributes"},  # one trace per run (root span `simvue.run`)
    "logs": {"traceID", "attributes", "resource"},  # records carry the run's trace id
    "metrics": {"resource", "attributes"},  # never traceID in a metrics pipeline
}


def _bridge_ports() -> tuple[int, int]:
    """The ports `simvue-otel bridge` listens on by default: (OTLP/gRPC, OTLP/HTTP)."""
    args = build_parser().parse_args(["bridge"])
    return parse_listen(args.grpc_listen, 4317)[1], parse_listen(args.listen, 4318)[1]


GRPC_PORT, HTTP_PORT = _bridge_ports()


# The structure checks run on each file, and on the files with the OTLP/HTTP exporter under its
# pre-v0.144.0 name, as a site on an older collector would rename it.
OLD_NAMES = " (otlphttp)"
STRUCTURE_CASES = YAML_CONFIGS + [f"{n}{OLD_NAMES}" for n in ("agent.yaml", "bridge-direct.yaml")]


def _load(name: str) -> tuple[str, dict[str, Any]]:
    text = (CONFIG_DIR / name.removesuffix(OLD_NAMES)).read_text()
    if name.endswith(OLD_NAMES):
        assert "otlp_http/" in text
        text = text.replace("otlp_http/", "otlphttp/")
    match = re.search(r"^# distribution: (\S+)$", text, re.MULTILINE)
    assert match, f"{name}: no '# distribution: <otelcol|otelcol-contrib>' line"
    config = yaml.safe_load(text)
    assert isinstance(config, dict), f"{name}: not a YAML mapping"
    return match.group(1), config


def _type(component_id: str) -> str:
    return component_id.split("/", 1)[0]


def _host_port(endpoint: str) -> tuple[str, int]:
    """`host:port`, `[v6]:port` or a URL → (host, port)."""
    parts = urlsplit(endpoint if "://" in endpoint else f"//{endpoint}")
    assert parts.hostname and parts.port, f"{endpoint!r}: no host and port"
    return parts.hostname, parts.port


def _header(headers: dict[str, str] | None, name: str) -> str | None:
    return next((v for k, v in (headers or {}).items() if k.lower() == name), None)


# -- (a) the YAML configurations: structure, components, ports, token, routing ------------------


def test_every_collector_configuration_is_covered() -> None:
    assert sorted(p.name for p in CONFIG_DIR.glob("*.y*ml")) == sorted(YAML_CONFIGS)


@pytest.mark.parametrize("name", STRUCTURE_CASES)
def test_components_exist_in_the_named_distribution(name: str) -> None:
    distribution, config = _load(name)
    assert distribution in DISTRIBUTIONS, f"{name}: unknown distribution {distribution!r}"
    known = DISTRIBUTIONS[distribution]
    assert set(config) <= {*KINDS, "service"}, f"{name}: unknown top-level keys"
    for kind in KINDS:
        for component_id in config.get(kind) or {}:
            assert _type(component_id) in known[kind], (
                f"{name}: {kind[:-1]} {component_id!r} is not in {distribution}"
            )


@pytest.mark.parametrize("name", STRUCTURE_CASES)
def test_pipelines_use_only_defined_components(name: str) -> None:
    _, config = _load(name)
    service = config["service"]
    defined = {kind: set(config.get(kind) or {}) for kind in KINDS}
    for ext in service.get("extensions", []):
        assert ext in defined["extensions"], f"{name}: extension {ext!r} is not defined"
    pipelines = service["pipelines"]
    assert {_type(p) for p in pipelines} == set(SIGNALS), f"{name}: Simvue needs all 3 signals"
    used: dict[str, set[str]] = {kind: set() for kind in KINDS}
    for pipeline_id, pipeline in pipelines.items():
        assert set(pipeline) <= {"receivers", "processors", "exporters"}, pipeline_id
        assert pipeline["receivers"] and pipeline["exporters"], pipeline_id
        for kind in ("receivers", "processors", "exporters"):
            for component_id in pipeline.get(kind) or []:
                assert component_id in defined[kind], (
                    f"{name}: pipeline {pipeline_id} uses undefined {kind[:-1]} {component_id!r}"
                )
                used[kind].add(component_id)
        processors = pipeline.get("processors") or []
        assert processors[:1] == ["memory_limiter"], f"{name}: memory_limiter must come first"
    used["extensions"] = set(service.get("extensions", []))
    for kind in ("receivers", "processors", "exporters", "extensions"):
        assert defined[kind] <= used[kind], f"{name}: {kind} defined but unused"


@pytest.mark.parametrize("name", STRUCTURE_CASES)
def test_endpoints_use_the_bridge_ports_and_protocols(name: str) -> None:
    """Every hop towards a bridge (or a gateway, which listens on the same standard ports) uses
    the port the bridge really listens on for that protocol; receivers likewise."""
    _, config = _load(name)
    for receiver_id, receiver in config["receivers"].items():
        assert _type(receiver_id) == "otlp"
        protocols = receiver["protocols"]
        assert _host_port(protocols["grpc"]["endpoint"])[1] == GRPC_PORT
        assert _host_port(protocols["http"]["endpoint"])[1] == HTTP_PORT
    for exporter_id, exporter in config["exporters"].items():
        kind = _type(exporter_id)
        if kind in OTLP_HTTP:
            parts = urlsplit(exporter["endpoint"])
            assert parts.scheme in ("http", "https"), exporter_id
            assert parts.port == HTTP_PORT, f"{exporter_id}: OTLP/HTTP goes to {HTTP_PORT}"
            assert parts.path in ("", "/"), f"{exporter_id}: /v1/<signal> is appended"
            for signal in SIGNALS:
                assert f"{signal}_endpoint" not in exporter
        elif kind in OTLP_GRPC:
            assert _host_port(exporter["endpoint"])[1] == GRPC_PORT, exporter_id
        elif kind in LOADBALANCING:
            assert "otlp" in exporter["protocol"], f"{exporter_id}: OTLP/gRPC is its only protocol"
            assert "endpoint" not in exporter["protocol"]["otlp"], "set by the resolver"
            resolver = exporter["resolver"]
            assert resolver, f"{exporter_id}: no resolver"
            for host in (resolver.get("static") or {}).get("hostnames", []):
                assert _host_port(host)[1] == GRPC_PORT, f"{exporter_id}: {host} is not gRPC"
            if "dns" in resolver:
                assert int(resolver["dns"].get("port", 4317)) == GRPC_PORT
            if "k8s" in resolver:
                assert set(resolver["k8s"].get("ports", [4317])) == {GRPC_PORT}
        else:
            pytest.fail(f"{name}: exporter {exporter_id!r} does not reach a bridge")


@pytest.mark.parametrize("name", YAML_CONFIGS)
def test_the_files_use_the_current_exporter_names(name: str) -> None:
    """Collector v0.144.0 renamed `otlphttp` to `otlp_http` (and `otlp` to `otlp_grpc`); the old
    names still load, with a deprecation warning at every start."""
    _, config = _load(name)
    for exporter_id in config["exporters"]:
        kind = _type(exporter_id)
        assert kind not in DEPRECATED_EXPORTERS, (
            f"{name}: exporter {exporter_id!r} uses the deprecated name {kind!r}; "
            f"use {DEPRECATED_EXPORTERS[kind]!r}"
        )
    text = (CONFIG_DIR / name).read_text()
    assert "v0.144.0" in text, f"{name}: say which collector releases it was written for"


@pytest.mark.parametrize("name", STRUCTURE_CASES)
def test_every_hop_carries_the_bridge_token(name: str) -> None:
    _, config = _load(name)
    for exporter_id, exporter in config["exporters"].items():
        client = exporter["protocol"]["otlp"] if _type(exporter_id) in LOADBALANCING else exporter
        assert _header(client.get("headers"), "authorization") == TOKEN_REF, exporter_id
        retry = client.get("retry_on_failure", {})
        assert retry.get("enabled", True), f"{exporter_id}: retries must stay on (503, restarts)"
    for receiver in config["receivers"].values():
        for proto in receiver["protocols"].values():
            host = _host_port(proto["endpoint"])[0]
            if host in ("127.0.0.1", "localhost", "::1"):
                continue  # loopback: only this machine's apps can send
            auth = (proto.get("auth") or {}).get("authenticator")
            assert auth, f"{name}: a receiver on {host} must authenticate its senders"
            extension = config["extensions"][auth]
            assert _type(auth) == "bearertokenauth"
            assert extension["token"] == "${env:SIMVUE_OTEL_BRIDGE_TOKEN}"


@pytest.mark.parametrize("name", STRUCTURE_CASES)
def test_load_balancing_keeps_a_run_on_one_replica(name: str) -> None:
    _, config = _load(name)
    for pipeline_id, pipeline in config["service"]["pipelines"].items():
        signal = _type(pipeline_id)
        for exporter_id in pipeline["exporters"]:
            if _type(exporter_id) not in LOADBALANCING:
                continue
            exporter = config["exporters"][exporter_id]
            key = exporter.get("routing_key", "traceID")
            assert key in ROUTING_KEYS[signal], f"{exporter_id}: {key!r} for {signal}"
            if key == "attributes":
                assert "simvue.run.key" in exporter.get("routing_attributes", [])
            # Batching before the load balancer is wasted (it splits requests again by key)
            # and holds data where a crash loses it: batch per replica, after routing.
            assert "batch" not in {_type(p) for p in pipeline.get("processors") or []}


# -- (b) a real collector in the path: SDK --OTLP--> rotel --OTLP--> bridge --> server ----------


def _rotel_binary() -> Path:
    rotel = pytest.importorskip("rotel", reason="rotel (a test dependency) is not installed")
    binary = Path(rotel.__file__).parent / "rotel-agent"
    assert binary.is_file(), f"no {binary}"
    return binary


def _env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep and re.fullmatch(r"[A-Z][A-Z0-9_]*", key), f"bad line {line!r}"
            values[key] = value
    return values


def test_rotel_settings_are_options_rotel_has() -> None:
    """Every ROTEL_* variable in rotel-agent.env is one that `rotel-agent start` reads (an
    unknown one would be ignored silently), and its addresses fit the bridge's ports."""
    helptext = subprocess.run(
        [str(_rotel_binary()), "start", "--help"], capture_output=True, text=True, timeout=30
    ).stdout
    known = set(re.findall(r"\[env: (ROTEL_[A-Z0-9_]+)=", helptext))
    assert "ROTEL_OTLP_EXPORTER_ENDPOINT" in known
    settings = _env_file(ROTEL_ENV)
    assert set(settings) <= known, f"unknown to rotel: {sorted(set(settings) - known)}"
    assert "ROTEL_OTLP_EXPORTER_CUSTOM_HEADERS" not in settings, "the token is not kept here"
    for var in ("ROTEL_OTLP_GRPC_ENDPOINT", "ROTEL_OTLP_HTTP_ENDPOINT"):
        assert _host_port(settings[var])[0] == "127.0.0.1", f"{var}: loopback only"
    assert _host_port(settings["ROTEL_OTLP_GRPC_ENDPOINT"])[1] == GRPC_PORT
    assert _host_port(settings["ROTEL_OTLP_HTTP_ENDPOINT"])[1] == HTTP_PORT
    protocol = settings["ROTEL_OTLP_EXPORTER_PROTOCOL"]
    port = {"http": HTTP_PORT, "grpc": GRPC_PORT}[protocol]
    assert _host_port(settings["ROTEL_OTLP_EXPORTER_ENDPOINT"])[1] == port


def test_rotel_launcher_refuses_to_start_without_the_token(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ROTEL_", "SIMVUE_"))}
    env["SIMVUE_OTEL_ROTEL_BIN"] = str(_rotel_binary())
    out = subprocess.run(
        ["sh", str(ROTEL_SH)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 2
    assert "SIMVUE_OTEL_BRIDGE_TOKEN" in out.stderr


@dataclass
class Rotel:
    """A running rotel, started by collector-config/rotel-agent.sh."""

    grpc: str  # host:port of its OTLP/gRPC receiver
    http: str  # base URL of its OTLP/HTTP receiver
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_rotel(tmp: Path, *, protocol: str, endpoint: str, token: str) -> Rotel:
    """rotel-agent.sh with rotel-agent.env, only the addresses overridden by flags (rotel
    refuses port 0, so free ports are picked first). Waits until both receivers accept."""
    tmp.mkdir(parents=True, exist_ok=True)
    grpc_port, http_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ROTEL_", "SIMVUE_", "OTEL_"))}
    env.update(
        SIMVUE_OTEL_BRIDGE_TOKEN=token,
        SIMVUE_OTEL_ROTEL_BIN=str(_rotel_binary()),
        PYTHON=sys.executable,
    )
    cmd = [
        "sh", str(ROTEL_SH),
        "--otlp-grpc-endpoint", f"127.0.0.1:{grpc_port}",
        "--otlp-http-endpoint", f"127.0.0.1:{http_port}",
        "--otlp-exporter-protocol", protocol,
        "--otlp-exporter-endpoint", endpoint,
    ]  # fmt: skip
    log = tmp / "rotel.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=tmp)
    rotel = Rotel(f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{http_port}", proc, log)
    deadline = time.monotonic() + 30
    waiting = {grpc_port, http_port}
    while waiting:
        if proc.poll() is not None:
            raise RuntimeError(f"rotel exited early:\n{log.read_text()}")
        if time.monotonic() > deadline:
            rotel.stop()
            raise RuntimeError(f"rotel did not start:\n{log.read_text()}")
        for port in list(waiting):
            with socket.socket() as sock:
                sock.settimeout(0.5)
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    waiting.discard(port)
        time.sleep(0.1)
    return rotel


class OtlpApp(App):
    """The app of test_export, exporting with the official OTLP exporters instead of Simvue's:
    spans over OTLP/gRPC, log records and metrics over OTLP/HTTP (both of rotel's receivers)."""

    def close(self, timeout: float = 60.0) -> bool:
        millis = int(timeout * 1000)
        self.meter_provider.shutdown()  # its last export, as in-process (no extra flush)
        flushed = self.logger_provider.force_flush(millis)
        flushed = self.tracer_provider.force_flush(millis) and flushed
        self.logger_provider.shutdown()
        self.tracer_provider.shutdown()
        return flushed


def make_otlp_app(rotel: Rotel, name: str, folder: str) -> OtlpApp:
    key = str(uuid.uuid4())
    resource = Resource.create(
        {"simvue.run.key": key, "simvue.run.name": name, "simvue.run.folder": folder}
    )
    tp = TracerProvider(resource=resource)
    tp.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=f"http://{rotel.grpc}", insecure=True))
    )
    lp = LoggerProvider(resource=resource)
    lp.add_log_record_processor(
        BatchLogRecordProcessor(OTLPLogExporter(endpoint=f"{rotel.http}/v1/logs"))
    )
    reader = PeriodicExportingMetricReader(
        OTLPMetricExporter(endpoint=f"{rotel.http}/v1/metrics"),
        export_interval_millis=3_600_000,
    )
    mp = MeterProvider(resource=resource, metric_readers=[reader])
    # No Simvue pipeline: everything leaves the process as OTLP.
    return OtlpApp(key, None, tp, lp, mp)  # type: ignore[arg-type]


def comparable(state: dict[str, Any]) -> dict[str, Any]:
    """A run's state minus what differs between two runs of the same program (as in
    test_export's offline-vs-online comparison): its key, span durations, clock times."""
    state = dict(state, metadata=dict(state["metadata"]), metrics=dict(state["metrics"]))
    state["metadata"].pop("simvue_otel_run_key", None)
    state["events"] = sorted((m.split(" ended after")[0], lvl) for m, lvl in state["events"])
    name = "iterations(phase=solve)"
    if name in state["metrics"]:
        state["metrics"][name] = [(step, value) for step, value, _ in state["metrics"][name]]
    return state


class _NotThereYet(Exception):
    """The run is not on the server yet (`wait_for_state` waits on)."""


def wait_for_state(
    client: SimvueClient, key: str, expected: dict[str, Any], timeout: float = 60.0
) -> dict[str, Any] | None:
    """Poll until the run's comparable state equals `expected` (or time runs out); the last
    state seen, None when the run never appeared."""

    def seen() -> dict[str, Any]:
        if client.find_run_by_key(key) is None:
            raise _NotThereYet  # no answer: the state seen before stays the last one
        return comparable(run_state(client, key))

    last: dict[str, Any] | None = poll(
        seen, lambda state: state == expected, timeout, interval=0.25, ignoring=(_NotThereYet,)
    )
    return last


@pytest.mark.parametrize("hop", ["http", "grpc"])
def test_a_run_through_rotel_lands_as_it_does_in_process(
    local_server: LocalServer, client: SimvueClient, tmp_path: Path, hop: str
) -> None:
    """SDK --OTLP--> rotel --OTLP/{HTTP,gRPC} + token--> bridge --> server gives the same run as
    SDK --Simvue exporters--> server. `http` is the hop of agent.yaml / bridge-direct.yaml,
    `grpc` the protocol of gateway.yaml's load-balanced hop."""
    name, folder = "through-rotel", f"/collectors/rotel-{hop}"
    reference = make_app("online", tmp_path / "ref", local_server, name, folder)
    run_program(reference)
    assert reference.close()
    expected = comparable(run_state(client, reference.key))
    assert expected["status"] == "completed" and len(expected["metrics"]["loss"]) == 50

    token = secrets.token_urlsafe(24)
    bridge = start_bridge(tmp_path / "bridge", local_server, token=token)
    rotel = None
    try:
        endpoint = bridge.url if hop == "http" else f"http://{bridge.grpc}"
        rotel = start_rotel(tmp_path / "rotel", protocol=hop, endpoint=endpoint, token=token)
        app = make_otlp_app(rotel, name, folder)
        run_program(app)
        assert app.close(), f"the SDK could not hand everything to rotel:\n{rotel.log.read_text()}"
        got = wait_for_state(client, app.key, expected)
        assert got == expected, (
            f"rotel:\n{rotel.log.read_text()[-3000:]}\nbridge:\n{bridge.log.read_text()[-3000:]}"
        )
    finally:
        if rotel is not None:
            rotel.stop()
        bridge.stop()
    assert token not in rotel.log.read_text() + bridge.log.read_text(), "the token was logged"
    runs = client.find_runs([f"name == {name}", f"folder.path == {folder}"])
    assert len(runs) == 2, "one run each, nothing doubled"


def _refused(rotel: Rotel) -> set[str]:
    """The signals whose export rotel logged as refused by the bridge for the token."""
    lines = [line for line in rotel.log.read_text().splitlines() if "wrong bearer token" in line]
    return {signal for signal in SIGNALS if any(f'"otlp_{signal}"' in line for line in lines)}


def test_rotel_without_the_bridge_token_delivers_nothing(
    local_server: LocalServer, client: SimvueClient, tmp_path: Path
) -> None:
    bridge = start_bridge(tmp_path / "bridge", local_server, token=secrets.token_urlsafe(24))
    rotel = None
    try:
        rotel = start_rotel(
            tmp_path / "rotel", protocol="http", endpoint=bridge.url, token="not-the-token"
        )
        app = make_otlp_app(rotel, "wrong-token", "/collectors/refused")
        run_program(app, n_steps=5)
        assert app.close(), f"the SDK could not hand everything to rotel:\n{rotel.log.read_text()}"
        deadline = time.monotonic() + 30
        while _refused(rotel) != set(SIGNALS) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _refused(rotel) == set(SIGNALS), (
            f"rotel:\n{rotel.log.read_text()[-3000:]}\nbridge:\n{bridge.log.read_text()[-3000:]}"
        )
    finally:
        if rotel is not None:
            rotel.stop()
        bridge.stop()
    assert client.find_run_by_key(app.key) is None
