"""Waiting on bridges and reading back what they delivered: their backlog drained, a run's
state as two runs of the same program share it."""

from __future__ import annotations

import copy
import functools
from typing import Any

import requests

from simvue_otel._internal.client import SimvueClient
from tests.helpers.polling import poll
from tests.helpers.runs import run_state
from tests.helpers.servers import Bridge


def comparable(state: dict[str, Any], key: str) -> dict[str, Any]:
    """A run's state minus what differs between two runs of the same program (as in
    `test_offline_spool_then_send_gives_the_online_state`): the run key, span durations in
    event text, and the clock times of instrument points. The key must be there, though."""
    state = copy.deepcopy(state)
    assert state["metadata"].pop("simvue_otel_run_key", None) == key
    state["events"] = sorted((m.split(" ended after")[0], lvl) for m, lvl in state["events"])
    for name, points in state["metrics"].items():
        if name.startswith("iterations"):
            state["metrics"][name] = [(step, value) for step, value, _ in points]
    return state


bridge_poll = functools.partial(
    poll, interval=0.25, ignoring=(AssertionError, requests.RequestException)
)
"""The suite's `poll` as the bridge tests wait: a bridge that does not answer yet (a
`requests` error) or a run not on the server yet (`run_state`'s assertion) is no answer."""


def health(bridge: Bridge) -> dict[str, Any]:
    reply = requests.get(bridge.url + "/health", timeout=5)
    assert reply.status_code == 200
    return dict(reply.json())


def drained(*bridges: Bridge, timeout: float = 60.0) -> None:
    """Wait until no bridge holds anything for the server (every accepted batch uploaded)."""
    result = bridge_poll(
        lambda: [health(b)["backlog"] for b in bridges],
        lambda backlogs: not any(backlogs),
        timeout,
    )
    assert result is not None and not any(result), f"bridges still backed up: {result}"


def state_of(client: SimvueClient, key: str, expected: dict[str, Any], timeout: float = 20) -> Any:
    """The comparable state of run `key` once it equals `expected` (or the last one seen)."""
    return bridge_poll(
        lambda: comparable(run_state(client, key), key), lambda s: s == expected, timeout
    )
