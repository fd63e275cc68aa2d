"""A `Run` whose only exporters are OTLP exporters pointed at `simvue-otel bridge`: the run is
live on the server within seconds, updates land while it goes, the final status is right."""

from __future__ import annotations

import functools
import uuid
from pathlib import Path

import pytest

from simvue_otel import Run
from simvue_otel._internal.client import SimvueClient
from tests.helpers import Bridge, LocalServer, newest_run, poll

_poll = functools.partial(poll, ok=bool)
"""The suite's `poll`, waiting for an answer that is true (a run found, a condition met)."""


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_run_over_otlp_is_live_and_ends_right(
    local_server: LocalServer,
    bridge: Bridge,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    protocol: str,
) -> None:
    for name in ("SIMVUE_URL", "SIMVUE_TOKEN"):
        monkeypatch.delenv(name, raising=False)  # the run needs no Simvue server of its own
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    endpoint = bridge.url if protocol == "http/protobuf" else f"http://{bridge.grpc}"
    folder = f"/otlp-run/{uuid.uuid4().hex[:8]}"
    with SimvueClient(local_server.url, local_server.token) as client:
        with Run(mode="otlp", otlp_endpoint=endpoint) as run:
            run.init(
                name="over-otlp", folder=folder, tags=["a"], metadata={"grid": 64},
                resources_metrics_interval=None,
            )  # fmt: skip
            found = _poll(lambda: newest_run(client, "over-otlp", folder))
            assert found is not None, "the run showed up while it goes"
            assert found["status"] == "running"
            run.update_tags(["b"])
            run.update_metadata({"stage": "solve"})
            updated = _poll(lambda: "b" in client.get_run(found["id"])["tags"])
            assert updated, "tag update landed while the run goes"
            for step in range(2000):
                run.log_metrics({"residual": 1.0 / (step + 1)})
            run.log_event("solver finished")
        final = _poll(lambda: client.get_run(found["id"])["status"] == "completed")
        assert final, client.get_run(found["id"])
        state = client.get_run(found["id"])
        assert state["tags"] == ["a", "b"]
        assert state["metadata"]["grid"] == 64 and state["metadata"]["stage"] == "solve"
        points = _poll(
            lambda: len(client.get_metrics(found["id"], ["residual"]).get("residual", [])) == 2000
        )
        assert points, "every point arrived"
        # The last event may travel in a later batch than the last point: poll for it too.
        events = _poll(lambda: [e["message"] for e in client.get_events(found["id"])])
        assert events == ["solver finished"]


def test_failed_run_over_otlp(
    local_server: LocalServer, bridge: Bridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_PROTOCOL", raising=False)
    folder = f"/otlp-run/{uuid.uuid4().hex[:8]}"
    with pytest.raises(RuntimeError), Run(mode="otlp", otlp_endpoint=bridge.url) as run:
        run.init(name="fails-over-otlp", folder=folder, resources_metrics_interval=None)
        raise RuntimeError("diverged")
    with SimvueClient(local_server.url, local_server.token) as client:
        found = _poll(lambda: newest_run(client, "fails-over-otlp", folder))
        assert found is not None
        assert _poll(lambda: client.get_run(found["id"])["status"] == "failed")
        # The error event comes through the logs exporter, the status through the spans one:
        # either may reach the bridge first.
        messages: list[str] = []

        def said() -> bool:
            messages[:] = [e["message"] for e in client.get_events(found["id"])]
            return any(m.startswith("RuntimeError: diverged") for m in messages)

        assert _poll(said), messages
