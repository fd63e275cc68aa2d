"""Validation rules shared by the ``Run`` API and the OTel-to-Simvue mapping.

Each function checks one kind of user-supplied value and returns it in normalised form, or
raises :class:`~simvue_otel._internal.errors.SimvueValidationError` naming the argument
(``field``), the rule in plain words, and the value that broke it.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import re
from collections.abc import Mapping
from typing import Any

from . import conventions as cv
from .errors import SimvueValidationError
from .flatten import leaves

__all__ = [
    "LOG_LEVELS",
    "RUN_STATUSES",
    "check_metadata_size",
    "clean_text",
    "metadata_size",
    "parse_retention",
    "validate_folder",
    "validate_interval",
    "validate_log_level",
    "validate_metadata",
    "validate_metric_name",
    "validate_name",
    "validate_status",
    "validate_step",
    "validate_tags",
    "validate_text",
    "validate_timeout",
    "validate_visibility",
]

_LOG = logging.getLogger("simvue_otel")

MetadataValue = int | float | str | bool

_NAME_RE = re.compile(cv.NAME_PATTERN)
_TAG_RE = re.compile(cv.TAG_PATTERN)
_METRIC_NAME_RE = re.compile(cv.METRIC_NAME_PATTERN)
_FOLDER_PART_BAD = re.compile(r"[\x00-\x1f\x7f]")
_MAX_NAME = cv.MAX_NAME_LENGTH
_MAX_FOLDER = 1024
_MAX_TAG = 255
_MAX_METRIC_NAME = cv.MAX_METRIC_NAME_LENGTH

RUN_STATUSES: tuple[str, ...] = cv.SETTABLE_STATUSES
LOG_LEVELS: tuple[str, ...] = cv.LOG_LEVELS

# -- Text that is not Unicode -----------------------------------------------------------------
# Python strings may hold lone surrogates (U+D800-U+DFFF): os.fsdecode() and surrogateescape
# make one of each byte of a file name that is not UTF-8 (b"caf\xe9" -> "caf\udce9"). No
# UTF-8 text can hold them: a server refuses them (422) and no file format stores them. The
# rule (docs/conventions.md, "Text"): each is replaced with U+FFFD, as a JSON or UTF-8 encoder
# does when asked to replace, and a warning names the field once. Strings with a pattern of
# their own (run names, tags, metric names) then fail it and are refused at the call.

_SURROGATE = re.compile("[\ud800-\udfff]")
REPLACEMENT = "\ufffd"
_replaced_fields: set[str] = set()  # fields already warned about (bounded below)


def clean_text(text: str, field: str = "text") -> str:
    """``text`` with every lone surrogate replaced by U+FFFD (the same object when it has
    none, which an ASCII check decides at once for nearly every string); warns once per
    ``field`` when something was replaced."""
    if text.isascii() or not _SURROGATE.search(text):
        return text
    if field not in _replaced_fields:
        if len(_replaced_fields) > 1000:
            _replaced_fields.clear()
        _replaced_fields.add(field)
        _LOG.warning(
            "%s holds characters that are not Unicode text (bytes of another encoding, as "
            "file names on some file systems give): each was replaced with U+FFFD",
            field,
        )
    return _SURROGATE.sub(REPLACEMENT, text)


def validate_text(value: Any, field: str) -> str:
    """Check free text (a description, an event message): a string, returned with lone
    surrogates replaced (see :func:`clean_text`)."""
    if not isinstance(value, str):
        raise SimvueValidationError(field, "must be a string", value)
    return clean_text(value, field)


_NAME_RULE = (
    "must be a non-empty string of at most 255 letters, digits, spaces or any of - _ / . : "
    "(the official Simvue client's rule)"
)


def validate_name(name: str, field: str = "name") -> str:
    """Check a run name and return it unchanged: the official client's rule, 1 to 255
    characters, each a letter, digit, whitespace or one of ``- _ / . :``."""
    if not isinstance(name, str) or len(name) > _MAX_NAME or not _NAME_RE.fullmatch(name):
        raise SimvueValidationError(field, _NAME_RULE, name)
    return name


_FOLDER_RULE = (
    "must be a string starting with '/' whose parts, separated by single '/', are not empty, "
    "'.' or '..' and hold no control characters, at most 1024 characters"
)


def validate_folder(path: str, field: str = "folder") -> str:
    """Check a folder path and return it normalised.

    As for the official client, a folder is a path starting with ``/``; ``/`` is the root and
    one trailing slash is stripped (``/a/b/`` becomes ``/a/b``). Empty, ``.`` and ``..``
    parts and control characters are refused: no path can hold them.
    """
    if not isinstance(path, str) or not path.startswith("/") or len(path) > _MAX_FOLDER:
        raise SimvueValidationError(field, _FOLDER_RULE, path)
    path = clean_text(path, field)
    if path == "/":
        return path
    normalised = path[:-1] if path.endswith("/") else path
    for part in normalised[1:].split("/"):
        if part in ("", ".", "..") or _FOLDER_PART_BAD.search(part):
            raise SimvueValidationError(field, _FOLDER_RULE, path)
    return normalised


def validate_tags(tags: Any, field: str = "tags") -> tuple[str, ...]:
    """Check a collection of tags; return them as a tuple without duplicates.

    ``tags`` must be a list, tuple or set (a single string is refused); each tag a non-empty
    string of at most 255 word characters (any script), spaces, ``-`` or ``.``, as the
    official client requires. First-seen order is kept.
    """
    if not isinstance(tags, (list, tuple, set, frozenset)):
        raise SimvueValidationError(field, "must be a list, tuple or set of strings", tags)
    seen: dict[str, None] = {}
    for index, tag in enumerate(tags):
        if not isinstance(tag, str) or len(tag) > _MAX_TAG or not _TAG_RE.fullmatch(tag):
            raise SimvueValidationError(
                f"{field}[{index}]",
                "must be a non-empty string of at most 255 letters, digits, '_', '-', '.' or "
                "spaces (the official Simvue client's rule)",
                tag,
            )
        seen.setdefault(tag, None)
    return tuple(seen)


_METADATA_KEY_RULE = (
    "keys must be non-empty strings without leading or trailing whitespace and without '..'"
)
_METADATA_VALUE_RULE = "values must be int, float, str, bool or a nested mapping of those"
_METADATA_DEPTH_RULE = (
    f"must be nested at most {cv.MAX_METADATA_DEPTH} levels deep, counting each dot of a key "
    "as a level (the server stores metadata nested)"
)
_METADATA_SIZE_RULE = (
    f"must be at most {cv.MAX_METADATA_BYTES} bytes as JSON text in all (a run's metadata is "
    "sent in one request; large data belongs in files)"
)


def validate_metadata(metadata: Any, field: str = "metadata") -> dict[str, MetadataValue]:
    """Check run metadata and return it flattened.

    Keys are non-empty strings; values are int, float (NaN and infinities included), str,
    bool, or nested mappings, which are flattened with dots: ``{"solver": {"tol": 1e-6}}``
    becomes ``{"solver.tol": 1e-6}``. A flattened key that collides with another is refused,
    and so is metadata nested deeper than :data:`~.conventions.MAX_METADATA_DEPTH` levels or
    larger than :data:`~.conventions.MAX_METADATA_BYTES` (a server could refuse the run).
    Lone surrogates in keys and values become U+FFFD (:func:`clean_text`).
    """
    if not isinstance(metadata, Mapping):
        raise SimvueValidationError(field, "must be a mapping of string keys to values", metadata)
    flat: dict[str, MetadataValue] = {}
    _flatten_metadata(metadata, field, flat)
    check_metadata_size(flat, field)
    return flat


def metadata_size(flat: Mapping[str, Any]) -> int:
    """About how many bytes flat metadata takes as JSON text: each key and value as JSON,
    plus the punctuation between them (at least what the nested form sent takes)."""
    total = 2
    for key, value in flat.items():
        text = value if isinstance(value, str) else None
        total += len(key.encode("utf-8", "replace")) + 4
        if text is not None:
            total += len(json.dumps(text, ensure_ascii=False).encode("utf-8", "replace"))
        else:
            total += len(repr(value))
    return total


def check_metadata_size(flat: Mapping[str, Any], field: str = "metadata") -> None:
    """Refuse flat metadata larger than :data:`~.conventions.MAX_METADATA_BYTES`; used on
    each call's metadata and on what a run holds after an update."""
    size = metadata_size(flat)
    if size > cv.MAX_METADATA_BYTES:
        raise SimvueValidationError(
            field, _METADATA_SIZE_RULE, f"metadata of about {size} bytes ({len(flat)} keys)"
        )


def _flatten_metadata(
    mapping: Mapping[Any, Any], field: str, out: dict[str, MetadataValue]
) -> None:
    """Add ``mapping``'s leaves to ``out`` under their dotted keys, refusing a bad key, a
    key nested too deep, a bad value or a collision (each key is checked once, before any
    leaf below it, as a walk that checks keys on its way down would)."""
    checked: dict[tuple[Any, ...], tuple[tuple[str, ...], int]] = {(): ((), 0)}
    for keys, _raw, value in leaves(mapping, empty_is_leaf=True, cut_at=cv.MAX_METADATA_DEPTH):
        depth = len(keys) - 1
        while keys[:depth] not in checked:
            depth -= 1
        prefix, levels = checked[keys[:depth]]
        for index in range(depth, len(keys)):
            key = keys[index]
            parent_field = ".".join((field, *prefix))
            if not isinstance(key, str) or not key or key != key.strip() or ".." in key:
                raise SimvueValidationError(parent_field, _METADATA_KEY_RULE, key)
            key = clean_text(key, f"{parent_field} (a key)")
            prefix = (*prefix, key)
            dotted = ".".join(prefix)
            if ".." in dotted:
                raise SimvueValidationError(f"{field}.{dotted}", _METADATA_KEY_RULE, dotted)
            levels += key.count(".") + 1
            if levels > cv.MAX_METADATA_DEPTH:
                raise SimvueValidationError(field, _METADATA_DEPTH_RULE, dotted)
            checked[keys[: index + 1]] = (prefix, levels)
        if isinstance(value, Mapping):
            continue  # an empty mapping: no leaf
        dotted = ".".join(prefix)
        item_field = f"{field}.{dotted}"
        if isinstance(value, (bool, int, float, str)):
            if dotted in out:
                raise SimvueValidationError(
                    item_field,
                    "flattened key collides with another key of the same name",
                    value,
                )
            out[dotted] = clean_text(value, item_field) if isinstance(value, str) else value
        else:
            raise SimvueValidationError(item_field, _METADATA_VALUE_RULE, value)


_RETENTION_UNITS: dict[str, int] = {
    name: seconds
    for names, seconds in (
        (("s", "sec", "secs", "second", "seconds"), 1),
        (("m", "min", "mins", "minute", "minutes"), 60),
        (("h", "hr", "hrs", "hour", "hours"), 3600),
        (("d", "day", "days"), 86400),
        (("w", "week", "weeks"), 604800),
    )
    for name in names
}

_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_RETENTION_PART_RE = re.compile(rf"({_NUMBER})\s*([a-z]+)")
_RETENTION_RE = re.compile(rf"\s*(?:{_NUMBER}\s*[a-z]+\s*)+")
_RETENTION_RULE = (
    "must be a positive whole number of seconds or a positive duration such as '45 seconds', "
    "'30 min', '1.5 hours', '5 days', '2 weeks', '10s', '3d' or '1 hour 30 min' "
    "(units: s/sec/second, m/min/minute, h/hr/hour, d/day, w/week), at most "
    f"{cv.MAX_RETENTION_SECONDS} seconds (about 68 years; None keeps the run for good)"
)


def parse_retention(value: Any, field: str = "retention_period") -> int | None:
    """Turn a retention period into whole seconds; ``None`` means keep forever.

    Accepts a positive int (seconds) or a duration string of one or more number-unit parts
    (``"30 min"``, ``"2w"``, ``"1 hour 30 min"``), case-insensitive, rounded to seconds; at
    most :data:`~.conventions.MAX_RETENTION_SECONDS` (the official client asks only for a
    positive int, ``RunInput.ttl: PositiveInt`` in simvue/models.py; a server may refuse more).
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise SimvueValidationError(field, _RETENTION_RULE, value)
    if isinstance(value, int):
        if not 0 < value <= cv.MAX_RETENTION_SECONDS:
            raise SimvueValidationError(field, _RETENTION_RULE, value)
        return value
    if not isinstance(value, str):
        raise SimvueValidationError(field, _RETENTION_RULE, value)
    text = value.lower()
    if not _RETENTION_RE.fullmatch(text):
        raise SimvueValidationError(field, _RETENTION_RULE, value)
    total = 0.0
    for number, unit in _RETENTION_PART_RE.findall(text):
        if unit not in _RETENTION_UNITS:
            raise SimvueValidationError(field, _RETENTION_RULE, value)
        total += float(number) * _RETENTION_UNITS[unit]
    seconds = round(total) if math.isfinite(total) else 0
    if not 0 < seconds <= cv.MAX_RETENTION_SECONDS:
        raise SimvueValidationError(field, _RETENTION_RULE, value)
    return seconds


def validate_timeout(value: Any, field: str = "timeout") -> int | None:
    """Check a heartbeat timeout: None (the server's default) or a whole number of seconds
    from 1 to :data:`~.conventions.MAX_RETENTION_SECONDS` (as the server stores a ttl)."""
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not 0 < value <= cv.MAX_RETENTION_SECONDS
    ):
        raise SimvueValidationError(
            field,
            f"must be None or a whole number of seconds from 1 to {cv.MAX_RETENTION_SECONDS}",
            value,
        )
    return value


_VISIBILITY_RULE = "must be None, 'private', 'tenant', 'public', or a non-empty list of user names"


def validate_visibility(value: Any, field: str = "visibility") -> dict[str, Any] | None:
    """Turn a visibility choice into the server's ``visibility`` object.

    ``None`` or ``"private"`` give ``None`` (only the owner sees the run); ``"tenant"`` and
    ``"public"`` open it to the tenant or everyone; a list of user names shares it with them.
    """
    if value is None or value == "private":
        return None
    if value == "tenant":
        return {"public": False, "tenant": True, "users": []}
    if value == "public":
        return {"public": True, "tenant": False, "users": []}
    if not isinstance(value, (list, tuple)) or not value:
        raise SimvueValidationError(field, _VISIBILITY_RULE, value)
    users: list[str] = []
    for index, user in enumerate(value):
        if not isinstance(user, str) or not user.strip():
            raise SimvueValidationError(
                f"{field}[{index}]", "user names must be non-empty strings", user
            )
        users.append(clean_text(user, f"{field}[{index}]"))
    return {"public": False, "tenant": False, "users": users}


def validate_interval(value: Any, field: str = "resources_metrics_interval") -> float | None:
    """Check a sampling interval in seconds; ``None`` means sampling is off.

    Must be a finite int or float greater than zero; returned as a float.
    """
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise SimvueValidationError(
            field, "must be None or a finite number of seconds greater than zero", value
        )
    return float(value)


_METRIC_NAME_RULE = (
    "must be a non-empty string of at most 255 letters, digits, spaces or any of "
    "- _ / . : = > < + ( ) % (the official Simvue client's rule)"
)


def validate_metric_name(name: Any, field: str = "metrics") -> str:
    """Check a metric name and return it unchanged.

    Allowed: 1 to 255 characters, each a letter, digit, whitespace or one of
    ``- _ / . : = > < + ( ) %``.
    """
    if (
        not isinstance(name, str)
        or len(name) > _MAX_METRIC_NAME
        or not _METRIC_NAME_RE.fullmatch(name)
    ):
        raise SimvueValidationError(field, _METRIC_NAME_RULE, name)
    return name


def validate_step(step: Any, field: str = "step") -> int:
    """Check a metric step: an int (not a bool) of zero or more."""
    if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
        raise SimvueValidationError(field, "must be an int of zero or more", step)
    return int(step)


def validate_status(status: Any, field: str = "status") -> str:
    """Check a run status: one of created, running, completed, failed, terminated."""
    if not isinstance(status, str) or status not in RUN_STATUSES:
        raise SimvueValidationError(field, f"must be one of {', '.join(RUN_STATUSES)}", status)
    return status


def validate_log_level(level: Any, field: str = "level") -> str:
    """Check an event log level: one of debug, info, warning, error, critical."""
    if not isinstance(level, str) or level not in LOG_LEVELS:
        raise SimvueValidationError(field, f"must be one of {', '.join(LOG_LEVELS)}", level)
    return level
