"""Metric points as the local server stores them: in chunks of columns, not a row per value.

A ``POST /api/metrics`` entry is one step of a run with a few values (``{values, step, time,
timestamp}``). The server keeps the entries of one batch that have the same metric names (a
*shape*, stored once and referred to by id) as one chunk: their steps, times, timestamps,
positions in the batch and values, each a packed column (values row-major in the shape's
order, NaN kept as NaN, a missing time as NaN). One insert per shape and batch instead of one
per value is what lets the server store several hundred thousand values a second, in about
a fifth of the bytes; reads unpack the columns they need and order points by step, then by
arrival (batch, then position in it).

This module checks entries (the errors name the entry and the rule), builds the chunks, and
computes what the store's summaries and plot envelopes gain from a batch, with the builtins
doing the per-value work.
"""

from __future__ import annotations

import itertools
import math
import sys
from array import array
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

__all__ = ["Batch", "check_entries", "pack", "summarise", "unpack"]

_SWAP = sys.byteorder != "little"


def pack(column: array[Any]) -> bytes:
    """A packed column: little-endian."""
    if _SWAP:
        column = array(column.typecode, column)
        column.byteswap()
    return column.tobytes()


def unpack(typecode: str, blob: bytes) -> array[Any]:
    """A column from its packed form."""
    column = array(typecode, blob)
    if _SWAP:
        column.byteswap()
    return column


STAMP_SEPARATOR = "\x1f"
"""Between the timestamps of a chunk (timestamps are printable ASCII; none is empty)."""


class Batch:
    """A checked metrics batch: its entries grouped by shape, each group in posted order."""

    def __init__(self) -> None:
        self.groups: dict[tuple[str, ...], Group] = {}
        self.values = 0  # how many values it holds
        self.entries = 0  # how many entries: the next one's position in the batch

    def add(
        self, names: tuple[str, ...], step: int, time: float, stamp: str, values: Iterable[Any]
    ) -> None:
        """Append one entry (time NaN when absent, timestamp empty when absent); TypeError
        or OverflowError when a value is not a number a double can hold."""
        group = self.groups.get(names)
        if group is None:
            group = self.groups[names] = Group(names)
        group.values.extend(values)
        group.steps.append(step)
        group.times.append(time)
        group.stamps.append(stamp)
        group.order.append(self.entries)
        self.entries += 1
        self.values += len(names)


class Group:
    """The entries of one shape in a batch: columns of their steps, times, timestamps,
    positions in the batch, and values (row-major)."""

    __slots__ = ("names", "order", "stamps", "steps", "times", "values")

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names
        self.steps: array[int] = array("q")
        self.times: array[float] = array("d")
        self.stamps: list[str] = []
        self.order: array[int] = array("q")
        self.values: array[float] = array("d")

    def chunk(self) -> tuple[int, int, int, bool, bytes, bytes, str, bytes, bytes]:
        """``(count, lowest step, highest step, steps ascending, steps, times, timestamps,
        positions, values)`` as stored."""
        steps = self.steps
        ascending = all(a <= b for a, b in itertools.pairwise(steps))
        return (
            len(steps),
            min(steps),
            max(steps),
            ascending,
            pack(steps),
            pack(self.times),
            STAMP_SEPARATOR.join(self.stamps),
            pack(self.order),
            pack(self.values),
        )

    def column(self, j: int) -> array[float]:
        """The values of the shape's ``j``-th metric."""
        return self.values[j :: len(self.names)]


def check_entries(
    entries: Any,
    *,
    max_int: int,
    max_seconds: float,
    valid_name: Callable[[str], bool],
    name_rule: str,
    max_name: int,
    invalid: Callable[[str, str], Exception],
) -> Batch:
    """The entries of a metrics batch, checked and grouped by shape; raises
    ``invalid(field, rule)`` for the first entry that breaks a rule (nothing of the batch is
    stored then). Entries without values are left out. ``valid_name`` checks a name's
    characters and its length, at most ``max_name``."""
    if not isinstance(entries, list):
        raise invalid("metrics", "must be a list of {values, step, time, timestamp}")
    uniform = _uniform(entries, max_int, max_seconds, valid_name)
    if uniform is not None:
        return uniform
    batch = Batch()
    nan = math.nan
    for i, entry in enumerate(entries):
        if entry.__class__ is not dict and not isinstance(entry, Mapping):
            raise invalid(f"metrics.{i}", "must be an object")
        step = entry.get("step", 0)
        if step.__class__ is not int or not 0 <= step <= max_int:  # bool is not int here
            raise invalid(
                f"metrics.{i}.step", f"must be an integer from 0 to {max_int}, not {step!r}"
            )
        t = entry.get("time")
        if t is None:
            t = nan
        elif not (t.__class__ is float and -max_seconds <= t <= max_seconds):
            t = _seconds(t, max_seconds)
            if t is None:
                raise invalid(
                    f"metrics.{i}.time", f"must be a number of seconds, at most {max_seconds}"
                )
        stamp = entry.get("timestamp")
        if stamp is None:
            stamp = ""
        elif (
            stamp.__class__ is not str
            or not stamp
            or len(stamp) > 64
            or not stamp.isascii()
            or not stamp.isprintable()
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
        if names not in batch.groups:  # a new shape: its names are checked once
            for name in names:
                if name.__class__ is not str or not valid_name(name):
                    raise invalid(f"metrics.{i}.values", _name_problem(name, name_rule, max_name))
        try:
            batch.add(names, step, t, stamp, values.values())
        except (TypeError, OverflowError):
            raise _bad_value(i, values, invalid) from None
    return batch


def _uniform(
    entries: list[Any], max_int: int, max_seconds: float, valid_name: Callable[[str], bool]
) -> Batch | None:
    """The batch, when every entry is a plain well-formed one with the same metric names
    (what clients send): checked a field at a time over all entries with the builtins,
    several times faster than entry by entry. None when any entry is not (``check_entries``
    then checks entry by entry, and names the first that breaks a rule)."""
    if not entries or set(map(type, entries)) != {dict}:
        return None
    values = [e.get("values") for e in entries]
    if set(map(type, values)) != {dict}:
        return None
    shapes = set(map(tuple, values))
    if len(shapes) != 1:
        return None
    (names,) = shapes
    if not names or not all(n.__class__ is str and valid_name(n) for n in names):
        return None
    steps = [e.get("step", 0) for e in entries]
    if set(map(type, steps)) != {int} or min(steps) < 0 or max(steps) > max_int:
        return None  # (bools are not ints here)
    times = [e.get("time") for e in entries]
    if set(map(type, times)) != {float}:
        return None  # ints and absent times take the long way
    total = sum(times)
    if total != total or min(times) < -max_seconds or max(times) > max_seconds:
        return None  # a NaN makes the sum NaN
    stamps = [e.get("timestamp") for e in entries]
    if set(map(type, stamps)) != {str} or min(map(len, stamps)) < 1 or max(map(len, stamps)) > 64:
        return None
    joined = "".join(stamps)
    if not joined.isascii() or not joined.isprintable():
        return None
    group = Group(names)
    try:
        group.values.extend(itertools.chain.from_iterable(v.values() for v in values))
    except (TypeError, OverflowError):
        return None
    group.steps.extend(steps)
    group.times.extend(times)
    group.stamps = stamps
    group.order.extend(range(len(entries)))
    batch = Batch()
    batch.groups[names] = group
    batch.values = len(group.values)
    batch.entries = len(entries)
    return batch


def _name_problem(name: Any, name_rule: str, max_name: int) -> str:
    """Which rule a refused metric name breaks, quoting at most its first 100 characters."""
    if name.__class__ is str and len(name) > max_name:
        return (
            f"metric names must be at most {max_name} characters long, not {len(name)}: "
            f"{name[:100]!r}..."
        )
    shown = f"{name[:100]!r}..." if name.__class__ is str and len(name) > 100 else repr(name)
    return f"metric names must match {name_rule} (the official rule), not {shown}"


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

    The builtins (``sum``, ``min``, ``max`` over packed columns) do the per-value work, in
    three passes over each column: its sum, and each slice's minimum and maximum (the
    column's are those of its slices)."""
    summary: dict[str, list[Any]] = {}
    envelope: dict[tuple[str, int], list[Any]] = {}
    for group in batch.groups.values():
        steps = group.steps
        top = max(steps)
        at = len(steps) - 1 - steps[::-1].index(top)  # the latest entry at the highest step
        order = group.order[at]  # its position in the batch: a later one wins a tie
        segments = [
            (slice_, start, stop, min(steps[start:stop]), max(steps[start:stop]))
            for slice_, start, stop in _segments(steps, bits)
        ]
        for j, name in enumerate(group.names):
            column = group.column(j)
            total = sum(column)
            clean = total == total  # no NaN (a NaN, or inf - inf, makes the sum NaN)
            finite: Sequence[float] = column if clean else _finite_part(column)
            if not clean:
                total = sum(finite)
            lo: float | None = None
            hi: float | None = None
            for slice_, start, stop, x0, x1 in segments:
                part: Sequence[float] = column[start:stop]
                if not clean:
                    kept = [(x, v) for x, v in zip(steps[start:stop], part, strict=True) if v == v]
                    if not kept:
                        continue
                    part = [v for _, v in kept]
                    x0, x1 = min(x for x, _ in kept), max(x for x, _ in kept)
                p_lo, p_hi = min(part), max(part)
                lo = p_lo if lo is None else min(lo, p_lo)
                hi = p_hi if hi is None else max(hi, p_hi)
                e = envelope.get((name, slice_))
                if e is None:
                    envelope[(name, slice_)] = [p_lo, p_hi, x0, x1]
                else:
                    e[0], e[1] = min(e[0], p_lo), max(e[1], p_hi)
                    e[2], e[3] = min(e[2], x0), max(e[3], x1)
            last = column[at]
            add = [len(column), len(finite), lo, hi, total, top, None if last != last else last]
            s = summary.get(name)
            if s is None:
                summary[name] = [*add, order]
                continue
            s[0] += add[0]
            s[1] += add[1]
            if lo is not None:
                s[2] = lo if s[2] is None else min(s[2], lo)
                s[3] = hi if s[3] is None else max(s[3], hi)
            s[4] += total
            if (top, order) > (s[5], s[7]):
                s[5], s[6], s[7] = top, add[6], order
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
