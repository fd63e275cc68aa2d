"""Fixtures of the integration tests: our REST client on the session's server, and a recording
proxy in front of that server (tests/proxy.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from simvue_otel._internal.client import SimvueClient
from tests.helpers import LocalServer
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
