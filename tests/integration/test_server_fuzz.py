"""Fuzzing `simvue-otel server` from the OpenAPI description it serves.

Requests are generated from ``GET /api/openapi.json``: for each operation, bodies and
parameters that follow its schemas, mixed with hostile values (NaN, 1e400, integers past
64 bits, lone surrogates, deep nesting, long strings, wrong types, lists for objects),
sent as JSON text (so non-standard tokens can be sent) or msgpack. Every answer must be
below 500 and carry a ``detail`` when it is an error; afterwards the server must still
serve every user, every run listed must still read back, and the web view must render.

The run is seeded and bounded (a few seconds): ``SIMVUE_OTEL_FUZZ_SEED`` and
``SIMVUE_OTEL_FUZZ_EXAMPLES`` (per operation) change it, for a longer hunt.
"""

from __future__ import annotations

import json
import os
import random
import re
import string
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import msgpack
import pytest
import requests

from simvue_otel._internal.server.app import create_app
from simvue_otel._internal.server.store import Store
from tests.helpers import LocalServer, start_server, stop_server

SEED = int(os.environ.get("SIMVUE_OTEL_FUZZ_SEED", "20240611"))
EXAMPLES = int(os.environ.get("SIMVUE_OTEL_FUZZ_EXAMPLES", "30"))


@dataclass(frozen=True)
class Raw:
    """JSON text sent as it is (NaN, 1e400, "\\ud800"...), which json.dumps would not write."""

    text: str


HOSTILE: list[Any] = [
    Raw("NaN"),
    Raw("Infinity"),
    Raw("-Infinity"),
    Raw("1e400"),
    Raw("-1e400"),
    Raw("1" + "0" * 400),
    Raw("1e-400"),
    2**63,
    2**64,
    -(2**63) - 1,
    -1,
    0,
    0.5,
    True,
    None,
    "",
    " ",
    "x" * 20_000,
    Raw('"\\ud800"'),
    Raw('"a\\udfffb"'),
    "\x00",
    "é🙂",
    "/",
    "//evil.example",
    "/" + "/a" * 200,
    "../../etc",
    "1970-01-01T00:00:00",
    "9999-12-31T23:59:59.999999",
    "0001-01-01T00:00:00+14:00",
    "not a time",
    [],
    {},
    [1, "a", None],
    {"$gt": ""},
    Raw("[" * 200 + "]" * 200),
    Raw('{"a":' * 80 + "1" + "}" * 80),
]
"""Values dropped into any place of a body."""

QUERY_HOSTILE = [
    "",
    "null",
    "5",
    "-1",
    "true",
    "1e3",
    str(2**64),
    "x" * 3000,
    "[" * 2000 + "]" * 2000,
    '{"a": 1}',
    "[1, 2]",
    '["a", null]',
    "NaN",
    "é🙂",
    "%00",
    '["name == a' + " " * 3000 + 'b"]',
]
"""Values for any query parameter."""

FILTER_FIELDS = [
    "name", "status", "folder.path", "metadata.a", "metadata.a.b", "tags", "user",
    "description", "created", "started", "endtime", "modified", "metrics.x.last", "a" * 300,
    "metadata." + ".a" * 40,
]  # fmt: skip
FILTER_OPS = ["==", "!=", "<", "<=", ">", ">=", "contains", "not contains"]
FILTER_VALUES = ["x", "1", "1e400", "NaN", "self", "5h", "9" * 400 + "y", "completed", "a b"]


class Gen(random.Random):
    """Values from the OpenAPI schemas, with a chance of a hostile value at every place."""

    def __init__(self, seed: int, ids: dict[str, str]) -> None:
        super().__init__(seed)
        self.ids = ids

    def hostile(self) -> Any:
        return self.choice(HOSTILE)

    def value(self, schema: dict[str, Any], depth: int = 0, name: str = "") -> Any:
        if self.random() < 0.12 or depth > 6:
            return self.hostile()
        if "enum" in schema:
            return self.choice(schema["enum"])
        kinds = schema.get("type", "string")
        kind = self.choice(kinds) if isinstance(kinds, list) else kinds
        if name == "run":
            return self.choice([self.ids["run"], self.ids["other_run"], "no-such-run"])
        if kind == "null":
            return None
        if kind == "boolean":
            return self.random() < 0.5
        if kind == "integer":
            return self.choice([0, 1, 7, 10**6, int(schema.get("maximum", 2**31))])
        if kind == "number":
            return self.choice([0.0, 1.5, -2.0, 1e9, 1.7e9, 3600.0, 1e-9])
        if kind == "string":
            return self.string(schema, name)
        if kind == "array":
            items = schema.get("items", {"type": "string"})
            return [self.value(items, depth + 1) for _ in range(self.randint(0, 4))]
        if kind == "object":
            return self.obj(schema, depth + 1)
        return self.hostile()

    def string(self, schema: dict[str, Any], name: str) -> str:
        if name in ("started", "endtime") or "UTC time" in schema.get("description", ""):
            return self.choice(["2024-05-01T12:00:00", "2024-05-01 12:00:00.5", "1999-01-01"])
        if schema.get("pattern") == "^/":
            return "/" + "/".join(self.word() for _ in range(self.randint(0, 3)))
        if name == "name" and "pattern" in schema:
            return self.word() + "-" + self.word()
        return self.choice([self.word(), self.word() + " " + self.word(), "", "/"])

    def word(self) -> str:
        return "".join(self.choice(string.ascii_lowercase) for _ in range(self.randint(1, 8)))

    def obj(self, schema: dict[str, Any], depth: int) -> Any:
        props: dict[str, Any] = schema.get("properties", {})
        required = set(schema.get("required", []))
        out: dict[Any, Any] = {}
        for key, sub in props.items():
            if key in required or self.random() < 0.5:
                out[key] = self.value(sub, depth, key)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for _ in range(self.randint(0, 3)):
                out[self.word()] = self.value(extra, depth)
        if not props and not extra:  # a free-form object: metadata and the like
            for _ in range(self.randint(0, 3)):
                out[self.word()] = self.choice([1, "a", 2.5, None, {"b": [1, 2]}, self.hostile()])
        if self.random() < 0.1:
            out[Raw('"\\ud83d"')] = 1
        if self.random() < 0.1 and out:
            del out[self.choice(list(out))]
        return out

    def body(self, schema: dict[str, Any]) -> Any:
        roll = self.random()
        if roll < 0.08:
            return self.hostile()
        if roll < 0.12:
            return [self.obj(schema, 1)]
        return self.obj(schema, 0)

    def query(self, param: dict[str, Any]) -> str | None:
        if self.random() < 0.3:
            return None
        if self.random() < 0.25:
            return self.choice(QUERY_HOSTILE)
        name, schema = param["name"], param["schema"]
        if name == "filters":
            return json.dumps([self.filter() for _ in range(self.randint(1, 3))])
        if name in ("runs", "run"):
            picks = [self.ids["run"], self.ids["other_run"], "no-such-run"]
            return self.choice(picks) if name == "run" else json.dumps(picks[: self.randint(1, 3)])
        if name == "metrics":
            return json.dumps(["x", "y", "resources/cpu"][: self.randint(1, 3)])
        if name == "sorting":
            return json.dumps([{"id": self.choice(FILTER_FIELDS), "desc": self.random() < 0.5}])
        if "enum" in schema:
            return str(self.choice(schema["enum"]))
        if schema.get("type") == "boolean":
            return self.choice(["true", "false", "1", "0", "yes"])
        if schema.get("type") == "integer":
            return str(self.choice([0, 1, 2, 10, -5, 10**12]))
        return self.word()

    def filter(self) -> str:
        roll = self.random()
        if roll < 0.1:
            return "starred"
        if roll < 0.2:
            return "has tag." + self.choice(["a", "fast one", "x" * 50])
        if roll < 0.3:
            return self.choice(FILTER_FIELDS) + self.choice([" exists", " not exists"])
        return " ".join(
            [self.choice(FILTER_FIELDS), self.choice(FILTER_OPS), self.choice(FILTER_VALUES)]
        )

    def path_id(self, kind: str) -> str:
        roll = self.random()
        if roll < 0.75:
            return self.ids[kind]
        if roll < 0.85 and kind == "run":
            return self.ids["other_run"]
        return self.choice(["no-such-id", "x" * 500, "%2e%2e", "é🙂", "0"])


def dump(value: Any) -> str:
    """JSON text of ``value``, with :class:`Raw` parts written as they are."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        return "{" + ",".join(f"{dump(k if isinstance(k, Raw) else str(k))}:{dump(v)}"
                              for k, v in value.items()) + "}"  # fmt: skip
    if isinstance(value, list):
        return "[" + ",".join(dump(v) for v in value) + "]"
    return json.dumps(value)


def packable(value: Any) -> bool:
    if isinstance(value, Raw):
        return False
    if isinstance(value, dict):
        return all(packable(k) and packable(v) for k, v in value.items())
    if isinstance(value, list):
        return all(packable(v) for v in value)
    return not (isinstance(value, int) and not -(2**63) <= value < 2**64)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LocalServer]:
    s = start_server(tmp_path)
    yield s
    stop_server(s)


def _objects(server: LocalServer) -> dict[str, str]:
    """Ids the fuzzed paths use: a run, folder and tag of the fuzzing user, another's run."""
    headers = server.headers("fuzzer")

    def post(path: str, body: dict[str, Any], who: dict[str, str] = headers) -> str:
        reply = requests.post(f"{server.api}{path}", json=body, headers=who, timeout=30)
        assert reply.status_code in (200, 409), reply.text
        return str(reply.json()["id"])

    run = post("/runs", {"name": "fuzz-target", "folder": "/fuzz", "tags": ["a"]})
    requests.post(
        f"{server.api}/metrics",
        json={"run": run, "metrics": [{"values": {"x": 1.0, "y": 2}, "step": 1, "time": 0.5}]},
        headers=headers,
        timeout=30,
    ).raise_for_status()
    return {
        "run": run,
        "folder": post("/folders", {"path": "/fuzz/target"}),
        "tag": post("/tags", {"name": "fuzz-tag"}),
        "other_run": post(
            "/runs", {"name": "not-yours", "visibility": {"public": True}}, server.headers("other")
        ),
    }


def test_the_description_covers_every_api_route(tmp_path: Path) -> None:
    store = Store(tmp_path / "routes.db")
    try:
        app = create_app(store)
        served = {
            (path, method.lower())
            for route in app.routes
            for path in [str(getattr(route, "path", ""))]
            for method in (getattr(route, "methods", None) or ())
            if path.startswith("/api/") and method != "HEAD"
        }
    finally:
        store.close()
    from simvue_otel._internal.server.openapi import openapi

    described = {(p, m) for p, ops in openapi("x")["paths"].items() for m in ops}
    served -= {("/api/openapi.json", "get"), ("/api/nosim/version", "get")}
    assert served == described


def test_fuzzing_the_api_finds_no_5xx_and_leaves_the_server_healthy(server: LocalServer) -> None:
    spec = requests.get(f"{server.api}/openapi.json", timeout=30).json()
    assert spec["openapi"].startswith("3.")
    ids = _objects(server)
    gen = Gen(SEED, ids)
    headers = server.headers("fuzzer")
    operations = [
        (path, method, op) for path, ops in spec["paths"].items() for method, op in ops.items()
    ]
    operations.sort(key=lambda o: o[1] == "delete")  # deletions last: the targets stay
    failures: list[str] = []
    sent = 0
    for path, method, op in operations:
        for _ in range(EXAMPLES):
            url = server.url + re.sub(
                r"\{(\w+)_id\}", lambda m: quote(gen.path_id(m[1]), safe=""), path
            )
            params = {p["name"]: gen.query(p) for p in op.get("parameters", [])
                      if p["in"] == "query"}  # fmt: skip
            params = {k: v for k, v in params.items() if v is not None}
            data: bytes | None = None
            ctype = "application/json"
            if "requestBody" in op:
                content = op["requestBody"]["content"]
                body = gen.body(content["application/json"]["schema"])
                if "application/msgpack" in content and packable(body) and gen.random() < 0.4:
                    data, ctype = msgpack.packb(body, use_bin_type=True), "application/msgpack"
                else:
                    data = dump(body).encode("utf-8", "surrogatepass")
            reply = requests.request(
                method.upper(),
                url,
                params=params,
                data=data,
                headers={**headers, "Content-Type": ctype},
                timeout=60,
            )
            sent += 1
            problem = ""
            if reply.status_code >= 500:
                problem = "5xx"
            elif reply.status_code >= 400:
                try:
                    detail = reply.json().get("detail")
                except ValueError:
                    detail = None
                if not detail:
                    problem = "an error without a detail"
            if problem:
                failures.append(
                    f"{problem}: {method.upper()} {url} params={params!r} "
                    f"body={(data or b'')[:300]!r} -> {reply.status_code} {reply.text[:300]}"
                )
    assert not failures, f"seed {SEED}, {len(failures)} of {sent}:\n" + "\n".join(failures[:10])
    assert sent >= EXAMPLES * len(operations)

    # Healthy afterwards, for the fuzzing user and for another one.
    assert requests.get(f"{server.url}/health", timeout=30).status_code == 200
    for who in ("fuzzer", "other", "newcomer"):
        h = server.headers(who)
        for path in ("/runs", "/folders", "/tags"):
            reply = requests.get(f"{server.api}{path}", headers=h, timeout=60)
            assert reply.status_code == 200, (who, path, reply.text[:300])
        for run in requests.get(f"{server.api}/runs", headers=h, timeout=60).json()["data"]:
            one = requests.get(f"{server.api}/runs/{run['id']}", headers=h, timeout=60)
            assert one.status_code == 200, one.text[:300]
            events = requests.get(
                f"{server.api}/events", params={"run": run["id"]}, headers=h, timeout=60
            )
            assert events.status_code == 200, events.text[:300]
    web = requests.Session()
    page = web.get(f"{server.url}/login", timeout=30)
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert csrf
    signed = web.post(
        f"{server.url}/login",
        data={"token": server.token_for("fuzzer"), "next": "/", "csrf": csrf.group(1)},
        timeout=30,
    )
    assert signed.status_code == 200 and "id=runs" in signed.text
    for _ in range(EXAMPLES):
        params = {k: gen.choice(QUERY_HOSTILE) for k in ("folder", "tag", "status")
                  if gen.random() < 0.6}  # fmt: skip
        page = web.get(f"{server.url}/", params=params, timeout=60)
        assert page.status_code < 500, (params, page.text[:300])
    for run in requests.get(f"{server.api}/runs", headers=headers, timeout=60).json()["data"]:
        for x in ("step", "time"):
            page = web.get(f"{server.url}/runs/{run['id']}", params={"x": x}, timeout=60)
            assert page.status_code == 200, page.text[:300]
