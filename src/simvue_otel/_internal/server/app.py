"""The HTTP face of the local server: the Simvue v3 REST API subset that run tracking uses.

Paths, methods, bodies and status codes follow what the official Simvue client sends and
expects: JSON replies everywhere (200 on creation, never 201/204), ``{"detail": ...}`` on
errors, 409 with the existing id for a folder that exists, msgpack metric and event batches,
``{"data": [...], "count": N}`` for lists. Nothing beyond what a Simvue server is known to do:
a run POSTed twice is two runs, a batch POSTed twice is stored twice.

Hostile or careless requests get a quick 4xx, never a 500 or a stall: bodies are bounded
before they are read (413), nested at most 64 deep and free of lone surrogates (422), query
parameters are checked (400), and every handler, with its database work and the rendering of
its reply, runs in a worker thread, so the event loop keeps answering other clients.
"""

from __future__ import annotations

import gc
import json
import logging
import sqlite3
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import msgpack
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from .auth import Identity, TokenError, verify_token
from .bodies import LOGIN_MAX_BODY, TooLarge, read_body
from .filters import FilterError, parse_filters
from .store import RETRY_AFTER_FULL, DiskFull, Forbidden, Invalid, Store, StoreError
from .web import web_routes

__all__ = ["API_VERSION", "create_app"]

API_VERSION = "1.2.16"
"""The Simvue REST API version answered; the official client accepts [1.1.0, 2.0.0)."""

DEFAULT_MAX_BODY = 64 * 1024 * 1024
MAX_NESTING = 64
"""Deepest nesting of lists and objects accepted in a request body."""
_LOG = logging.getLogger("simvue_otel.server")
_RUN_TIMES = {
    "created": "_created",
    "started": "_started",
    "endtime": "_endtime",
    "modified": "_modified",
}

Handler = Callable[[Request, Identity], Any]
ADMIN_ROUTES = (
    "/api/tenants",
    "/api/tenants/{identifier}",
    "/api/users",
    "/api/users/{identifier}",
)
"""The official client's administrator objects (``simvue.api.objects.administrator``): 403."""


class JSONReply(Response):
    """JSON that allows NaN/Infinity, which metric values can hold (Python's json reads them)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return json.dumps(content, allow_nan=True, separators=(",", ":")).encode()


def _error(status: int, detail: Any, **extra: Any) -> JSONReply:
    return JSONReply({"detail": detail, **extra}, status_code=status)


def _flag(request: Request, name: str, default: bool = False) -> bool:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    return raw.strip().lower() in ("true", "1", "yes")


def _int(request: Request, name: str, default: int | None) -> int | None:
    raw = request.query_params.get(name)
    if raw in (None, "", "null"):
        return default
    try:
        return int(raw)
    except ValueError:
        raise StoreError(
            f"query parameter {name!r} must be an integer, not {raw[:100]!r}"
        ) from None


def _json_param(request: Request, name: str) -> Any:
    raw = request.query_params.get(name)
    if raw in (None, "", "null"):
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        # A bare run id or name is tolerated where a JSON list is expected.
        return [raw]
    except (ValueError, RecursionError):  # thousands of digits, or nested thousands deep
        raise StoreError(f"query parameter {name!r} is not usable JSON") from None


def _names(request: Request, name: str) -> list[str]:
    """A query parameter holding a JSON list of ids or names (a bare one is a list of one)."""
    value = _json_param(request, name)
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(
        isinstance(v, (str, int)) and not isinstance(v, bool) for v in value
    ):
        raise StoreError(f"query parameter {name!r} must be a JSON list of strings")
    return [str(v) for v in value]


def _listing(request: Request, who: Identity, lister: Callable[..., Any]) -> dict[str, Any]:
    """A folder or tag listing: ``filters``, ``start``, ``count`` and ``sorting`` from the
    query, answered ``{"data": [...], "count": total}`` as the official client reads it."""
    data, total = lister(
        who,
        parse_filters(request.query_params.get("filters")),
        _int(request, "start", 0) or 0,
        _int(request, "count", None),
        sorting=_sorting(request),
    )
    return {"data": data, "count": total}


def _sorting(request: Request) -> list[dict[str, Any]]:
    """The ``sorting`` query parameter: a JSON list of ``{"id": column, "desc": bool}``."""
    sorting = _json_param(request, "sorting") or []
    if not isinstance(sorting, list) or not all(isinstance(s, dict) for s in sorting):
        raise StoreError("query parameter 'sorting' must be a JSON list of {id, desc}")
    return sorting


def _refused(request: Request, status: int, detail: Any) -> None:
    """Log a refused request (at info: shown with ``--log-level info``), with its reason."""
    _LOG.info("%s %s -> %d: %.500s", request.method, request.url.path, status, detail)


def _body_error(msg: str, loc: tuple[Any, ...] = ()) -> Invalid:
    return Invalid([{"loc": ["body", *loc], "msg": msg, "type": "value_error"}])


def _has_surrogate(text: str) -> bool:
    return not text.isascii() and any("\ud800" <= c <= "\udfff" for c in text)


_SCALARS = (str, int, float, bool, type(None))


def _unpack(raw: bytes) -> Any:
    """A msgpack body, with the cyclic garbage collector paused meanwhile: a metrics batch is
    tens of thousands of new containers, and collections triggered by them (none of which is
    garbage) would double the cost (msgpack's own advice for large payloads)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return msgpack.unpackb(raw, raw=False, strict_map_key=False)
    finally:
        if enabled:
            gc.enable()


def check_tree(root: Any) -> None:
    """Refuse (422, naming where) a body nested deeper than :data:`MAX_NESTING`, holding a
    lone surrogate (which SQLite cannot store), or, from msgpack, something JSON has no
    form for (bytes, extension types): all of it must be storable and readable back.
    Iterative, so a deep body cannot exhaust the stack while being checked."""
    stack: list[tuple[Any, tuple[Any, ...]]] = [(root, ())]
    while stack:
        node, path = stack.pop()
        if isinstance(node, str):
            if _has_surrogate(node):
                raise _body_error("holds a lone surrogate, which is not text", path)
            continue
        if isinstance(node, dict):
            items: Any = node.items()
        elif isinstance(node, list):
            items = enumerate(node)
        elif isinstance(node, _SCALARS):
            continue
        else:
            raise _body_error(f"must be JSON data, not {type(node).__name__}", path)
        if len(path) >= MAX_NESTING:
            raise _body_error(f"nested deeper than {MAX_NESTING} levels", path)
        for key, value in items:
            if not isinstance(key, _SCALARS) or (isinstance(key, str) and _has_surrogate(key)):
                raise _body_error("keys must be text", path)
            if isinstance(value, str):
                if _has_surrogate(value):
                    raise _body_error("holds a lone surrogate, which is not text", (*path, key))
            elif isinstance(value, (dict, list)) or not isinstance(value, _SCALARS):
                stack.append((value, (*path, key)))


class _API:
    def __init__(self, store: Store, max_body: int) -> None:
        self.store = store
        self.max_body = max_body
        self.secret = store.secret()

    # -- plumbing -------------------------------------------------------------------------

    def identify(self, header: str | None) -> Identity:
        """Whose token ``header`` carries; TokenError when it is refused (401)."""
        who = verify_token(self.secret, header)
        problem = self.store.token_problem(who)
        if problem:
            raise TokenError(problem)
        return who

    def route(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                who = await run_in_threadpool(self.identify, request.headers.get("authorization"))
            except TokenError as exc:
                return _error(401, str(exc))
            try:
                request.state.raw_body = await read_body(request, self.max_body)
                return await run_in_threadpool(self._call, handler, request, who)
            except StoreError as exc:
                _refused(request, exc.status, exc.detail)
                return _error(exc.status, exc.detail, **exc.extra)
            except Exception as exc:
                if self.store.note_write_error(exc):
                    return disk_full_reply(self.store)
                # A bug, not the client's fault: log it in full, answer JSON the client can read.
                _LOG.exception("%s %s failed", request.method, request.url.path)
                return _error(500, "internal server error; see the server log")

        return endpoint

    @staticmethod
    def _call(handler: Handler, request: Request, who: Identity) -> Response:
        """Run ``handler`` and render its reply, in a worker thread (rendering a long list
        is work too)."""
        try:
            result = handler(request, who)
        except StoreError as exc:
            _refused(request, exc.status, exc.detail)
            return _error(exc.status, exc.detail, **exc.extra)
        except FilterError as exc:
            _refused(request, 400, str(exc))
            return _error(400, str(exc))
        if isinstance(result, Response):
            return result
        return JSONReply(result)

    def body(self, request: Request, *, check: bool = True) -> Any:
        """The request body, parsed (JSON, or msgpack by its content type) and checked; with
        ``check=False`` the handler itself checks every part it keeps."""
        raw: bytes = getattr(request.state, "raw_body", b"")
        if not raw:
            return {}
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        try:
            if ctype in ("application/msgpack", "application/x-msgpack"):
                tree = _unpack(raw)
            else:
                tree = json.loads(raw)
        except (ValueError, msgpack.UnpackException) as exc:
            raise _body_error(
                f"the request body is not valid {ctype or 'JSON'}: {str(exc)[:200]}"
            ) from None
        except RecursionError:
            raise _body_error(f"nested deeper than {MAX_NESTING} levels") from None
        if check:
            check_tree(tree)
        return tree

    # -- misc -----------------------------------------------------------------------------

    def version(self, request: Request, who: Identity) -> Any:
        return {"version": API_VERSION}

    def whoami(self, request: Request, who: Identity) -> Any:
        return {"username": who.user, "user": who.user, "tenant": who.tenant}

    def alerts(self, request: Request, who: Identity) -> Any:
        return {"data": [], "count": 0}

    def stats(self, request: Request, who: Identity) -> Any:
        """Statistics of the caller's own objects. ``single=False`` (the official client's
        ``Stats.admin_stats``) answers per user; with no administrators here, that is the
        caller alone, and another tenant's statistics are refused."""
        tenant = request.query_params.get("tenant")
        if tenant is not None and tenant != who.tenant:
            raise Forbidden(
                f"statistics of tenant {tenant[:100]!r} need an administrator, and "
                "simvue-otel server has none: you can read your own tenant's "
                f"({who.tenant!r}) only"
            )
        if _flag(request, "single", True):
            return {"runs": self.store.run_stats(who)}
        return {who.user: self.store.user_stats(who)}

    def administration(self, request: Request, who: Identity) -> Any:
        """Routes of the official client's administrator objects (tenants, users)."""
        what = request.url.path.removeprefix("/api/").split("/", 1)[0]
        raise Forbidden(
            f"{request.method} {request.url.path[:200]}: administration of {what} is not "
            "available on simvue-otel server, which has no administrators; users and "
            "tenants are made with 'simvue-otel server token --user NAME --tenant NAME'"
        )

    def empty_list(self, request: Request, who: Identity) -> Any:
        self.store.get_run(who, request.path_params["run_id"])
        return []

    # -- folders --------------------------------------------------------------------------

    def folders_post(self, request: Request, who: Identity) -> Any:
        body = self.body(request)
        path = body.get("path") if isinstance(body, dict) else None
        if not isinstance(path, str):
            raise _body_error("a folder path string is required", ("path",))
        folder_id, created = self.store.create_folder(who, path)
        if not created:
            return JSONReply({"id": folder_id, "detail": "folder already exists"}, status_code=409)
        extra = {k: body[k] for k in ("description", "tags", "metadata", "ttl") if k in body}
        if extra:
            self.store.update_folder(who, folder_id, extra)
        return {"id": folder_id}

    def folders_get(self, request: Request, who: Identity) -> Any:
        return _listing(request, who, self.store.list_folders)

    def folder_get(self, request: Request, who: Identity) -> Any:
        return self.store.get_folder(who, request.path_params["folder_id"])

    def folder_put(self, request: Request, who: Identity) -> Any:
        self.store.update_folder(who, request.path_params["folder_id"], self.body(request))
        return self.store.get_folder(who, request.path_params["folder_id"])

    def folder_starred(self, request: Request, who: Identity) -> Any:
        self.store.update_folder(
            who, request.path_params["folder_id"], {"starred": _starred(self.body(request))}
        )
        return {}

    def folder_delete(self, request: Request, who: Identity) -> Any:
        return self.store.delete_folder(
            who,
            request.path_params["folder_id"],
            recursive=_flag(request, "recursive"),
            runs=_flag(request, "runs"),
            runs_only=_flag(request, "runs_only"),
        )

    # -- runs -----------------------------------------------------------------------------

    def runs_post(self, request: Request, who: Identity) -> Any:
        body = self.body(request)
        if isinstance(body, list):
            return [self.store.create_run(who, item) for item in body]
        return self.store.create_run(who, body)

    def runs_get(self, request: Request, who: Identity) -> Any:
        predicate = parse_filters(
            request.query_params.get("filters"), _RUN_TIMES, {"folder.path": "folder"}
        )
        data, total = self.store.list_runs(
            who,
            predicate,
            sorting=_sorting(request),
            start=_int(request, "start", 0) or 0,
            count=_int(request, "count", None),
            metrics=_flag(request, "return_metrics", True),
        )
        return {"data": data, "count": total}

    def run_get(self, request: Request, who: Identity) -> Any:
        return self.store.get_run(who, request.path_params["run_id"])

    def run_put(self, request: Request, who: Identity) -> Any:
        run_id = request.path_params["run_id"]
        self.store.update_run(who, run_id, self.body(request))
        return {"id": run_id}

    def run_delete(self, request: Request, who: Identity) -> Any:
        self.store.delete_run(who, request.path_params["run_id"])
        return {}

    def heartbeat(self, request: Request, who: Identity) -> Any:
        self.store.heartbeat(who, request.path_params["run_id"])
        return {}

    def abort_get(self, request: Request, who: Identity) -> Any:
        return {"status": self.store.abort_requested(who, request.path_params["run_id"])}

    def abort_put(self, request: Request, who: Identity) -> Any:
        body = self.body(request)
        reason = body.get("reason") if isinstance(body, dict) else None
        self.store.set_abort(who, request.path_params["run_id"], reason)
        return {}

    def run_starred(self, request: Request, who: Identity) -> Any:
        starred = _starred(self.body(request))
        self.store.set_starred(who, request.path_params["run_id"], starred)
        return {}

    # -- tags -----------------------------------------------------------------------------

    def tags_post(self, request: Request, who: Identity) -> Any:
        tag_id, created = self.store.create_tag(who, self.body(request))
        if not created:
            return JSONReply({"id": tag_id, "detail": "tag already exists"}, status_code=409)
        return {"id": tag_id}

    def tags_get(self, request: Request, who: Identity) -> Any:
        return _listing(request, who, self.store.list_tags)

    def tag_get(self, request: Request, who: Identity) -> Any:
        return self.store.get_tag(who, request.path_params["tag_id"])

    def tag_put(self, request: Request, who: Identity) -> Any:
        self.store.update_tag(who, request.path_params["tag_id"], self.body(request))
        return self.store.get_tag(who, request.path_params["tag_id"])

    def tag_delete(self, request: Request, who: Identity) -> Any:
        self.store.delete_tag(who, request.path_params["tag_id"])
        return {}

    # -- metrics and events ---------------------------------------------------------------

    def metrics_post(self, request: Request, who: Identity) -> Any:
        # The store checks each field of each entry it keeps (the names, the timestamp's
        # text, every value) and ignores the rest: walking the whole tree first would cost
        # more than storing it.
        body = self.body(request, check=False)
        if not isinstance(body, dict):
            raise _body_error("must be an object {run, metrics: [...]}")
        self.store.add_metrics(who, body.get("run"), body.get("metrics"))
        return {}

    def metrics_get(self, request: Request, who: Identity) -> Any:
        runs = _names(request, "runs")
        names = _names(request, "metrics")
        xaxis = request.query_params.get("xaxis", "step")
        if xaxis not in ("step", "time", "timestamp"):
            raise StoreError(f"xaxis must be step, time or timestamp, not {xaxis[:100]!r}")
        data = self.store.get_metrics(who, runs, names, xaxis)
        if _flag(request, "aggregate"):
            return _aggregate(data, xaxis)
        return data

    def metric_names(self, request: Request, who: Identity) -> Any:
        return self.store.metric_names(who, _names(request, "runs"))

    def events_post(self, request: Request, who: Identity) -> Any:
        body = self.body(request)
        if not isinstance(body, dict):
            raise _body_error("must be an object {run, events: [...]}")
        self.store.add_events(who, body.get("run"), body.get("events"))
        return {}

    def events_get(self, request: Request, who: Identity) -> Any:
        run_id = request.query_params.get("run")
        if not run_id:
            raise StoreError("query parameter 'run' is required")
        predicate = parse_filters(request.query_params.get("filters"))
        data, total = self.store.get_events(
            who, run_id, predicate, _int(request, "start", 0) or 0, _int(request, "count", 0)
        )
        return {"data": data, "count": total}


class BodyLimit:
    """Refuse with 413, before the application reads anything, a request whose declared
    Content-Length is over the limit of its path (the sign-in form's is small). Bodies sent
    without a length are counted as they are read, by :func:`read_body`."""

    def __init__(self, app: ASGIApp, max_body: int) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            limit = LOGIN_MAX_BODY if scope["path"] == "/login" else self.max_body
            for name, value in scope["headers"]:
                if name == b"content-length" and value.isdigit() and int(value) > limit:
                    reply = _error(413, TooLarge(limit).detail)
                    reply.headers["connection"] = "close"
                    await reply(scope, receive, send)
                    return
        await self.app(scope, receive, send)


def _starred(body: Any) -> bool:
    if not isinstance(body, dict):
        raise _body_error("must be an object {starred: true|false}")
    return bool(body.get("starred", True))


def _x_order(item: tuple[Any, Any]) -> tuple[bool, Any]:
    """Sort key of x values, with points that have none (no time) last."""
    return (item[0] is None, item[0] if item[0] is not None else 0)


def _aggregate(
    data: dict[str, dict[str, list[dict[str, Any]]]], xaxis: str
) -> dict[str, list[dict[str, Any]]]:
    """Across runs, per metric and x value: average, min, max and count of the values."""
    grouped: dict[str, dict[Any, list[float]]] = {}
    for per_metric in data.values():
        for name, points in per_metric.items():
            for p in points:
                grouped.setdefault(name, {}).setdefault(p[xaxis], []).append(p["value"])
    return {
        name: [
            {xaxis: x, "average": sum(v) / len(v), "min": min(v), "max": max(v), "count": len(v)}
            for x, v in sorted(by_x.items(), key=_x_order)
        ]
        for name, by_x in grouped.items()
    }


def disk_full_reply(store: Store) -> Response:
    """503 with ``Retry-After`` for a request whose write found the disk full."""
    full = DiskFull(store.path)
    _LOG.info("write refused: %s", full.detail)
    reply = _error(503, full.detail)
    reply.headers.update(full.headers)
    return reply


def _health_of(store: Store) -> Callable[[Request], Awaitable[Response]]:
    async def health(request: Request) -> Response:
        """``{"status": "ok"}``; 503 ``{"status": "disk full", ...}`` while the last write
        failed for lack of room and none has been freed since (reads still work then)."""
        full = store.disk_full()
        if full is None:
            return JSONReply({"status": "ok", "version": API_VERSION})
        detail = (
            "the disk holding the database is full: writes are refused (503) until "
            "space is freed; reads work"
        )
        return JSONReply(
            {"status": "disk full", "version": API_VERSION, "detail": detail, **full},
            status_code=503,
            headers={"Retry-After": str(RETRY_AFTER_FULL)},
        )

    return health


def _openapi(request: Request) -> Response:
    from .openapi import openapi

    return JSONReply(openapi(API_VERSION))


NOT_IMPLEMENTED = {
    "alerts": "alerts",
    "artifacts": "artifacts",
    "storage": "storage",
    "grids": "tensor grids",
    "runs/*/artifacts": "artifacts",
    "runs/*/grids": "tensor grids",
    "runs/*/metrics": "tensor (grid) metrics",
    "metrics/span": "metric spans",
    "events/histogram": "event histograms",
}
"""Parts of the Simvue API this server does not implement, by path under ``/api`` (``*``:
one segment), with what each is: a request for them answers 404 saying so."""


def _unimplemented(path: str) -> str | None:
    """What part of the Simvue API ``path`` belongs to, when it is one not implemented."""
    parts = path.removeprefix("/api/").split("/") if path.startswith("/api/") else []
    for prefix, what in NOT_IMPLEMENTED.items():
        wanted = prefix.split("/")
        if len(parts) >= len(wanted) and all(
            w in ("*", p) for w, p in zip(wanted, parts, strict=False)
        ):
            return what
    return None


async def _not_found(request: Request, exc: Exception) -> Response:
    what = _unimplemented(request.url.path)
    if what:
        return _error(
            404,
            f"{request.method} {request.url.path[:200]}: {what} are not implemented by "
            "simvue-otel server (it stores runs, folders, tags, metadata, metrics and events)",
        )
    return _error(404, f"no such endpoint: {request.method} {request.url.path}")


async def _method_not_allowed(request: Request, exc: Exception) -> Response:
    if _unimplemented(request.url.path):
        return await _not_found(request, exc)
    return _error(405, f"method {request.method} not allowed on {request.url.path}")


def create_app(
    store: Store, *, max_body: int = DEFAULT_MAX_BODY, sweep_interval: float = 2.0
) -> Starlette:
    """The ASGI application over ``store``; a background thread marks lost runs and applies
    retention every ``sweep_interval`` seconds."""
    api = _API(store, max_body)
    r = api.route
    routes = [
        Route("/health", _health_of(store), methods=["GET"]),
        Route("/api/openapi.json", _openapi, methods=["GET"]),
        Route("/api/version", r(api.version), methods=["GET"]),
        # Simvue 2.6 clients also probe this companion-service version; same answer.
        Route("/api/nosim/version", r(api.version), methods=["GET"]),
        Route("/api/whoami", r(api.whoami), methods=["GET"]),
        Route("/api/alerts", r(api.alerts), methods=["GET"]),
        Route("/api/stats", r(api.stats), methods=["GET"]),
        *(
            Route(path, r(api.administration), methods=["GET", "POST", "PUT", "DELETE"])
            for path in ADMIN_ROUTES
        ),
        Route("/api/folders", r(api.folders_post), methods=["POST"]),
        Route("/api/folders", r(api.folders_get), methods=["GET"]),
        Route("/api/folders/{folder_id}", r(api.folder_get), methods=["GET"]),
        Route("/api/folders/{folder_id}", r(api.folder_put), methods=["PUT"]),
        Route("/api/folders/{folder_id}", r(api.folder_delete), methods=["DELETE"]),
        Route("/api/folders/{folder_id}/starred", r(api.folder_starred), methods=["PUT"]),
        Route("/api/runs", r(api.runs_post), methods=["POST"]),
        Route("/api/runs", r(api.runs_get), methods=["GET"]),
        Route("/api/runs/{run_id}", r(api.run_get), methods=["GET"]),
        Route("/api/runs/{run_id}", r(api.run_put), methods=["PUT"]),
        Route("/api/runs/{run_id}", r(api.run_delete), methods=["DELETE"]),
        Route("/api/runs/{run_id}/heartbeat", r(api.heartbeat), methods=["PUT"]),
        Route("/api/runs/{run_id}/abort", r(api.abort_get), methods=["GET"]),
        Route("/api/runs/{run_id}/abort", r(api.abort_put), methods=["PUT"]),
        Route("/api/runs/{run_id}/starred", r(api.run_starred), methods=["PUT"]),
        Route("/api/runs/{run_id}/artifacts", r(api.empty_list), methods=["GET"]),
        Route("/api/runs/{run_id}/grids", r(api.empty_list), methods=["GET"]),
        Route("/api/tags", r(api.tags_post), methods=["POST"]),
        Route("/api/tags", r(api.tags_get), methods=["GET"]),
        Route("/api/tags/{tag_id}", r(api.tag_get), methods=["GET"]),
        Route("/api/tags/{tag_id}", r(api.tag_put), methods=["PUT"]),
        Route("/api/tags/{tag_id}", r(api.tag_delete), methods=["DELETE"]),
        Route("/api/metrics", r(api.metrics_post), methods=["POST"]),
        Route("/api/metrics", r(api.metrics_get), methods=["GET"]),
        Route("/api/metrics/names", r(api.metric_names), methods=["GET"]),
        Route("/api/events", r(api.events_post), methods=["POST"]),
        Route("/api/events", r(api.events_get), methods=["GET"]),
    ]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        stop = threading.Event()

        def sweeper() -> None:
            while not stop.wait(sweep_interval):
                try:
                    store.sweep(force=True)
                except Exception as exc:  # a failed sweep must not end the server; next retries
                    if not store.note_write_error(exc):  # (a full disk is logged once)
                        _LOG.exception("lost/retention sweep failed")

        thread = threading.Thread(target=sweeper, name="simvue-otel-sweeper", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=5)

    async def database_error(request: Request, exc: Exception) -> Response:
        """A database error outside the API's handlers (the web view's sign-in writes a
        session): 503 when the disk is full, else a 500 logged in full."""
        if store.note_write_error(exc):
            return disk_full_reply(store)
        _LOG.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return _error(500, "internal server error; see the server log")

    routes.extend(web_routes(store))
    return Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[Middleware(BodyLimit, max_body=max_body)],
        exception_handlers={
            404: _not_found,
            405: _method_not_allowed,
            sqlite3.Error: database_error,
        },
    )
