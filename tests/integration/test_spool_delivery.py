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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from simvue_otel import Run
from simvue_otel._internal.client import SimvueClient
from simvue_otel._internal.config import resolve_config
from simvue_otel._internal.mapping.records import MetricRecord, Record, RunRecord, RunRef
from simvue_otel._internal.sink import create_sink, online, online_spool_directory
from simvue_otel._internal.sink.online import OnlineSink
from simvue_otel._internal.sink.spool import SpoolReader, SpoolWriter
from tests.helpers import LocalServer, poll
from tests.proxy import Proxy

SEND = [sys.executable, "-m", "simvue_otel", "send", "--quiet", "--cache"]


class _SlowProxy(Proxy):
    """A server under load: each metrics POST is stored only after ``delay`` seconds, and
    reading metrics back takes ``read_delay``, so two uploaders of one batch overlap."""

    delay = 0.1
    read_delay = 0.2

    def _forward(self, handler: Any, raw: bytes, headers: dict[str, str], action: Any) -> Any:
        if handler.path.startswith("/api/metrics"):
            time.sleep(self.delay if handler.command == "POST" else self.read_delay)
        return super()._forward(handler, raw, headers, action)


@pytest.fixture
def slow_proxy(local_server: LocalServer) -> Iterator[Proxy]:
    proxy = _SlowProxy(local_server.url)
    try:
        yield proxy
    finally:
        proxy.close()


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


def _wait(condition: Callable[[], object], what: str, timeout: float = 120.0) -> None:
    assert poll(condition, bool, timeout, interval=0.1), f"timed out waiting for {what}"


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


# -- 2. one uploader per segment ------------------------------------------------------------

OUTAGE: list[tuple[str, str, int | str]] = [("*", "/", 503)] * 20_000
SEGMENT = 64 * 1024  # the rotation size, small so that a backlog spans many segments


def _sink(proxy: Proxy, server: LocalServer, offline: Path, **options: object) -> OnlineSink:
    """An online sink as the bridge makes it (everything to disk first), with a small
    rotation size and adoption interval."""
    config = resolve_config(
        url=proxy.url, token=server.token, offline_directory=offline, environ={}
    )
    options = {
        "max_memory_points": 0,
        "live_window": 180.0,
        "segment_bytes": SEGMENT,
        "adopt_interval": 1.0,
        "max_backoff": 0.5,
        "flush_interval": 0.1,
        **options,
    }
    sink = create_sink("online", config, **options)
    assert isinstance(sink, OnlineSink)
    return sink


def _feed(sink: OnlineSink, run: RunRef, steps: range, tag: str) -> None:
    """Requests as a bridge stores them: each batch written to the spool under its key."""
    now = time.time()
    sink.submit([RunRecord(run=run, status="running", observed=now)], batch_key=f"{tag}-start")
    for start in range(steps.start, steps.stop, 500):
        batch: list[Record] = [
            MetricRecord(run=run, values={"x": float(s)}, step=s, time=0.1 * s, timestamp=now)
            for s in range(start, min(start + 500, steps.stop))
        ]
        sink.submit(batch, batch_key=f"{tag}-{start}")
    sink.submit(
        [RunRecord(run=run, status="completed", observed=now + 1, ended=now + 1)],
        batch_key=f"{tag}-end",
    )


def _rotated(directory: Path) -> int:
    return len(list(directory.glob("*.done")))


def _exactly_once(client: SimvueClient, run: RunRef, steps: range) -> None:
    """One run on the server with every step of ``steps`` once (counted over every run of
    that name, so a run made twice shows its points too)."""
    made = client.find_runs([f"name == {run.name}"])
    counts: Counter[int] = Counter()
    for found in made:
        counts += _steps(client, str(found["id"]), "x")
    doubled = sum(n - 1 for n in counts.values())
    missing = len(set(steps) - set(counts))
    assert (len(made), doubled, missing) == (1, 0, 0), (
        f"run {run.name}: created {len(made)} time(s), {doubled} duplicate point(s) and "
        f"{missing} missing of {len(steps)}"
    )


def test_send_beside_a_live_bridge_with_a_backlog_never_doubles(
    slow_proxy: Proxy, local_server: LocalServer, client: SimvueClient, tmp_path: Path
) -> None:
    """A bridge-shaped sink holds a backlog of many rotated segments after an outage; while
    it uploads them, `simvue-otel send` runs on the same directory again and again: each
    segment is uploaded by one of them, every point arrives once."""
    offline = tmp_path / "offline"
    sink = _sink(slow_proxy, local_server, offline)
    run = RunRef(str(uuid.uuid4()), f"send-beside-{uuid.uuid4().hex[:6]}", "/spool-owners")
    steps = range(15_000)
    try:
        slow_proxy.rules = list(OUTAGE)
        _feed(sink, run, steps, "a")
        assert _rotated(sink.spool_dir) >= 6  # a backlog well past the rotation size
        env = _env(slow_proxy.url, local_server.token, offline)
        slow_proxy.rules = []  # the server is back: the sink and the sends race for the backlog
        sends: list[int] = []
        while sink.backlog() and len(sends) < 200:
            out = subprocess.run(
                [*SEND, str(offline)], env=env, capture_output=True, text=True, timeout=120
            )
            sends.append(out.returncode)
            assert out.returncode in (0, 1), out.stderr
        assert sends, "the sink uploaded everything before any send ran"
        assert sink.flush(120.0)
    finally:
        sink.close(30.0)
    _exactly_once(client, run, steps)


def test_two_bridges_sharing_a_spool_through_a_long_outage_never_double(
    slow_proxy: Proxy, local_server: LocalServer, client: SimvueClient, tmp_path: Path
) -> None:
    """Two bridge-shaped sinks share one spool directory through an outage longer than the
    adoption interval, each with a backlog past the rotation size: each uploads its own
    segments, adopts none the other is uploading, and every point arrives once."""
    offline = tmp_path / "offline"
    first = _sink(slow_proxy, local_server, offline)
    second = _sink(slow_proxy, local_server, offline)
    slow_proxy.rules = list(OUTAGE)
    assert first.spool_dir == second.spool_dir
    runs = [
        RunRef(str(uuid.uuid4()), f"shared-{i}-{uuid.uuid4().hex[:6]}", "/spool-owners")
        for i in range(2)
    ]
    steps = range(20_000)
    try:
        _feed(first, runs[0], steps, "first")
        _feed(second, runs[1], steps, "second")
        assert _rotated(first.spool_dir) >= 6
        outage_ends = time.monotonic() + 3 * first.adopt_interval
        _wait(lambda: time.monotonic() > outage_ends, "the outage")
        slow_proxy.rules = []
        assert first.flush(180.0) and second.flush(180.0)
    finally:
        first.close(30.0)
        second.close(30.0)
    for run in runs:
        _exactly_once(client, run, steps)
    assert not list(first.spool_dir.glob("*.done"))


def test_cron_send_beside_an_online_run_that_spilled_never_doubles(
    slow_proxy: Proxy,
    local_server: LocalServer,
    client: SimvueClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An online `Run` spills a backlog past the rotation size while the server is away;
    when it answers, the run uploads its spill while `simvue-otel send` runs beside it again
    and again (as from cron): every point arrives once, in one run."""
    monkeypatch.setattr(online, "SEGMENT_BYTES", SEGMENT)
    monkeypatch.setattr(online, "ADOPT_INTERVAL", 1.0)
    offline = tmp_path / "offline"
    name = f"cron-beside-{uuid.uuid4().hex[:6]}"
    env = _env(slow_proxy.url, local_server.token, offline)
    steps = range(100_000)  # a Run spills in frames of up to 25,000 values
    run = Run(
        "online",
        server_url=slow_proxy.url,
        server_token=local_server.token,
        offline_directory=offline,
    )
    spool = online_spool_directory(
        resolve_config(slow_proxy.url, local_server.token, offline, environ={})
    )
    try:
        run.init(name=name, folder="/spool-owners", resources_metrics_interval=None)
        slow_proxy.rules = list(OUTAGE)
        for step in steps:
            run.log_metrics({"x": float(step)}, step=step)
        _wait(lambda: _rotated(spool) >= 3, "a backlog past the rotation size")
        slow_proxy.rules = []
        sends = 0
        while any(spool.glob("*.done")) and sends < 100:
            out = subprocess.run(
                [*SEND, str(offline)], env=env, capture_output=True, text=True, timeout=120
            )
            assert out.returncode in (0, 1), out.stderr
            sends += 1
        assert sends
    finally:
        run.close()
    _exactly_once(client, RunRef("", name, "/spool-owners"), steps)


def test_a_bridge_adopting_a_damaged_spool_delivers_the_rest_and_tells_the_run(
    proxy: Proxy, local_server: LocalServer, client: SimvueClient, tmp_path: Path
) -> None:
    """What a dead process left, with one damaged frame, is adopted by the next sink: every
    other frame arrives, and the run gets a loss event saying how many records it lost."""
    offline = tmp_path / "offline"
    config = resolve_config(proxy.url, local_server.token, offline, environ={})
    spool = online_spool_directory(config)
    run = RunRef(str(uuid.uuid4()), f"adopt-damaged-{uuid.uuid4().hex[:6]}", "/spool-damage")
    offsets = [0]
    with SpoolWriter(spool) as writer:  # the dead process's spool
        offsets.append(writer.append("s", [RunRecord(run=run, status="running", observed=1.0)]))
        for i in range(6):
            points: list[Record] = [
                MetricRecord(run=run, values={"x": float(s)}, step=s, time=0.0, timestamp=2.0)
                for s in range(i * 10, i * 10 + 10)
            ]
            offsets.append(offsets[-1] + writer.append(f"p{i}", points))
        writer.append("e", [RunRecord(run=run, status="completed", observed=3.0, ended=3.0)])
        segment = writer.segment
    assert segment is not None
    done = segment.with_suffix(".done")
    data = done.read_bytes()
    at = offsets[4] - 5  # inside the records of the frame of steps 20..29
    done.write_bytes(data[:at] + b"\xff" * 16 + data[at:])
    sink = _sink(proxy, local_server, offline)
    try:
        _wait(lambda: not done.exists(), "the adoption")
        assert sink.flush(60.0)
    finally:
        sink.close(30.0)
    found = client.find_run_by_key(run.key)
    assert found is not None
    steps = _steps(client, str(found["id"]), "x")
    assert set(steps) == set(range(60)) - set(range(20, 30)) and max(steps.values()) == 1
    assert client.get_run(str(found["id"]))["status"] == "completed"
    messages = [e["message"] for e in client.get_events(str(found["id"]))]
    assert [m for m in messages if m.startswith("simvue-otel lost data: 10 record(s)")], messages
