"""Fresh virtual environments holding this project installed from its own files, so that no
package that happens to be installed here can make a test pass."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def make_venv(tmp_path_factory: pytest.TempPathFactory, *extra: str) -> Path:
    """A fresh virtual environment holding this project (from its files) and ``extra``."""
    venv = tmp_path_factory.mktemp("zero-code") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    # With the requests instrumentation too, as an app that calls HTTP services has it: the
    # exporters' own uploads (made with requests) must not be traced back into the run.
    subprocess.run(
        [*pip, f"{ROOT}[instrument]", "opentelemetry-instrumentation-requests", *extra],
        check=True, timeout=600, capture_output=True, text=True,
    )  # fmt: skip
    return venv
