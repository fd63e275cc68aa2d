"""An in-memory Simvue REST API as a ``requests`` transport adapter, for unit tests of the
delivery core (uploader, online sink, pipeline, bridge core) without sockets or threads of a
server, in the spirit of httpx's ``MockTransport``.

It answers the requests simvue-otel makes the way the real server does (no run-key or
request deduplication: a run POSTed twice is two runs, a batch POSTed twice is stored twice)
and can be told to fail: ``fail(method, path_prefix, action)`` makes the next matching request
answer ``action`` (an HTTP status, ``"down"`` for a refused connection, or
``"stored-then-<status>"`` to store the request and answer the status, as a server whose answer
is lost, or ``"conflict"`` to store it and answer 409 with the body a 200 would carry).
End-to-end behaviour against the real ``simvue-otel server`` is tested elsewhere.

Where the real server's behaviour is unknown, the fake can be told to take the other answer
than the local server's, so that the client is shown safe either way: metric points without
``time`` and ``timestamp`` (``bare_points``), fewer points than held unless ``max_points``
asks for more (``max_points_default``) or even then (``max_points_cap``), event pages shorter
than asked for (``events_page_cap``), a run list that ignores its filters (``ignore_filters``).
A metadata ``PUT`` replaces each top-level value it names (no deep merge).
"""

from __future__ import annotations

import itertools
import json
import string
import threading
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

import msgpack
import requests
from requests.adapters import BaseAdapter

URL = "http://fake-simvue.invalid"


def _flat(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


class FakeSimvue(BaseAdapter):
    """The server's state, and the transport that serves it."""

    def __init__(self) -> None:
        super().__init__()
        self.runs: dict[str, dict[str, Any]] = {}
        self.metrics: dict[str, list[dict[str, Any]]] = {}  # run id -> stored points
        self.events: dict[str, list[dict[str, Any]]] = {}
        self.requests: list[tuple[str, str]] = []
        self.down = False
        self.slow: float = 0.0  # seconds each POST of metrics takes (a slow, healthy server)
        self.bare_points = False
        self.max_points_default: int | None = None
        self.max_points_cap: int | None = None
        self.events_page_cap: int | None = None
        self.ignore_filters = False
        self._faults: list[tuple[str, str, str]] = []
        self._ids = (f"{n:022d}" for n in itertools.count(1))
        self._lock = threading.Lock()

    # -- what tests use ------------------------------------------------------------------

    def session(self) -> requests.Session:
        """A session whose requests to :data:`URL` this fake answers."""
        session = requests.Session()
        session.mount(URL, self)
        return session

    def fail(self, method: str, prefix: str, action: int | str) -> None:
        """Make the next ``method`` request whose path starts with ``prefix`` answer ``action``."""
        self._faults.append((method, prefix, str(action)))

    def points(self, run_id: str, name: str) -> list[tuple[int, float]]:
        """(step, value) of every stored point of one metric, in storing order."""
        return [
            (p["step"], p["values"][name])
            for p in self.metrics.get(run_id, [])
            if name in p["values"]
        ]

    def run_ids(self) -> list[str]:
        return list(self.runs)

    # -- the transport -------------------------------------------------------------------

    def close(self) -> None:
        """Nothing to release."""

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        parts = urlsplit(str(request.url))
        path = parts.path.removeprefix("/api/").strip("/")
        method = str(request.method)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        if self.slow and method == "POST" and path == "metrics":
            time.sleep(self.slow)
        with self._lock:
            self.requests.append((method, path))
            action = self._take_fault(method, path)
            if self.down or action == "down":
                raise requests.ConnectionError("[Errno 111] Connection refused")
            if (
                action is not None
                and not action.startswith("stored-then-")
                and action != "conflict"
            ):
                return self._response(request, int(action), {"detail": "injected"})
            status, body = self._handle(method, path, query, request)
            if action == "conflict":
                return self._response(request, 409, body)
            if action is not None:
                return self._response(request, int(action.split("-")[-1]), {"detail": "lost"})
            return self._response(request, status, body)

    def _take_fault(self, method: str, path: str) -> str | None:
        for i, (m, prefix, action) in enumerate(self._faults):
            if m == method and path.startswith(prefix):
                del self._faults[i]
                return action
        return None

    @staticmethod
    def _response(request: requests.PreparedRequest, status: int, body: Any) -> requests.Response:
        response = requests.Response()
        response.status_code = status
        response._content = json.dumps(body).encode()
        response.headers["Content-Type"] = "application/json"
        response.request = request
        response.url = str(request.url)
        return response

    def _handle(
        self, method: str, path: str, query: dict[str, str], request: requests.PreparedRequest
    ) -> tuple[int, Any]:
        body: Any = None
        if request.body:
            raw = request.body if isinstance(request.body, bytes) else request.body.encode()
            ctype = request.headers.get("Content-Type", "")
            body = msgpack.unpackb(raw) if "msgpack" in ctype else json.loads(raw)
        if method == "GET" and path == "version":
            return 200, {"version": "3.0.0-fake"}
        if method == "POST" and path == "folders":
            return 200, {"id": "folder"}
        if method == "POST" and path == "runs":
            run_id = next(self._ids)
            self.runs[run_id] = {"id": run_id, "metadata": {}, "tags": [], **body}
            return 200, {"id": run_id}
        if method == "GET" and path == "runs":
            found = self._list(json.loads(query.get("filters", "[]")))
            start, count = int(query.get("start", 0)), int(query.get("count", 100))
            return 200, {"data": found[start : start + count], "count": len(found)}
        if path.startswith("runs/"):
            run_id, _, rest = path[5:].partition("/")
            run = self.runs.get(run_id)
            if run is None:
                return 404, {"detail": "no such run"}
            if method == "GET" and not rest:
                return 200, {**run, "metrics": self._summary(run_id)}
            if method == "PUT" and not rest:
                for key, value in body.items():
                    if key == "metadata":
                        run["metadata"] = {**run["metadata"], **value}
                    else:
                        run[key] = value
                return 200, {}
            if rest == "heartbeat":
                return 200, {}
            if rest == "abort":
                return 200, {"status": False}
        if method == "POST" and path in ("metrics", "events"):
            if body["run"] not in self.runs:
                return 422, {"detail": "unknown run"}
            store = self.metrics if path == "metrics" else self.events
            store.setdefault(body["run"], []).extend(body[path])
            return 200, {}
        if method == "GET" and path == "metrics":
            (run_id,) = json.loads(query["runs"])
            wanted = json.loads(query["metrics"])
            out: dict[str, list[dict[str, Any]]] = {}
            for point in self.metrics.get(run_id, []):
                for name, value in point["values"].items():
                    if name in wanted:
                        out.setdefault(name, []).append(
                            {"step": point["step"], "time": point["time"],
                             "timestamp": point["timestamp"], "value": value}
                        )  # fmt: skip
            limit = int(query["max_points"]) if "max_points" in query else self.max_points_default
            if self.max_points_cap is not None:
                limit = min(limit or self.max_points_cap, self.max_points_cap)
            for held in out.values():
                if limit is not None:
                    held[limit:] = []
                if self.bare_points:
                    held[:] = [{"step": p["step"], "value": p["value"]} for p in held]
            return 200, {run_id: out}
        if method == "GET" and path == "events":
            events = self.events.get(query["run"], [])
            start, count = int(query.get("start", 0)), int(query.get("count", 0))
            if self.events_page_cap is not None:
                count = min(count or self.events_page_cap, self.events_page_cap)
            page = events[start : start + count] if count else events[start:]
            return 200, {"data": page, "count": len(events)}
        return 404, {"detail": f"the fake does not serve {method} /api/{path}"}

    def _summary(self, run_id: str) -> dict[str, dict[str, Any]]:
        """The run's ``metrics`` summary as the server gives it: a count per metric."""
        summary: dict[str, dict[str, Any]] = {}
        for point in self.metrics.get(run_id, []):
            for name, value in point["values"].items():
                entry = summary.setdefault(name, {"count": 0})
                entry["count"] += 1
                entry["last"] = value
        return summary

    def _list(self, filters: list[str]) -> list[dict[str, Any]]:
        """``GET /api/runs`` with ``==`` filters on name, folder and metadata keys."""
        found = []
        for run in self.runs.values():
            flat = _flat({"metadata": run["metadata"]})
            flat.update(name=run.get("name"), **{"folder.path": run.get("folder")})
            if self.ignore_filters or all(self._matches(flat, f) for f in filters):
                found.append(run)
        return found

    @staticmethod
    def _matches(flat: dict[str, Any], expression: str) -> bool:
        key, _, value = expression.partition(" == ")
        return str(flat.get(key.strip(string.whitespace))) == value.strip()
