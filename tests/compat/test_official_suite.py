"""The official `simvue` client's own test suite, pointed at `simvue-otel server`.

The tests ship in the client's source distribution; they are downloaded at test time (never
kept in this repository) for the exact client version installed. Every official test that
touches only what the local server implements (runs, folders, tags, metadata, metrics, events,
status, heartbeats, abort, visibility, statistics, the offline sender) runs twice on one
server: first on a fresh database, then again, for the files that list, count or look up
objects, after the server has been filled with more runs, folders and tags than one page of
the API holds, so that nothing passes only because the database is empty.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import pytest
import requests

from tests.helpers import LocalServer, start_server, stop_server

pytestmark = pytest.mark.compat

# Files of the official suite that reach the server and test what it implements.
SELECTED = [
    "tests/unit/test_folder.py",
    "tests/unit/test_tag.py",
    "tests/unit/test_metrics.py",
    "tests/unit/test_events.py",
    "tests/unit/test_run.py",
    "tests/unit/test_stats.py",
    "tests/unit/test_tenant.py",
    "tests/unit/test_user.py",
    "tests/unit/test_sender.py",
    "tests/unit/test_run_init_folder.py",
    "tests/unit/test_run_init_tags.py",
    "tests/unit/test_suppress_errors.py",
    "tests/functional/test_run_class.py",
    "tests/functional/test_client.py",
    "tests/functional/test_scenarios.py",
]
# Tests in those files that need what the server does not implement, by group (docs/server.md
# gives each group's reason): each pattern must match a collected test's whole name, its
# parameters included.
EXCLUDED = {
    "alerts": [r"test_(?!abort_on_alert_python$).*alert.*"],
    "artifacts and storage": [
        r"test_save_file_online\[valid_mimetype.*\]",
        r"test_save_file_offline\[.*\]",
        r"test_save_object\[.*\]",
        r"test_large_file_upload\[.*\]",
    ],
    "tensor grids": [
        r"test_log_metrics_online\[tensor-(?!bad_option-).*\]",
        r"test_log_metrics_offline\[tensor\]",
        r"test_log_grid_metric_auto_grid",
    ],
    "the process executor": [r"test_kill_all_processes", r"test_reconnect_with_process"],
    "the create_test_run fixture (it makes grids, alerts and artifacts)": [
        r"test_log_events_online",
        r"test_update_metadata_running",
        r"test_get_events",
        r"test_get_run_id_from_name",
        r"test_get_metric_values\[.*\]",
        r"test_plot_metrics",
        r"test_get_artifacts?_.*",
        r"test_get_runs\[.*\]",
        r"test_get_run",
        r"test_get_folders\[.*\]",
        r"test_get_metrics_names",
        r"test_multiple_metric_retrieval\[.*\]",
    ],
    "administration of users and tenants, offline (only an administrator may upload them)": [
        r"test_create_tenant_offline",
        r"test_create_user_offline",
    ],
    "passes whatever the server does (its wait loop never runs)": [
        r"test_abort_on_alert_python",
    ],
}
# Files run again once the server holds history: those that list, count or look objects up.
AGAIN_WITH_HISTORY = [
    "tests/unit/test_folder.py",
    "tests/unit/test_tag.py",
    "tests/unit/test_metrics.py",
    "tests/unit/test_events.py",
    "tests/unit/test_run.py",
    "tests/unit/test_stats.py",
    "tests/functional/test_client.py",
]
# How many are selected (and must all pass) on a fresh database / again with history; fewer
# means the selection shrank.
MIN_PASSED = 137
MIN_PASSED_WITH_HISTORY = 34
# History added before the second pass: more than the API's page of 100 of each.
HISTORY_FOLDERS = 130
HISTORY_RUNS = 150
HISTORY_TAGS = 120


def _excluded(test: str) -> bool:
    """Whether ``test`` (a function name with its parameters) is in a group of EXCLUDED."""
    return any(re.fullmatch(p, test) for group in EXCLUDED.values() for p in group)


def _selection(root: Path, env: dict[str, str], files: list[str]) -> list[str]:
    """The node ids collected from ``files``, less the excluded tests."""
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-c", os.devnull, "--rootdir", str(root),
         "-p", "no:cacheprovider", "--collect-only", "-q", *files],
        cwd=root, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    ids = [line for line in out.stdout.splitlines() if "::" in line]
    assert ids and out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    return [i for i in ids if not _excluded(i.split("::", 1)[1])]


def _official_tests(dest: Path) -> Path:
    """Download the installed client's sdist and unpack its tests/ under ``dest``."""
    wanted = version("simvue")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--dest",
            str(dest),
            f"simvue=={wanted}",
        ],
        check=True,
        timeout=300,
    )
    archive = next(dest.glob(f"simvue-{wanted}.tar.gz"))
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if "/tests/" in m.name]
        tar.extractall(dest, members=members, filter="data")
    return dest / f"simvue-{wanted}"


@pytest.fixture(scope="module")
def official_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _official_tests(tmp_path_factory.mktemp("sdist"))


@pytest.fixture(scope="module")
def suite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """One server for both passes: the second finds what the first left."""
    server = start_server(tmp_path_factory.mktemp("suite-server"))
    yield server
    stop_server(server)


def _run_official(root: Path, server: LocalServer, home: Path, files: list[str]) -> int:
    """Run the selected tests of ``files``: every one must pass (none may fail, error or be
    skipped); returns how many ran."""
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIMVUE_")}
    env.update(SIMVUE_URL=server.url, SIMVUE_TOKEN=server.token, HOME=str(home))
    selection = _selection(root, env, files)
    began = time.monotonic()
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-c",
            os.devnull,
            "--rootdir",
            str(root),
            "-p",
            "no:warnings",
            "-p",
            "no:cacheprovider",
            "--timeout",
            "120",
            "-q",
            "-rfEs",
            *selection,
        ],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=850,
    )
    summary = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr[-2000:]
    counts = {
        word: int(n)
        for n, word in re.findall(
            r"(\d+) (passed|failed|errors?|skipped|x?failed|xpassed)", summary
        )
    }
    # Shown with `pytest -rA`: what ran, and how long it took.
    print(f"{len(selection)} official tests selected: {summary} ({time.monotonic() - began:.0f} s)")
    assert counts == {"passed": len(selection)}, (
        f"official client tests did not all pass against simvue-otel server: {counts}\n"
        + out.stdout[-8000:]
        + out.stderr[-2000:]
    )
    return len(selection)


def _fill_history(server: LocalServer) -> None:
    """More folders, runs and tags than one page of the API holds, some with metric values and
    events, and public runs of another user, all made through the API."""
    api, headers = server.api, server.headers()

    def ok(reply: requests.Response) -> None:
        assert reply.status_code == 200, reply.text

    for i in range(HISTORY_FOLDERS):
        reply = requests.post(
            f"{api}/folders", json={"path": f"/history/f{i:03d}"}, headers=headers, timeout=30
        )
        ok(reply)
    runs = [
        {
            "name": f"history-run-{i:03d}",
            "folder": f"/history/f{i % HISTORY_FOLDERS:03d}",
            "tags": [f"history-tag-{i % HISTORY_TAGS:03d}"],
            "metadata": {"history_index": i},
            "status": "completed" if i % 3 else "created",
        }
        for i in range(HISTORY_RUNS)
    ]
    reply = requests.post(f"{api}/runs", json=runs, headers=headers, timeout=60)
    ok(reply)
    for entry in reply.json()[:20]:
        points = [{"values": {"loss": 1.0 / (s + 1)}, "step": s, "time": s} for s in range(50)]
        ok(
            requests.post(
                f"{api}/metrics",
                json={"run": entry["id"], "metrics": points},
                headers=headers,
                timeout=30,
            )
        )
        ok(
            requests.post(
                f"{api}/events",
                json={"run": entry["id"], "events": [{"message": "history"}]},
                headers=headers,
                timeout=30,
            )
        )
    public = [
        {"name": f"shared-{i}", "folder": "/shared", "visibility": {"public": True}}
        for i in range(20)
    ]
    ok(requests.post(f"{api}/runs", json=public, headers=server.headers("neighbour"), timeout=30))


def _counts_of(server: LocalServer, what: str) -> int:
    reply = requests.get(
        f"{server.api}/{what}", params={"count": 1}, headers=server.headers(), timeout=30
    )
    assert reply.status_code == 200, reply.text
    return int(reply.json()["count"])


@pytest.mark.timeout(900)
def test_official_client_suite_passes_on_a_fresh_server(
    official_root: Path, suite_server: LocalServer, tmp_path: Path
) -> None:
    assert _run_official(official_root, suite_server, tmp_path / "home", SELECTED) >= MIN_PASSED


@pytest.mark.timeout(900)
def test_official_client_suite_passes_again_on_a_server_with_history(
    official_root: Path, suite_server: LocalServer, tmp_path: Path
) -> None:
    _fill_history(suite_server)
    assert _counts_of(suite_server, "folders") > HISTORY_FOLDERS
    assert _counts_of(suite_server, "runs") >= HISTORY_RUNS + 20
    assert _counts_of(suite_server, "tags") >= HISTORY_TAGS
    passed = _run_official(official_root, suite_server, tmp_path / "home", AGAIN_WITH_HISTORY)
    assert passed >= MIN_PASSED_WITH_HISTORY
