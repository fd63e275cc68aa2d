"""Delivery when the server holds back: one endpoint answering 503 holds back neither the
other endpoints nor the run's final status, the last retry is made before the close deadline,
and a worker held by a slow POST keeps about a second of data in memory (the rest goes to the
spool). Faults come from the recording proxy (tests/proxy.py) in front of the local server."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from simvue_otel._internal.client import SimvueClient
from simvue_otel._internal.mapping.records import EventRecord, MetricRecord, RunRecord, RunRef
from simvue_otel._internal.sink.online import OnlineSink
from tests.helpers import LocalServer, poll
from tests.proxy import Proxy


def wait_for(what: Callable[[], Any], timeout: float = 60.0) -> None:
    """Poll until ``what()`` is true (a deadline only against hanging forever)."""
    assert poll(what, bool, timeout, interval=0.02), "the condition never came true"


def points(ref: RunRef, n: int, start: int = 0) -> list[MetricRecord]:
    now = time.time()
    return [MetricRecord(ref, {"x": float(i)}, i, 0.0, now) for i in range(start, start + n)]


def held(local_server: LocalServer, key: str) -> tuple[dict[str, Any], Counter[int], list[str]]:
    """The run with this key as the server has it: the run, its steps of x, its events."""
    with SimvueClient(local_server.url, local_server.token) as reader:
        run = reader.find_run_by_key(key)
        assert run is not None, "the run never reached the server"
        steps = Counter(p["step"] for p in reader.get_metrics(run["id"], ["x"]).get("x", []))
        events = [e["message"] for e in reader.get_events(run["id"])]
        return reader.get_run(run["id"]), steps, events


def test_an_events_endpoint_failing_five_times_holds_back_nothing_else(
    proxy: Proxy, local_server: LocalServer, tmp_path: Path
) -> None:
    """Five 503s on the events endpoint: the metrics of that batch and of the next, and the
    run's final status, arrive all the same; the events arrive with the last try, which is
    made before the close deadline instead of being abandoned in its backoff."""
    proxy.rules = [("POST", "/api/events", 503)] * 5
    ref = RunRef(f"shutdown-{uuid.uuid4().hex}", "shutdown-503", "/shutdown")
    client = SimvueClient(proxy.url, local_server.token, retries=0)
    sink = OnlineSink(client, tmp_path / "spool", flush_interval=0.05)
    began = time.time()
    first = [RunRecord(ref, "running", began, started=began), *points(ref, 100)]
    first += [EventRecord(ref, f"event {i}", began) for i in range(3)]
    sink.submit(first)
    wait_for(lambda: proxy.applied["503"] >= 1)  # the events endpoint refused the first batch
    ended = time.time()
    sink.submit([*points(ref, 100, 100), RunRecord(ref, "completed", ended, ended=ended)])
    delivered = sink.close(timeout=15.0)
    run, steps, events = held(local_server, ref.key)
    assert steps == Counter(range(200))
    assert run["status"] == "completed"
    assert sorted(events) == ["event 0", "event 1", "event 2"]
    tries = [r.status for r in proxy.requests if (r.method, r.path) == ("POST", "/api/events")]
    assert tries == [503] * 5 + [200]
    assert delivered, "something was left for `simvue-otel send`"


def test_a_worker_held_by_a_slow_post_keeps_about_a_second_in_memory(
    proxy: Proxy, local_server: LocalServer, tmp_path: Path
) -> None:
    """While the worker waits on a POST the server answers after 5 s, the producer goes on
    logging: after each call the memory holds only what was logged in the last
    ``hold_seconds`` (the rest is on disk), and everything arrives once."""
    proxy.late_seconds = 5.0
    proxy.rules = [("POST", "/api/metrics", "late")]
    ref = RunRef(f"held-{uuid.uuid4().hex}", "held-worker", "/shutdown")
    client = SimvueClient(proxy.url, local_server.token, retries=0, timeout=60.0)
    sink = OnlineSink(client, tmp_path / "spool", flush_interval=0.05, hold_seconds=1.0)
    try:
        sink.submit(points(ref, 10))  # the worker takes these, and their POST holds it
        wait_for(lambda: proxy.applied["late"] == 1)
        logged: list[tuple[float, int]] = []  # (time a call returned, values it logged)
        step = 10
        start = time.monotonic()
        while time.monotonic() - start < 2.5:
            before = time.monotonic()
            sink.submit(points(ref, 10, step))
            logged.append((time.monotonic(), 10))
            step += 10
            recent = sum(n for t, n in logged if t > before - sink.hold_seconds)
            assert sink._buffered <= recent, "memory holds data older than hold_seconds"
            time.sleep(0.02)
        assert all(r.path != "/api/metrics" for r in proxy.requests), (
            "the slow POST was answered while the producer logged: the test proved nothing"
        )
        assert sink._spill_seq >= 1, "what waited past hold_seconds went to the spool"
    finally:
        assert sink.close(timeout=60.0)
    _, steps, _ = held(local_server, ref.key)
    assert steps == Counter(range(step))
