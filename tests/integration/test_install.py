"""The README's test command, `python3 -m venv .venv && .venv/bin/pip install -e ".[test]"`,
resolves with the pip that a fresh virtual environment has: nothing upgrades pip first, as
nothing does on a newcomer's machine. An old pip's resolver gives up (ResolutionImpossible)
where a newer one backtracks, so only the pip that `venv` bundles proves the command works.
Resolution only (`--dry-run`): it reads the package index pip is configured with, and
installs nothing."""

from __future__ import annotations

import ensurepip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(1200)
def test_readme_test_extra_resolves_with_the_pip_of_a_fresh_venv(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    version = subprocess.run(
        [str(python), "-m", "pip", "--version"],
        env=env, capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    bundled = ensurepip.version()
    assert version.stdout.startswith(f"pip {bundled} "), (
        f"the fresh venv should hold the pip that venv bundles ({bundled}): {version.stdout}"
    )

    report = tmp_path / "report.json"
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "--dry-run", "--report", str(report),
         "-e", ".[test]"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1100,
    )  # fmt: skip
    said = [ln for ln in (done.stdout + done.stderr).splitlines() if not ln.startswith("WARNING")]
    status = done.returncode
    assert status == 0, f"pip {bundled} could not resolve .[test]:\n" + "\n".join(said[-30:])

    resolved = {
        item["metadata"]["name"].lower().replace("_", "-"): item["metadata"]["version"]
        for item in json.loads(report.read_text())["install"]
    }
    for needed in (
        "simvue-otel",
        "simvue",
        "rotel",
        "opentelemetry-exporter-otlp-json-http",
        "opentelemetry-exporter-otlp-proto-http",
        "selenium",
        "pytest-timeout",
    ):
        assert needed in resolved, f"{needed} is missing from the resolution: {sorted(resolved)}"
