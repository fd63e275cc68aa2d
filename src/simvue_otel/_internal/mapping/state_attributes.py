"""A run's state as the attributes of a ``simvue.run`` or snapshot span say it.

The rules of section 3 of the conventions, apart from the :class:`~.mapper.Mapper` so that it
keeps to run identity and record making: what a retention, tags, metadata or visibility
attribute means, and the cleaning a state gets before a server sees it (a value a server
would refuse the whole run for is left out, and said once through ``warn``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, Protocol

from .. import conventions as cv
from ..errors import SimvueValidationError
from ..flatten import flatten
from ..validation import clean_text, metadata_size, validate_tags, validate_visibility
from .records import RunRecord

__all__ = [
    "Warn",
    "clean_state",
    "metadata_attrs",
    "metadata_value",
    "seconds_attr",
    "str_attr",
    "tags_attr",
    "visibility_attr",
]


class Warn(Protocol):
    """Log ``message % args`` once per ``key`` (the mapper's ``_warn_once``)."""

    def __call__(self, key: str, message: str, *args: Any) -> None: ...


def clean_state(record: RunRecord, warn: Warn) -> RunRecord:
    """A run state the server takes: text with lone surrogates replaced (conventions,
    "Text"), and metadata too deep or too large for a run left out, logged once (a server
    refuses the whole run for them; the Run refuses them at the call)."""
    where = f"run {record.run.key}"
    record.description = _clean(record.description, f"{cv.RUN_DESCRIPTION} of {where}")
    record.tags = _clean(record.tags, f"{cv.RUN_TAGS} of {where}")
    record.visibility = _clean(record.visibility, f"{cv.RUN_VISIBILITY} of {where}")
    record.system = _clean(record.system, f"the system facts of {where}")
    metadata = _clean(dict(record.metadata), f"{cv.RUN_METADATA_PREFIX[:-1]} of {where}")
    deep = [k for k in metadata if k.count(".") >= cv.MAX_METADATA_DEPTH]
    for k in deep:
        del metadata[k]
    if deep:
        warn(
            f"deep:{record.run.key}",
            "metadata of run %s nested deeper than %d levels left out (%d key(s), the "
            "first %r): a server refuses the run for it",
            record.run.key,
            cv.MAX_METADATA_DEPTH,
            len(deep),
            deep[0][:200],
        )
    if metadata_size(metadata) > cv.MAX_METADATA_BYTES:
        kept: dict[str, Any] = {}
        total = 2  # the braces; each item's size is metadata_size of it alone, less them
        for k, v in metadata.items():
            size = metadata_size({k: v}) - 2
            if total + size <= cv.MAX_METADATA_BYTES:
                kept[k] = v
                total += size
        warn(
            f"big:{record.run.key}",
            "metadata of run %s is larger than %d bytes: %d key(s) left out",
            record.run.key,
            cv.MAX_METADATA_BYTES,
            len(metadata) - len(kept),
        )
        metadata = kept
    record.metadata = metadata
    return record


def str_attr(attrs: Mapping[str, Any], key: str) -> str | None:
    value = attrs.get(key)
    return value if isinstance(value, str) else None


def seconds_attr(run_key: str, attrs: Mapping[str, Any], key: str, warn: Warn) -> int | None:
    """A retention or heartbeat timeout in seconds: None unless a number from 1 to
    :data:`~..conventions.MAX_RETENTION_SECONDS` (past it, logged once: a server may
    refuse the whole run for it)."""
    value = attrs.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not math.isfinite(value) or value <= 0:  # NaN and inf are "not a usable number"
        return None
    if value > cv.MAX_RETENTION_SECONDS:
        warn(
            f"{key}:{run_key}",
            "%s of run %s is %r, more than %d seconds: ignored",
            key,
            run_key,
            value,
            cv.MAX_RETENTION_SECONDS,
        )
        return None
    return int(value)


def tags_attr(run_key: str, attrs: Mapping[str, Any], warn: Warn) -> tuple[str, ...] | None:
    value = attrs.get(cv.RUN_TAGS)
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    try:
        return validate_tags(value, field=cv.RUN_TAGS)
    except SimvueValidationError as exc:
        warn(f"tags:{run_key}", "%s; invalid tags left out", exc)
    kept: list[str] = []
    for tag in value if isinstance(value, list | tuple) else ():
        try:
            kept.extend(t for t in validate_tags([tag], field=cv.RUN_TAGS) if t not in kept)
        except SimvueValidationError:
            continue
    return tuple(kept)


def metadata_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The metadata a span's attributes state: the whole ``simvue.run.metadata`` (a JSON
    string or a map, flattened; a map nested too deep is cut, its key left for
    :func:`clean_state` to leave out), then each ``simvue.run.metadata.<key>``, which wins."""
    flat: dict[str, Any] = {}
    whole = attrs.get(cv.RUN_METADATA_PREFIX.rstrip("."))
    if isinstance(whole, str):
        try:
            whole = json.loads(whole)
        except (ValueError, RecursionError):  # not JSON, or nested thousands deep
            whole = None
    if isinstance(whole, Mapping):
        flat = flatten(whole, leaf=metadata_value, cut_at=cv.MAX_METADATA_DEPTH)
    prefix = cv.RUN_METADATA_PREFIX
    for key, value in attrs.items():
        if key.startswith(prefix) and len(key) > len(prefix):
            flat[key[len(prefix) :]] = metadata_value(value)
    return flat


def visibility_attr(run_key: str, attrs: Mapping[str, Any], warn: Warn) -> dict[str, Any] | None:
    """``simvue.run.visibility`` (private/tenant/public) and ``.users`` combine: a tenant
    run may also be shared with named users of other tenants."""
    users = attrs.get(cv.RUN_VISIBILITY_USERS)
    if isinstance(users, str):
        users = [users]
    if cv.RUN_VISIBILITY not in attrs and users is None:
        return None  # not stated
    try:
        base = validate_visibility(attrs.get(cv.RUN_VISIBILITY), field=cv.RUN_VISIBILITY)
        named = validate_visibility(list(users), field=cv.RUN_VISIBILITY_USERS) if users else None
    except SimvueValidationError as exc:
        warn(f"vis:{run_key}", "%s; the run stays private", exc)
        return None
    if base is None:
        base = {"public": False, "tenant": False, "users": []}  # private
    if named is None:
        return base
    return {**base, "users": named["users"]}


def _clean(value: Any, field: str) -> Any:
    """``value`` with lone surrogates replaced in every string it holds (keys of mappings
    too); the same object when there were none."""
    if isinstance(value, str):
        return clean_text(value, field)
    if isinstance(value, Mapping):
        items = [(_clean(k, field), _clean(v, field)) for k, v in value.items()]
        if all(a is k and b is v for (a, b), (k, v) in zip(items, value.items(), strict=True)):
            return value
        return dict(items)
    if isinstance(value, list | tuple):
        cleaned = [_clean(v, field) for v in value]
        if all(a is b for a, b in zip(cleaned, value, strict=True)):
            return value
        return type(value)(cleaned)
    return value


def metadata_value(value: Any) -> Any:
    """A metadata leaf as Simvue stores it: OTel arrays (and JSON lists) become their JSON
    text, so every metadata value is a scalar (conventions, "Metadata values")."""
    if isinstance(value, list | tuple):
        return json.dumps(list(value), default=str)
    return value
