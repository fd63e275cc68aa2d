"""What an operator sees of a bridge: Prometheus metrics at ``GET /metrics`` that count exactly
what senders sent (official OTel SDK exporters over OTLP/HTTP and gRPC), who may read them, and
structured log lines (start, adoption of a spool left by a killed bridge, each request at debug,
shutdown) that name the replica and the runs.

Real bridge subprocesses and the real local server, on loopback.
"""

from __future__ import annotations

import re
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from simvue_otel._internal.client import SimvueClient
from tests.helpers import (
    Bridge,
    LocalServer,
    run_program,
    run_state,
    start_bridge,
    start_server,
    stop_server,
)
from tests.helpers.bridges import bridge_poll, drained
from tests.helpers.otlp import otlp_app, run_request

PROTOBUF = {"Content-Type": "application/x-protobuf"}
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(bridge: Bridge, headers: dict[str, str] | None = None) -> Samples:
    """Every sample of the bridge's /metrics: {(name, sorted labels): value}."""
    reply = requests.get(bridge.url + "/metrics", headers=headers or {}, timeout=10)
    assert reply.status_code == 200, reply.text
    assert reply.headers["Content-Type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(reply.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((f"simvue_otel_bridge_{name}", tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def debug_bridge(local_server: LocalServer, tmp_path: Path) -> Iterator[Bridge]:
    bridge = start_bridge(tmp_path / "bridge", local_server, extra=["--log-level", "debug"])
    yield bridge
    bridge.stop()


# -- /metrics ------------------------------------------------------------------------------


def test_metrics_count_exactly_what_senders_sent(
    debug_bridge: Bridge, client: SimvueClient
) -> None:
    before = scrape(debug_bridge)
    assert value(before, "runs_seen_total") == 0
    assert value(before, "backlog_batches") == 0
    info = [k for k in before if k[0] == "simvue_otel_bridge_info"]
    assert len(info) == 1 and dict(info[0][1])["mode"] == "online"
    assert dict(info[0][1])["replica"].endswith(f":{debug_bridge.process.pid}")

    folder = f"/bridge/metrics-{uuid.uuid4().hex[:8]}"
    keys = []
    for kind in ("proto", "grpc"):
        app = otlp_app(kind, f"metrics-{kind}", folder, debug_bridge)
        run_program(app)  # 50 metric records + 2 events (log records), 2 spans, 1 counter
        app.logger.emit(body="not a map", event_name="simvue.metrics")  # skipped: refused
        app.close()
        keys.append(app.key)
    refused = requests.post(debug_bridge.url + "/v1/traces", data=b"x", timeout=10,
                            headers={"Content-Type": "text/plain"})  # fmt: skip
    assert refused.status_code == 415
    drained(debug_bridge)
    for key in keys:
        state = bridge_poll(
            lambda k=key: run_state(client, k), lambda s: s["status"] == "completed", 20
        )
        assert state is not None and len(state["metrics"]["loss"]) == 50

    after = bridge_poll(
        lambda: scrape(debug_bridge),
        lambda s: value(s, "uploaded_total", kind="points") >= 200,
        20,
    )
    assert after is not None
    for signal_name, accepted, refused_items in (("logs", 104, 2), ("traces", 4, 0)):
        assert value(after, "items_total", signal=signal_name, outcome="accepted") == accepted
        assert value(after, "items_total", signal=signal_name, outcome="refused") == refused_items
    assert value(after, "items_total", signal="metrics", outcome="accepted") >= 2
    for transport in ("http", "grpc"):
        for signal_name in ("logs", "traces", "metrics"):
            code = "200" if transport == "http" else "OK"
            counted = value(after, "requests_total", transport=transport, signal=signal_name,
                            code=code)  # fmt: skip
            assert counted >= 1, (transport, signal_name)
            timed = value(after, "request_duration_seconds_count", transport=transport,
                          signal=signal_name)  # fmt: skip
            assert timed >= counted
    assert value(after, "requests_total", transport="http", signal="traces", code="415") == 1
    assert value(after, "runs_seen_total") == 2
    assert value(after, "runs_tracked") == 2
    # 2 runs x 50 records x 2 values, and the counter's values
    assert value(after, "mapped_total", kind="points") >= 200
    assert value(after, "mapped_total", kind="events") >= 2 * 3  # 2 log events + 1 span each
    assert value(after, "uploaded_total", kind="points") == value(
        after, "mapped_total", kind="points"
    )
    assert value(after, "backlog_batches") == 0
    assert value(after, "backlog_bytes") == 0
    assert value(after, "backed_up") == 0
    assert value(after, "runs_created_total") == 2
    assert value(after, "lost_records_total") == 0
    assert value(after, "server_rejected_records_total") == 0


def test_a_resent_request_is_counted_as_resent(debug_bridge: Bridge) -> None:
    body = run_request(str(uuid.uuid4()), "/bridge/resent-metrics").SerializeToString()
    for _ in range(2):
        reply = requests.post(debug_bridge.url + "/v1/traces", data=body, headers=PROTOBUF,
                              timeout=10)  # fmt: skip
        assert reply.status_code == 200
    samples = scrape(debug_bridge)
    assert value(samples, "items_total", signal="traces", outcome="accepted") == 4
    assert value(samples, "resent_items_total", signal="traces") == 2


def test_metrics_need_a_token_when_the_bridge_has_one(
    local_server: LocalServer, tmp_path: Path
) -> None:
    scraper = {"SIMVUE_OTEL_BRIDGE_METRICS_TOKEN": "scrape-only"}
    bridge = start_bridge(tmp_path / "bridge", local_server, token="s3cret", env_extra=scraper)
    try:
        for header in (None, "Bearer nope", "s3cret", "Bearer "):
            headers = {"Authorization": header} if header is not None else {}
            reply = requests.get(bridge.url + "/metrics", headers=headers, timeout=10)
            assert reply.status_code == 401, header
            assert reply.headers["WWW-Authenticate"] == "Bearer"
            assert "s3cret" not in reply.text and "scrape-only" not in reply.text
        for token in ("s3cret", "scrape-only"):
            assert scrape(bridge, {"Authorization": f"Bearer {token}"})
        # the metrics token is for reading only: it cannot send telemetry
        body = run_request(str(uuid.uuid4()), "/bridge/never").SerializeToString()
        headers = {**PROTOBUF, "Authorization": "Bearer scrape-only"}
        sent = requests.post(bridge.url + "/v1/traces", data=body, headers=headers, timeout=10)
        assert sent.status_code == 401
        samples = scrape(bridge, {"Authorization": "Bearer scrape-only"})
        assert value(samples, "requests_total", transport="http", signal="traces", code="401") == 1
        assert requests.get(bridge.url + "/health", timeout=10).status_code == 200  # still open
    finally:
        bridge.stop()


# -- log lines -----------------------------------------------------------------------------


def _lines(bridge: Bridge, event: str) -> list[str]:
    return [line for line in bridge.log.read_text().splitlines() if f": {event} " in line]


def test_log_lines_name_the_replica_each_request_and_the_shutdown(
    local_server: LocalServer, tmp_path: Path
) -> None:
    bridge = start_bridge(tmp_path / "bridge", local_server, extra=["--log-level", "debug"])
    replica = f":{bridge.process.pid} "
    try:
        (start,) = _lines(bridge, "start")
        assert " INFO simvue_otel.bridge: start replica=" in start
        assert replica in start and "mode=online" in start and "token=none" in start
        app = otlp_app("proto", "logged", f"/bridge/logged-{uuid.uuid4().hex[:8]}", bridge)
        run_program(app, n_steps=5)
        app.logger.emit(body=7, event_name="simvue.metrics")
        app.close()
        drained(bridge)
    finally:
        assert bridge.stop() == 0
    requests_logged = _lines(bridge, "request")
    logs_line = [r for r in requests_logged if "signal=logs" in r]
    assert len(logs_line) == 1, requests_logged
    fields = dict(re.findall(r"(\w+)=(\S+)", logs_line[0].split(": request ", 1)[1]))
    assert fields["transport"] == "http" and fields["code"] == "200"
    assert fields["items"] == "8" and fields["accepted"] == "7" and fields["refused"] == "1"
    assert fields["points"] == "10" and fields["events"] == "2"
    assert fields["runs"] == app.key
    assert float(fields["latency_ms"]) >= 0
    assert "refused_because=" in logs_line[0] and "not a map" in logs_line[0]
    assert " DEBUG simvue_otel.bridge: request " in logs_line[0]
    (done,) = [s for s in _lines(bridge, "shutdown") if "stage=done" in s]
    assert replica in done and "delivered=true" in done and "runs_seen=1" in done
    assert "Traceback" not in bridge.log.read_text()


def test_a_restarted_bridge_says_it_adopts_what_a_killed_one_left(tmp_path: Path) -> None:
    server = start_server(tmp_path / "srv")
    port = int(server.url.rsplit(":", 1)[1])
    stop_server(server)  # the server is away: the first bridge can only spool
    first = start_bridge(tmp_path / "bridge", server, extra=["--log-level", "info"])
    app = otlp_app("proto", "adopted", f"/bridge/adopted-{uuid.uuid4().hex[:8]}", first)
    run_program(app, n_steps=20)
    app.close()
    assert value(scrape(first), "backlog_batches") >= 1
    assert value(scrape(first), "backlog_bytes") > 0

    def unreachable(samples: Samples) -> bool:
        return value(samples, "upload_failures_total", reason="unreachable") >= 1

    failed = bridge_poll(lambda: scrape(first), unreachable, 20)
    assert failed is not None and unreachable(failed)
    assert value(failed, "upload_failures_total", reason="token") == 0
    assert value(failed, "upload_duration_seconds_count") == 0  # nothing got there
    assert not _lines(first, "adopt")
    first.process.send_signal(signal.SIGKILL)
    first.process.wait()
    server = start_server(tmp_path / "srv", port=port, db=server.db, first_token=server.token)
    second = start_bridge(tmp_path / "bridge", server, extra=["--log-level", "info"])
    try:
        (adopt,) = _lines(second, "adopt")
        assert f":{second.process.pid} " in adopt
        assert re.search(r"segments=[1-9]\d* bytes=[1-9]\d*", adopt), adopt
        with SimvueClient(server.url, server.token, retries=2) as c:
            state = bridge_poll(lambda: run_state(c, app.key),
                         lambda s: len(s["metrics"].get("loss", [])) == 20, 30)  # fmt: skip
            assert state is not None and state["status"] == "completed"
        drained(second)
        samples = scrape(second)
        assert value(samples, "uploaded_total", kind="points") >= 40  # what the first took
        assert value(samples, "runs_seen_total") == 0  # no sender has talked to this one
        uploaded = value(samples, "upload_duration_seconds_count")
        assert uploaded >= 1 and value(samples, "upload_duration_seconds_sum") > 0
        assert value(samples, "upload_duration_seconds_bucket", le="+Inf") == uploaded
        assert value(samples, "upload_failures_total", reason="unreachable") == 0
    finally:
        second.stop()
        stop_server(server)
