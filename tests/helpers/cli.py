"""The `simvue-otel` command line as a user runs it, and the environments programs run in:
none of the outside SIMVUE_* settings, or no server configured at all."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.servers import LocalServer

SEND_CMD = [sys.executable, "-m", "simvue_otel", "send", "--cache"]


def no_server_env(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    """No URL, no token, no config file: a fresh HOME and working directory."""
    home.mkdir(parents=True, exist_ok=True)
    for var in ("SIMVUE_URL", "SIMVUE_TOKEN", "SIMVUE_OFFLINE_DIRECTORY", "SIMVUE_OTEL_MODE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(home)


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIMVUE_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def send(cache: Path, server: LocalServer, *extra: str) -> subprocess.CompletedProcess[str]:
    env = subprocess_env(SIMVUE_URL=server.url, SIMVUE_TOKEN=server.token)
    out = subprocess.run(
        [*SEND_CMD, str(cache), *extra], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, f"send failed:\n{out.stdout}\n{out.stderr}"
    return out
