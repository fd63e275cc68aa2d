"""A producer that is not Python: the Node.js OpenTelemetry SDK, with its official OTLP/HTTP
exporters (protobuf and JSON), runs the program of ``run_program`` against a real bridge, and
the run it leaves on the server must be the run the Python SDK's OTLP exporters leave through
the same bridge for the same telemetry: name, folder, state, metrics, events and status.

The npm packages (pinned in ``node/package.json``) are installed by the test into a temporary
folder. Without ``node`` and ``npm`` the test is skipped, saying why; with
``SIMVUE_OTEL_REQUIRE_NODE=1`` (as in CI) that is a failure instead.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from simvue_otel._internal.client import SimvueClient
from tests.helpers import Bridge, LocalServer, run_program, run_state, start_bridge
from tests.helpers.bridges import bridge_poll, comparable, drained
from tests.helpers.otlp import otlp_app

NODE_DIR = Path(__file__).resolve().parent / "node"
REQUIRE_NODE = "SIMVUE_OTEL_REQUIRE_NODE"


def _unavailable(reason: str) -> None:
    """Skip, or fail where the Node.js test may not be skipped (``SIMVUE_OTEL_REQUIRE_NODE=1``)."""
    if os.environ.get(REQUIRE_NODE, "") not in ("", "0"):
        pytest.fail(f"{reason} ({REQUIRE_NODE} is set, so this test may not be skipped)")
    pytest.skip(reason)


def _node_version(node: str) -> tuple[int, int]:
    out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30)
    match = re.match(r"v(\d+)\.(\d+)", out.stdout.strip())
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


@pytest.fixture(scope="module")
def node_program(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """``node run_program.js``, its npm packages installed in a temporary folder. The pinned
    SDK release supports Node.js ``^18.19.0 || >=20.6.0``."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        _unavailable(
            "the Node.js interop test needs node and npm (Node.js 18.19+ or 20.6+), which are "
            "not on PATH: install Node.js, e.g. apt-get install nodejs npm"
        )
    assert node is not None and npm is not None
    version = _node_version(node)
    if not ((18, 19) <= version < (19, 0) or version >= (20, 6)):
        _unavailable(f"node {version[0]}.{version[1]} is too old: Node.js 18.19+ or 20.6+ needed")
    folder = tmp_path_factory.mktemp("node-otel")
    for name in ("package.json", "run_program.js"):
        shutil.copy(NODE_DIR / name, folder / name)
    install = subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=folder, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if install.returncode != 0:
        _unavailable(f"npm install failed (no registry reachable?): {install.stderr[-1500:]}")
    return [node, str(folder / "run_program.js")]


@pytest.fixture(scope="module")
def node_bridge(
    local_server: LocalServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Bridge]:
    bridge = start_bridge(tmp_path_factory.mktemp("node-bridge"), local_server)
    yield bridge
    bridge.stop()


@pytest.fixture(scope="module")
def python_run(node_bridge: Bridge, module_client: SimvueClient) -> tuple[str, dict[str, Any]]:
    """The Python SDK's run through the bridge: (folder, comparable state)."""
    folder = f"/bridge/node-{uuid.uuid4().hex[:12]}"
    app = otlp_app("proto", "interop", folder, node_bridge)
    run_program(app)
    app.close()
    drained(node_bridge)
    state = bridge_poll(
        lambda: comparable(run_state(module_client, app.key), app.key),
        lambda s: s["status"] == "completed" and len(s["metrics"].get("loss", [])) == 50,
        20,
    )
    assert state is not None and state["status"] == "completed"
    return folder, state


@pytest.mark.parametrize("encoding", ["protobuf", "json"])
def test_a_node_program_gives_the_run_the_python_sdk_gives(
    encoding: str,
    node_program: list[str],
    node_bridge: Bridge,
    client: SimvueClient,
    python_run: tuple[str, dict[str, Any]],
) -> None:
    folder, expected = python_run
    key = str(uuid.uuid4())
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    out = subprocess.run(
        [*node_program, node_bridge.url, encoding, key, "interop", folder],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "rror" not in out.stdout + out.stderr, out.stdout + out.stderr  # no export failed
    drained(node_bridge)
    state = bridge_poll(
        lambda: comparable(run_state(client, key), key), lambda s: s == expected, 20
    )
    assert state == expected
    # what the comparison is about, said once more in plain terms
    assert (state["name"], state["folder"], state["status"]) == ("interop", folder, "completed")
    assert [(s, v) for s, v, _ in state["metrics"]["loss"]] == [
        (s, 1.0 / (s + 1)) for s in range(50)
    ]
    assert ("converged", "info") in state["events"] and ("mesh is coarse", "warning") in state[
        "events"
    ]
