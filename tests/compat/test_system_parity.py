"""What a run records about its machine and checkout, without being asked: a run made by
``simvue_otel.Run`` and one made by the official client, in the same git checkout, read back
with the official ``simvue.Client``, carry the same ``system`` keys and values, the same
``git`` metadata, the same Python packages and the same recorded shell variables.
"""

from __future__ import annotations

import os
import re
import subprocess
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import python_json

pytestmark = pytest.mark.compat

OFFICIAL = textwrap.dedent(
    """
    import json, sys
    from simvue import Run
    with Run() as run:
        run.init(name=sys.argv[1], folder="/parity", record_shell_vars={"PARITY_*"})
        print(json.dumps({"id": run.id}))
    """
)
OURS = textwrap.dedent(
    """
    import json, sys
    from simvue_otel import Run
    with Run() as run:
        run.init(name=sys.argv[1], folder="/parity", record_shell_vars=["PARITY_*"],
                 resources_metrics_interval=None)
        print(json.dumps({"id": run.id}))
    """
)
READER = textwrap.dedent(
    """
    import json, sys
    from simvue import Client
    run = Client().get_run(sys.argv[1])
    print(json.dumps({"system": run.system, "metadata": run.metadata}))
    """
)


def _git(repo: Path, *args: str) -> None:
    env = dict(
        os.environ,
        GIT_AUTHOR_NAME="Ada",
        GIT_AUTHOR_EMAIL="ada@example.org",
        GIT_COMMITTER_NAME="Ada",
        GIT_COMMITTER_EMAIL="ada@example.org",
        GIT_AUTHOR_DATE="2026-01-02T03:04:05+00:00",
        GIT_COMMITTER_DATE="2026-01-02T03:04:05+00:00",
    )
    subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True)


def _keys(tree: Any, prefix: str = "") -> set[str]:
    if not isinstance(tree, dict):
        return {prefix}
    return {k for key, value in tree.items() for k in _keys(value, f"{prefix}{key}.")}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A git checkout with one tagged commit, a remote and an uncommitted change."""
    repo = tmp_path / "checkout"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "config", "user.email", "ada@example.org")
    (repo / "solver.py").write_text("print('solve')\n")
    _git(repo, "add", "solver.py")
    _git(repo, "commit", "-q", "-m", "First solver")
    _git(repo, "tag", "v1.0")
    _git(repo, "remote", "add", "origin", "https://example.org/lab/solver.git")
    (repo / "solver.py").write_text("print('solve faster')\n")
    return repo


def test_system_git_python_and_shell_match_the_official_client(
    local_server: Any, checkout: Path, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIMVUE_", "OTEL_"))}
    env.update(
        SIMVUE_URL=local_server.url,
        SIMVUE_TOKEN=local_server.token,
        HOME=str(tmp_path),
        SIMVUE_OFFLINE_DIRECTORY=str(tmp_path / "offline"),
        PARITY_SEED="42",
        PARITY_MESH="fine",
    )
    suffix = uuid.uuid4().hex[:8]
    official_id = python_json(OFFICIAL, [f"official-{suffix}"], env, checkout)["id"]
    ours_id = python_json(OURS, [f"ours-{suffix}"], env, checkout)["id"]
    official = python_json(READER, [official_id], env, checkout)
    ours = python_json(READER, [ours_id], env, checkout)

    # system: the same keys, and the same values wherever both clients read the same source.
    assert _keys(ours["system"]) == _keys(official["system"])
    for path in ("cwd", "hostname", "pythonversion"):
        assert ours["system"][path] == official["system"][path], path
    assert ours["system"]["platform"] == official["system"]["platform"]
    assert ours["system"]["cpu"]["arch"] == official["system"]["cpu"]["arch"]
    assert ours["system"]["gpu"] == official["system"]["gpu"]
    if official["system"]["cpu"]["processor"]:  # the official client reads it from lscpu
        assert ours["system"]["cpu"]["processor"] == official["system"]["cpu"]["processor"]
    assert ours["system"]["cwd"] == str(checkout)

    # git: the same keys and values (a tagged commit with a change on top).
    git = ours["metadata"]["git"]
    assert set(git) == set(official["metadata"]["git"])
    assert git == official["metadata"]["git"]
    assert git["ref"] == "v1.0" and git["dirty"] is True and git["msg"] == "First solver"
    assert git["url"] == "https://example.org/lab/solver.git"
    assert git["authors"] == ["ada@example.org"]
    assert git["time_stamp"] == "2026-01-02T03:04:05.000000"

    # python: every package `pip freeze` lists with a version, at that version (what it lists
    # for direct-URL and editable installs is a URL or a comment line, not a version).
    theirs = {
        _canonical(k): v
        for k, v in official["metadata"]["python"]["environment"].items()
        if re.fullmatch(r"[A-Za-z0-9_.+!-]+", v) and not k.startswith("#")
    }
    packages = ours["metadata"]["python"]["environment"]
    assert theirs, "the official client recorded no packages"
    missing = {k: v for k, v in theirs.items() if packages.get(k) != v}
    assert not missing, f"packages recorded differently: {missing}"
    assert packages["simvue-otel"] and packages["opentelemetry-sdk"]

    # shell: exactly the variables asked for.
    assert ours["metadata"]["shell"] == official["metadata"]["shell"]
    assert ours["metadata"]["shell"] == {"PARITY_SEED": "42", "PARITY_MESH": "fine"}
