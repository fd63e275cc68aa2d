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
import logging
import os
import signal
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

_LOG = logging.getLogger("simvue_otel")

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


def call_in_forked_child(method: Callable[[], object]) -> None:
    """Call the bound ``method`` in every process forked from this one from now on, for as
    long as its object lives (held weakly: registering keeps nothing alive)."""
    if not hasattr(os, "register_at_fork"):
        return
    ref = weakref.WeakMethod(method)

    def after_in_child() -> None:
        alive = ref()
        if alive is not None:
            alive()

    os.register_at_fork(after_in_child=after_in_child)


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


# -- a SIGTERM the main thread never takes, in a forked child ------------------------------

SIGTERM_GRACE = 2.0
"""Seconds a forked child's main thread has to take a SIGTERM before the watcher acts."""

_sigterm_taken = False
_own_handlers: list[Callable[..., Any]] = []


def own_sigterm_handler(handler: Callable[..., Any]) -> None:
    """Name a SIGTERM handler of the library's (a ``Run``'s, the exporters'): the watcher
    stands in for it only, never for a handler of the program's own."""
    _own_handlers.append(handler)


def note_sigterm() -> None:
    """A SIGTERM handler of ours runs in the main thread: the watcher leaves it to it."""
    global _sigterm_taken
    _sigterm_taken = True


class _Watch:
    deliveries: list[Callable[[], None]] = []
    pid = 0  # the process the watcher runs in
    fds: tuple[int, int] | None = None


def watch_sigterm_in_child(deliver: Callable[[], None]) -> None:
    """In a forked child whose SIGTERM handler is ours: if a SIGTERM comes and the main thread
    does not take it within :data:`SIGTERM_GRACE`, call ``deliver`` (and the other deliveries
    registered here), then exit with status 143.

    CPython runs a Python signal handler only when the main thread next runs bytecode. A
    ``multiprocessing`` pool worker waits for its next task in a semaphore, which a signal
    interrupts only when it reaches the main thread's wait itself: a SIGTERM that arrives just
    before the wait (the main thread was waiting for the interpreter lock, which the child's
    delivery threads hold) is never handled, and ``Pool.terminate`` waits for that worker
    forever. The watcher learns of each signal through ``signal.set_wakeup_fd``, which it
    sets only where the program did not (asyncio does). Exiting without the main thread's
    clean-up is what ``terminate()`` documents for its workers; what the child recorded is
    delivered first."""
    _Watch.deliveries.append(deliver)
    if _Watch.pid == os.getpid() or not hasattr(signal, "set_wakeup_fd"):
        return
    if threading.current_thread() is not threading.main_thread():
        return  # set_wakeup_fd is the main thread's to call
    if not any(signal.getsignal(signal.SIGTERM) == h for h in _own_handlers):
        return  # the default kills at once (nothing to hang); a program's handler is its own
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    try:
        previous = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    except (ValueError, OSError):
        previous = None
    if previous != -1:  # the program's (or not allowed here): left as it was
        if previous is not None:
            signal.set_wakeup_fd(previous)
        os.close(read_fd)
        os.close(write_fd)
        return
    _Watch.pid, _Watch.fds = os.getpid(), (read_fd, write_fd)
    start_daemon(lambda: _watch(read_fd), "simvue-otel-sigterm")


def _taken() -> bool:
    return _sigterm_taken or process_exiting()


def _watch(read_fd: int) -> None:
    while True:
        try:
            seen = os.read(read_fd, 512)  # one byte per signal: its number
        except OSError:
            return
        if not seen:
            return
        if int(signal.SIGTERM) not in seen:
            continue
        if not any(signal.getsignal(signal.SIGTERM) == h for h in _own_handlers):
            continue  # the program installed its own handler meanwhile: its to answer
        deadline = time.monotonic() + SIGTERM_GRACE
        while not _taken() and time.monotonic() < deadline:
            time.sleep(0.05)
        if _taken():
            return  # the main thread took it: the delivery at exit does the rest
        _LOG.warning(
            "SIGTERM: the main thread of process %d did not take it within %.0f s (it waits in "
            "code that signals do not interrupt); delivering what it recorded, then exiting",
            os.getpid(),
            SIGTERM_GRACE,
        )
        mark_exiting()
        for deliver in list(_Watch.deliveries):
            try:
                deliver()
            except Exception:
                _LOG.exception("delivering at SIGTERM failed")
        os._exit(128 + int(signal.SIGTERM))


def _reset_in_child() -> None:
    """A process forked from this one is not exiting, took no SIGTERM, and has no watcher:
    the wakeup descriptor it inherited is the parent's watcher's, not to be written to."""
    global _sigterm_taken, _exiting
    _sigterm_taken = _exiting = False
    _Watch.deliveries = []
    if _Watch.fds is not None:
        read_fd, write_fd = _Watch.fds
        _Watch.fds = None
        with contextlib.suppress(ValueError, OSError):
            current = signal.set_wakeup_fd(-1)
            if current not in (-1, write_fd):
                signal.set_wakeup_fd(current)
        for fd in (read_fd, write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_in_child)
