"""The library's background threads leave signals to the program's main thread.

The kernel delivers a signal sent to the process (SIGTERM from ``Pool.terminate`` or a batch
scheduler, SIGINT from Ctrl-C) to any thread that does not block it. CPython runs Python
handlers in the main thread only, and wakes it only when the signal arrived there: a signal
taken by one of our threads while the main thread waits in C (a ``multiprocessing`` worker
waiting for its next task, a lock, a ``Queue.get``) is never handled, and the process hangs
instead of ending. So each thread the library starts blocks the asynchronous signals.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator

_NAMES = (
    "SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGALRM", "SIGCHLD",
    "SIGWINCH",
)  # fmt: skip
ASYNC_SIGNALS: frozenset[signal.Signals] = frozenset(
    getattr(signal, name) for name in _NAMES if hasattr(signal, name)
)
"""Signals sent to a process rather than raised by a thread's own fault: the main thread's."""


@contextlib.contextmanager
def signals_blocked() -> Iterator[None]:
    """Block the asynchronous signals in this thread meanwhile: a thread started inside
    inherits the mask (and so do the threads it starts), with no moment where it could take a
    signal. One that arrives meanwhile waits, and is taken when the mask is restored."""
    if not hasattr(signal, "pthread_sigmask"):  # Windows: signals reach the main thread
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, ASYNC_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def start_daemon(target: Callable[[], object], name: str) -> threading.Thread:
    """Start a daemon thread that leaves the asynchronous signals to the main thread."""
    thread = threading.Thread(target=target, name=name, daemon=True)
    with signals_blocked():
        thread.start()
    return thread


_exiting = False


def mark_exiting() -> None:
    """This process has begun delivering at its exit (see ``pipeline.deliver_at_child_exit``)."""
    global _exiting
    _exiting = True


def process_exiting() -> bool:
    """True once this process is on its way out: its delivery at exit has begun, or
    ``multiprocessing`` is running its exit finalizers (a pool worker that got its sentinel).
    A SIGTERM handler then must not raise: the exception would escape the finalizers (they
    catch ``Exception`` only) and skip the one that delivers what the process recorded."""
    if _exiting:
        return True
    util = sys.modules.get("multiprocessing.util")
    return bool(getattr(util, "_exiting", False))
