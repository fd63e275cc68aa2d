"""An OpenAPI 3.1 description of the REST API the local server implements.

Served at ``GET /api/openapi.json`` (no token needed, as FastAPI-based servers do), it
documents what the server takes and answers, and it is what the fuzz tests generate requests
from, so the description and the server are checked against each other.
"""

from __future__ import annotations

from typing import Any

from .filters import MAX_FILTERS_LENGTH
from .store import MAX_FOLDER_DEPTH, MAX_FOLDER_LENGTH, MAX_SECONDS, RUN_STATUSES

__all__ = ["openapi"]

_STR = {"type": "string"}
_BOOL = {"type": "boolean"}
_OBJ = {"type": "object"}
_TAGS = {"type": "array", "items": {"type": "string", "minLength": 1}}
_SECONDS = {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": MAX_SECONDS}
_TIME = {
    "type": ["string", "number", "null"],
    "description": "UTC time, ISO 8601 without a zone (or epoch seconds); years 1 to 9999",
}
_FOLDER = {
    "type": "string",
    "pattern": "^/",
    "maxLength": MAX_FOLDER_LENGTH,
    "description": f"a path from '/', at most {MAX_FOLDER_DEPTH} levels deep",
}
_VISIBILITY = {
    "type": "object",
    "properties": {"public": _BOOL, "tenant": _BOOL, "users": {"type": "array", "items": _STR}},
}
_RUN_FIELDS: dict[str, Any] = {
    "name": {"type": "string", "pattern": r"^[a-zA-Z0-9\-\_\s\/\.:]+$"},
    "folder": _FOLDER,
    "status": {"enum": list(RUN_STATUSES)},
    "description": {"type": ["string", "null"]},
    "tags": _TAGS,
    "metadata": _OBJ,
    "ttl": _SECONDS,
    "heartbeat_timeout": _SECONDS,
    "visibility": _VISIBILITY,
    "started": _TIME,
    "endtime": _TIME,
    "notifications": _OBJ,
    "alerts": {"type": "array"},
    "system": _OBJ,
}
_FOLDER_FIELDS: dict[str, Any] = {
    "description": {"type": ["string", "null"]},
    "tags": _TAGS,
    "metadata": _OBJ,
    "ttl": _SECONDS,
}
_TAG_FIELDS: dict[str, Any] = {
    "name": {"type": "string", "minLength": 1},
    "colour": {"type": ["string", "null"]},
    "description": {"type": ["string", "null"]},
}
_METRICS = {
    "type": "object",
    "required": ["run", "metrics"],
    "properties": {
        "run": _STR,
        "metrics": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["values"],
                "properties": {
                    "values": {"type": "object", "additionalProperties": {"type": "number"}},
                    "step": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
                    "time": {"type": ["number", "null"]},
                    "timestamp": {"type": ["string", "null"]},
                },
            },
        },
    },
}
_EVENTS = {
    "type": "object",
    "required": ["run", "events"],
    "properties": {
        "run": _STR,
        "events": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["message"],
                "properties": {
                    "message": _STR,
                    "timestamp": _STR,
                    "log_level": {"enum": ["debug", "info", "warning", "error", "critical"]},
                },
            },
        },
    },
}


def _query(name: str, schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    return {"name": name, "in": "query", "schema": schema, "description": description}


def _path(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": _STR}


_FILTERS = _query(
    "filters",
    {"type": "string", "maxLength": MAX_FILTERS_LENGTH},
    'a JSON list of filter strings, all of which must hold: "name == x", "has tag.t", ...',
)
_PAGE = [_query("start", {"type": "integer"}), _query("count", {"type": "integer"})]
_IDS = {"type": "string", "description": "a JSON list of strings (a bare one is a list of one)"}


def _op(
    summary: str,
    *,
    params: list[dict[str, Any]] | None = None,
    body: dict[str, Any] | None = None,
    msgpack: bool = False,
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "parameters": params or [],
        "responses": {
            "200": {"description": "done"},
            "4XX": {"description": '{"detail": ...}: the reason, naming the field'},
        },
    }
    if body is not None:
        content = {"application/json": {"schema": body}}
        if msgpack:
            content["application/msgpack"] = {"schema": body}
        op["requestBody"] = {"required": True, "content": content}
    return op


def _object(fields: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"type": "object", "properties": fields, "required": list(required)}


def openapi(version: str) -> dict[str, Any]:
    """The description, for API version ``version``."""
    run_id, folder_id, tag_id = _path("run_id"), _path("folder_id"), _path("tag_id")
    starred = _object({"starred": _BOOL})
    sorting = _query("sorting", {"type": "string"}, "a JSON list of {id, desc}")
    admin = {
        method: _op("administration (403: the server has no administrators)")
        for method in ("get", "post", "put", "delete")
    }
    admin_one = {
        method: _op(
            "administration (403: the server has no administrators)",
            params=[_path("identifier")],
        )
        for method in ("get", "post", "put", "delete")
    }
    paths: dict[str, Any] = {
        "/api/version": {"get": _op("the API version")},
        "/api/whoami": {"get": _op("the token's user and tenant")},
        "/api/alerts": {"get": _op("alerts (none: not implemented)")},
        "/api/stats": {
            "get": _op(
                "counts of your runs by status ({runs: {...}}); with single=false, of your "
                "runs, tags, metric values and events, keyed by user name",
                params=[_query("single", _BOOL), _query("tenant", _STR)],
            )
        },
        "/api/tenants": admin,
        "/api/tenants/{identifier}": admin_one,
        "/api/users": admin,
        "/api/users/{identifier}": admin_one,
        "/api/folders": {
            "post": _op(
                "create a folder and its parents (409 with its id if it exists)",
                body=_object({"path": _FOLDER, **_FOLDER_FIELDS}, ("path",)),
            ),
            "get": _op("list folders, newest first", params=[_FILTERS, *_PAGE, sorting]),
        },
        "/api/folders/{folder_id}": {
            "get": _op("read a folder", params=[folder_id]),
            "put": _op(
                "change a folder",
                params=[folder_id],
                body=_object({**_FOLDER_FIELDS, "name": _STR, "starred": _BOOL}),
            ),
            "delete": _op(
                "delete a folder",
                params=[
                    folder_id,
                    _query("recursive", _BOOL),
                    _query("runs", _BOOL),
                    _query("runs_only", _BOOL),
                ],
            ),
        },
        "/api/folders/{folder_id}/starred": {
            "put": _op("star or unstar a folder", params=[folder_id], body=starred)
        },
        "/api/runs": {
            "post": _op("create a run", body=_object(_RUN_FIELDS)),
            "get": _op(
                "list the runs you can see",
                params=[
                    _FILTERS,
                    *_PAGE,
                    sorting,
                    _query("return_metrics", _BOOL),
                ],
            ),
        },
        "/api/runs/{run_id}": {
            "get": _op("read a run", params=[run_id]),
            "put": _op("change a run", params=[run_id], body=_object(_RUN_FIELDS)),
            "delete": _op("delete a run and its data", params=[run_id]),
        },
        "/api/runs/{run_id}/heartbeat": {"put": _op("record a heartbeat", params=[run_id])},
        "/api/runs/{run_id}/abort": {
            "get": _op("whether an abort was asked for", params=[run_id]),
            "put": _op(
                "ask the run to abort",
                params=[run_id],
                body=_object({"reason": {"type": ["string", "null"]}}),
            ),
        },
        "/api/runs/{run_id}/starred": {
            "put": _op("star or unstar a run", params=[run_id], body=starred)
        },
        "/api/runs/{run_id}/artifacts": {"get": _op("artifacts (none)", params=[run_id])},
        "/api/runs/{run_id}/grids": {"get": _op("grids (none)", params=[run_id])},
        "/api/tags": {
            "post": _op("create a tag (409 with its id if it exists)", body=_object(_TAG_FIELDS)),
            "get": _op("list tags", params=[_FILTERS, *_PAGE, sorting]),
        },
        "/api/tags/{tag_id}": {
            "get": _op("read a tag", params=[tag_id]),
            "put": _op(
                "change a tag (409 onto an existing name)",
                params=[tag_id],
                body=_object(_TAG_FIELDS),
            ),
            "delete": _op("delete a tag (and remove it from runs)", params=[tag_id]),
        },
        "/api/metrics": {
            "post": _op("add metric values to a run", body=_METRICS, msgpack=True),
            "get": _op(
                "metric values",
                params=[
                    _query("runs", _IDS),
                    _query("metrics", _IDS),
                    _query("xaxis", {"enum": ["step", "time", "timestamp"]}),
                    _query("aggregate", _BOOL),
                ],
            ),
        },
        "/api/metrics/names": {"get": _op("metric names of runs", params=[_query("runs", _IDS)])},
        "/api/events": {
            "post": _op("add events to a run", body=_EVENTS, msgpack=True),
            "get": _op(
                "the events of a run",
                params=[_query("run", _STR), _FILTERS, *_PAGE],
            ),
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "simvue-otel local server",
            "version": version,
            "description": (
                "The part of the Simvue v3 REST API that run tracking uses. Every path needs "
                "'Authorization: Bearer <token>'. Errors answer {\"detail\": ...}: 400 for a "
                "bad query parameter, 401 for a refused token, 413 for a body over the limit, "
                "422 for an invalid body (a list of {loc, msg, type})."
            ),
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": paths,
    }
