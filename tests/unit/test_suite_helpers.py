"""The suite's own helpers. ``free_port()`` never hands one port to two callers, within a
process (a bridge's HTTP and gRPC listeners) or across processes (pytest-xdist workers, two
sessions at once), and what it hands out can be bound. ``in_foreground()`` starts a child that
Ctrl-C interrupts even when the suite itself was started with SIGINT ignored."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

from tests.helpers import free_port, in_foreground

ROOT = Path(__file__).resolve().parents[2]
_HANDS_OUT = "import json; from tests.helpers import free_port; " + (
    "print(json.dumps([free_port() for _ in range({n})]), flush=True); input()"
)


def test_each_call_gets_a_port_of_its_own() -> None:
    ports = [free_port() for _ in range(500)]
    assert len(set(ports)) == len(ports), f"{len(ports) - len(set(ports))} ports handed out twice"
    for port in ports[:20]:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # free to bind when handed out


def test_processes_running_at_once_get_different_ports() -> None:
    """Three processes (as xdist workers are) each take 300 ports while all are alive."""
    command = [sys.executable, "-c", _HANDS_OUT.format(n=300)]
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE}
    procs = [subprocess.Popen(command, cwd=ROOT, text=True, **pipes) for _ in range(3)]
    try:
        taken: list[int] = [free_port() for _ in range(300)]
        for proc in procs:
            assert proc.stdout is not None
            taken += json.loads(proc.stdout.readline())
    finally:
        for proc in procs:
            proc.communicate("\n", timeout=60)
    assert len(taken) == 1200
    assert len(set(taken)) == len(taken), f"{len(taken) - len(set(taken))} ports shared"


_SIGINT_SEEN = (
    "import signal; h = signal.getsignal(signal.SIGINT); "
    "print('ignored' if h is signal.SIG_IGN else h.__name__)"
)


def test_a_foreground_child_is_interruptible_when_the_suite_ignores_sigint() -> None:
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as under nohup or `pytest &`
    try:
        plain = subprocess.run(
            [sys.executable, "-c", _SIGINT_SEEN], capture_output=True, text=True, timeout=60
        )
        launched = subprocess.run(
            in_foreground([sys.executable, "-c", _SIGINT_SEEN]),
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        signal.signal(signal.SIGINT, before)
    assert plain.stdout.strip() == "ignored"  # what a child inherits without the launcher
    assert launched.stdout.strip() == "default_int_handler", launched.stderr
