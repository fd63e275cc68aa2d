"""Shared fixtures: a real `simvue-otel server` on a free loopback port, started as a subprocess,
and bridges writing to it. The helpers they are built on live in tests/helpers."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import Bridge, LocalServer, start_bridge, start_server, stop_server


@pytest.fixture(scope="session")
def local_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """One server for the whole session; tests isolate themselves by unique names/folders."""
    server = start_server(tmp_path_factory.mktemp("server"))
    yield server
    stop_server(server)


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[LocalServer]:
    """A server of its own, for tests that need an empty database or stop/restart it."""
    server = start_server(tmp_path)
    yield server
    stop_server(server)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs: a disk that fills up. Mounting needs the privilege to mount (root in a
    sandbox, as in CI); without it the test is skipped, and CI sets SIMVUE_OTEL_REQUIRE_TMPFS=1
    to make that a failure."""
    where = tmp_path / "small-disk"
    where.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)],
        capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode != 0:
        reason = (
            f"cannot mount a tmpfs here ({done.stderr.strip()}): run as root to test a full disk"
        )
        if os.environ.get("SIMVUE_OTEL_REQUIRE_TMPFS"):
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture
def bridge(local_server: LocalServer, tmp_path: Path) -> Iterator[Bridge]:
    """A bridge of its own (no token: loopback), writing to the session's server."""
    b = start_bridge(tmp_path / "bridge", local_server)
    yield b
    b.stop()
