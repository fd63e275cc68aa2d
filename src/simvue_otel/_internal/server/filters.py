"""The Simvue ``filters`` query grammar, applied to JSON-shaped objects.

Simvue list endpoints take ``filters`` as a JSON list of strings that are ANDed together:
``"name == run-1"``, ``"folder.path == /a/b"``, ``"metadata.solver.tol >= 1e-8"``,
``"has tag.fast"``, ``"starred"``, ``"user == self"``, ``"status != completed"``,
``"description contains cg"``, ``"metadata.x exists"``, ``"created < 5h"`` (age window).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["FilterError", "Predicate", "parse_filters"]

Predicate = Callable[[Mapping[str, Any], str], bool]
"""Takes an object (as served over the API) and the requesting user's name."""


class FilterError(ValueError):
    """A filter string the grammar does not accept; the server answers 400 with this text."""


_BINARY = re.compile(
    r"^\s*(?P<field>[^\s]+)\s+(?P<op>==|!=|<=|>=|<|>|not contains|contains)\s+"
    r"(?P<value>.*?)\s*$"
)
_EXISTS = re.compile(r"^\s*(?P<field>[^\s]+)\s+(?P<neg>not\s+)?exists\s*$")
_HAS_TAG = re.compile(r"^\s*has\s+tag\.(?P<tag>.+?)\s*$")
_AGE = re.compile(r"^(?P<num>\d+(?:\.\d+)?)\s*(?P<unit>[smhdwy])$")
_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
_TIME_FIELDS = {"created", "started", "endtime", "modified"}
_MISSING = object()


def _lookup(obj: Mapping[str, Any], field: str) -> Any:
    """Resolve a dotted field; ``metadata.a.b`` walks nested dicts, and a flat key holding a dot
    (``metadata["a.b"]``) is found too."""
    if field in obj:
        return obj[field]
    current: Any = obj
    parts = field.split(".")
    i = 0
    while i < len(parts):
        if not isinstance(current, Mapping):
            return _MISSING
        # Prefer the longest dotted key present at this level, then descend.
        for j in range(len(parts), i, -1):
            key = ".".join(parts[i:j])
            if key in current:
                current = current[key]
                i = j
                break
        else:
            return _MISSING
    return current


def _coerce(value: str, like: Any) -> Any:
    """Interpret the filter's text as the type of the stored value it is compared with."""
    if isinstance(like, bool):
        return value.strip().lower() in ("true", "1", "yes")
    if isinstance(like, (int, float)):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _compare(op: str, actual: Any, raw: str) -> bool:
    if actual is _MISSING or actual is None:
        return op == "!=" or op == "not contains"
    if op in ("contains", "not contains"):
        if isinstance(actual, (list, tuple)):
            found = raw in [str(a) for a in actual]
        else:
            found = raw in str(actual)
        return found if op == "contains" else not found
    expected = _coerce(raw, actual)
    left: Any = actual
    if (
        isinstance(expected, float)
        and isinstance(actual, (int, float))
        and not isinstance(actual, bool)
    ):
        left = float(actual)
    elif isinstance(expected, str) and not isinstance(actual, str):
        left = json.dumps(actual) if isinstance(actual, (dict, list)) else str(actual)
    try:
        if op == "==":
            return bool(left == expected)
        if op == "!=":
            return bool(left != expected)
        if op == "<":
            return bool(left < expected)
        if op == "<=":
            return bool(left <= expected)
        if op == ">":
            return bool(left > expected)
        return bool(left >= expected)
    except TypeError:
        return False


@dataclass(frozen=True)
class _Parsed:
    text: str
    predicate: Predicate


def _parse_one(text: str, timestamps: Mapping[str, str], aliases: Mapping[str, str]) -> Predicate:
    stripped = text.strip()
    if stripped == "starred":
        return lambda obj, user: bool(obj.get("starred"))
    if m := _HAS_TAG.match(stripped):
        tag = m["tag"]
        return lambda obj, user: tag in (obj.get("tags") or [])
    if m := _EXISTS.match(stripped):
        field, negate = aliases.get(m["field"], m["field"]), bool(m["neg"])
        return lambda obj, user: (_lookup(obj, field) is _MISSING) == negate
    if m := _BINARY.match(stripped):
        field, op, raw = aliases.get(m["field"], m["field"]), m["op"], m["value"]
        if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "\"'":
            raw = raw[1:-1]
        if field == "user" and raw == "self":
            return lambda obj, user: _compare(op, obj.get("user", _MISSING), user)
        age = _AGE.match(raw)
        if field in _TIME_FIELDS and age and op in ("<", "<=", ">", ">="):
            seconds = float(age["num"]) * _AGE_UNITS[age["unit"]]
            key = timestamps.get(field, field)

            def by_age(obj: Mapping[str, Any], user: str) -> bool:
                stamp = obj.get(key)
                if not isinstance(stamp, (int, float)):
                    return False
                elapsed = time.time() - stamp
                # "created < 5h" reads as "created less than 5 hours ago".
                return elapsed <= seconds if op in ("<", "<=") else elapsed >= seconds

            return by_age
        return lambda obj, user: _compare(op, _lookup(obj, field), raw)
    raise FilterError(
        f"filter {text!r} is not understood: expected '<field> <op> <value>' with op one of "
        "==, !=, <, <=, >, >=, contains, not contains; or '<field> exists', "
        "'<field> not exists', 'has tag.<name>', 'starred'"
    )


def parse_filters(
    raw: str | None,
    timestamps: Mapping[str, str] | None = None,
    aliases: Mapping[str, str] | None = None,
) -> Predicate:
    """Parse the ``filters`` query parameter into one predicate (all filters ANDed).

    ``timestamps`` maps time fields to keys of numeric epoch values in the object, for the
    age-window form (``created < 5h``); ``aliases`` maps filter fields to object fields
    (``folder.path`` → ``folder`` for runs).
    """
    if raw is None or raw.strip() in ("", "null", "[]"):
        return lambda obj, user: True
    try:
        items = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise FilterError(f"filters must be a JSON list of strings: {exc.msg}") from exc
    if isinstance(items, str):
        items = [items]
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise FilterError("filters must be a JSON list of strings")
    predicates = [_parse_one(item, timestamps or {}, aliases or {}) for item in items]
    return lambda obj, user: all(p(obj, user) for p in predicates)
