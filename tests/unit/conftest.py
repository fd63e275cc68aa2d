"""Unit tests talk to in-memory servers (tests/fake_simvue.py) with no gateway in front that
could hold a request and pass it on later: a part whose answer was lost is reconciled at once
(``SIMVUE_OTEL_SETTLE_SECONDS=0``). Tests of the settle time give their uploader its own."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _no_gateway(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIMVUE_OTEL_SETTLE_SECONDS", "0")
