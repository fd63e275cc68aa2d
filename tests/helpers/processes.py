"""Subprocesses as a user or a shell starts them, and what they cost."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil


def in_foreground(cmd: list[str]) -> list[str]:
    """``cmd`` started as a shell starts a foreground job: with SIGINT at its default action.

    A process inherits an ignored SIGINT (a suite started in the background, under ``nohup``,
    or by a runner that ignores it), and Python then never raises KeyboardInterrupt; a test
    that sends Ctrl-C must not depend on how the suite was started. A small launcher resets the
    signal and then execs ``cmd`` (thread-safe, unlike ``preexec_fn``)."""
    launcher = (
        "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
        "os.execvp(sys.argv[1], sys.argv[1:])"
    )
    return [sys.executable, "-c", launcher, *cmd]


def cpu_seconds(process: subprocess.Popen[bytes]) -> float:
    """CPU time (user + system) ``process`` has used so far. What a request cost a server is
    the difference across it: unlike wall-clock time, it does not grow when a busy machine
    makes the server wait for a core."""
    times = psutil.Process(process.pid).cpu_times()
    return float(times.user + times.system)


def python_json(
    script: str, args: list[str], env: dict[str, str], cwd: Path, timeout: float = 240
) -> Any:
    """Run a Python script (one using the official client, typically) in a subprocess, as a
    user's would run; the JSON its last output line holds."""
    out = subprocess.run(
        [sys.executable, "-c", script, *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == 0, f"the script failed:\n{out.stdout}\n{out.stderr}"
    return json.loads(out.stdout.strip().splitlines()[-1])
