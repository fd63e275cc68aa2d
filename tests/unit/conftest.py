"""Unit tests talk to in-memory servers (tests/fake_simvue.py) with no gateway in front that
could hold a request and pass it on later: a part whose answer was lost is reconciled at once
(``SIMVUE_OTEL_SETTLE_SECONDS=0``). Tests of the settle time give their uploader its own.

``fake`` is such a server, and ``fake_client`` our REST client, talking to it without retries."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from simvue_otel._internal.client import SimvueClient
from tests.fake_simvue import URL, FakeSimvue


@pytest.fixture(autouse=True)
def _no_gateway(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIMVUE_OTEL_SETTLE_SECONDS", "0")


@pytest.fixture
def fake() -> FakeSimvue:
    return FakeSimvue()


@pytest.fixture
def fake_client(fake: FakeSimvue) -> Iterator[SimvueClient]:
    with SimvueClient(URL, "token", retries=0, session=fake.session()) as c:
        yield c
