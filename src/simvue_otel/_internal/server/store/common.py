"""What every resource of the store shares: ids, times, the checks of request fields kept by
more than one resource, and the sorting and paging of listings.

What is stored must stay readable by every later query: times must be finite and within the
range that can be formatted, folder paths are bounded. Rows are also formatted defensively, so
one damaged row (from an older version) never fails another user's listing.
"""

from __future__ import annotations

import logging
import math
import re
import secrets
import sqlite3
import string
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from ... import conventions as cv
from .errors import Invalid, StoreError, invalid

RUN_STATUSES = cv.RUN_STATUSES
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%f"
_TAG_RE = re.compile(cv.TAG_PATTERN)
_ID_ALPHABET = string.ascii_letters + string.digits
_LOG = logging.getLogger("simvue_otel.server")
MAX_SECONDS = 2**53
"""Largest ttl or heartbeat timeout accepted, in seconds (exact as a double)."""
MAX_FOLDER_LENGTH = 1024
MAX_FOLDER_DEPTH = 64


def new_id() -> str:
    """A 22-character alphanumeric id, the shape of Simvue's object ids (uniform: bytes of 248
    or more are dropped so that ``% 62`` has no bias)."""
    out: list[str] = []
    while len(out) < 22:
        out.extend(_ID_ALPHABET[b % 62] for b in secrets.token_bytes(32) if b < 248)
    return "".join(out[:22])


def format_time(epoch: Any) -> str | None:
    """A stored epoch as Simvue's UTC timestamp text; None for no time, and for a value that
    cannot be formatted (a row written before times were checked), so reads never fail."""
    if epoch is None:
        return None
    try:
        return datetime.fromtimestamp(float(epoch), tz=timezone.utc).strftime(_TIME_FORMAT)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def finite_number(value: Any) -> float | None:
    """``value`` as a finite float, or None when it is not a number (bools are not) or has no
    finite double (NaN, infinities, integers of hundreds of digits)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def parse_time(value: Any, field: str) -> float | None:
    """Simvue timestamps are UTC strings without a zone suffix; epoch numbers are accepted too.

    The time must be one the server can format back (years 1 to 9999, finite), else 422:
    a stored time that cannot be formatted would break every later read of the run."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        epoch = finite_number(value)
        if epoch is None or format_time(epoch) is None:
            raise invalid(field, f"must be a finite time within years 1 to 9999, not {value!r}")
        return epoch
    if isinstance(value, str):
        text = value.strip().replace(" ", "T")
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise Invalid(
                [
                    {
                        "loc": ["body", field],
                        "msg": f"not a timestamp: {value[:100]!r}",
                        "type": "value",
                    }
                ]
            ) from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)
        try:
            epoch = parsed.timestamp()
        except (OverflowError, ValueError, OSError):
            epoch = math.nan
        if format_time(epoch) is None:
            raise invalid(field, f"must be a time within years 1 to 9999, not {value[:100]!r}")
        return epoch
    raise Invalid([{"loc": ["body", field], "msg": "must be a timestamp string", "type": "type"}])


def deep_merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``update`` into a copy of ``base``; nested dicts merge, everything else replaces."""
    merged = dict(base)
    for key, value in update.items():
        old = merged.get(key)
        if isinstance(old, dict) and isinstance(value, Mapping):
            merged[key] = deep_merge(old, value)
        else:
            merged[key] = value
    return merged


def merged_metadata(doc: Mapping[str, Any], value: Any) -> dict[str, Any]:
    """The metadata of ``doc`` with ``value`` merged into it (:func:`deep_merge`); 422 when
    ``value`` is not an object."""
    if not isinstance(value, Mapping):
        raise invalid("metadata", "must be an object")
    return deep_merge(doc.get("metadata", {}), value)


def check_ttl(value: Any, field: str) -> int | None:
    if value is None:
        return None
    seconds = finite_number(value)
    if seconds is None or not 0 < seconds <= MAX_SECONDS:
        raise invalid(
            field, f"must be a positive number of seconds, at most {MAX_SECONDS}, or null"
        )
    return int(seconds)


def check_tags(value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise invalid("tags", "must be a list of tags")
    for i, tag in enumerate(value):
        if not isinstance(tag, str) or not _TAG_RE.fullmatch(tag):
            raise invalid(f"tags.{i}", f"must match {_TAG_RE.pattern} (the official rule)")
    return list(dict.fromkeys(value))


def check_folder(value: Any, field: str = "folder") -> str:
    if not isinstance(value, str) or not value.startswith("/"):
        raise invalid(field, "must be a path starting with '/'")
    if value != "/" and value.endswith("/"):
        value = value.rstrip("/") or "/"
    if len(value) > MAX_FOLDER_LENGTH or value.count("/") > MAX_FOLDER_DEPTH:
        raise invalid(
            field,
            f"must be at most {MAX_FOLDER_LENGTH} characters and {MAX_FOLDER_DEPTH} levels deep",
        )
    return str(value)


def sort_items(
    items: list[dict[str, Any]],
    sorting: Sequence[Mapping[str, Any]],
    allowed: Sequence[str],
    what: str,
) -> None:
    """Sort ``items`` in place by each ``{id, desc}`` of ``sorting``, first one first; a
    column not in ``allowed`` (``metadata.<key>`` standing for any metadata key) answers 400
    naming it. Times sort by their numeric ``_<column>`` when the item has one."""
    for spec in sorting:
        column = spec.get("id")
        if not isinstance(column, str) or not (
            column in allowed
            or ("metadata.<key>" in allowed and column.startswith("metadata.") and column[9:])
        ):
            raise StoreError(
                f"query parameter 'sorting': {what} can be sorted by "
                f"{', '.join(allowed)}, not {str(column)[:100]!r}"
            )
    for spec in reversed(list(sorting)):
        column = str(spec["id"])

        def key(item: dict[str, Any], c: str = column) -> tuple[int, Any]:
            return order_key(item[f"_{c}"] if f"_{c}" in item else dig(item, c))

        items.sort(key=key, reverse=bool(spec.get("desc", False)))


def paged(items: list[dict[str, Any]], start: int, count: int | None) -> list[dict[str, Any]]:
    start = max(0, start)
    if count is None or count <= 0:
        return items[start:]
    return items[start : start + count]


def formatted(rows: Iterable[sqlite3.Row], api: Any) -> list[dict[str, Any]]:
    """Rows as API objects; a row that cannot be formatted (damaged by hand, or written by an
    older version) is logged and left out, so it never fails a listing."""
    out: list[dict[str, Any]] = []
    for row in rows:
        try:
            out.append(api(row))
        except Exception:
            _LOG.exception("skipped a damaged row %r in a listing", row["id"])
    return out


def as_epoch(value: Any) -> float | None:
    """A stored time as a finite number, None otherwise (never raises)."""
    return finite_number(value)


def public_fields(run: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in run.items() if not k.startswith("_")}


def dig(obj: Mapping[str, Any], dotted: str) -> Any:
    current: Any = obj
    for part in dotted.split("."):
        if not isinstance(current, Mapping):
            return None
        current = current.get(part)
    return current


def order_key(value: Any) -> tuple[int, Any]:
    if value is None:
        return (2, "")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, value)
    return (1, str(value))
