"""Every request simvue-otel sends to a Simvue server has a shape the official client sends.

A real Simvue server is written for the official Python client (simvue 2.6.2). Each scenario
below drives one way of using simvue-otel (``Run`` online and queued/reconnected, offline then
``simvue-otel send``, the in-process exporters, the bridge) through a recording proxy in front
of the local server, then checks every recorded request against ``SHAPES``: the official
client's requests, each row citing where the official client makes it. Anything else is a new
request shape that needs a row (and a citation) before it can be sent to a real server.
The official client itself, driven through the same proxy, is the control: it must pass too.
"""

from __future__ import annotations

import ast
import collections
import functools
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from simvue_otel import Run
from simvue_otel._internal.client import SimvueClient
from tests.helpers import (
    ROOT_ATTRS,
    App,
    LocalServer,
    make_app,
    newest_run,
    poll,
    python_json,
    run_state,
    start_bridge,
)
from tests.helpers.bridges import drained
from tests.helpers.cli import no_server_env, send
from tests.helpers.otlp import otlp_app
from tests.proxy import Proxy, Recorded, as_server

pytestmark = pytest.mark.timeout(900)

N_POINTS = 40_000  # more than two official batches' worth: a sender must split them

# The official dispatcher drains at most this many queued items into one POST.
MAX_ENTRIES = 16_000
MAX_ENTRIES_CITE = "simvue/dispatch/queued.py:23 MAX_BUFFER_SIZE"

NEW_SHAPE = "a new request shape: justify it with a row citing the official client"


# -- the official client's request shapes -------------------------------------------------


STAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}$")  # simvue.models.DATETIME
LOG_LEVELS = frozenset({"debug", "info", "warning", "error", "critical"})  # simvue.models


def _is_stamp(value: Any) -> bool:
    return value is None or (isinstance(value, str) and bool(STAMP.match(value)))


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _metric_entry(entry: Mapping[str, Any]) -> list[str]:
    """What ``simvue.models.MetricSet`` (extra="forbid") would refuse in one entry."""
    wrong = []
    values = entry.get("values")
    if not isinstance(values, dict) or not all(
        isinstance(k, str) and isinstance(v, int | float) for k, v in values.items()
    ):
        wrong.append("'values' must map names to numbers")
    step = entry.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        wrong.append("'step' must be an int >= 0")
    if not _is_number(entry.get("time")):
        wrong.append("'time' must be a number")
    if not _is_stamp(entry.get("timestamp")):
        wrong.append("'timestamp' must be YYYY-MM-DDTHH:MM:SS.ffffff")
    return wrong


def _event_entry(entry: Mapping[str, Any]) -> list[str]:
    """What ``simvue.models.EventSet`` (extra="forbid") would refuse in one entry."""
    wrong = []
    if not isinstance(entry.get("message"), str):
        wrong.append("'message' must be a string")
    if entry.get("log_level") is not None and entry.get("log_level") not in LOG_LEVELS:
        wrong.append(f"'log_level' must be one of {sorted(LOG_LEVELS)} or null")
    if not _is_stamp(entry.get("timestamp")):
        wrong.append("'timestamp' must be YYYY-MM-DDTHH:MM:SS.ffffff")
    return wrong


@dataclass(frozen=True)
class Body:
    """The schema of a JSON or msgpack object body."""

    keys: frozenset[str]  # allowed top-level keys
    required: frozenset[str] = frozenset()  # keys the official client always sends
    nonempty: bool = False  # the official client never sends {} here
    nested: Mapping[str, frozenset[str]] = field(default_factory=dict)  # allowed inner keys
    stamps: frozenset[str] = frozenset()  # keys holding a Simvue timestamp
    entries: str | None = None  # the key of a list of entries, each with exactly entry_keys
    entry_keys: frozenset[str] = frozenset()
    entry_check: Callable[[Mapping[str, Any]], list[str]] | None = None

    def problems(self, body: Any) -> list[str]:
        if not isinstance(body, dict):
            return [f"the body is a {type(body).__name__}, not an object"]
        wrong = []
        if extra := set(body) - self.keys:
            wrong.append(f"body keys {sorted(extra)} are not sent by the official client here")
        if missing := self.required - set(body):
            wrong.append(f"body lacks {sorted(missing)}, which the official client always sends")
        if self.nonempty and not body:
            wrong.append("an empty body, which the official client never sends here")
        for key, allowed in self.nested.items():
            value = body.get(key)
            if value is None:
                continue
            if not isinstance(value, dict):
                wrong.append(f"{key!r} must be an object")
            elif extra := set(value) - allowed:
                wrong.append(f"{key!r} has keys {sorted(extra)} (allowed: {sorted(allowed)})")
        wrong += [
            f"{key!r} is not a Simvue timestamp"
            for key in self.stamps & set(body)
            if not _is_stamp(body[key])
        ]
        if self.entries is not None:
            wrong += self._entry_problems(body.get(self.entries))
        return wrong

    def _entry_problems(self, items: Any) -> list[str]:
        if not isinstance(items, list) or not items:
            return [f"{self.entries!r} must be a non-empty list"]
        seen: collections.Counter[str] = collections.Counter()
        for item in items:
            if not isinstance(item, dict):
                seen["an entry that is not an object"] += 1
                continue
            if set(item) != self.entry_keys:
                seen[
                    f"entry keys {sorted(item)} (the official client sends exactly "
                    f"{sorted(self.entry_keys)})"
                ] += 1
            for text in self.entry_check(item) if self.entry_check else []:
                seen[text] += 1
        return [f"{n} of {len(items)} entries: {text}" for text, n in seen.items()]


@dataclass(frozen=True)
class Shape:
    """One request shape of the official client, and where it makes that request."""

    method: str
    path: str  # a template: {id} stands for one path segment
    query: frozenset[str] = frozenset()  # allowed query keys
    content_type: str | None = None  # None: no body
    body: Body | None = None
    required_query: frozenset[str] = frozenset()  # query keys it always sends
    max_count: int | None = None  # the largest `count` it asks for
    cite: tuple[str, ...] = ()  # "simvue/<file>.py:<line> <function>": caller first

    def matches_path(self, method: str, path: str) -> bool:
        parts, wanted = path.split("/"), self.path.split("/")
        return (
            method == self.method
            and len(parts) == len(wanted)
            and all(
                w == p or (w.startswith("{") and w.endswith("}") and p != "")
                for w, p in zip(wanted, parts, strict=True)
            )
        )

    def problems(self, r: Recorded) -> list[str]:
        wrong = []
        if extra := set(r.query) - self.query:
            wrong.append(
                f"query keys {sorted(extra)} are not sent by the official client here "
                f"(it sends {sorted(self.query) or 'none'})"
            )
        if missing := self.required_query - set(r.query):
            wrong.append(f"query lacks {sorted(missing)}, which the official client always sends")
        for key, values in r.query.items():
            if len(values) != 1:
                wrong.append(f"query key {key!r} given {len(values)} times")
            elif key in QUERY_VALUES and not QUERY_VALUES[key](values[0]):
                wrong.append(f"query {key}={values[0]!r} is not a value the official client sends")
        count = r.query.get("count", ["0"])[0]
        if self.max_count is not None and count.isdigit() and int(count) > self.max_count:
            wrong.append(
                f"count={count} > {self.max_count}, the official client's page size "
                "(simvue/api/request.py:39 MAX_ENTRIES_PER_PAGE)"
            )
        if r.content_type != self.content_type:
            wrong.append(
                f"content type {r.content_type} (the official client: {self.content_type})"
            )
        if self.body is None:
            if r.raw:
                wrong.append("a body, where the official client sends none")
        elif r.decode_error is not None:
            wrong.append(f"the body does not decode: {r.decode_error}")
        else:
            wrong += self.body.problems(r.body)
        return wrong


def _json_list(value: str) -> bool:
    try:
        parsed = json.loads(value)
    except ValueError:
        return False
    return isinstance(parsed, list) and all(isinstance(v, str) for v in parsed)


def _sorting(value: str) -> bool:
    try:
        parsed = json.loads(value)
    except ValueError:
        return False
    return isinstance(parsed, list) and all(
        isinstance(v, dict) and set(v) <= {"id", "desc"} for v in parsed
    )


_FLAG = frozenset({"True", "False"})  # how `requests` writes the bools the client passes

# What the official client puts in each query parameter it sends.
QUERY_VALUES: dict[str, Callable[[str], bool]] = {
    "count": str.isdigit,
    "start": str.isdigit,
    "max_points": lambda v: v.isdigit() and int(v) > 0,
    "filters": lambda v: v == "" or _json_list(v),  # "" from Client.get_events
    "runs": _json_list,
    "metrics": _json_list,
    "attributes": _json_list,
    "sorting": _sorting,
    "xaxis": lambda v: v in {"step", "time", "timestamp"},
    "aggregate": _FLAG.__contains__,
    "run": bool,
    **{
        f"return_{k}": _FLAG.__contains__
        for k in ("basic", "system", "timing", "metrics", "alerts", "metadata")
    },
}

VISIBILITY = frozenset({"tenant", "public", "users"})
RUN_NESTED = {"visibility": VISIBILITY, "notifications": frozenset({"state"})}
# POST /api/runs from Run.init: the keys staged there (api/objects/run.py setters).
RUN_POST_KEYS = frozenset(
    "folder system status description name visibility ttl tags metadata heartbeat_timeout "
    "alerts notifications".split()
)
# `folder` and `status` are the only keys every POST carries: Run.new stages both, while
# Run.batch_create (api/objects/run.py:222) leaves out ttl, heartbeat_timeout, alerts and
# notifications, so the server has defaults for them.
RUN_REQUIRED = frozenset({"folder", "status"})
# PUT /api/runs/{id}: any staged field of a writable run (contract §2.5); the offline sender
# resends a run's accumulated staged keys, `started` and `endtime` included.
RUN_PUT_KEYS = RUN_POST_KEYS | {"started", "endtime"}
PAGE = frozenset({"count", "start"})  # get_paginated adds both to every list request
RUN_LIST_KEYS = frozenset(
    "filters count start attributes sorting return_basic return_system return_timing "
    "return_metrics return_alerts return_metadata".split()
)

SHAPES: list[Shape] = [
    Shape(
        "GET", "/api/version", cite=("simvue/config/user.py:185 SimvueConfiguration._check_server",)
    ),
    Shape(
        "GET",
        "/api/nosim/version",
        cite=("simvue/config/user.py:206 SimvueConfiguration._check_server",),
    ),
    Shape("GET", "/api/whoami", cite=("simvue/api/objects/stats.py:164 Stats.whoami",)),
    Shape(
        "POST",
        "/api/folders",
        content_type="application/json",
        body=Body(frozenset({"path"}), required=frozenset({"path"})),
        cite=(
            "simvue/run.py:762 Run.init",
            "simvue/sender/actions.py:241 UploadAction._single_item_upload",
            "simvue/api/objects/base.py:802 SimvueObject._post_single",
        ),
    ),
    Shape(
        "GET",
        "/api/folders",
        query=frozenset({"filters", "count", "start", "sorting"}),
        required_query=PAGE,
        max_count=100,
        cite=("simvue/client.py:813 Client.get_folders", "simvue/api/request.py:439 get_paginated"),
    ),
    Shape(
        "POST",
        "/api/runs",
        content_type="application/json",
        body=Body(RUN_POST_KEYS, required=RUN_REQUIRED, nested=RUN_NESTED),
        cite=(
            "simvue/run.py:840 Run.init",
            "simvue/api/objects/base.py:802 SimvueObject._post_single",
        ),
    ),
    # The offline sender posts a cached run whole: `started` and `endtime` included.
    Shape(
        "POST",
        "/api/runs",
        content_type="application/json",
        body=Body(
            RUN_PUT_KEYS,
            required=RUN_REQUIRED,
            nested=RUN_NESTED,
            stamps=frozenset({"started", "endtime"}),
        ),
        cite=(
            "simvue/sender/actions.py:241 UploadAction._single_item_upload",
            "simvue/sender/actions.py:501 RunUploadAction.initialise_object",
        ),
    ),
    Shape(
        "GET",
        "/api/runs",
        query=RUN_LIST_KEYS,
        required_query=PAGE,
        max_count=100,
        cite=(
            "simvue/client.py:285 Client.get_runs",
            "simvue/client.py:138 Client.get_run_id_from_name",
            "simvue/api/request.py:439 get_paginated",
        ),
    ),
    Shape(
        "GET",
        "/api/runs/{id}",
        cite=(
            "simvue/run.py:1397 Run.update_tags",
            "simvue/run.py:1086 Run.name",
            "simvue/api/objects/base.py:920 SimvueObject._get",
        ),
    ),
    Shape(
        "PUT",
        "/api/runs/{id}",
        content_type="application/json",
        body=Body(
            RUN_PUT_KEYS, nonempty=True, nested=RUN_NESTED, stamps=frozenset({"started", "endtime"})
        ),
        cite=(
            "simvue/run.py:1327 Run.update_metadata",
            "simvue/run.py:1363 Run.set_tags",
            "simvue/run.py:1152 Run.reconnect",
            "simvue/run.py:2164 Run.set_status",
            "simvue/sender/actions.py:241 UploadAction._single_item_upload",
            "simvue/api/objects/base.py:851 SimvueObject._put",
        ),
    ),
    Shape(
        "PUT",
        "/api/runs/{id}/heartbeat",
        cite=(
            "simvue/run.py:500 Run._create_heartbeat_callback._heartbeat",
            "simvue/api/objects/run.py:744 Run.send_heartbeat",
            "simvue/sender/actions.py:1005 HeartbeatUploadAction._single_item_upload",
        ),
    ),
    Shape(
        "GET",
        "/api/runs/{id}/abort",
        cite=(
            "simvue/run.py:496 Run._create_heartbeat_callback._heartbeat",
            "simvue/api/objects/run.py:789 Run.abort_trigger",
        ),
    ),
    Shape(
        "POST",
        "/api/metrics",
        content_type="application/msgpack",
        body=Body(
            frozenset({"run", "metrics"}),
            required=frozenset({"run", "metrics"}),
            entries="metrics",
            entry_keys=frozenset({"values", "step", "time", "timestamp"}),
            entry_check=_metric_entry,
        ),
        cite=(
            "simvue/run.py:557 Run._create_dispatch_callback._dispatch_callback",
            "simvue/api/objects/metrics.py:206 Metrics._post_single",
            "simvue/api/objects/base.py:802 SimvueObject._post_single",
        ),
    ),
    Shape(
        "POST",
        "/api/events",
        content_type="application/msgpack",
        body=Body(
            frozenset({"run", "events"}),
            required=frozenset({"run", "events"}),
            entries="events",
            entry_keys=frozenset({"message", "log_level", "timestamp"}),
            entry_check=_event_entry,
        ),
        cite=(
            "simvue/run.py:540 Run._create_dispatch_callback._dispatch_callback",
            "simvue/api/objects/events.py:198 Events._post_single",
            "simvue/api/objects/base.py:802 SimvueObject._post_single",
        ),
    ),
    Shape(
        "GET",
        "/api/metrics",
        query=frozenset({"runs", "metrics", "xaxis", "aggregate", "max_points", "count", "start"}),
        required_query=frozenset({"runs", "metrics", "xaxis"}),
        cite=(
            "simvue/client.py:870 Client._get_run_metrics_from_server",
            "simvue/api/objects/metrics.py:160 Metrics.get",
        ),
    ),
    Shape(
        "GET",
        "/api/metrics/names",
        query=frozenset({"runs"}),
        required_query=frozenset({"runs"}),
        cite=("simvue/api/objects/metrics.py:191 Metrics.names",),
    ),
    Shape(
        "GET",
        "/api/events",
        query=frozenset({"run", "filters", "start", "count"}),
        required_query=frozenset({"run", "start", "count"}),
        cite=(
            "simvue/client.py:1120 Client.get_events",
            "simvue/api/objects/events.py:125 Events.get",
        ),
    ),
    Shape(
        "DELETE",
        "/api/runs/{id}",
        cite=(
            "simvue/client.py:343 Client.delete_run",
            "simvue/api/objects/base.py:892 SimvueObject.delete",
        ),
    ),
]


# -- the matcher --------------------------------------------------------------------------


def request_problems(r: Recorded, shapes: Iterable[Shape] = SHAPES) -> list[str]:
    """Why ``r`` is not a request the official client sends (empty when it is)."""
    wrong = []
    if r.header("Idempotency-Key") is not None:
        wrong.append(
            "an Idempotency-Key header: the official client never sends one "
            "(simvue/config/user.py:407 SimvueConfiguration.headers)"
        )
    if not (r.header("Authorization") or "").startswith("Bearer "):
        wrong.append("no 'Authorization: Bearer' header")
    key = {"/api/metrics": "metrics", "/api/events": "events"}.get(r.path)
    if r.method == "POST" and key and isinstance(r.body, dict):
        n = len(r.body.get(key) or [])
        if n > MAX_ENTRIES:
            wrong.append(
                f"{n} {key} entries in one POST: the official client sends at most "
                f"{MAX_ENTRIES} ({MAX_ENTRIES_CITE})"
            )
    candidates = [s for s in shapes if s.matches_path(r.method, r.path)]
    if not candidates:
        return [*wrong, f"no row for {r.method} {r.path}: {NEW_SHAPE}"]
    best = min((s.problems(r) for s in candidates), key=len)
    if best:
        wrong += [f"{text}: {NEW_SHAPE}" for text in best]
    return wrong


def conformance_problems(recorded: Iterable[Recorded]) -> list[str]:
    """Every distinct problem of the recorded requests, with how often and one example."""
    seen: dict[str, list[Recorded]] = collections.defaultdict(list)
    for r in recorded:
        for text in request_problems(r):
            seen[f"{r.method} {r.path.split('/api/', 1)[-1].split('/')[0]}: {text}"].append(r)
    return [
        f"{len(examples)}x {text}\n      e.g. {examples[0].describe()}"
        for text, examples in seen.items()
    ]


def assert_conforms(proxy: Proxy) -> None:
    """The scenario really went through the proxy, and every request has an official shape."""
    recorded = proxy.requests
    assert recorded, "nothing went through the proxy: the scenario did not use it"
    assert any(r.method == "POST" and r.path == "/api/metrics" for r in recorded), (
        "no POST /api/metrics was recorded: " + ", ".join(sorted({r.path for r in recorded}))
    )
    problems = conformance_problems(recorded)
    shapes = collections.Counter(f"{r.method} {r.path}" for r in recorded)
    assert not problems, (
        f"{len(problems)} non-conforming request shape(s) among {len(recorded)} requests:\n  "
        + "\n  ".join(problems)
        + f"\nrecorded: {dict(shapes)}"
    )


# -- fixtures and helpers -----------------------------------------------------------------


def reader(proxy: Proxy, server: LocalServer) -> SimvueClient:
    """Our REST client, through the proxy: its reads are checked as well."""
    return SimvueClient(proxy.url, server.token, retries=2)


def unique(what: str) -> tuple[str, str]:
    """A new run name and folder for this scenario."""
    tag = uuid.uuid4().hex[:10]
    return f"wire-{what}-{tag}", f"/wire/{what}-{tag}"


def steps(client: SimvueClient, run_id: str, metric: str) -> list[int]:
    return sorted(p["step"] for p in client.get_metrics(run_id, [metric]).get(metric, []))


def _program(run: Run, name: str, folder: str) -> None:
    """The Run program of scenarios (a) and (b): every write the Run API has."""
    assert run.init(
        name=name,
        folder=folder,
        tags=["wire", "a"],
        metadata={"solver": {"tol": 1e-6, "kind": "cg"}, "n": 3},
        description="wire conformance",
        visibility="tenant",
        retention_period="1 hour",
        resources_metrics_interval=None,
    )
    for i in range(N_POINTS):
        run.log_metrics({"x": float(i)})
    run.log_event("converged")
    run.log_event("mesh is coarse", log_level="warning")
    run.update_tags(["b"])
    run.update_metadata({"n": 4, "post": "yes"})


def _check_program(client: SimvueClient, key: str) -> None:
    found = client.find_run_by_key(key)
    assert found is not None, f"no run with key {key}"
    run = client.get_run(found["id"])
    assert run["status"] == "completed"
    assert sorted(run["tags"]) == ["a", "b", "wire"]
    assert run["metadata"]["n"] == 4 and run["metadata"]["post"] == "yes"
    assert steps(client, found["id"], "x") == list(range(N_POINTS))
    events = sorted((e["message"], e["log_level"]) for e in client.get_events(found["id"]))
    assert events == [("converged", "info"), ("mesh is coarse", "warning")]


# -- scenarios ----------------------------------------------------------------------------


def test_run_online_queued_and_reconnected(
    proxy: Proxy, local_server: LocalServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """(a) ``Run`` online, then a queued run resumed by ``reconnect`` in another ``Run``."""
    monkeypatch.setenv("SIMVUE_URL", proxy.url)
    monkeypatch.setenv("SIMVUE_TOKEN", local_server.token)
    monkeypatch.setenv("SIMVUE_OFFLINE_DIRECTORY", str(tmp_path / "offline"))
    monkeypatch.delenv("SIMVUE_OTEL_MODE", raising=False)
    name, folder = unique("run")
    run = Run()
    _program(run, name, folder)
    key = run.key
    run.close()

    queued_name = f"{name}-queued"
    queued = Run()
    assert queued.init(
        name=queued_name, folder=folder, running=False, resources_metrics_interval=None
    )
    queued.close()
    resumed = Run()
    resumed.config(disable_resources_metrics=True)
    assert resumed.reconnect(queued_name)
    resumed.log_metrics({"y": 1.0})
    resumed.log_metrics({"y": 2.0})
    resumed.log_event("resumed")
    resumed.close()

    assert key is not None
    with reader(proxy, local_server) as client:
        _check_program(client, key)
        found = newest_run(client, queued_name, folder)
        assert found is not None
        assert client.get_run(found["id"])["status"] == "completed"
        assert steps(client, found["id"], "y") == [0, 1]
        try:
            client.request("DELETE", f"runs/{found['id']}", accept=(200, 204))
            assert newest_run(client, queued_name, folder) is None
        finally:
            assert_conforms(proxy)  # also when the deletion failed


def test_offline_run_then_send(
    proxy: Proxy, local_server: LocalServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """(b) ``Run(mode="offline")`` to a spool, then ``simvue-otel send`` through the proxy."""
    cache = tmp_path / "offline"
    no_server_env(monkeypatch, tmp_path / "home")
    monkeypatch.setenv("SIMVUE_OFFLINE_DIRECTORY", str(cache))
    name, folder = unique("offline")
    run = Run(mode="offline")
    _program(run, name, folder)
    key = run.key
    run.close()
    assert not proxy.requests, "offline mode sent nothing"

    send(cache, as_server(proxy, local_server))
    assert key is not None
    with reader(proxy, local_server) as client:
        _check_program(client, key)
    assert_conforms(proxy)


def _exporter_program(app: App, flush_every: int | None = None) -> None:
    """Metric points, events and a child span under a run span, through the OTel SDK; with
    ``flush_every``, the logs are flushed that often (the SDK's batching log processor holds
    2048 records and drops the rest)."""
    with app.tracer.start_as_current_span("simvue.run", attributes=ROOT_ATTRS):
        for i in range(N_POINTS):
            app.metrics({"x": float(i)}, i)
            if flush_every and i % flush_every == flush_every - 1:
                app.logger_provider.force_flush()
        app.logger.emit(body="converged", event_name="simvue.event")
        with app.tracer.start_as_current_span("assemble"):
            pass


def _check_exporter_program(client: SimvueClient, key: str) -> None:
    state = poll(
        lambda: run_state(client, key),
        lambda s: s["status"] == "completed" and len(s["metrics"].get("x", [])) == N_POINTS,
        60,
        interval=0.25,
    )
    assert state["status"] == "completed"
    assert sorted(step for step, _, _ in state["metrics"]["x"]) == list(range(N_POINTS))
    assert ("converged", "info") in state["events"]


def test_in_process_exporters(proxy: Proxy, local_server: LocalServer, tmp_path: Path) -> None:
    """(c) The OTel SDK with simvue-otel's exporters in the same process."""
    name, folder = unique("export")
    app = make_app("online", tmp_path, as_server(proxy, local_server), name, folder)
    _exporter_program(app)
    assert app.close(120)
    with reader(proxy, local_server) as client:
        _check_exporter_program(client, app.key)
    assert_conforms(proxy)


def test_bridge(proxy: Proxy, local_server: LocalServer, tmp_path: Path) -> None:
    """(d) The official OTLP/HTTP exporters → ``simvue-otel bridge`` → the proxy."""
    bridge = start_bridge(tmp_path / "bridge", as_server(proxy, local_server))
    try:
        name, folder = unique("bridge")
        app = otlp_app("proto", name, folder, bridge)
        _exporter_program(app, flush_every=1000)
        app.close()
        drained(bridge, timeout=120)
        with reader(proxy, local_server) as client:
            _check_exporter_program(client, app.key)
    finally:
        bridge.stop()
    assert_conforms(proxy)


# -- the control: the official client passes its own table --------------------------------


OFFICIAL = textwrap.dedent(
    """
    import json, sys
    from simvue import Client, Run

    spec = json.loads(sys.argv[1])
    n = spec["points"]
    with Run(mode=spec["mode"]) as run:
        run.config(disable_resources_metrics=True)
        run.init(
            name=spec["name"], folder=spec["folder"], tags=["wire", "a"],
            metadata={"solver": {"tol": 1e-6}, "n": 3}, description="wire conformance",
            visibility="tenant", retention_period="1 hour",
        )
        for i in range(n):
            run.log_metrics({"x": float(i)})
        run.log_event("converged")
        run.log_event("mesh is coarse", log_level="warning")
        run.update_tags(["b"])
        run.update_metadata({"n": 4})
    if spec["mode"] == "offline":
        print("{}")
        sys.exit(0)
    with Run() as queued:
        queued.init(name=spec["name"] + "-queued", folder=spec["folder"], running=False)
        queued_id = queued.id
    with Run() as resumed:
        resumed.config(disable_resources_metrics=True)
        resumed.reconnect(queued_id)
        resumed.log_metrics({"y": 1.0})
        resumed.log_event("resumed")
    client = Client()
    run_id = client.get_run_id_from_name(spec["name"])
    values = client.get_metric_values(["x"], "step", run_ids=[run_id], output_format="dict")
    runs = client.get_runs([f"name == {spec['name']}"], metadata=True, output_format="dict")
    folders = list(client.get_folders(filters=[f"path == {spec['folder']}"]))
    events = client.get_events(run_id)
    client.delete_run(queued_id)
    print(json.dumps({"points": len(values["x"]), "runs": len(runs), "folders": len(folders),
                      "events": len(events)}))
    """
)


def _official(spec: dict[str, Any], env: dict[str, str], cwd: Path) -> Any:
    """The official client's scenario above, as a user's script; the counts it printed."""
    return python_json(OFFICIAL, [json.dumps(spec)], env, cwd, timeout=600)


def _official_env(proxy: Proxy, server: LocalServer, home: Path) -> dict[str, str]:
    """A user's shell for the official client: the proxy's URL, no stray simvue.toml."""
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIMVUE_")}
    env.update(
        SIMVUE_URL=proxy.url,
        SIMVUE_TOKEN=server.token,
        HOME=str(home),
        SIMVUE_OFFLINE_DIRECTORY=str(home / "offline"),
        SIMVUE_DISABLE_ENVIRONMENT_METRICS="1",
        SIMVUE_DISABLE_GIT_METRICS="1",
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.mark.compat
def test_the_official_client_conforms_to_the_table(
    proxy: Proxy, local_server: LocalServer, tmp_path: Path
) -> None:
    """The table is checked against real traffic: the official client, online then offline
    with ``simvue-sender``, through the same proxy, breaks no row and no limit."""
    pytest.importorskip("simvue")
    env = _official_env(proxy, local_server, tmp_path / "home")
    name, folder = unique("official")
    spec = {"name": name, "folder": folder, "points": N_POINTS, "mode": "online"}
    counts = _official(spec, env, tmp_path)
    assert counts == {"points": N_POINTS, "runs": 1, "folders": 1, "events": 2}

    name, folder = unique("official-offline")
    spec = {"name": name, "folder": folder, "points": N_POINTS, "mode": "offline"}
    assert _official(spec, env, tmp_path) == {}
    sender = Path(sys.executable).with_name("simvue-sender")
    out = subprocess.run(
        [str(sender), "-i", env["SIMVUE_OFFLINE_DIRECTORY"]],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, f"simvue-sender failed:\n{out.stdout}\n{out.stderr}"
    with SimvueClient(local_server.url, local_server.token) as client:
        found = newest_run(client, name, folder)
        assert found is not None and steps(client, found["id"], "x") == list(range(N_POINTS))

    posts = [r for r in proxy.requests if r.method == "POST" and r.path == "/api/metrics"]
    assert sum(len(r.body["metrics"]) for r in posts) >= 2 * N_POINTS, "every point was posted"
    assert_conforms(proxy)


# -- the table and the matcher themselves ----------------------------------------------------


_CITE = re.compile(r"^simvue/(?P<file>[\w/]+\.py):(?P<line>\d+) (?P<name>[\w.]+)$")
# Each cited line makes the request, or is the official client's call that leads to it.
_REQUEST_TOKENS = (
    # low-level senders
    "sv_get(", "sv_post(", "sv_put(", "sv_delete(", "requests.get(", ":= get(",
    # object-layer calls that send (commit: POST or PUT; a property read: GET)
    ".commit()", ".delete()", ".get(", "_get_all_objects(", "_post_single(",
    "self._sv_obj.tags", "self._sv_obj.name", "send_heartbeat()", "abort_trigger",
    # the sender builds the cached run its next commit posts whole
    "Run.new(**data)",
    "MAX_BUFFER_SIZE",
)  # fmt: skip


@functools.cache
def _functions(path: Path) -> list[tuple[int, int, str]]:
    """(first line, last line, qualified name) of every function in a source file."""
    found: list[tuple[int, int, str]] = []

    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    found.append((child.lineno, child.end_lineno or child.lineno, name))
                walk(child, f"{name}.")
            else:
                walk(child, prefix)

    walk(ast.parse(path.read_text()), "")
    return found


def _check_citation(root: Path, cite: str) -> str | None:
    """Why ``cite`` does not point at the request in the installed client (None if it does)."""
    m = _CITE.match(cite)
    if m is None:
        return f"{cite!r} is not 'simvue/<file>.py:<line> <function>'"
    path, line, name = root / "simvue" / m["file"], int(m["line"]), m["name"]
    if not path.is_file():
        return f"{cite}: no such file"
    lines = path.read_text().splitlines()
    if not 1 <= line <= len(lines):
        return f"{cite}: the file has {len(lines)} lines"
    text = lines[line - 1]
    if not any(token in text for token in _REQUEST_TOKENS):
        return f"{cite}: line {line} makes no request: {text.strip()!r}"
    enclosing = [(a, q) for a, b, q in _functions(path) if a <= line <= b]
    if enclosing:
        innermost = max(enclosing)[1]
        return None if innermost == name else f"{cite}: line {line} is in {innermost}"
    return None if name in text else f"{cite}: line {line} does not define {name}"


def test_every_citation_points_at_the_official_client() -> None:
    """Each row's citations name the function holding that line in simvue 2.6.2."""
    try:
        version = importlib.metadata.version("simvue")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("the official simvue client is not installed")
    if version != "2.6.2":
        pytest.skip(f"the citations are for simvue 2.6.2, not {version}")
    import simvue

    root = Path(simvue.__file__).parent.parent
    cites = [MAX_ENTRIES_CITE, *(c for shape in SHAPES for c in shape.cite)]
    assert all(shape.cite for shape in SHAPES), "every row cites the official client"
    wrong = [why for c in cites if (why := _check_citation(root, c))]
    assert not wrong, "\n".join(wrong)
    queued = (root / "simvue/dispatch/queued.py").read_text()
    assert f"MAX_BUFFER_SIZE: int = {MAX_ENTRIES}" in queued


def _recorded(
    method: str,
    path: str,
    *,
    query: dict[str, list[str]] | None = None,
    content_type: str | None = None,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> Recorded:
    return Recorded(
        method=method,
        path=path,
        query=query or {},
        content_type=content_type,
        body=body,
        headers={"Authorization": "Bearer t", **(headers or {})},
        raw=b"x" if body is not None else b"",
    )


def _point(step: int) -> dict[str, Any]:
    return {
        "values": {"x": 1.0},
        "step": step,
        "time": 0.5,
        "timestamp": "2026-01-01T10:00:00.000000",
    }


def test_the_matcher_accepts_official_shapes_and_names_every_other() -> None:
    """Requests shaped as the official client's pass; each kind of deviation is caught."""
    msgpack_type = "application/msgpack"
    good = [
        _recorded("GET", "/api/version"),
        _recorded("POST", "/api/folders", content_type="application/json", body={"path": "/a"}),
        _recorded(
            "GET",
            "/api/runs",
            query={
                "filters": ['["name == x"]'],
                "count": ["100"],
                "start": ["0"],
                "return_basic": ["True"],
            },
        ),
        _recorded(
            "PUT",
            "/api/runs/AbC123",
            content_type="application/json",
            body={"status": "completed", "endtime": "2026-01-01T10:00:00.000000"},
        ),
        _recorded("PUT", "/api/runs/AbC123/heartbeat"),
        _recorded(
            "POST",
            "/api/metrics",
            content_type=msgpack_type,
            body={"run": "r", "metrics": [_point(i) for i in range(MAX_ENTRIES)]},
        ),
        _recorded(
            "GET",
            "/api/events",
            query={"run": ["r"], "filters": [""], "start": ["0"], "count": ["0"]},
        ),
    ]
    assert conformance_problems(good) == []

    bad = {
        "Idempotency-Key": _recorded(
            "POST",
            "/api/metrics",
            content_type=msgpack_type,
            body={"run": "r", "metrics": [_point(0)]},
            headers={"Idempotency-Key": "k"},
        ),
        f"{MAX_ENTRIES + 1} metrics entries": _recorded(
            "POST",
            "/api/metrics",
            content_type=msgpack_type,
            body={"run": "r", "metrics": [_point(i) for i in range(MAX_ENTRIES + 1)]},
        ),
        "entry keys": _recorded(
            "POST",
            "/api/metrics",
            content_type=msgpack_type,
            body={"run": "r", "metrics": [{"values": {"x": 1}, "step": 0}]},
        ),
        "'step' must be an int >= 0": _recorded(
            "POST",
            "/api/metrics",
            content_type=msgpack_type,
            body={"run": "r", "metrics": [_point(-1)]},
        ),
        "body lacks ['run']": _recorded(
            "POST",
            "/api/events",
            content_type=msgpack_type,
            body={"events": [{"message": "m", "log_level": "info", "timestamp": None}]},
        ),
        "content type application/json": _recorded(
            "POST",
            "/api/metrics",
            content_type="application/json",
            body={"run": "r", "metrics": [_point(0)]},
        ),
        "query keys ['page']": _recorded(
            "GET", "/api/runs", query={"page": ["1"], "count": ["10"], "start": ["0"]}
        ),
        "query lacks ['count', 'start']": _recorded("GET", "/api/folders", query={}),
        "count=1000 > 100": _recorded(
            "GET", "/api/runs", query={"count": ["1000"], "start": ["0"]}
        ),
        "query aggregate='false'": _recorded(
            "GET",
            "/api/metrics",
            query={
                "runs": ['["r"]'],
                "metrics": ['["x"]'],
                "xaxis": ["step"],
                "aggregate": ["false"],
            },
        ),
        "body keys ['colour']": _recorded(
            "POST",
            "/api/runs",
            content_type="application/json",
            body={"folder": "/", "status": "running", "colour": "red"},
        ),
        "'visibility' has keys ['everyone']": _recorded(
            "PUT",
            "/api/runs/x",
            content_type="application/json",
            body={"visibility": {"everyone": True}},
        ),
        "an empty body": _recorded("PUT", "/api/runs/x", content_type="application/json", body={}),
        "no row for PATCH /api/runs/x": _recorded("PATCH", "/api/runs/x"),
        "no row for GET /api/runs/x/metrics": _recorded("GET", "/api/runs/x/metrics"),
        "a body, where the official client sends none": Recorded(
            method="PUT",
            path="/api/runs/x/heartbeat",
            query={},
            content_type=None,
            body=None,
            headers={"Authorization": "Bearer t"},
            raw=b"{}",
        ),
        "no 'Authorization: Bearer' header": Recorded(
            method="GET", path="/api/version", query={}, content_type=None, body=None, headers={}
        ),
    }
    for expected, request in bad.items():
        found = request_problems(request)
        assert any(expected in text for text in found), (expected, found)
        assert all(NEW_SHAPE in t or "header" in t or "entries in one POST" in t for t in found)
