"""`simvue-otel server` answers as the official client expects of a Simvue server.

Over real loopback HTTP, against servers started by the fixtures: the run address the official
client prints, metric queries for metrics a run does not have, folder listing order and
sorting, ``/api/stats``, the administrative and unimplemented routes, and the web view's
metadata. Checks about the official client itself run it, unchanged, in a subprocess.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests

from simvue_otel._internal.conventions import RUN_KEY_METADATA
from tests.helpers import LocalServer, python_json


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _api(
    server: LocalServer, method: str, path: str, user: str, **kwargs: Any
) -> requests.Response:
    return requests.request(
        method, f"{server.api}{path}", headers=server.headers(user), timeout=30, **kwargs
    )


def _ok(reply: requests.Response) -> Any:
    assert reply.status_code == 200, (reply.status_code, reply.text)
    return reply.json()


def _run(server: LocalServer, user: str, **body: Any) -> str:
    return str(_ok(_api(server, "POST", "/runs", user, json=body))["id"])


def _metrics(server: LocalServer, user: str, run_id: str, values: list[dict[str, float]]) -> None:
    entries = [
        {"values": v, "step": i, "time": float(i), "timestamp": "2026-01-01T00:00:00.000000"}
        for i, v in enumerate(values)
    ]
    _ok(_api(server, "POST", "/metrics", user, json={"run": run_id, "metrics": entries}))


def _web_session(server: LocalServer, user: str) -> requests.Session:
    """A browser-like session, signed in through the form with ``user``'s token."""
    session = requests.Session()
    page = session.get(f"{server.url}/login", timeout=30)
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert csrf, page.text[:500]
    reply = session.post(
        f"{server.url}/login",
        data={"token": server.token_for(user), "next": "/", "csrf": csrf.group(1)},
        allow_redirects=False,
        timeout=30,
    )
    assert reply.status_code == 303, reply.text[:500]
    return session


# -- the official client, in a subprocess ---------------------------------------------------


def _official(server: LocalServer, user: str, script: str, tmp: Path, *args: str) -> Any:
    """Run ``script`` with the official client as ``user``; its last stdout line, as JSON."""
    home = tmp / f"home-{uuid.uuid4().hex[:6]}"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIMVUE_")}
    env.update(
        SIMVUE_URL=server.url,
        SIMVUE_TOKEN=server.token_for(user),
        HOME=str(home),
        SIMVUE_OFFLINE_DIRECTORY=str(home / "offline"),
        SIMVUE_DISABLE_ENVIRONMENT_METRICS="1",
        SIMVUE_DISABLE_GIT_METRICS="1",
    )
    return python_json(textwrap.dedent(script), list(args), env, home)


# -- the run address the official client prints ---------------------------------------------


def test_dashboard_address_redirects_to_the_run_page(local_server: LocalServer) -> None:
    user = _unique("dash")
    name = _unique("dashboard-run")
    run_id = _run(local_server, user, name=name, folder="/parity/dashboard")
    address = f"{local_server.url}/dashboard/runs/run/{run_id}"

    reply = requests.get(address, allow_redirects=False, timeout=30)
    assert reply.status_code == 303
    assert reply.headers["location"] == f"/runs/{run_id}"

    # Signed in, the address opens the run's page; signed out, sign-in comes first and
    # then leads back to that page.
    page = _web_session(local_server, user).get(address, timeout=30)
    assert page.status_code == 200 and page.url == f"{local_server.url}/runs/{run_id}"
    assert name in page.text
    anonymous = requests.get(address, timeout=30)
    assert anonymous.url.startswith(f"{local_server.url}/login?next=")
    assert f"/runs/{run_id}" in requests.utils.unquote(anonymous.url)


@pytest.mark.compat
def test_official_client_prints_an_address_that_opens_the_run(
    local_server: LocalServer, tmp_path: Path
) -> None:
    user = _unique("printed")
    name = _unique("printed-run")
    script = """
        import json, sys
        from simvue import Run
        with Run() as run:
            run.config(disable_resources_metrics=True)
            run.init(name=sys.argv[1], folder="/parity/printed")
            run_id = run.id
        print(json.dumps({"id": run_id}))
    """
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIMVUE_")}
    env.update(
        SIMVUE_URL=local_server.url,
        SIMVUE_TOKEN=local_server.token_for(user),
        HOME=str(home),
        SIMVUE_DISABLE_ENVIRONMENT_METRICS="1",
        SIMVUE_DISABLE_GIT_METRICS="1",
    )
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), name],
        env=env,
        cwd=home,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stderr
    run_id = json.loads(out.stdout.strip().splitlines()[-1])["id"]
    printed = re.search(r"Monitor in the UI at (\S+)", out.stdout + out.stderr)
    assert printed, out.stdout + out.stderr
    assert printed.group(1) == f"{local_server.url}/dashboard/runs/run/{run_id}"
    page = _web_session(local_server, user).get(printed.group(1), timeout=30)
    assert page.status_code == 200 and page.url == f"{local_server.url}/runs/{run_id}"
    assert name in page.text


# -- metric queries for metrics a run does not have -----------------------------------------


def test_metric_query_leaves_out_runs_without_those_metrics(local_server: LocalServer) -> None:
    user = _unique("metrics")
    with_loss = _run(local_server, user, folder="/parity/metrics")
    without = _run(local_server, user, folder="/parity/metrics")
    _metrics(local_server, user, with_loss, [{"loss": 0.5}, {"loss": 0.25}])
    _metrics(local_server, user, without, [{"acc": 0.9}])

    def query(names: list[str], runs: list[str], **extra: str) -> Any:
        params = {"runs": json.dumps(runs), "metrics": json.dumps(names), "xaxis": "step"}
        return _ok(_api(local_server, "GET", "/metrics", user, params={**params, **extra}))

    assert query(["nonexistent"], [with_loss]) == {}
    assert query(["nonexistent"], [with_loss, without], aggregate="True") == {}
    both = query(["loss"], [without, with_loss])
    assert list(both) == [with_loss]
    assert [(p["step"], p["value"]) for p in both[with_loss]["loss"]] == [(0, 0.5), (1, 0.25)]
    # Each run holds only the metrics it has, of those asked for.
    mixed = query(["loss", "acc"], [with_loss, without])
    assert {run: sorted(m) for run, m in mixed.items()} == {with_loss: ["loss"], without: ["acc"]}


@pytest.mark.compat
def test_official_get_metric_values_for_metrics_a_run_lacks_is_empty(
    local_server: LocalServer, tmp_path: Path
) -> None:
    user = _unique("official-metrics")
    with_loss = _run(local_server, user, folder="/parity/official-metrics")
    without = _run(local_server, user, folder="/parity/official-metrics")
    _metrics(local_server, user, with_loss, [{"loss": 0.5}, {"loss": 0.25}])
    _metrics(local_server, user, without, [{"acc": 0.9}])
    script = """
        import json, sys
        from simvue import Client
        a, b = sys.argv[1], sys.argv[2]
        client = Client()
        def values(names, runs, **kw):
            out = client.get_metric_values(names, "step", run_ids=runs, **kw)
            if out is None or isinstance(out, dict):
                return out
            return {"dataframe_rows": len(out)}
        result = {
            "missing": values(["nonexistent"], [a]),
            "missing_dataframe": values(["nonexistent"], [a], output_format="dataframe"),
            "missing_aggregated": values(["nonexistent"], [a, b], aggregate=True),
            "one_of_two": {
                metric: {f"{step}/{run}": v for (step, run), v in points.items()}
                for metric, points in values(["loss"], [b, a]).items()
            },
        }
        print(json.dumps(result))
    """
    got = _official(local_server, user, script, tmp_path, with_loss, without)
    # The client answers None when the server has no values for any run (client.py:971).
    assert got["missing"] is None
    assert got["missing_dataframe"] is None
    assert got["missing_aggregated"] is None
    assert got["one_of_two"] == {"loss": {f"0/{with_loss}": 0.5, f"1/{with_loss}": 0.25}}


# -- folders: listing order and sorting -----------------------------------------------------


def test_folders_are_listed_newest_first_and_sort_as_asked(local_server: LocalServer) -> None:
    user = _unique("folders")
    paths = [f"/parity/order/f{i:02d}" for i in range(12)]
    for i, path in enumerate(paths):
        folder_id = _ok(_api(local_server, "POST", "/folders", user, json={"path": path}))["id"]
        _ok(
            _api(
                local_server,
                "PUT",
                f"/folders/{folder_id}",
                user,
                json={"metadata": {"rank": (i * 7) % 12}},
            )
        )
        time.sleep(0.002)  # distinct creation times

    def all_listed(**params: Any) -> list[str]:
        body = _ok(_api(local_server, "GET", "/folders", user, params=params))
        assert body["count"] == 15  # the twelve, /parity/order, /parity and /
        return [f["path"] for f in body["data"]]

    newest = all_listed()
    assert newest[0] == paths[-1]
    assert all_listed(count=10)[0] == paths[-1] and len(all_listed(count=10)) == 10
    leaves = [p for p in newest if p in paths]
    assert leaves == paths[::-1]
    # The parents were made with the first folder, the root before them: they come last.
    assert newest[-3:] == ["/parity/order", "/parity", "/"]

    by_path = all_listed(sorting=json.dumps([{"id": "path", "desc": False}]))
    assert by_path == sorted(by_path)
    ranked = _ok(
        _api(
            local_server,
            "GET",
            "/folders",
            user,
            params={
                "sorting": json.dumps([{"id": "metadata.rank", "desc": True}]),
                "filters": json.dumps(["metadata.rank exists"]),
            },
        )
    )["data"]
    assert [f["metadata"]["rank"] for f in ranked] == sorted(range(12), reverse=True)
    # Changing a folder makes it the most recently modified.
    first_id = next(f["id"] for f in ranked if f["path"] == paths[0])
    _ok(_api(local_server, "PUT", f"/folders/{first_id}", user, json={"description": "new"}))
    modified = _ok(
        _api(
            local_server,
            "GET",
            "/folders",
            user,
            params={"sorting": json.dumps([{"id": "modified", "desc": True}])},
        )
    )["data"]
    assert modified[0]["path"] == paths[0] and modified[0]["modified"] >= modified[0]["created"]
    assert not any(key.startswith("_") for f in modified for key in f)


@pytest.mark.parametrize(
    ("path", "column"),
    [("/folders", "status"), ("/folders", "metadata."), ("/tags", "path"), ("/folders", 3)],
)
def test_sorting_on_a_column_that_cannot_be_sorted_is_400_naming_it(
    local_server: LocalServer, path: str, column: Any
) -> None:
    reply = _api(
        local_server,
        "GET",
        path,
        "sorter",
        params={"sorting": json.dumps([{"id": column, "desc": True}])},
    )
    assert reply.status_code == 400, reply.text
    detail = reply.json()["detail"]
    assert "sorting" in detail and repr(str(column)) in detail
    assert ("created, name" if path == "/tags" else "created, modified, path") in detail


def test_tags_sort_by_name(local_server: LocalServer) -> None:
    user = _unique("tags")
    for name in ("beta", "alpha", "gamma"):
        _ok(_api(local_server, "POST", "/tags", user, json={"name": name}))
    listed = _ok(
        _api(
            local_server,
            "GET",
            "/tags",
            user,
            params={"sorting": json.dumps([{"id": "name", "desc": True}])},
        )
    )
    assert [t["name"] for t in listed["data"]] == ["gamma", "beta", "alpha"]


@pytest.mark.compat
def test_official_folder_listing_holds_a_new_folder_on_a_server_with_many(
    local_server: LocalServer, tmp_path: Path
) -> None:
    user = _unique("many-folders")
    for i in range(25):
        _ok(_api(local_server, "POST", "/folders", user, json={"path": f"/history/f{i}"}))
    script = """
        import json, sys
        from simvue.api.objects.folder import Folder
        from simvue.client import Client
        folder = Folder.new(path=sys.argv[1])
        folder.commit()
        first_ten = dict(Folder.get(count=10))
        by_path = [f.path for _, f in Client().get_folders(sort_by_columns=[("path", False)])]
        print(json.dumps({
            "id": folder.id, "first_ten": list(first_ten), "by_path": by_path,
        }))
    """
    got = _official(local_server, user, script, tmp_path, "/history/newest")
    assert got["id"] in got["first_ten"] and len(got["first_ten"]) == 10
    assert got["by_path"] == sorted(got["by_path"]) and "/history/newest" in got["by_path"]


# -- /api/stats -----------------------------------------------------------------------------


def test_stats_count_the_callers_own_runs_and_data(local_server: LocalServer) -> None:
    user, other = _unique("stats"), _unique("stats-other")
    statuses = ["created", "running", "running", "completed", "failed"]
    runs = [_run(local_server, user, status=s, tags=["s1", "s2"]) for s in statuses]
    _metrics(local_server, user, runs[1], [{"a": 1.0, "b": 2.0}, {"a": 3.0}])
    _ok(
        _api(
            local_server,
            "POST",
            "/events",
            user,
            json={"run": runs[1], "events": [{"message": "hello"}]},
        )
    )
    _run(local_server, other, status="completed", visibility={"public": True})

    stats = _ok(_api(local_server, "GET", "/stats", user))
    assert stats == {
        "runs": {
            "created": 1,
            "running": 2,
            "completed": 1,
            "failed": 1,
            "terminated": 0,
            "lost": 0,
        }
    }
    per_user = _ok(_api(local_server, "GET", "/stats", user, params={"single": "False"}))
    assert per_user == {
        user: {
            "runs": 5,
            "alerts": 0,
            "tags": 2,
            "files": 0,
            "volume": 0,
            "events": 1,
            "metrics": 3,
        }
    }
    refused = _api(local_server, "GET", "/stats", user, params={"tenant": "elsewhere"})
    assert refused.status_code == 403
    assert "'elsewhere'" in refused.json()["detail"] and "administrator" in refused.json()["detail"]
    assert _api(local_server, "GET", "/stats", user, params={"tenant": "default"}).ok
    assert requests.get(f"{local_server.api}/stats", timeout=30).status_code == 401


@pytest.mark.compat
def test_official_stats_object_reads_the_server(local_server: LocalServer, tmp_path: Path) -> None:
    user = _unique("official-stats")
    for status in ("created", "running", "completed"):
        _run(local_server, user, status=status)
    script = """
        import json
        from simvue.api.objects import Stats
        stats = Stats()
        admin = stats.admin_stats()
        print(json.dumps({
            "url": f"{stats.url}" == f"{stats.base_url}",
            "created": stats.runs.created,
            "running": stats.runs.running,
            "whoami": stats.whoami(),
            "admin": {name: entry.model_dump() for name, entry in admin.items()},
        }))
    """
    got = _official(local_server, user, script, tmp_path)
    assert got["url"] is True
    assert got["created"] == 1 and got["running"] == 1
    assert got["whoami"]["username"] == user
    assert got["admin"] == {
        user: {
            "runs": 3,
            "alerts": 0,
            "tags": 0,
            "files": 0,
            "volume": 0,
            "events": 0,
            "metrics": 0,
        }
    }


# -- administrative and unimplemented routes ------------------------------------------------


@pytest.mark.parametrize("path", ["/tenants", "/tenants/abc", "/users", "/users/abc"])
@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE"])
def test_administrative_routes_are_403_with_the_reason(
    local_server: LocalServer, path: str, method: str
) -> None:
    reply = _api(local_server, method, path, "admin-wannabe", json={})
    assert reply.status_code == 403, reply.text
    detail = reply.json()["detail"]
    assert f"{method} /api{path}" in detail
    assert "no administrators" in detail and "simvue-otel server token" in detail
    anonymous = requests.request(method, f"{local_server.api}{path}", timeout=30)
    assert anonymous.status_code == 401


@pytest.mark.parametrize(
    ("method", "path", "what"),
    [
        ("POST", "/alerts?deduplicate=True", "alerts"),
        ("GET", "/alerts/abc", "alerts"),
        ("PUT", "/alerts/abc/status/run", "alerts"),
        ("POST", "/artifacts", "artifacts"),
        ("GET", "/artifacts", "artifacts"),
        ("PUT", "/runs/abc/artifacts/def", "artifacts"),
        ("GET", "/storage", "storage"),
        ("POST", "/grids", "tensor grids"),
        ("PUT", "/runs/abc/grids/def", "tensor grids"),
        ("POST", "/runs/abc/metrics", "tensor (grid) metrics"),
        ("GET", "/metrics/span", "metric spans"),
        ("GET", "/events/histogram", "event histograms"),
    ],
)
def test_unimplemented_parts_of_the_api_are_404_naming_them(
    local_server: LocalServer, method: str, path: str, what: str
) -> None:
    reply = _api(local_server, method, path, "curious", json={})
    assert reply.status_code == 404, reply.text
    assert reply.json()["detail"] == (
        f"{method} /api{path.split('?')[0]}: {what} are not implemented by simvue-otel server "
        "(it stores runs, folders, tags, metadata, metrics and events)"
    )


def test_an_unknown_path_is_still_plain_404(local_server: LocalServer) -> None:
    reply = _api(local_server, "GET", "/nothing-here", "curious")
    assert reply.status_code == 404
    assert reply.json()["detail"] == "no such endpoint: GET /api/nothing-here"


# -- the web view's metadata ----------------------------------------------------------------


def test_run_page_hides_bookkeeping_metadata_that_the_api_keeps(
    local_server: LocalServer,
) -> None:
    user = _unique("meta")
    metadata = {
        RUN_KEY_METADATA: "key-0123456789",
        "simvue_otel_other": "internal",
        "solver": "cg",
        "nested": {"simvue_otel_run_key": "user-chosen"},
        "my_simvue_otel_note": "kept",
    }
    run_id = _run(local_server, user, folder="/parity/meta", metadata=metadata)
    assert _ok(_api(local_server, "GET", f"/runs/{run_id}", user))["metadata"] == metadata

    page = _web_session(local_server, user).get(f"{local_server.url}/runs/{run_id}", timeout=30)
    assert page.status_code == 200
    table = re.search(r"<table id=metadata><tbody>(.*?)</tbody></table>", page.text, re.S)
    assert table, page.text[:2000]
    keys = re.findall(r"<tr><td>([^<]*)</td>", table.group(1))
    assert keys == ["my_simvue_otel_note", "nested.simvue_otel_run_key", "solver"]
    assert "key-0123456789" not in page.text and "internal" not in page.text


# -- the official client's name rules, server side -----------------------------------------------


def test_the_server_takes_the_official_names_and_refuses_the_rest_naming_the_field(
    local_server: LocalServer,
) -> None:
    user = _unique("names")
    run_id = _run(
        local_server, user, name=f"my run: {uuid.uuid4().hex[:6]}/a", folder="/my sims/x",
        tags=["fine tag", "ünïcode.tag-1"],
    )  # fmt: skip
    _metrics(local_server, user, run_id, [{"loss (%)": 1.0, "a/b:c=d": 2.0}])
    refused = _api(local_server, "POST", "/runs", user, json={"folder": "/", "tags": ["a:b"]})
    assert refused.status_code == 422 and "tags.0" in refused.text
    entries = [{"values": {"bad#name": 1.0}, "step": 0, "time": 0.0,
                "timestamp": "2026-01-01T00:00:00.000000"}]  # fmt: skip
    refused = _api(local_server, "POST", "/metrics", user, json={"run": run_id, "metrics": entries})
    assert refused.status_code == 422
    assert "metrics.0.values" in refused.text and "bad#name" in refused.text
    refused = _api(local_server, "POST", "/runs", user, json={"folder": "/", "name": "x#y"})
    assert refused.status_code == 422 and "name" in refused.text
