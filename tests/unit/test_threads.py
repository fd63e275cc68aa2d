"""The library's threads leave process-directed signals to the main thread (see
``simvue_otel._internal.threads``): a ``Pool.terminate`` SIGTERM taken by one of them while the
worker's main thread waited for its next task left the worker, and the pool, hung forever.

Each thread's blocked set is read from Linux's ``/proc/self/task/<tid>/status`` (``SigBlk``)."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

import pytest

from simvue_otel import Run
from simvue_otel._internal.threads import ASYNC_SIGNALS, signals_blocked, start_daemon

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads each thread's signal mask from /proc"
)


def blocked(thread: threading.Thread) -> set[int]:
    """The signals ``thread`` blocks, as the kernel holds them."""
    status = Path(f"/proc/self/task/{thread.native_id}/status").read_text()
    (line,) = [line for line in status.splitlines() if line.startswith("SigBlk:")]
    mask = int(line.split()[1], 16)
    return {n for n in range(1, 65) if mask & (1 << (n - 1))}


def test_a_started_daemon_blocks_the_asynchronous_signals_and_the_caller_keeps_its_mask() -> None:
    stop = threading.Event()
    before = blocked(threading.current_thread())
    thread = start_daemon(stop.wait, "probe")
    try:
        assert {int(s) for s in (signal.SIGTERM, signal.SIGINT)} <= blocked(thread)
        assert {int(s) for s in ASYNC_SIGNALS} <= blocked(thread)
        assert blocked(threading.current_thread()) == before
    finally:
        stop.set()
        thread.join()


def test_a_signal_arriving_while_blocked_is_taken_by_the_caller_afterwards() -> None:
    got: list[int] = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, _frame: got.append(signum))
    try:
        with signals_blocked():
            signal.raise_signal(signal.SIGUSR1)
            assert got == []  # held while blocked
        assert got == [signal.SIGUSR1]
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_every_thread_of_a_run_leaves_sigterm_to_the_main_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SIMVUE_OFFLINE_DIRECTORY", str(tmp_path))
    before = {t.ident for t in threading.enumerate()}
    with Run(mode="offline") as run:
        run.init(name="signals", folder="/unit", resources_metrics_interval=1)
        run.log_metrics({"x": 1.0})
        ours = [t for t in threading.enumerate() if t.ident not in before]
        assert ours, "the run started no thread"
        for thread in ours:
            assert int(signal.SIGTERM) in blocked(thread), thread.name
