"""Fixtures of the integration tests: our REST client on the session's server, a recording
proxy in front of that server (tests/proxy.py), a test's own folder on that server, a program's
environment tracking against it, and fresh virtual environments."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from simvue_otel._internal.client import SimvueClient
from tests.helpers import LocalServer, make_venv
from tests.proxy import Proxy, serve


@pytest.fixture
def client(local_server: LocalServer) -> Iterator[SimvueClient]:
    """Our REST client on the session's server, as its first user."""
    with SimvueClient(local_server.url, local_server.token, retries=2) as c:
        yield c


@pytest.fixture(scope="module")
def module_client(local_server: LocalServer) -> Iterator[SimvueClient]:
    """The same client, made once per test file: for module-scoped fixtures (a reference run
    several tests compare with), which cannot use the per-test ``client``."""
    with SimvueClient(local_server.url, local_server.token, retries=2) as c:
        yield c


@pytest.fixture
def proxy(local_server: LocalServer) -> Iterator[Proxy]:
    """A recording proxy in front of the session's server."""
    yield from serve(local_server.url)


@pytest.fixture
def folder(request: pytest.FixtureRequest) -> str:
    """A folder of this test's own, new on the server, under one root per test file
    (``/run-tests/`` for test_run.py; given to the examples as EXAMPLE_FOLDER)."""
    stem = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", request.node.name).strip("-")
    return f"/{stem}-tests/{name}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def online(
    local_server: LocalServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> LocalServer:
    """The environment of a program tracking against the local server, its offline directory
    ``tmp_path / "offline"``."""
    monkeypatch.setenv("SIMVUE_URL", local_server.url)
    monkeypatch.setenv("SIMVUE_TOKEN", local_server.token)
    monkeypatch.setenv("SIMVUE_OFFLINE_DIRECTORY", str(tmp_path / "offline"))
    monkeypatch.delenv("SIMVUE_OTEL_MODE", raising=False)
    return local_server


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This project and the instrument command alone in a new virtual environment, made once
    per test file (the zero-code tests and the zero-code example)."""
    return make_venv(tmp_path_factory)


@pytest.fixture(scope="module")
def distro_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The usual install (what `opentelemetry-bootstrap` sets up): `opentelemetry-distro`
    beside this project, which brings a configurator and a distro of its own."""
    return make_venv(tmp_path_factory, "opentelemetry-distro")
