"""Instrument steps across bridge processes: a bridge killed and restarted mid-run, a run
moved to another replica, and a spool adopted by a restarted bridge all continue a run's
steps (conventions §7), never repeating one, with times measured from the run's start.

The telemetry comes from the OTel SDK's own OTLP exporter; each export is one step.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.metrics import Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource

from simvue_otel._internal.client import SimvueClient, parse_timestamp
from tests.helpers import Bridge, LocalServer, start_bridge, start_server, stop_server
from tests.helpers.bridges import bridge_poll, drained


class Exports:
    """One app's meter provider, exporting to one bridge each time :meth:`export` is called
    and once more when closed (the SDK's last export, of the last value). ``values`` is shared
    between the providers of one run, so it lists every exported value in order."""

    def __init__(self, key: str, bridge: Bridge, values: list[float]) -> None:
        resource = Resource.create({"simvue.run.key": key, "simvue.run.name": "steps"})
        exporter = OTLPMetricExporter(endpoint=f"{bridge.url}/v1/metrics", timeout=10)
        self.reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
        self.provider = MeterProvider(resource=resource, metric_readers=[self.reader])
        self.values = values
        meter = self.provider.get_meter("steps")
        self.current = 0.0
        meter.create_observable_gauge(
            "temperature", callbacks=[lambda _options: [Observation(self.current)]]
        )

    def export(self, value: float) -> None:
        self.current = value
        self.values.append(value)
        assert self.provider.force_flush(timeout_millis=15_000)
        time.sleep(0.02)  # distinct export times

    def close(self) -> None:
        self.values.append(self.current)
        self.provider.shutdown(timeout_millis=5_000)


def points(client: SimvueClient, key: str, count: int) -> list[dict[str, Any]]:
    """The run's `temperature` points once it holds `count` of them, by step."""

    def fetch() -> list[dict[str, Any]]:
        found = client.find_run_by_key(key)
        assert found is not None
        return client.get_metrics(str(found["id"]), ["temperature"]).get("temperature", [])

    held = bridge_poll(fetch, lambda p: len(p) >= count, 30) or []
    return sorted(held, key=lambda p: p["step"])


def assert_continuous(held: list[dict[str, Any]], values: list[float]) -> None:
    """Steps 0..n-1, once each, with the values in export order and times going forward."""
    assert [p["step"] for p in held] == list(range(len(values))), held
    assert [p["value"] for p in held] == values
    stamps = [parse_timestamp(p["timestamp"]) for p in held]
    assert stamps == sorted(stamps)
    times = [p["time"] for p in held]
    assert times == sorted(times), f"time went backwards: {times}"


def test_a_bridge_killed_and_restarted_mid_run_continues_the_steps(
    local_server: LocalServer, client: SimvueClient, tmp_path: Path
) -> None:
    key = str(uuid.uuid4())
    first = start_bridge(tmp_path, local_server)
    values: list[float] = []
    app = Exports(key, first, values)
    try:
        for value in (10.0, 11.0, 12.0):
            app.export(value)
        drained(first)
    finally:
        app.close()
        first.process.kill()  # kill -9: no drain, no goodbye
        first.process.wait()
    again = start_bridge(tmp_path, local_server)  # the same spool folder
    app = Exports(key, again, values)
    try:
        for value in (13.0, 14.0):
            app.export(value)
    finally:
        app.close()
        drained(again)
        again.stop()
    assert values == [10.0, 11.0, 12.0, 12.0, 13.0, 14.0, 14.0]
    assert_continuous(points(client, key, len(values)), values)


def test_a_restarted_bridge_adopting_an_unsent_spool_continues_the_steps(
    tmp_path: Path,
) -> None:
    """The first bridge never reached the server (its points wait in the spool) and is killed;
    the restarted bridge uploads them first, then continues from them."""
    server = start_server(tmp_path / "server")
    key = str(uuid.uuid4())
    bridge = start_bridge(tmp_path / "bridge", server)
    stop_server(server)
    values: list[float] = []
    app = Exports(key, bridge, values)
    try:
        for value in (1.0, 2.0, 3.0):
            app.export(value)
    finally:
        app.close()
        bridge.process.kill()
        bridge.process.wait()
    port = int(server.url.rsplit(":", 1)[1])
    server = start_server(tmp_path / "server", port=port, first_token=server.token)
    try:
        again = start_bridge(tmp_path / "bridge", server)
        app = Exports(key, again, values)
        try:
            for value in (4.0, 5.0):
                app.export(value)
        finally:
            app.close()
            drained(again)
            again.stop()
        with SimvueClient(server.url, server.token, retries=2) as client:
            assert_continuous(points(client, key, len(values)), values)
    finally:
        stop_server(server)


def test_a_run_moved_to_another_replica_continues_the_steps(
    local_server: LocalServer, client: SimvueClient, tmp_path: Path
) -> None:
    """Replica one serves the run, then the gateway sends it to replica two (another spool,
    another process): replica two continues from what the server holds."""
    key = str(uuid.uuid4())
    one = start_bridge(tmp_path / "one", local_server)
    two = start_bridge(tmp_path / "two", local_server)
    try:
        values: list[float] = []
        app = Exports(key, one, values)
        for value in (0.5, 1.5, 2.5):
            app.export(value)
        app.close()
        drained(one)
        app = Exports(key, two, values)
        for value in (3.5, 4.5, 5.5):
            app.export(value)
        app.close()
        drained(two)
    finally:
        one.stop()
        two.stop()
    held = points(client, key, len(values))
    assert_continuous(held, values)
    found = client.find_run_by_key(key)
    assert found is not None
    run = client.get_run(str(found["id"]))
    started = parse_timestamp(run["started"])
    for point in held:  # every time is measured from the run's start, whichever replica
        assert point["time"] == pytest.approx(
            parse_timestamp(point["timestamp"]) - started, abs=0.05
        )
