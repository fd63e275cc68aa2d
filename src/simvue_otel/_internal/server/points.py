"""Metric points as the local server stores them: one row per posted entry, not per value.

A ``POST /api/metrics`` entry is one step of a run with a few values (``{values, step, time,
timestamp}``). The server keeps it as one row: its metric names (a *shape*, stored once and
referred to by id) and its values packed as little-endian doubles in the shape's order, NaN
kept as NaN. Writing a row per entry instead of a row per value is what lets the server
store a few hundred thousand values a second (and about a third of the bytes per value);
reads unpack the values they need.

This module checks entries (the errors name the entry and the rule) and computes what the
store's summaries and plot envelopes gain from a batch, in one pass per shape with the
builtins doing the per-value work.
"""

from __future__ import annotations

import math
import sys
from array import array
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["Batch", "check_entries", "pack", "summarise", "unpack"]

_SWAP = sys.byteorder != "little"


def pack(values: array[float]) -> bytes:
    """The stored form of an entry's values: little-endian doubles."""
    if _SWAP:
        values = array("d", values)
        values.byteswap()
    return values.tobytes()


def unpack(blob: bytes) -> array[float]:
    """An entry's values from their stored form."""
    values = array("d", blob)
    if _SWAP:
        values.byteswap()
    return values


class Batch:
    """A checked metrics batch: the rows to insert, in the order posted, and the same entries
    grouped by shape for the summaries."""

    def __init__(self) -> None:
        self.rows: list[tuple[Any, ...]] = []
        self.groups: dict[tuple[str, ...], Group] = {}
        self.values = 0


class Group:
    """The entries of one shape in a batch: their steps, values and positions in the batch."""

    __slots__ = ("names", "order", "steps", "values")

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names
        self.steps: list[int] = []
        self.values: list[array[float]] = []
        self.order: list[int] = []


def check_entries(
    run_id: str,
    entries: Any,
    shape_of: Callable[[tuple[str, ...]], int],
    *,
    max_int: int,
    max_seconds: float,
    valid_name: Callable[[str], bool],
    name_rule: str,
    invalid: Callable[[str, str], Exception],
) -> Batch:
    """The entries of a metrics batch, checked, as rows ``(run_id, step, time, timestamp,
    shape, values)`` (``shape_of`` gives a shape's id); raises ``invalid(field, rule)`` for
    the first entry that breaks a rule (nothing of the batch is stored then). Entries
    without values give no row."""
    if not isinstance(entries, list):
        raise invalid("metrics", "must be a list of {values, step, time, timestamp}")
    batch = Batch()
    rows = batch.rows
    append = rows.append
    groups = batch.groups
    last_names: tuple[str, ...] | None = None
    shape = 0
    group = Group(())
    count = 0
    for i, entry in enumerate(entries):
        if entry.__class__ is not dict and not isinstance(entry, Mapping):
            raise invalid(f"metrics.{i}", "must be an object")
        step = entry.get("step", 0)
        if step.__class__ is not int or not 0 <= step <= max_int:  # bool is not int here
            raise invalid(
                f"metrics.{i}.step", f"must be an integer from 0 to {max_int}, not {step!r}"
            )
        t = entry.get("time")
        if t is not None and not (t.__class__ is float and -max_seconds <= t <= max_seconds):
            t = _seconds(t, max_seconds)
            if t is None:
                raise invalid(
                    f"metrics.{i}.time", f"must be a number of seconds, at most {max_seconds}"
                )
        stamp = entry.get("timestamp")
        if stamp is not None and (
            stamp.__class__ is not str or len(stamp) > 64 or not stamp.isascii()
        ):
            raise invalid(f"metrics.{i}.timestamp", "must be a timestamp string")
        values = entry.get("values")
        if values.__class__ is not dict:
            if not isinstance(values, Mapping):
                raise invalid(f"metrics.{i}.values", "must be an object of name: number")
            values = dict(values)
        if not values:
            continue
        names = tuple(values)
        if names != last_names:
            found = groups.get(names)
            if found is None:
                for name in names:
                    if name.__class__ is not str or not valid_name(name):
                        raise invalid(
                            f"metrics.{i}.values",
                            f"metric names must match {name_rule} (the official rule), "
                            f"not {name!r}",
                        )
                found = groups[names] = Group(names)
            group = found
            shape = shape_of(names)
            last_names = names
        try:
            numbers = array("d", values.values())
        except (TypeError, OverflowError):
            raise _bad_value(i, values, invalid) from None
        append((run_id, step, t, stamp, shape, pack(numbers)))
        group.steps.append(step)
        group.values.append(numbers)
        group.order.append(count)
        count += 1
    batch.values = sum(len(g.names) * len(g.steps) for g in groups.values())
    return batch


def _seconds(value: Any, max_seconds: float) -> float | None:
    if value.__class__ is bool or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) and abs(number) <= max_seconds else None


def _bad_value(
    i: int, values: Mapping[str, Any], invalid: Callable[[str, str], Exception]
) -> Exception:
    for name, value in values.items():
        if not isinstance(value, int | float):  # bools count: Simvue takes them
            return invalid(f"metrics.{i}.values.{name}", "must be a number")
        try:
            float(value)
        except OverflowError:
            return invalid(f"metrics.{i}.values.{name}", "must be a number a double can hold")
    return invalid(f"metrics.{i}.values", "must be an object of name: number")


def _finite_part(column: Sequence[float]) -> Sequence[float]:
    """The non-NaN values of a column (the column itself when it has no NaN)."""
    total = sum(column)
    if total == total:  # NaN-free (a NaN, or inf - inf, makes the sum NaN)
        return column
    return [v for v in column if v == v]


def summarise(
    batch: Batch, bits: int
) -> tuple[dict[str, list[Any]], dict[tuple[str, int], list[Any]]]:
    """What a batch adds to the store's summaries and plot envelopes, per metric name:

    - summary: ``[count, non-NaN count, min, max, sum, highest step, value at it]`` (the
      latest entry of equal highest steps; None when NaN);
    - envelope, per slice of ``2**bits`` steps: ``[min, max, first step, last step]`` of the
      non-NaN values in it.

    One pass per shape; the builtins (``zip``, ``min``, ``max``, ``sum``) do the per-value
    work."""
    summary: dict[str, list[Any]] = {}
    envelope: dict[tuple[str, int], list[Any]] = {}
    for group in batch.groups.values():
        steps = group.steps
        top = max(steps)
        at = len(steps) - 1 - steps[::-1].index(top)  # the latest entry at the highest step
        order = group.order[at]  # its position in the batch: a later one wins a tie
        segments = _segments(steps, bits)
        for name, column in zip(group.names, zip(*group.values, strict=True), strict=True):
            finite = _finite_part(column)
            last = column[at]
            add = [
                len(column),
                len(finite),
                min(finite) if finite else None,
                max(finite) if finite else None,
                sum(finite),
                top,
                None if last != last else last,
                order,
            ]
            s = summary.get(name)
            if s is None:
                summary[name] = add
            else:
                s[0] += add[0]
                s[1] += add[1]
                if add[2] is not None:
                    s[2] = add[2] if s[2] is None else min(s[2], add[2])
                    s[3] = add[3] if s[3] is None else max(s[3], add[3])
                s[4] += add[4]
                if (top, order) > (s[5], s[7]):
                    s[5], s[6], s[7] = top, add[6], order
            if not finite:
                continue
            for slice_, start, stop in segments:
                part = column[start:stop]
                kept = _finite_part(part)
                if not kept:
                    continue
                if kept is part:
                    x0, x1 = min(steps[start:stop]), max(steps[start:stop])
                else:
                    at_steps = [x for x, v in zip(steps[start:stop], part, strict=True) if v == v]
                    x0, x1 = min(at_steps), max(at_steps)
                lo, hi = min(kept), max(kept)
                e = envelope.get((name, slice_))
                if e is None:
                    envelope[(name, slice_)] = [lo, hi, x0, x1]
                else:
                    e[0], e[1] = min(e[0], lo), max(e[1], hi)
                    e[2], e[3] = min(e[2], x0), max(e[3], x1)
    for s in summary.values():
        del s[7]
    return summary, envelope


def _segments(steps: Sequence[int], bits: int) -> list[tuple[int, int, int]]:
    """``(slice, start, stop)`` for each run of consecutive entries in one slice of steps."""
    out: list[tuple[int, int, int]] = []
    start = 0
    current = steps[0] >> bits if steps else 0
    for i, step in enumerate(steps):
        s = step >> bits
        if s != current:
            out.append((current, start, i))
            current, start = s, i
    if steps:
        out.append((current, start, len(steps)))
    return out
