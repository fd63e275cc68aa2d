"""The chaos soak: every component killed with SIGKILL, again and again, while a fault proxy
stores then fails, answers late, delays and resets; afterwards the server holds every point and
event exactly once, every run once, each with the right status, and every point missing belongs
to a producer that was killed.

Producers, started one after another for the length of the soak, each logging one run and
keeping a ledger of what it logged:

* ``Run`` online (through the proxy to the server; a shared offline directory for spills),
* ``Run`` offline (a shared offline directory that ``simvue-otel send`` uploads, again and
  again, through the proxy),
* an app instrumented with the OpenTelemetry SDK only, exporting OTLP/HTTP to one of two
  ``simvue-otel bridge`` processes that share one spool directory and upload through the proxy.

A chaos loop kills the server (restarted on the same port and database), a bridge (restarted on
the same ports), a ``send`` run, or a producer. Server outages stay well under a minute, shorter
than the interval after which one bridge adopts another's segments. At the end the proxy turns
healthy, the producers still going finish, the bridges drain, ``send`` runs over every offline
directory, and everything the server holds is read back through its API and checked against
the ledgers.

``SIMVUE_OTEL_SOAK_SECONDS`` sets how long the chaos lasts (default 120).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from simvue_otel._internal.client import SimvueClient
from tests.helpers import (
    Bridge,
    LocalServer,
    free_port,
    start_bridge,
    start_server,
    stop_server,
)
from tests.proxy import CHAOS_ACTIONS, ChaosProxy, as_server

SOAK_SECONDS = float(os.environ.get("SIMVUE_OTEL_SOAK_SECONDS", "120"))
SEED = int(os.environ.get("SIMVUE_OTEL_SOAK_SEED", "20"))
_ASKED = tuple(a for a in os.environ.get("SIMVUE_OTEL_SOAK_FAULTS", "").split(",") if a)
FAULTS = _ASKED or CHAOS_ACTIONS
"""The proxy's faults (``SIMVUE_OTEL_SOAK_FAULTS``, comma-separated; see ``CHAOS_ACTIONS``)."""
FAULT_RATE = 0.12
"""Share of the writes through the proxy that meet a fault while the chaos lasts."""
LATE_SECONDS = 11.0
"""Past the clients' 10 s request timeout: the server stored it, the client never heard."""
CHAOS_EVERY = (2.0, 5.0)
"""Seconds between two kills, drawn uniformly."""
SEND_EVERY = (3.0, 8.0)
"""Seconds between the starts of two ``send`` runs over the offline producers' directory."""
PRODUCERS = {"online": 2, "offline": 1, "otlp": 2}
"""How many producers of each kind run at once."""

ONLINE_RUN = textwrap.dedent(
    """
    import json, random, sys, time
    from simvue_otel import Run

    ledger = open(sys.argv[1], "a", buffering=1)
    name, folder, steps = sys.argv[2], sys.argv[3], int(sys.argv[4])
    run = Run()
    run.init(name=name, folder=folder, resources_metrics_interval=None)
    ledger.write(json.dumps({"key": run.key}) + "\\n")
    for step in range(steps):
        run.log_metrics({"x": float(step)}, step=step)
        if step % 25 == 0:
            run.log_event(f"event {step}")
        ledger.write(f"[{step}, {time.time():.3f}]\\n")
        time.sleep(0.02)
    closed = run.close()
    ledger.write(json.dumps({"closed": closed}) + "\\n")
    """
)

OTLP_APP = textwrap.dedent(
    """
    import json, sys, time, uuid
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    ledger = open(sys.argv[1], "a", buffering=1)
    endpoint, name, folder, steps = sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
    key = str(uuid.uuid4())
    ledger.write(json.dumps({"key": key}) + "\\n")


    class Logs(OTLPLogExporter):
        # What the bridge acknowledged (or not), batch by batch, into the ledger.
        def export(self, batch):
            result = super().export(batch)
            steps, events = [], []
            for data in batch:
                record = data.log_record
                if isinstance(record.body, dict):
                    steps.append(int(record.attributes["simvue.metrics.step"]))
                else:
                    events.append(str(record.body))
            ok = result.name == "SUCCESS"
            ledger.write(json.dumps({"ok": ok, "steps": steps, "events": events}) + "\\n")
            return result


    class Spans(OTLPSpanExporter):
        def export(self, spans):
            result = super().export(spans)
            if any(s.name == "simvue.run" for s in spans):
                ledger.write(json.dumps({"span_ok": result.name == "SUCCESS"}) + "\\n")
            return result


    resource = Resource.create(
        {"simvue.run.key": key, "simvue.run.name": name, "simvue.run.folder": folder}
    )
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(
        BatchSpanProcessor(Spans(endpoint + "/v1/traces"), schedule_delay_millis=200)
    )
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(
        BatchLogRecordProcessor(Logs(endpoint + "/v1/logs"), schedule_delay_millis=200)
    )
    logger = logger_provider.get_logger("soak")
    with tracer_provider.get_tracer("soak").start_as_current_span("simvue.run"):
        for step in range(steps):
            logger.emit(body={"x": float(step)}, event_name="simvue.metrics",
                        attributes={"simvue.metrics.step": step})
            if step % 25 == 0:
                logger.emit(body=f"event {step}", event_name="simvue.event")
            time.sleep(0.02)
    logger_provider.shutdown()
    tracer_provider.shutdown()
    ledger.write(json.dumps({"closed": True}) + "\\n")
    """
)


@dataclass
class Producer:
    """One producer process, its run's name and the ledger of what it logged."""

    kind: str
    name: str
    ledger: Path
    process: subprocess.Popen[bytes]
    killed_at: float | None = None

    def read(self) -> Ledger:
        return Ledger.parse(self.ledger)


@dataclass
class Ledger:
    """What a producer logged, as its ledger says: metric steps and event texts it logged
    (``logged``), those the bridge acknowledged or refused for OTLP apps, and how it ended."""

    key: str | None = None
    logged: set[int] = field(default_factory=set)
    when: dict[int, float] = field(default_factory=dict)  # step -> time.time() it was logged
    events: set[str] = field(default_factory=set)
    acked: set[int] = field(default_factory=set)
    acked_events: set[str] = field(default_factory=set)
    failed: set[int] = field(default_factory=set)
    failed_events: set[str] = field(default_factory=set)
    span_ok: bool | None = None
    closed: bool | None = None

    @classmethod
    def parse(cls, path: Path) -> Ledger:
        ledger = cls()
        if not path.exists():
            return ledger
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except ValueError:  # a line cut short by SIGKILL
                continue
            if isinstance(entry, list):  # [step, when it was logged]
                step = int(entry[0])
                ledger.logged.add(step)
                ledger.when[step] = float(entry[1])
                if step % 25 == 0:
                    ledger.events.add(f"event {step}")
                continue
            if not isinstance(entry, dict):
                continue
            if "key" in entry:
                ledger.key = entry["key"]
            if "closed" in entry:
                ledger.closed = bool(entry["closed"])
            if "span_ok" in entry:
                ledger.span_ok = bool(entry["span_ok"]) or bool(ledger.span_ok)
            if "ok" in entry:
                steps, events = set(entry["steps"]), set(entry["events"])
                ledger.logged |= steps
                ledger.events |= events
                if entry["ok"]:
                    ledger.acked |= steps
                    ledger.acked_events |= events
                else:
                    ledger.failed |= steps
                    ledger.failed_events |= events
        return ledger


class Soak:
    """The components of the soak and the means to kill and restart each."""

    def __init__(self, tmp: Path, proxy: ChaosProxy, server: LocalServer, seed: int) -> None:
        self.tmp = tmp
        self.proxy = proxy
        self.server = server
        self.port = int(server.url.rsplit(":", 1)[1])
        self.random = random.Random(seed)
        self.folder = f"/soak-{uuid.uuid4().hex[:8]}"
        self.online_dir = tmp / "online"
        self.offline_dir = tmp / "offline"
        self.ledgers = tmp / "ledgers"
        self.ledgers.mkdir()
        self.bridges_dir = tmp / "bridges"
        upstream = as_server(proxy, server)
        first = start_bridge(self.bridges_dir, upstream)
        second = start_bridge(self.bridges_dir, upstream)  # the same spool directory
        self.bridges = [first, second]
        self.producers: list[Producer] = []
        self.send: subprocess.Popen[bytes] | None = None
        self.next_send = 0.0
        self.sends = 0
        self.kills: Counter[str] = Counter()
        self.events: list[str] = []  # the sequence of kills, for the report

    # -- environment ------------------------------------------------------------------------

    def env(self, offline: Path, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SIMVUE_", "OTEL_"))}
        env.update(
            SIMVUE_URL=self.proxy.url,
            SIMVUE_TOKEN=self.server.token,
            SIMVUE_OFFLINE_DIRECTORY=str(offline),
            SIMVUE_OTEL_SHUTDOWN_TIMEOUT="30",
            PYTHONUNBUFFERED="1",
            **extra,
        )
        return env

    def note(self, what: str) -> None:
        self.events.append(f"{time.monotonic():.1f} {what}")

    # -- producers --------------------------------------------------------------------------

    def start_producer(self, kind: str) -> None:
        index = len(self.producers)
        name = f"p{index:03d}-{kind}"
        ledger = self.ledgers / f"{name}.jsonl"
        steps = str(self.random.randint(150, 600))
        log = (self.tmp / "logs").joinpath(f"{name}.log")
        log.parent.mkdir(exist_ok=True)
        if kind == "otlp":
            bridge = self.bridges[index % 2]
            cmd = [sys.executable, "-c", OTLP_APP, str(ledger), bridge.url, name, self.folder,
                   steps]  # fmt: skip
            env = self.env(self.tmp / "unused")
        else:
            cmd = [sys.executable, "-c", ONLINE_RUN, str(ledger), name, self.folder, steps]
            if kind == "online":
                env = self.env(self.online_dir)
            else:
                env = self.env(self.offline_dir, SIMVUE_OTEL_MODE="offline")
        with log.open("wb") as fh:
            proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)
        self.producers.append(Producer(kind, name, ledger, proc))

    def top_up(self) -> None:
        running = Counter(p.kind for p in self.producers if p.process.poll() is None)
        for kind, wanted in PRODUCERS.items():
            for _ in range(wanted - running[kind]):
                self.start_producer(kind)

    # -- send -------------------------------------------------------------------------------

    def start_send(self) -> None:
        if self.send is not None and self.send.poll() is None:
            return
        self.next_send = time.monotonic() + self.random.uniform(*SEND_EVERY)
        self.sends += 1
        cmd = [sys.executable, "-m", "simvue_otel", "send", "--cache", str(self.offline_dir),
               "--quiet"]  # fmt: skip
        log = self.tmp / "logs" / f"send-{self.sends:03d}.log"
        with log.open("wb") as fh:
            self.send = subprocess.Popen(
                cmd, env=self.env(self.offline_dir), stdout=fh, stderr=subprocess.STDOUT
            )

    # -- kills ------------------------------------------------------------------------------

    def kill_server(self) -> None:
        self.server.process.kill()
        self.server.process.wait(30)
        self.note("server killed")
        self.kills["server"] += 1
        time.sleep(self.random.uniform(0.2, 3.0))  # an outage of a few seconds, no more
        self.server.log.rename(self.server.log.with_suffix(f".{self.kills['server']}.log"))
        self.server = start_server(
            self.tmp / "server", port=self.port, db=self.server.db, first_token=self.server.token
        )
        self.note("server restarted")

    def kill_bridge(self) -> None:
        i = self.random.randrange(2)
        old = self.bridges[i]
        old.process.kill()
        old.process.wait(30)
        self.note(f"bridge {i} killed")
        self.kills["bridge"] += 1
        old.log.rename(old.log.with_suffix(f".{self.kills['bridge']}.log"))
        ports = (int(old.url.rsplit(":", 1)[1]), int(old.grpc.rsplit(":", 1)[1]))
        self.bridges[i] = start_bridge(
            self.bridges_dir, as_server(self.proxy, self.server), ports=ports
        )
        self.note(f"bridge {i} restarted")

    def kill_send(self) -> None:
        """Kill the running ``send``, or one started for this, while it uploads."""
        if self.send is None or self.send.poll() is not None:
            self.start_send()
            time.sleep(self.random.uniform(0.5, 2.5))
        assert self.send is not None
        if self.send.poll() is not None:
            return  # it had nothing left to do
        self.send.kill()
        self.send.wait(30)
        self.note("send killed")
        self.kills["send"] += 1

    def kill_producer(self) -> bool:
        alive = [p for p in self.producers if p.process.poll() is None]
        if not alive:
            return False
        victim = self.random.choice(alive)
        victim.process.kill()
        victim.process.wait(30)
        victim.killed_at = time.time()
        self.note(f"{victim.name} killed")
        self.kills[f"producer ({victim.kind})"] += 1
        return True

    def chaos(self, seconds: float) -> None:
        """Producers kept going, ``send`` run again and again, one kill every few seconds."""
        end = time.monotonic() + seconds
        next_kill = time.monotonic() + self.random.uniform(*CHAOS_EVERY)
        while time.monotonic() < end:
            self.top_up()
            if time.monotonic() >= self.next_send:
                self.start_send()
            if time.monotonic() >= next_kill:
                what = self.random.choice(["server", "bridge", "send", "producer", "producer"])
                if what == "server":
                    self.kill_server()
                elif what == "bridge":
                    self.kill_bridge()
                elif what == "send":
                    self.kill_send()
                else:
                    self.kill_producer()
                next_kill = time.monotonic() + self.random.uniform(*CHAOS_EVERY)
            time.sleep(0.2)

    # -- the end ----------------------------------------------------------------------------

    def drain(self) -> list[str]:
        """The proxy healthy, producers finished, bridges drained and stopped, ``send`` over
        every offline directory; the outputs of the final sends."""
        self.proxy.rate = 0.0
        self.note("chaos over")
        for p in self.producers:
            try:
                p.process.wait(180)
            except subprocess.TimeoutExpired:
                p.process.kill()
                p.process.wait(30)
                p.killed_at = time.time()
                self.note(f"{p.name} hung at the end: killed")
        if self.send is not None:
            self.send.wait(180)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            backlogs = [_backlog(b) for b in self.bridges]
            if not any(backlogs):
                break
            time.sleep(0.5)
        for b in self.bridges:
            b.stop(60)
        outputs = []
        for cache in (self.offline_dir, self.online_dir, self.bridges_dir / "bridge-offline"):
            if not cache.exists():
                continue
            done = subprocess.run(
                [sys.executable, "-m", "simvue_otel", "send", "--cache", str(cache), "--quiet"],
                env=self.env(cache), capture_output=True, text=True, timeout=300,
            )  # fmt: skip
            outputs.append(f"send {cache.name}: exit {done.returncode}\n{done.stdout}{done.stderr}")
            assert done.returncode == 0, outputs[-1]
        return outputs

    def close(self) -> None:
        for p in self.producers:
            if p.process.poll() is None:
                p.process.kill()
                p.process.wait(30)
        if self.send is not None and self.send.poll() is None:
            self.send.kill()
            self.send.wait(30)
        for b in self.bridges:
            if b.process.poll() is None:
                b.stop(30)


def _backlog(bridge: Bridge) -> Any:
    try:
        return requests.get(bridge.url + "/health", timeout=5).json()["backlog"]
    except (requests.RequestException, ValueError, KeyError):
        return "unreachable"


# -- what the server holds ------------------------------------------------------------------


@dataclass
class Held:
    """One server run: its status, metric steps (with repeats) and event texts (with repeats)."""

    id: str
    key: str | None
    status: str
    steps: Counter[int]
    events: Counter[str]
    count: int  # the points the run listing says it has


def server_holds(client: SimvueClient, folder: str) -> dict[str, list[Held]]:
    """Every run in ``folder`` by name, with every point and event (all pages)."""
    runs = client.find_runs([f"folder.path == {folder}"], metadata=True, metrics=True)
    held: dict[str, list[Held]] = {}
    for run in runs:
        run_id = str(run["id"])
        points = client.get_metrics(run_id, ["x"]).get("x", [])
        summary = (run.get("metrics") or {}).get("x") or {}
        held.setdefault(str(run["name"]), []).append(
            Held(
                id=run_id,
                key=(run.get("metadata") or {}).get("simvue_otel_run_key"),
                status=str(run["status"]),
                steps=Counter(int(p["step"]) for p in points),
                events=Counter(str(e["message"]) for e in client.get_events(run_id)),
                count=int(summary["count"]) if summary else 0,
            )
        )
    return held


# -- the test -------------------------------------------------------------------------------


@pytest.fixture
def soak(tmp_path: Path) -> Iterator[Soak]:
    server = start_server(tmp_path / "server", port=free_port())
    proxy = ChaosProxy(
        server.url, seed=SEED, actions=FAULTS, late_seconds=LATE_SECONDS, delay_seconds=2.0
    )
    world = Soak(tmp_path, proxy, server, SEED)
    try:
        yield world
    finally:
        world.close()
        proxy.close()
        stop_server(world.server)


@pytest.mark.timeout(int(SOAK_SECONDS) + 900)
def test_chaos_soak_loses_and_doubles_nothing(soak: Soak) -> None:
    soak.proxy.rate = FAULT_RATE
    soak.chaos(SOAK_SECONDS)
    sends = soak.drain()

    with SimvueClient(soak.server.url, soak.server.token) as client:
        held = server_holds(client, soak.folder)

    problems: list[str] = []
    explained = Counter[str]()
    ages: list[float] = []  # per killed producer: how long before the kill its oldest loss was
    delivered = Counter[str]()
    names = {p.name for p in soak.producers}
    for name in sorted(set(held) - names):
        problems.append(f"{name}: a run no producer made")
    for p in soak.producers:
        ledger = p.read()
        runs = held.get(p.name, [])
        killed = p.killed_at is not None
        if not killed and p.process.returncode != 0:
            tail = (soak.tmp / "logs" / f"{p.name}.log").read_text()[-2000:]
            problems.append(f"{p.name}: exit {p.process.returncode}:\n{tail}")
        if len(runs) > 1:
            problems.append(f"{p.name}: {len(runs)} server runs ({[r.id for r in runs]})")
        if not runs:
            if not killed and not (p.kind == "otlp" and not ledger.acked):
                problems.append(f"{p.name}: no server run, {len(ledger.logged)} steps logged")
            explained["points of runs never made"] += len(ledger.logged)
            continue
        run = runs[0]
        if ledger.key is not None and run.key != ledger.key:
            problems.append(f"{p.name}: run key {run.key} on the server, {ledger.key} logged")
        doubled = {s: n for s, n in run.steps.items() if n > 1}
        if doubled:
            problems.append(
                f"{p.name}: {sum(doubled.values()) - len(doubled)} duplicate points "
                f"(steps {sorted(doubled)[:10]}...), POSTs holding them:\n  "
                + "\n  ".join(
                    f.describe()
                    for f in soak.proxy.journal
                    if f.run == run.id and set(f.entries) & set(doubled)
                )
            )
        doubled_events = {
            e: n for e, n in run.events.items() if n > 1 and e.startswith("event ")
        }  # each "event <step>" is logged once; notices the sink adds may repeat
        if doubled_events:
            problems.append(f"{p.name}: duplicate events {sorted(doubled_events)[:10]}")
        if run.count != sum(run.steps.values()):
            problems.append(f"{p.name}: {run.count} points listed, {sum(run.steps.values())} read")
        delivered["points"] += sum(run.steps.values())
        delivered["events"] += sum(run.events.values())
        delivered["runs"] += 1
        missing = ledger.logged - set(run.steps)
        missing_events = ledger.events - set(run.events)
        if (
            p.kind == "otlp"
        ):  # refused batches are the app's to know about; acked ones must be there
            lost = (missing & ledger.acked) | (missing - ledger.failed if not killed else set())
            lost_events = (missing_events & ledger.acked_events) | (
                missing_events - ledger.failed_events if not killed else set()
            )
        else:
            lost = set() if killed else missing
            lost_events = set() if killed else missing_events
        if lost or lost_events:
            problems.append(
                f"{p.name} ({'killed' if killed else 'not killed'}): {len(lost)} points "
                f"(steps {sorted(lost)[:10]}) and {len(lost_events)} events lost unexplained"
            )
        explained[f"points lost by killed or refused {p.kind} producers"] += len(missing - lost)
        if killed and p.killed_at is not None and ledger.when and missing - lost:
            oldest = min(ledger.when.get(s, p.killed_at) for s in missing - lost)
            ages.append(round(p.killed_at - oldest, 1))
        # A program that reached its end: everything it logged is delivered by now (what its
        # close could not deliver in time went out with the last `send`), its run ended. An
        # OTLP app's run ends with its root span, which the bridge must have taken.
        finished = ledger.closed is not None and (p.kind != "otlp" or ledger.span_ok)
        if not killed and finished and run.status != "completed":
            problems.append(f"{p.name}: status {run.status}, expected completed")
        if run.status not in ("completed", "running", "lost"):
            problems.append(f"{p.name}: status {run.status}")

    report = "\n".join(
        [
            f"soak of {SOAK_SECONDS:.0f} s, seed {SEED}: {len(soak.producers)} producers, "
            f"{soak.sends} send runs",
            f"kills: {dict(soak.kills)}",
            f"proxy faults: {dict(soak.proxy.applied)}",
            f"delivered: {dict(delivered)}",
            f"explained losses: {dict(explained)}",
            f"oldest lost point of each killed producer, seconds before its kill: {sorted(ages)}",
            *sends,
        ]
    )
    print(report)
    assert not problems, "\n".join([*problems, report, "sequence:", *soak.events])
    assert sum(soak.kills.values()) >= SOAK_SECONDS / 10, "the chaos loop killed too little"
    assert delivered["points"] > 0 and delivered["runs"] >= len(PRODUCERS)


# -- what the soak found, each reduced to one deterministic case ------------------------------


def _offline_run(tmp: Path, proxy: ChaosProxy, server: LocalServer, steps: int) -> dict[str, str]:
    """An offline run of ``steps`` points logged to ``tmp/offline``; the environment to send it
    through ``proxy``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIMVUE_", "OTEL_"))}
    env.update(SIMVUE_URL=proxy.url, SIMVUE_TOKEN=server.token, SIMVUE_OTEL_MODE="offline",
               SIMVUE_OFFLINE_DIRECTORY=str(tmp / "offline"))  # fmt: skip
    ledger = tmp / "ledger.jsonl"
    done = subprocess.run(
        [sys.executable, "-c", ONLINE_RUN, str(ledger), "held", "/soak-held", str(steps)],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return env


def test_a_write_still_on_its_way_when_send_dies_is_not_stored_twice(tmp_path: Path) -> None:
    """``send`` POSTs a batch that a gateway holds 5 s before passing it on; ``send`` is killed
    meanwhile and run again at once. The held POST still reaches the server."""
    server = start_server(tmp_path / "server")
    proxy = ChaosProxy(server.url, delay_seconds=5.0)
    try:
        env = _offline_run(tmp_path, proxy, server, 100)
        proxy.rules = [("POST", "/api/metrics", "held")]
        send = [sys.executable, "-m", "simvue_otel", "send", "--quiet"]
        first = subprocess.Popen(send, env=env)
        deadline = time.monotonic() + 60
        while proxy.applied["held"] == 0:
            assert time.monotonic() < deadline and first.poll() is None, "no metrics POST"
            time.sleep(0.05)
        first.kill()
        first.wait(30)
        again = subprocess.run(send, env=env, capture_output=True, text=True, timeout=120)
        assert again.returncode == 0, again.stderr
        deadline = time.monotonic() + 60
        while not any(f.fault == "held" for f in proxy.journal):  # the held POST has landed
            assert time.monotonic() < deadline, "the held POST never reached the server"
            time.sleep(0.1)
        with SimvueClient(server.url, server.token) as client:
            (run,) = client.find_runs(["name == held", "folder.path == /soak-held"])
            steps = Counter(int(p["step"]) for p in client.get_metrics(str(run["id"]), ["x"])["x"])
        assert set(steps) == set(range(100))
        assert max(steps.values()) == 1, (
            f"{sum(steps.values()) - 100} points stored twice:\n"
            + "\n".join(f.describe() for f in proxy.journal)
        )
    finally:
        proxy.close()
        stop_server(server)


def test_a_gateway_502_at_init_is_a_server_that_is_down(tmp_path: Path) -> None:
    """Behind a gateway, a restarting server answers 502: the program goes on and keeps its
    data for later, as when nothing answers at all."""
    server = start_server(tmp_path / "server")
    proxy = ChaosProxy(server.url)
    try:
        proxy.rules = [("GET", "/api/version", 502)]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SIMVUE_", "OTEL_"))}
        env.update(SIMVUE_URL=proxy.url, SIMVUE_TOKEN=server.token,
                   SIMVUE_OFFLINE_DIRECTORY=str(tmp_path / "offline"))  # fmt: skip
        ledger = tmp_path / "ledger.jsonl"
        done = subprocess.run(
            [sys.executable, "-c", ONLINE_RUN, str(ledger), "restarting", "/soak-502", "50"],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert proxy.applied["502"] == 1
        assert done.returncode == 0, done.stderr
        with SimvueClient(server.url, server.token) as client:
            (run,) = client.find_runs(["name == restarting", "folder.path == /soak-502"])
            points = client.get_metrics(str(run["id"]), ["x"])["x"]
        assert sorted(int(p["step"]) for p in points) == list(range(50))
    finally:
        proxy.close()
        stop_server(server)
