"""The spool is no attack surface: a name planted in it (a link to another file) never makes
`simvue-otel send` write, truncate or append to that file, nor copy it anywhere; spool
folders are 0700 and files 0600; no run name leads a registry file out of the offline
directory, and a run named with a ``/`` is found again by ``reconnect``."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from simvue_otel import Run
from simvue_otel._internal.client import SimvueClient
from simvue_otel._internal.config import resolve_config
from simvue_otel._internal.mapping.records import MetricRecord, RunRecord, RunRef
from simvue_otel._internal.sink import create_sink
from simvue_otel._internal.sink.online import OnlineSink
from simvue_otel._internal.sink.spool import SpoolWriter
from tests.helpers import LocalServer

SEND = [sys.executable, "-m", "simvue_otel", "send", "--quiet", "--cache"]
SECRET = b"the victim's own bytes\n"


def _env(server: LocalServer, offline: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIMVUE_", "OTEL_"))}
    env.update(
        SIMVUE_URL=server.url, SIMVUE_TOKEN=server.token, SIMVUE_OFFLINE_DIRECTORY=str(offline)
    )
    return env


def _victim(tmp_path: Path) -> tuple[Path, os.stat_result]:
    victim = tmp_path / "victim.txt"
    victim.write_bytes(SECRET)
    victim.chmod(0o640)
    return victim, victim.stat()


def _assert_untouched(victim: Path, before: os.stat_result) -> None:
    after = victim.stat()
    assert victim.read_bytes() == SECRET
    assert (after.st_mode, after.st_size, after.st_mtime_ns) == (
        before.st_mode,
        before.st_size,
        before.st_mtime_ns,
    )


def _spool_with_frames(spool: Path, name: str, n: int = 5) -> Path:
    """A finished segment of an offline run: its state, then ``n`` frames of points."""
    run = RunRef(str(uuid.uuid4()), name, "/spool-security")
    with SpoolWriter(spool) as writer:
        writer.append("state", [RunRecord(run=run, status="running", observed=1.0)])
        for i in range(n):
            points = [
                MetricRecord(run=run, values={"x": float(s)}, step=s, time=0.0, timestamp=2.0)
                for s in range(i * 10, i * 10 + 10)
            ]
            writer.append(f"frame-{i}", points)
        segment = writer.segment
    assert segment is not None
    return segment.with_suffix(".done")


@pytest.mark.parametrize("planted", [".done", ".corrupt", ".parts", ".cursor.tmp"])
def test_a_planted_link_never_makes_send_touch_its_target(
    planted: str, local_server: LocalServer, client: SimvueClient, tmp_path: Path
) -> None:
    """`X.done`, `X.corrupt`, `X.parts` or `X.cursor.tmp` planted as a link to a victim file:
    the victim keeps its bytes and mode, and no copy of it appears in the spool."""
    offline = tmp_path / "offline"
    spool = offline / "otel-spool"
    name = f"planted-{planted.strip('.').replace('.', '-')}-{uuid.uuid4().hex[:6]}"
    victim, before = _victim(tmp_path)
    if planted == ".done":
        spool.mkdir(parents=True)
        os.symlink(victim, spool / "20200101T000000000000-1-deadbeef.done")
    else:
        segment = _spool_with_frames(spool, name)
        if planted == ".corrupt":  # the segment is damaged: its bytes would go there
            data = segment.read_bytes()
            segment.write_bytes(data[:40] + b"garbage!" * 4 + data[40:])
        os.symlink(victim, segment.with_suffix("").with_name(segment.stem + planted))
    out = subprocess.run(
        [*SEND, str(offline)], env=_env(local_server, offline), capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    _assert_untouched(victim, before)
    for path in spool.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert SECRET not in path.read_bytes(), f"{path} holds a copy of the victim"
            assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, f"{path} is readable by others"
    if planted in (".done", ".parts"):
        # Never followed: the link is left alone and named, and send says not all went.
        assert out.returncode == 3, out.stderr
        assert "left alone" in out.stderr
    else:
        assert out.returncode in (0, 3), out.stderr
        found = client.find_runs([f"name == {name}"])
        assert len(found) == 1
        steps = {p["step"] for p in client.get_metrics(str(found[0]["id"]), ["x"])["x"]}
        assert steps >= set(range(10, 50))  # the frames after any damage arrived


def _wrong_modes(*roots: Path) -> dict[str, str]:
    """Folders under ``roots`` (themselves included) that are not 0700, files not 0600."""
    wrong = {}
    for path in [p for root in roots for p in (root, *root.rglob("*"))]:
        if path.is_symlink():
            continue
        mode = stat.S_IMODE(path.lstat().st_mode)
        if mode != (0o700 if path.is_dir() else 0o600):
            wrong[str(path)] = oct(mode)
    return wrong


def test_spool_folders_are_private_and_files_owner_only(
    local_server: LocalServer, tmp_path: Path
) -> None:
    """Offline and online spools, their run index, identity and rejected folders: every
    folder 0700 and every file 0600, whatever the umask allows."""
    offline = tmp_path / "offline"
    old = os.umask(0o022)
    try:
        with Run(mode="offline", offline_directory=offline) as run:
            run.init(name=f"modes-{uuid.uuid4().hex[:6]}", resources_metrics_interval=None)
            run.log_metrics({"x": 1.0})
        with Run(mode="offline", offline_directory=offline) as queued:
            queued.init(name=f"queued-{uuid.uuid4().hex[:6]}", running=False)
        config = resolve_config(
            url=local_server.url, token=local_server.token, offline_directory=offline,
            environ={},
        )  # fmt: skip
        sink = create_sink("online", config, max_memory_points=0)
        assert isinstance(sink, OnlineSink)
        run_ref = RunRef(str(uuid.uuid4()), f"modes-online-{uuid.uuid4().hex[:6]}", "/")
        sink.submit([RunRecord(run=run_ref, status="running", observed=1.0)], batch_key="k")
        assert sink.close(60.0)
    finally:
        os.umask(old)
    spool = offline / "otel-spool"
    names = {p.name for p in spool.rglob("*")}
    assert {"server_ids", "identity.json"} <= names
    assert any(n.endswith(".done") for n in names)
    assert any((offline / "otel-runs").iterdir())
    assert not _wrong_modes(spool, offline / "otel-runs")


@pytest.mark.parametrize("name", ["../../escaped", "..", "a/../../b", "step/1"])
def test_a_run_name_never_leads_its_registry_file_out(name: str, tmp_path: Path) -> None:
    """Queued offline runs are recorded under their encoded name inside `otel-runs`, and
    `reconnect` finds them by that name (`step/1` as `step%2F1.json`, as the docs say)."""
    home = tmp_path / "home"
    offline = home / "a" / "offline"
    before = {p for p in tmp_path.rglob("*")}
    with Run(mode="offline", offline_directory=offline) as queued:
        assert queued.init(name=name, folder="/names", running=False)
    made = {p for p in tmp_path.rglob("*")} - before
    outside = [p for p in made if offline not in p.parents and p != offline]
    outside = [p for p in outside if p not in offline.parents]
    assert not outside, outside
    registry = sorted(p.name for p in (offline / "otel-runs").iterdir())
    assert len(registry) == 1 and "/" not in registry[0] and registry[0].endswith(".json")
    if name == "step/1":
        assert registry == ["step%2F1.json"]
    with Run(mode="offline", offline_directory=offline) as again:
        assert again.reconnect(name)
        again.log_metrics({"x": 1.0})


def test_reconnect_finds_step_1_in_another_process(tmp_path: Path) -> None:
    """A run queued as `step/1` by one program is resumed by name by another."""
    offline = tmp_path / "offline"
    code = textwrap.dedent(
        """
        import sys
        from simvue_otel import Run
        with Run(mode="offline", offline_directory=sys.argv[1]) as run:
            if sys.argv[2] == "queue":
                assert run.init(name="step/1", folder="/steps", running=False)
            else:
                assert run.reconnect("step/1"), "reconnect failed"
                run.log_metrics({"x": 2.0})
        """
    )
    for what in ("queue", "resume"):
        out = subprocess.run(
            [sys.executable, "-c", code, str(offline), what], capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
    assert (offline / "otel-runs" / "step%2F1.json").is_file()
