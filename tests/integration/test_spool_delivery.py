"""The spool delivers what it holds whatever happens to it: a damaged frame costs only itself,
and one segment is never uploaded by two processes at once (a `send` beside a live bridge or
an online run that spilled, two bridges sharing one spool directory), so every point reaches
the server exactly once. Checked against a real local server through its API."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from simvue_otel._internal.client import SimvueClient
from simvue_otel._internal.mapping.records import (
    MetricRecord,
)
from simvue_otel._internal.sink.spool import SpoolReader
from tests.conftest import LocalServer
from tests.proxy import Proxy, serve

SEND = [sys.executable, "-m", "simvue_otel", "send", "--quiet", "--cache"]


@pytest.fixture
def proxy(local_server: LocalServer) -> Iterator[Proxy]:
    yield from serve(local_server.url)


def _env(url: str, token: str, offline: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIMVUE_", "OTEL_"))}
    env.update(SIMVUE_URL=url, SIMVUE_TOKEN=token, SIMVUE_OFFLINE_DIRECTORY=str(offline))
    env.update(extra)
    return env


def _one_run(client: SimvueClient, name: str, folder: str) -> dict[str, object]:
    found = client.find_runs([f"name == {name}", f"folder.path == {folder}"])
    assert len(found) == 1, f"expected one run {name!r}, found {len(found)}"
    return client.get_run(str(found[0]["id"]))


def _steps(client: SimvueClient, run_id: str, metric: str) -> Counter[int]:
    return Counter(int(p["step"]) for p in client.get_metrics(run_id, [metric]).get(metric, []))


def _wait(condition: object, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


# -- 1. a damaged frame costs only itself ---------------------------------------------------


def test_garbage_in_one_frame_costs_only_that_frame(
    local_server: LocalServer, client: SimvueClient, tmp_path: Path
) -> None:
    """16 garbage bytes written into frame 2 of an offline run's many frames: `send` delivers
    every other frame's points, gives the run a loss event naming what was lost, leaves it
    `completed`, names the run and exits non-zero."""
    name, folder = f"damaged-{uuid.uuid4().hex[:8]}", "/spool-damage"
    offline = tmp_path / "offline"
    env = _env(local_server.url, local_server.token, offline)
    code = f"""
        from simvue_otel import Run
        with Run(mode="offline") as run:
            run.init(name={name!r}, folder={folder!r}, resources_metrics_interval=None)
            for step in range(4000):
                run.log_metrics({{"x": float(step)}})
                if step % 50 == 49:
                    run._pipeline.flush()  # one spool frame per 50 points
        """
    subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, check=True, timeout=180)
    spool = offline / "otel-spool"
    reader = SpoolReader(spool)
    (segment,) = reader.segments()
    frames = list(reader.frames(segment))
    assert len(frames) > 60
    with_points = [f for f in frames if any(isinstance(r, MetricRecord) for r in f.records)]
    hit = with_points[2]
    lost = {r.step for r in hit.records if isinstance(r, MetricRecord)}
    assert len(lost) == 50
    data = segment.read_bytes()
    at = hit.end - 20  # inside the frame's records, past its table of runs
    segment.write_bytes(data[:at] + os.urandom(16) + data[at:])

    out = subprocess.run(
        [*SEND, str(offline)], env=env, capture_output=True, text=True, timeout=180
    )
    assert out.returncode == 3, out.stderr
    assert name in out.stderr and "50 record(s)" in out.stderr, out.stderr
    run = _one_run(client, name, folder)
    assert run["status"] == "completed"
    steps = _steps(client, str(run["id"]), "x")
    assert set(steps) == set(range(4000)) - lost
    assert max(steps.values()) == 1
    losses = [e["message"] for e in client.get_events(str(run["id"]))]
    assert [m for m in losses if m.startswith("simvue-otel lost data: 50 record(s)")], losses
    # The damaged bytes are kept aside; the rest of the segment was sent and deleted.
    (corrupt,) = spool.glob("*.corrupt")
    assert corrupt.stat().st_size == hit.end - hit.offset + 16
    assert not list(spool.glob("*.done"))
    again = subprocess.run(
        [*SEND, str(offline)], env=env, capture_output=True, text=True, timeout=180
    )
    assert again.returncode == 0, again.stderr
    assert _steps(client, str(run["id"]), "x") == steps
