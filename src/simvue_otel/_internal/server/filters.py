"""The Simvue ``filters`` query grammar, applied to JSON-shaped objects.

Simvue list endpoints take ``filters`` as a JSON list of strings that are ANDed together:
``"name == run-1"``, ``"folder.path == /a/b"``, ``"metadata.solver.tol >= 1e-8"``,
``"has tag.fast"``, ``"starred"``, ``"user == self"``, ``"status != completed"``,
``"description contains cg"``, ``"metadata.x exists"``, ``"created < 5h"`` (age window).

Filters are split into words by hand rather than by backtracking regular expressions, so
parsing takes time linear in the filter's length, and the parameter's size is capped: a
hostile filter can neither stall the server nor make every object's lookup expensive.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["MAX_FILTERS_LENGTH", "Filter", "FilterError", "Predicate", "parse_filters"]

Predicate = Callable[[Mapping[str, Any], str], bool]
"""Takes an object (as served over the API) and the requesting user's name."""


class FilterError(ValueError):
    """A filter string the grammar does not accept; the server answers 400 with this text."""


MAX_FILTERS_LENGTH = 16_384
"""Longest ``filters`` parameter, in characters; longer ones answer 400."""
_MAX_FILTERS = 64
_MAX_FILTER_LENGTH = 4_096
_MAX_FIELD_LENGTH = 256
_MAX_FIELD_PARTS = 32
# Longest first where one is a prefix of another ("<=" before "<").
_OPERATORS = ("not contains", "contains", "==", "!=", "<=", ">=", "<", ">")
# Linear: no nested or adjacent ambiguous repetition, anchored at both ends.
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
class _Binary:
    field: str
    op: str
    value: str


def _first_word(text: str) -> tuple[str, str]:
    """``text`` (already stripped) split at its first whitespace: the word and the rest,
    left-stripped; one pass over the text."""
    for i, char in enumerate(text):
        if char.isspace():
            return text[:i], text[i:].lstrip()
    return text, ""


def _binary(text: str) -> _Binary | None:
    """``<field> <op> <value>``: a field without whitespace, an operator between whitespace,
    and a non-empty value (inner whitespace kept)."""
    field, rest = _first_word(text)
    if not rest:
        return None
    for op in _OPERATORS:
        if rest.startswith(op):
            after = rest[len(op) :]
            if after[:1].isspace() and after.strip():
                return _Binary(field, op, after.strip())
    return None


def _exists(text: str) -> tuple[str, bool] | None:
    """``<field> exists`` or ``<field> not exists``: (field, negated)."""
    field, rest = _first_word(text)
    if rest == "exists":
        return field, False
    word, after = _first_word(rest)
    if word == "not" and after == "exists":
        return field, True
    return None


def _has_tag(text: str) -> str | None:
    """``has tag.<name>``: the tag name (which may hold spaces)."""
    word, rest = _first_word(text)
    if word == "has" and rest.startswith("tag.") and len(rest) > 4:
        return rest[4:]
    return None


def _check_field(field: str, text: str) -> None:
    if len(field) > _MAX_FIELD_LENGTH or field.count(".") >= _MAX_FIELD_PARTS:
        raise FilterError(
            f"filter {text[:80]!r}: the field name is too long (at most {_MAX_FIELD_LENGTH} "
            f"characters and {_MAX_FIELD_PARTS} dotted parts)"
        )


def _parse_one(text: str, timestamps: Mapping[str, str], aliases: Mapping[str, str]) -> Predicate:
    if len(text) > _MAX_FILTER_LENGTH:
        raise FilterError(
            f"filter {text[:80]!r}... is {len(text)} characters long; at most "
            f"{_MAX_FILTER_LENGTH} are accepted"
        )
    stripped = text.strip()
    if stripped == "starred":
        return lambda obj, user: bool(obj.get("starred"))
    if (tag := _has_tag(stripped)) is not None:
        return lambda obj, user: tag in (obj.get("tags") or [])
    if (exists := _exists(stripped)) is not None:
        _check_field(exists[0], text)
        field, negate = aliases.get(exists[0], exists[0]), exists[1]
        return lambda obj, user: (_lookup(obj, field) is _MISSING) == negate
    if (binary := _binary(stripped)) is not None:
        _check_field(binary.field, text)
        field, op, raw = aliases.get(binary.field, binary.field), binary.op, binary.value
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
        f"filter {text[:200]!r} is not understood: expected '<field> <op> <value>' with op one of "
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
        return Filter([], [])
    if len(raw) > MAX_FILTERS_LENGTH:
        raise FilterError(
            f"filters is {len(raw)} characters long; at most {MAX_FILTERS_LENGTH} are accepted"
        )
    try:
        items = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise FilterError(f"filters must be a JSON list of strings: {exc.msg}") from exc
    except (ValueError, RecursionError):  # an integer of thousands of digits; deep nesting
        raise FilterError("filters must be a JSON list of strings, not nested lists") from None
    if isinstance(items, str):
        items = [items]
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise FilterError("filters must be a JSON list of strings")
    if len(items) > _MAX_FILTERS:
        raise FilterError(f"at most {_MAX_FILTERS} filters are accepted, not {len(items)}")
    predicates = [_parse_one(item, timestamps or {}, aliases or {}) for item in items]
    return Filter(predicates, [_first_word(item.strip())[0] for item in items])


class Filter:
    """Parsed filters, all of which must hold; ``fields`` are the words they start with, so a
    caller can tell whether an expensive part of the object (metric summaries) is needed."""

    def __init__(self, predicates: list[Predicate], fields: list[str]) -> None:
        self._predicates = predicates
        self.fields = frozenset(fields)

    def __call__(self, obj: Mapping[str, Any], user: str) -> bool:
        return all(p(obj, user) for p in self._predicates)
