"""`simvue-otel server` from the outside: real HTTP on loopback, tokens minted by the CLI."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import msgpack
import pytest
import requests

from tests.helpers import LocalServer, start_server, stop_server


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _post_run(server: LocalServer, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    reply = requests.post(f"{server.api}/runs", json=body, headers=headers, timeout=10)
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def _get(
    server: LocalServer, path: str, headers: dict[str, str], **params: Any
) -> requests.Response:
    return requests.get(f"{server.api}{path}", params=params, headers=headers, timeout=10)


# -- authentication ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [None, "Bearer", "Bearer not-a-jwt", "Basic dXNlcjpwYXNz", "Bearer eyJhbGciOiJIUzI1NiJ9.e30.x"],
)
def test_missing_or_bad_token_is_401_without_echoing_it(
    local_server: LocalServer, header: str | None
) -> None:
    headers = {"Authorization": header} if header else {}
    for method, path in [
        ("GET", "/version"),
        ("GET", "/runs"),
        ("POST", "/runs"),
        ("POST", "/metrics"),
    ]:
        reply = requests.request(method, f"{local_server.api}{path}", headers=headers, timeout=10)
        assert reply.status_code == 401, (method, path, reply.text)
        detail = reply.json()["detail"]
        assert isinstance(detail, str) and detail
        if header and " " in header:
            assert header.split(" ", 1)[1] not in reply.text


def test_token_signed_by_another_server_is_refused(
    local_server: LocalServer, tmp_path: Path
) -> None:
    other_db = tmp_path / "other.db"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "simvue_otel",
            "server",
            "token",
            "--db",
            str(other_db),
            "--create",
            "--user",
            "eve",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    forged = out.stdout.strip()
    reply = requests.get(
        f"{local_server.api}/runs", headers={"Authorization": f"Bearer {forged}"}, timeout=10
    )
    assert reply.status_code == 401
    assert forged not in reply.text


def test_expired_token_is_refused(local_server: LocalServer) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "simvue_otel",
            "server",
            "token",
            "--db",
            str(local_server.db),
            "--user",
            "shortlived",
            "--days",
            "0.00001",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    token = out.stdout.strip()
    time.sleep(1.5)
    reply = requests.get(
        f"{local_server.api}/version", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert reply.status_code == 401
    assert "expired" in reply.json()["detail"]


def test_health_needs_no_token_and_version_is_in_the_clients_range(
    local_server: LocalServer,
) -> None:
    assert requests.get(f"{local_server.url}/health", timeout=10).json()["status"] == "ok"
    version = _get(local_server, "/version", local_server.headers()).json()["version"]
    major, minor, patch = (int(p) for p in version.split("."))
    assert (1, 1, 0) <= (major, minor, patch) < (2, 0, 0)


def test_token_cli_rejects_moving_user_to_another_tenant(local_server: LocalServer) -> None:
    local_server.token_for("tenant-mover", "t-one")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "simvue_otel",
            "server",
            "token",
            "--db",
            str(local_server.db),
            "--user",
            "tenant-mover",
            "--tenant",
            "t-two",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert "t-one" in out.stderr and "t-two" in out.stderr


def _token_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`simvue-otel server token ARGS...` as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "simvue_otel", "server", "token", *args],
        capture_output=True, text=True, timeout=60, cwd=cwd,
    )  # fmt: skip


def test_token_cli_on_a_database_that_does_not_exist_is_an_error(tmp_path: Path) -> None:
    typo = tmp_path / "typo.db"
    out = _token_cli("--db", "typo.db", "--user", "bob", cwd=tmp_path)
    assert out.returncode == 1
    assert out.stdout == "", "no token is printed"
    message = out.stderr.strip()
    assert message.startswith("simvue-otel server token: no server database at ")
    assert str(typo) in message, "the message names the path, in full"
    assert "--create" in message and "point --db at the database" in message
    assert len(message.splitlines()) == 1
    assert not typo.exists(), "nothing is created"


def test_token_cli_create_makes_a_database_a_server_then_accepts_tokens_of(
    tmp_path: Path,
) -> None:
    db = tmp_path / "new.db"
    made = _token_cli("--db", str(db), "--create", "--user", "carol", "--tenant", "lab")
    assert made.returncode == 0, made.stderr
    assert db.exists()
    again = _token_cli("--db", str(db), "--user", "dave")  # exists now: no --create needed
    assert again.returncode == 0, again.stderr
    server = start_server(tmp_path / "srv", db=db)
    try:
        for token, user in ((made.stdout.strip(), "carol"), (again.stdout.strip(), "dave")):
            reply = requests.get(
                f"{server.api}/whoami", headers={"Authorization": f"Bearer {token}"}, timeout=10
            )
            assert reply.status_code == 200, reply.text
            assert user in reply.text
    finally:
        stop_server(server)


@pytest.mark.parametrize("create", [False, True])
def test_token_cli_refuses_a_file_that_is_not_a_server_database(
    tmp_path: Path, create: bool
) -> None:
    notes = tmp_path / "notes.db"
    notes.write_text("not a database\n")
    out = _token_cli("--db", str(notes), "--user", "bob", *(["--create"] if create else []))
    assert out.returncode == 1
    assert out.stdout == ""
    assert f"{notes} is not a simvue-otel server database" in out.stderr
    assert notes.read_text() == "not a database\n", "the file is left as it was"


def test_token_hint_the_server_prints_works_when_pasted(
    local_server: LocalServer, tmp_path: Path
) -> None:
    hints = [
        line.split(": ", 1)[1]
        for line in local_server.log.read_text().splitlines()
        if line.startswith("Tokens (another --user for another user): ")
    ]
    assert len(hints) == 1, local_server.log.read_text()
    # Pasted in another directory: the database is named by its full path.
    out = subprocess.run(
        ["/bin/sh", "-c", hints[0]], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    token = out.stdout.strip()
    reply = requests.get(
        f"{local_server.api}/whoami", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert reply.status_code == 200, reply.text


# -- visibility ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def people(local_server: LocalServer) -> dict[str, dict[str, str]]:
    return {
        "alice": local_server.headers("alice", "lab-a"),
        "bob": local_server.headers("bob", "lab-a"),  # same tenant as alice
        "carol": local_server.headers("carol", "lab-b"),  # another tenant
    }


@pytest.mark.parametrize(
    ("visibility", "bob_sees", "carol_sees"),
    [
        (None, False, False),
        ({"public": False, "tenant": True, "users": []}, True, False),
        ({"public": True, "tenant": False, "users": []}, True, True),
        ({"public": False, "tenant": False, "users": ["carol"]}, False, True),
    ],
    ids=["private", "tenant", "public", "named-user"],
)
def test_visibility_is_enforced_on_every_read(
    local_server: LocalServer,
    people: dict[str, dict[str, str]],
    visibility: Any,
    bob_sees: bool,
    carol_sees: bool,
) -> None:
    name = _unique("vis")
    body: dict[str, Any] = {"name": name, "folder": "/vis"}
    if visibility is not None:
        body["visibility"] = visibility
    run_id = _post_run(local_server, people["alice"], **body)["id"]
    requests.post(
        f"{local_server.api}/metrics",
        data=msgpack.packb(
            {
                "run": run_id,
                "metrics": [
                    {
                        "values": {"x": 1.0},
                        "step": 0,
                        "time": 0.0,
                        "timestamp": "2026-01-01T00:00:00.000000",
                    }
                ],
            }
        ),
        headers={**people["alice"], "Content-Type": "application/msgpack"},
        timeout=10,
    ).raise_for_status()
    for who, sees in [("alice", True), ("bob", bob_sees), ("carol", carol_sees)]:
        headers = people[who]
        one = _get(local_server, f"/runs/{run_id}", headers)
        assert one.status_code == (200 if sees else 404), (who, one.text)
        listed = _get(
            local_server, "/runs", headers, filters=json.dumps([f"name == {name}"])
        ).json()
        assert listed["count"] == (1 if sees else 0), who
        metrics = _get(
            local_server,
            "/metrics",
            headers,
            runs=json.dumps([run_id]),
            metrics=json.dumps(["x"]),
            xaxis="step",
        ).json()
        assert (run_id in metrics) == sees, who
        events = _get(local_server, "/events", headers, run=run_id, start=0, count=0)
        assert events.status_code == (200 if sees else 404), who
    if bob_sees or carol_sees:
        reader = people["bob"] if bob_sees else people["carol"]
        changed = requests.put(
            f"{local_server.api}/runs/{run_id}",
            json={"tags": ["hijack"]},
            headers=reader,
            timeout=10,
        )
        assert changed.status_code == 403, "a run shared read-only must not be writable by others"
    else:
        changed = requests.put(
            f"{local_server.api}/runs/{run_id}",
            json={"tags": ["hijack"]},
            headers=people["carol"],
            timeout=10,
        )
        assert changed.status_code == 404


def test_posting_data_to_someone_elses_run_is_422(
    local_server: LocalServer, people: dict[str, dict[str, str]]
) -> None:
    run_id = _post_run(local_server, people["alice"], name=_unique("own"))["id"]
    reply = requests.post(
        f"{local_server.api}/events",
        data=msgpack.packb(
            {"run": run_id, "events": [{"message": "x", "timestamp": "2026-01-01T00:00:00.000000"}]}
        ),
        headers={**people["carol"], "Content-Type": "application/msgpack"},
        timeout=10,
    )
    assert reply.status_code == 422
    assert _get(local_server, "/events", people["alice"], run=run_id, count=0).json()["count"] == 0


# -- runs, folders, tags -------------------------------------------------------------------------


def test_run_lifecycle_fields_and_merge(local_server: LocalServer) -> None:
    h = local_server.headers()
    name = _unique("life")
    run_id = _post_run(
        local_server,
        h,
        name=name,
        folder="/life/deep/er",
        status="created",
        tags=["a"],
        metadata={"m": {"x": 1, "y": 2}, "k": "v"},
        description="desc",
        ttl=3600,
        heartbeat_timeout=30,
    )["id"]
    run = _get(local_server, f"/runs/{run_id}", h).json()
    assert (run["name"], run["status"], run["folder"], run["tags"]) == (
        name,
        "created",
        "/life/deep/er",
        ["a"],
    )
    assert (run["ttl"], run["heartbeat_timeout"], run["description"]) == (3600, 30, "desc")
    assert run["started"] is None and run["endtime"] is None and run["created"]
    assert run["visibility"] == {"public": False, "tenant": False, "users": []}
    # parents of the folder exist
    folders = _get(local_server, "/folders", h, filters=json.dumps(["path contains /life"])).json()
    assert {"/life", "/life/deep", "/life/deep/er"} <= {f["path"] for f in folders["data"]}
    # partial update: metadata merges (deeply), other keys replace
    requests.put(
        f"{local_server.api}/runs/{run_id}",
        json={"metadata": {"m": {"y": 3}, "new": True}},
        headers=h,
        timeout=10,
    ).raise_for_status()
    requests.put(
        f"{local_server.api}/runs/{run_id}", json={"status": "running"}, headers=h, timeout=10
    ).raise_for_status()
    run = _get(local_server, f"/runs/{run_id}", h).json()
    assert run["metadata"] == {"m": {"x": 1, "y": 3}, "k": "v", "new": True}
    assert run["status"] == "running" and run["started"] is not None
    requests.put(
        f"{local_server.api}/runs/{run_id}",
        json={"status": "completed", "endtime": "2030-01-01T00:00:00.500000"},
        headers=h,
        timeout=10,
    ).raise_for_status()
    run = _get(local_server, f"/runs/{run_id}", h).json()
    assert run["status"] == "completed" and run["endtime"] == "2030-01-01T00:00:00.500000"
    assert run["tags"] == ["a"] and run["description"] == "desc"


def test_server_generates_adjective_noun_names(local_server: LocalServer) -> None:
    names = {
        _post_run(local_server, local_server.headers(), folder="/gen")["name"] for _ in range(5)
    }
    assert len(names) == 5
    for name in names:
        first, second = name.split("-")
        assert first.isalpha() and second.isalpha()


def test_folder_create_is_idempotent_with_409(local_server: LocalServer) -> None:
    h = local_server.headers()
    path = f"/{_unique('fold')}"
    first = requests.post(f"{local_server.api}/folders", json={"path": path}, headers=h, timeout=10)
    again = requests.post(f"{local_server.api}/folders", json={"path": path}, headers=h, timeout=10)
    assert first.status_code == 200 and again.status_code == 409
    assert again.json()["id"] == first.json()["id"]
    bad = requests.post(
        f"{local_server.api}/folders", json={"path": "no-slash"}, headers=h, timeout=10
    )
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "path"]


def test_a_run_posted_twice_is_two_runs_as_on_simvue(local_server: LocalServer) -> None:
    """No deduplication by run key: clients find runs with the metadata filter instead."""
    h = local_server.headers()
    key = str(uuid.uuid4())
    body = {"name": _unique("keyed"), "metadata": {"simvue_otel_run_key": key}}
    first = _post_run(local_server, h, **body)
    again = requests.post(f"{local_server.api}/runs", json=body, headers=h, timeout=10)
    assert again.status_code == 200 and again.json()["id"] != first["id"]
    found = _get(
        local_server, "/runs", h, filters=json.dumps([f"metadata.simvue_otel_run_key == {key}"])
    ).json()
    assert sorted(r["id"] for r in found["data"]) == sorted([first["id"], again.json()["id"]])


def test_filters_sorting_and_pagination(local_server: LocalServer) -> None:
    h = local_server.headers()
    folder = f"/{_unique('filt')}"
    ids = []
    for i in range(5):
        ids.append(
            _post_run(
                local_server,
                h,
                name=f"{folder[1:]}-{i}",
                folder=folder,
                tags=["even" if i % 2 == 0 else "odd"],
                metadata={"i": i, "group": {"g": "x" if i < 2 else "y"}},
                status="running" if i < 3 else "created",
            )["id"]
        )

    def q(*filters: str, **params: Any) -> dict[str, Any]:
        reply = _get(
            local_server,
            "/runs",
            h,
            filters=json.dumps([f"folder.path == {folder}", *filters]),
            **params,
        )
        assert reply.status_code == 200, reply.text
        return dict(reply.json())

    assert q()["count"] == 5
    assert {r["id"] for r in q("has tag.even")["data"]} == {ids[0], ids[2], ids[4]}
    assert {r["id"] for r in q("status == created")["data"]} == {ids[3], ids[4]}
    assert {r["id"] for r in q("metadata.i >= 3")["data"]} == {ids[3], ids[4]}
    assert {r["id"] for r in q("metadata.group.g == x")["data"]} == {ids[0], ids[1]}
    assert {r["id"] for r in q("user == self", "metadata.i < 1")["data"]} == {ids[0]}
    assert q("created < 1h")["count"] == 5 and q("created > 1h")["count"] == 0
    assert q("metadata.nothere exists")["count"] == 0 and q("metadata.i exists")["count"] == 5
    page = q(sorting=json.dumps([{"id": "name", "desc": True}]), start=1, count=2)
    assert page["count"] == 5 and [r["id"] for r in page["data"]] == [ids[3], ids[2]]
    bad = _get(local_server, "/runs", h, filters=json.dumps(["name ~~ x"]))
    assert bad.status_code == 400 and "not understood" in bad.json()["detail"]


def test_tags_are_listed_and_deleted(local_server: LocalServer) -> None:
    h = local_server.headers("tagger")
    run_id = _post_run(local_server, h, name=_unique("tagged"), tags=["t-one", "t-two"])["id"]
    tags = {t["name"]: t["id"] for t in _get(local_server, "/tags", h).json()["data"]}
    assert {"t-one", "t-two"} <= set(tags)
    assert (
        requests.delete(
            f"{local_server.api}/tags/{tags['t-one']}", headers=h, timeout=10
        ).status_code
        == 200
    )
    assert _get(local_server, f"/tags/{tags['t-one']}", h).status_code == 404
    assert _get(local_server, f"/runs/{run_id}", h).json()["tags"] == ["t-two"]


def test_delete_run_and_folder(local_server: LocalServer) -> None:
    h = local_server.headers("deleter")
    folder = f"/{_unique('del')}"
    run_id = _post_run(local_server, h, name=_unique("gone"), folder=f"{folder}/sub")["id"]
    folder_id = _get(local_server, "/folders", h, filters=json.dumps([f"path == {folder}"])).json()[
        "data"
    ][0]["id"]
    refused = requests.delete(f"{local_server.api}/folders/{folder_id}", headers=h, timeout=10)
    assert refused.status_code == 409
    done = requests.delete(
        f"{local_server.api}/folders/{folder_id}",
        params={"recursive": "True", "runs": "True"},
        headers=h,
        timeout=10,
    )
    assert (
        done.status_code == 200
        and folder_id in done.json()["folders"]
        and done.json()["runs"] == [run_id]
    )
    assert _get(local_server, f"/runs/{run_id}", h).status_code == 404


# -- metrics and events --------------------------------------------------------------------------


def test_metric_and_event_batches_round_trip(local_server: LocalServer) -> None:
    h = local_server.headers()
    run_id = _post_run(local_server, h, name=_unique("data"))["id"]
    points = [
        {
            "values": {"a": i * 0.5, "b": -i, "n": float("nan") if i == 3 else 1.0},
            "step": i,
            "time": i * 0.1,
            "timestamp": f"2026-01-01T00:00:{i:02d}.000000",
        }
        for i in range(50)
    ]
    mh = {**h, "Content-Type": "application/msgpack"}
    assert (
        requests.post(
            f"{local_server.api}/metrics",
            data=msgpack.packb({"run": run_id, "metrics": points}),
            headers=mh,
            timeout=10,
        ).status_code
        == 200
    )
    data = _get(
        local_server,
        "/metrics",
        h,
        runs=json.dumps([run_id]),
        metrics=json.dumps(["a", "b", "n"]),
        xaxis="step",
        aggregate="False",
    ).json()[run_id]
    assert [(p["step"], p["value"], p["time"], p["timestamp"]) for p in data["a"]] == [
        (i, i * 0.5, i * 0.1, f"2026-01-01T00:00:{i:02d}.000000") for i in range(50)
    ]
    assert data["n"][3]["value"] != data["n"][3]["value"]  # NaN survives
    assert sorted(_get(local_server, "/metrics/names", h, runs=json.dumps([run_id])).json()) == [
        "a",
        "b",
        "n",
    ]
    summary = _get(local_server, f"/runs/{run_id}", h).json()["metrics"]["b"]
    assert (summary["count"], summary["min"], summary["max"], summary["last"]) == (50, -49, 0, -49)
    events = [
        {"message": f"e{i}", "log_level": "warning", "timestamp": "2026-01-01T00:00:00.000000"}
        for i in range(20)
    ]
    assert (
        requests.post(
            f"{local_server.api}/events",
            data=msgpack.packb({"run": run_id, "events": events}),
            headers=mh,
            timeout=10,
        ).status_code
        == 200
    )
    got = _get(local_server, "/events", h, run=run_id, start=0, count=0).json()
    assert got["count"] == 20 and got["data"] == events
    page = _get(local_server, "/events", h, run=run_id, start=5, count=3).json()
    assert [e["message"] for e in page["data"]] == ["e5", "e6", "e7"]


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"metrics": [{"values": {"a": 1}, "step": 0}]}, "run"),
        ({"metrics": [{"values": {"a": 1}, "step": -1}]}, "step"),
        ({"metrics": [{"values": {"a": "x"}, "step": 0}]}, "values"),
        ({"metrics": "nope"}, "metrics"),
    ],
)
def test_bad_metric_batches_are_422_and_store_nothing(
    local_server: LocalServer, body: dict[str, Any], where: str
) -> None:
    h = local_server.headers()
    run_id = _post_run(local_server, h, name=_unique("bad"))["id"]
    payload = {"run": "no-such-run" if where == "run" else run_id, **body}
    if where != "run":
        payload["metrics"] = (
            [
                {"values": {"ok": 1.0}, "step": 0},
                *(payload["metrics"] if isinstance(payload["metrics"], list) else []),
            ]
            if isinstance(body["metrics"], list)
            else body["metrics"]
        )
    reply = requests.post(
        f"{local_server.api}/metrics",
        data=msgpack.packb(payload),
        headers={**h, "Content-Type": "application/msgpack"},
        timeout=10,
    )
    assert reply.status_code == 422, reply.text
    assert where in json.dumps(reply.json()["detail"])
    assert _get(local_server, f"/runs/{run_id}", h).json()["metrics"] == {}


def test_malformed_and_oversized_bodies(tmp_path: Path) -> None:
    server = start_server(tmp_path, extra=["--max-body", "1000"])
    try:
        h = server.headers()
        bad = requests.post(
            f"{server.api}/metrics",
            data=b"\xc1\xc1garbage",
            headers={**h, "Content-Type": "application/msgpack"},
            timeout=10,
        )
        assert bad.status_code == 422
        big = requests.post(
            f"{server.api}/runs",
            data=json.dumps({"description": "x" * 5000}),
            headers={**h, "Content-Type": "application/json"},
            timeout=10,
        )
        assert big.status_code == 413
        chunked = requests.post(
            f"{server.api}/runs",
            data=iter([b'{"description": "', b"y" * 2000, b'"}']),
            headers={**h, "Content-Type": "application/json"},
            timeout=10,
        )
        assert chunked.status_code == 413
        assert _get(server, "/runs", h).json()["count"] == 0
        assert requests.get(f"{server.api}/nowhere", headers=h, timeout=10).status_code == 404
        zipped = requests.post(
            f"{server.api}/runs",
            data=gzip.compress(b"{}"),
            headers={**h, "Content-Type": "application/json"},
            timeout=10,
        )
        assert zipped.status_code == 422
    finally:
        stop_server(server)


# -- lost runs and retention ---------------------------------------------------------------------


def test_silent_running_run_becomes_lost_and_heartbeat_keeps_it_alive(tmp_path: Path) -> None:
    server = start_server(tmp_path, extra=["--sweep-interval", "0.2"])
    try:
        h = server.headers()
        silent = _post_run(server, h, name="silent", heartbeat_timeout=1)["id"]
        # 2 s: heartbeats every 0.3 s keep it alive even when a busy machine slows some down
        beating = _post_run(server, h, name="beating", heartbeat_timeout=2)["id"]
        queued = _post_run(server, h, name="queued", heartbeat_timeout=1, status="created")["id"]
        forever = _post_run(server, h, name="forever", heartbeat_timeout=None)["id"]
        began = time.monotonic()
        while True:  # at least three of beating's timeouts, and until the sweep has run
            assert (
                requests.put(
                    f"{server.api}/runs/{beating}/heartbeat", headers=h, timeout=10
                ).status_code
                == 200
            )
            time.sleep(0.3)
            took = time.monotonic() - began
            if took > 6 and _get(server, f"/runs/{silent}", h).json()["status"] == "lost":
                break
            assert took < 60, "the silent run was never marked lost"
        status = {
            rid: _get(server, f"/runs/{rid}", h).json()["status"]
            for rid in (silent, beating, queued, forever)
        }
        assert status == {silent: "lost", beating: "running", queued: "created", forever: "running"}
        # a client that was cut off and comes back revives its run
        requests.put(
            f"{server.api}/runs/{silent}/heartbeat", headers=h, timeout=10
        ).raise_for_status()
        assert _get(server, f"/runs/{silent}", h).json()["status"] == "running"
    finally:
        stop_server(server)


def test_retention_removes_expired_runs_with_their_data(tmp_path: Path) -> None:
    server = start_server(tmp_path, extra=["--sweep-interval", "0.2"])
    try:
        h = server.headers()
        short = _post_run(server, h, name="short", ttl=1)["id"]
        kept = _post_run(server, h, name="kept", ttl=3600)["id"]
        requests.post(
            f"{server.api}/events",
            data=msgpack.packb({"run": short, "events": [{"message": "m"}]}),
            headers={**h, "Content-Type": "application/msgpack"},
            timeout=10,
        ).raise_for_status()
        deadline = time.monotonic() + 60  # the sweep runs late on a busy machine
        while _get(server, f"/runs/{short}", h).status_code != 404:
            assert time.monotonic() < deadline, "the expired run was never removed"
            time.sleep(0.2)
        assert _get(server, f"/runs/{kept}", h).status_code == 200
    finally:
        stop_server(server)


def test_data_survives_a_server_restart(tmp_path: Path) -> None:
    server = start_server(tmp_path)
    h = server.headers()
    run_id = _post_run(server, h, name="durable", tags=["t"])["id"]
    stop_server(server)
    again = start_server(tmp_path, db=server.db, first_token=server.token)
    try:
        assert _get(again, f"/runs/{run_id}", h).json()["tags"] == ["t"]
    finally:
        stop_server(again)


def test_a_batch_posted_twice_is_stored_twice_as_on_simvue(local_server: LocalServer) -> None:
    """The server ignores Idempotency-Key: exactly-once is the client's work."""
    h = {**local_server.headers(), "Content-Type": "application/msgpack"}
    run_id = _post_run(local_server, local_server.headers(), name=_unique("idem"))["id"]
    metrics = msgpack.packb({"run": run_id, "metrics": [{"values": {"v": 1.0}, "step": 0}]})
    events = msgpack.packb({"run": run_id, "events": [{"message": "twice"}]})
    for key in ["batch-1", "batch-1"]:
        for path, body in [("/metrics", metrics), ("/events", events)]:
            reply = requests.post(
                f"{local_server.api}{path}",
                data=body,
                headers={**h, "Idempotency-Key": key},
                timeout=10,
            )
            assert reply.status_code == 200
    run = _get(local_server, f"/runs/{run_id}", local_server.headers()).json()
    assert run["metrics"]["v"]["count"] == 2
    events_seen = _get(local_server, "/events", local_server.headers(), run=run_id, count=0)
    assert events_seen.json()["count"] == 2
