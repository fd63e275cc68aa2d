"""Our REST client against the real local server, and its retry rules against scripted
loopback HTTP servers (503/429/400 answers, connection refused)."""

from __future__ import annotations

import http.server
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from simvue_otel import (
    AuthenticationError,
    NotFoundError,
    ServerError,
    ServerUnreachableError,
    SimvueHTTPError,
)
from simvue_otel._internal.client import (
    SimvueClient,
    format_timestamp,
    maybe_delivered,
    parse_timestamp,
)
from tests.helpers import LocalServer, free_port, newest_run


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def test_version_and_whoami(client: SimvueClient) -> None:
    assert client.version().startswith("1.")
    assert client.whoami()["username"]


def test_run_lifecycle_round_trip(client: SimvueClient) -> None:
    folder = f"/client/{unique('f')}"
    name = unique("run")
    created = client.create_run(
        name=name,
        folder=folder,
        description="a description",
        tags=["a", "b"],
        metadata={"solver": {"tol": 1e-6}, "n": 3},
        status="created",
        visibility={"public": False, "tenant": True, "users": []},
        ttl=3600,
        heartbeat_timeout=60,
    )
    run_id = created
    run = client.get_run(run_id)
    assert (run["name"], run["folder"], run["status"]) == (name, folder, "created")
    assert run["description"] == "a description"
    assert run["tags"] == ["a", "b"]
    assert run["metadata"] == {"solver": {"tol": 1e-6}, "n": 3}
    assert run["visibility"] == {"public": False, "tenant": True, "users": []}
    assert (run["ttl"], run["heartbeat_timeout"]) == (3600, 60)
    assert client.find_folder(folder) is not None

    client.update_run(run_id, status="running")
    client.update_run(run_id, tags=["a", "b", "c"])
    client.update_metadata(run_id, {"n": 4, "extra": "x"})
    client.heartbeat(run_id)
    assert client.abort_requested(run_id) is False
    run = client.get_run(run_id)
    assert run["status"] == "running"
    assert run["tags"] == ["a", "b", "c"]
    assert run["metadata"] == {"solver": {"tol": 1e-6}, "n": 4, "extra": "x"}
    client.update_run(run_id, tags=["only"])
    client.set_status(run_id, "completed")
    run = client.get_run(run_id)
    assert run["tags"] == ["only"] and run["status"] == "completed"
    assert run["endtime"] is not None

    found = newest_run(client, name, folder)
    assert found is not None and found["id"] == run_id
    assert newest_run(client, unique("absent")) is None


def test_runs_are_found_by_run_key_with_the_metadata_filter(client: SimvueClient) -> None:
    key = str(uuid.uuid4())
    run_id = client.create_run(
        name=unique("keyed"), folder="/client/keys", metadata={"simvue_otel_run_key": key}
    )
    found = client.find_run_by_key(key)
    assert found is not None and found["id"] == run_id
    assert client.find_run_by_key(str(uuid.uuid4())) is None


def test_metrics_and_events_round_trip(client: SimvueClient) -> None:
    run_id = client.create_run(name=unique("data"), folder="/client/data")
    t0 = 1_700_000_000.25
    points = [
        {"values": {"x": float(i), "y": i * 2}, "step": i, "time": i * 0.5,
         "timestamp": format_timestamp(t0 + i)}
        for i in range(50)
    ]  # fmt: skip
    client.post_metrics(run_id, points)
    events = [{"message": f"e{i}", "timestamp": format_timestamp(t0 + i)} for i in range(7)]
    client.post_events(run_id, events)

    assert sorted(client.metric_names(run_id)) == ["x", "y"]
    got = client.get_metrics(run_id)
    assert [p["step"] for p in got["x"]] == list(range(50))
    assert [p["value"] for p in got["y"]] == [i * 2 for i in range(50)]
    assert got["x"][3]["time"] == 1.5
    assert parse_timestamp(got["x"][3]["timestamp"]) == pytest.approx(t0 + 3, abs=1e-6)
    assert [e["message"] for e in client.get_events(run_id, page=3)] == [f"e{i}" for i in range(7)]


def test_batches_over_the_official_limit_are_refused_before_sending(client: SimvueClient) -> None:
    run_id = client.create_run(name=unique("big"), folder="/client/data")
    points = [{"values": {"x": 1.0}, "step": i, "time": 0.0} for i in range(16_001)]
    with pytest.raises(ValueError, match="16,000"):
        client.post_metrics(run_id, points)
    assert client.metric_names(run_id) == []


def test_http_errors_become_clear_exceptions(local_server: LocalServer) -> None:
    with SimvueClient(local_server.url, "not-a-token", retries=0) as bad:
        with pytest.raises(AuthenticationError) as err:
            bad.whoami()
        assert err.value.status_code == 401
        assert "not-a-token" not in str(err.value)
        assert "SIMVUE_TOKEN" in str(err.value)
    with SimvueClient(local_server.url, local_server.token, retries=0) as client:
        with pytest.raises(NotFoundError):
            client.get_run("NoSuchRunIdAtAllHere00")
        with pytest.raises(SimvueHTTPError) as err422:
            client.post_metrics("NoSuchRunIdAtAllHere00", [{"values": {"a": 1}, "step": 0}])
        assert err422.value.status_code in (404, 422)


def test_timestamp_format_is_simvue_shape() -> None:
    assert format_timestamp(0.5) == "1970-01-01T00:00:00.500000"
    assert parse_timestamp("1970-01-01T00:00:01.250000") == 1.25


# -- retries against scripted servers ---------------------------------------------------------


class Script:
    """A loopback HTTP server answering a scripted sequence of (status, headers) replies."""

    def __init__(self, replies: list[tuple[int, dict[str, str]]]) -> None:
        self.replies = list(replies)
        self.seen: list[tuple[str, float]] = []
        self.delay = 0.0  # seconds before answering (a server slower than the client waits)
        script = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _reply(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                script.seen.append((self.command, time.monotonic()))
                if script.delay:
                    time.sleep(script.delay)
                status, headers = script.replies.pop(0) if script.replies else (200, {})
                body = b'{"detail": "scripted"}' if status != 200 else b'{"version": "1.0"}'
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = _reply

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def scripted() -> Iterator[Any]:
    made: list[Script] = []

    def make(replies: list[tuple[int, dict[str, str]]]) -> Script:
        made.append(Script(replies))
        return made[-1]

    yield make
    for s in made:
        s.close()


@pytest.mark.parametrize("status", [502, 503, 504, 429])
def test_transient_statuses_are_retried(scripted: Any, status: int) -> None:
    script = scripted([(status, {}), (status, {})])
    client = SimvueClient(script.url, "t", retries=3, backoff=0.01)
    assert client.version() == "1.0"
    assert len(script.seen) == 3


def test_retry_after_is_honoured(scripted: Any) -> None:
    script = scripted([(429, {"Retry-After": "1"})])
    client = SimvueClient(script.url, "t", retries=2, backoff=0.01)
    assert client.version() == "1.0"
    (_, first), (_, second) = script.seen
    assert second - first >= 0.95


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 413, 422])
def test_other_4xx_are_never_retried(scripted: Any, status: int) -> None:
    script = scripted([(status, {})])
    client = SimvueClient(script.url, "t", retries=5, backoff=0.01)
    with pytest.raises(SimvueHTTPError) as err:
        client.version()
    assert err.value.status_code == status
    assert err.value.detail == "scripted"
    assert len(script.seen) == 1


def test_persistent_5xx_raises_server_error_after_retries(scripted: Any) -> None:
    script = scripted([(503, {})] * 10)
    client = SimvueClient(script.url, "t", retries=2, backoff=0.01)
    with pytest.raises(ServerError) as err:
        client.version()
    assert err.value.status_code == 503
    assert len(script.seen) == 3


def test_connection_refused_raises_unreachable_after_retries() -> None:
    port = free_port()  # nothing listens here
    client = SimvueClient(f"http://127.0.0.1:{port}", "secret-token", retries=2, backoff=0.01)
    with pytest.raises(ServerUnreachableError) as err:
        client.version()
    assert f"127.0.0.1:{port}" in str(err.value)
    assert "secret-token" not in str(err.value) and "secret-token" not in repr(client)


def test_backoff_grows_exponentially_with_jitter(
    scripted: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = scripted([(503, {})] * 4)
    sleeps: list[float] = []
    monkeypatch.setattr("simvue_otel._internal.client.time.sleep", sleeps.append)
    bounds: list[tuple[float, float]] = []
    monkeypatch.setattr(
        "simvue_otel._internal.client.random.uniform",
        lambda lo, hi: bounds.append((lo, hi)) or hi,
    )
    client = SimvueClient(script.url, "t", retries=4, backoff=0.5, max_backoff=2.0)
    assert client.version() == "1.0"
    assert bounds == [(0, 0.5), (0, 1.0), (0, 2.0), (0, 2.0)]
    assert sleeps == [0.5, 1.0, 2.0, 2.0]


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_a_data_post_answered_5xx_is_not_repeated_and_may_be_stored(
    scripted: Any, status: int
) -> None:
    """The server may have stored it before the 5xx: the uploader reconciles, not the client."""
    script = scripted([(status, {})] * 3)
    client = SimvueClient(script.url, "t", retries=3, backoff=0.01)
    with pytest.raises(SimvueHTTPError) as err:
        client.post_metrics("r" * 22, [{"values": {"x": 1.0}, "step": 0, "time": 0.0}])
    assert len(script.seen) == 1
    assert maybe_delivered(err.value)


def test_a_data_post_answered_429_is_retried(scripted: Any) -> None:
    script = scripted([(429, {"Retry-After": "0"})])
    client = SimvueClient(script.url, "t", retries=3, backoff=0.01)
    client.post_events("r" * 22, [{"message": "m", "timestamp": format_timestamp(0.0)}])
    assert [method for method, _ in script.seen] == ["POST", "POST"]


def test_a_refused_connection_proves_nothing_was_delivered() -> None:
    client = SimvueClient(f"http://127.0.0.1:{free_port()}", "t", retries=1, backoff=0.01)
    with pytest.raises(ServerUnreachableError) as err:
        client.create_run(name="never", folder="/")
    assert err.value.never_sent and not maybe_delivered(err.value)


def test_a_data_post_whose_answer_never_comes_may_be_stored(scripted: Any) -> None:
    script = scripted([(200, {})])
    client = SimvueClient(script.url, "t", retries=3, backoff=0.01, timeout=0.5)
    script.delay = 2.0
    with pytest.raises(ServerUnreachableError) as err:
        client.post_metrics("r" * 22, [{"values": {"x": 1.0}, "step": 0, "time": 0.0}])
    assert len(script.seen) == 1 and maybe_delivered(err.value)
