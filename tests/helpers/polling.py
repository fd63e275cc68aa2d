"""The wait for something the system under test does in its own time: a run to reach the
server, a bridge to drain, a status to change."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def poll(
    fetch: Callable[[], Any],
    ok: Callable[[Any], bool],
    timeout: float = 60.0,
    *,
    interval: float = 0.2,
    ignoring: tuple[type[BaseException], ...] = (),
) -> Any:
    """Call ``fetch`` every ``interval`` seconds until ``ok`` accepts its answer or ``timeout``
    passes; the last answer either way.

    An exception of a type in ``ignoring``, from ``fetch`` or ``ok`` (a run not there yet:
    ``NotFoundError``; a bridge still starting: ``requests.RequestException``), counts as no
    answer: when ``fetch`` raised, the last answer stays the one before (None when it only ever
    raised). Any other exception ends the wait at once."""
    deadline = time.monotonic() + timeout
    value = None
    while True:
        try:
            value = fetch()
            if ok(value):
                return value
        except ignoring:
            pass
        if time.monotonic() > deadline:
            return value
        time.sleep(interval)
