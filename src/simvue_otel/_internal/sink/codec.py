"""Compact msgpack encoding of records, for the spool and for records set aside on disk.

A blob is one msgpack array ``[version, batch_key, runs, records]``:

* ``version`` tells formats apart; a blob of an unknown version is refused, never guessed at;
* ``batch_key`` names the batch (a bridge request's digest), or nil for :func:`encode_records`;
* ``runs`` is the table of distinct :class:`RunRef` as ``[key, name, folder]``, so a batch of
  many records of one run stores its identity once;
* each record is a short array whose first item is a one-character type tag and whose second
  is its run's index in ``runs``:

  - ``["r", run, status, observed, description, tags, metadata, visibility, ttl,
    heartbeat_timeout, started, ended]``, and a thirteenth item, ``system``, when stated: the
    state fields are the rows of ``run_state.RUN_STATE`` in order, the trailing ones last
    (written up to the last one stated, nil for one not stated before it)
  - ``["m", run, values, step, time, timestamp]``, or with a seventh item, the name of the
    process-local step count that numbered ``step`` (instrument exports)
  - ``["e", run, message, timestamp, level]``

msgpack keeps ints and floats apart (floats as float64, so NaN and infinities survive),
booleans and nil. Integers beyond 64 bits go as an extension type holding their decimal text.
Tuples nested inside metadata come back as lists (``tags`` comes back as a tuple).

Text is stored as UTF-8, which cannot hold a lone surrogate: should a record still carry one
(the Run and the mapping replace them first), it is stored with U+FFFD in its place, as
conventions "Text" states, rather than the whole blob failing and its records being lost.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgpack

from ..mapping.records import EventRecord, MetricRecord, Record, RunRecord, RunRef
from ..run_state import RUN_STATE, StateField, plain
from ..validation import clean_text

__all__ = [
    "FORMAT_VERSION",
    "CodecError",
    "decode_batch",
    "decode_records",
    "encode_batch",
    "encode_records",
]

FORMAT_VERSION = 1
"""Version written into every blob; bump it when the layout changes."""

_EXT_BIGINT = 1  # msgpack extension code: an int outside 64 bits, as ASCII decimal

# A run record's state fields, in the table's order: those always stored (after ``observed``)
# and those stored only when stated (after ``ended``).
_FIXED = tuple(f for f in RUN_STATE if not f.trailing)
_TRAILING = tuple(f for f in RUN_STATE if f.trailing)


class CodecError(ValueError):
    """The bytes are not a blob this codec can decode (or the records cannot be encoded)."""


# --- encoding -------------------------------------------------------------------------------


def _default(obj: object) -> object:
    """Fallback for values msgpack cannot pack natively: big ints and non-dict mappings."""
    if isinstance(obj, int):  # only reached when the int overflows 64 bits
        return msgpack.ExtType(_EXT_BIGINT, str(obj).encode("ascii"))
    if isinstance(obj, Mapping):
        return dict(obj)
    raise TypeError(f"cannot encode a value of type {type(obj).__name__}: {obj!r}")


def _scrub(value: Any) -> Any:
    """A copy of a blob's lists and dicts with lone surrogates in every string (keys too)
    replaced by U+FFFD (see the module docstring)."""
    if isinstance(value, str):
        return clean_text(value, "records written to disk")
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    if isinstance(value, Mapping):
        return {_scrub(k): _scrub(v) for k, v in value.items()}
    return value


def _encode(batch_key: str | None, records: Sequence[Record]) -> bytes:
    """Build and pack the blob; shared by both public encoders."""
    runs: dict[RunRef, int] = {}
    table: list[list[Any]] = []
    items: list[list[Any]] = []

    def run_index(ref: RunRef) -> int:
        index = runs.get(ref)
        if index is None:
            index = runs[ref] = len(table)
            table.append([ref.key, ref.name, ref.folder])
        return index

    for record in records:
        if isinstance(record, MetricRecord):
            items.append(
                [
                    "m",
                    run_index(record.run),
                    dict(record.values),
                    record.step,
                    record.time,
                    record.timestamp,
                    *(() if record.counter is None else (record.counter,)),
                ]
            )
        elif isinstance(record, EventRecord):
            items.append(
                ["e", run_index(record.run), record.message, record.timestamp, record.level]
            )
        elif isinstance(record, RunRecord):
            item = ["r", run_index(record.run), record.status, record.observed]
            item += [plain(getattr(record, f.name)) for f in _FIXED]
            item += [record.started, record.ended]
            tail = [plain(getattr(record, f.name)) for f in _TRAILING]
            while tail and tail[-1] is None:  # up to the last one stated (nil: not stated)
                tail.pop()
            items.append(item + tail)
        else:
            raise CodecError(f"not a record: {type(record).__name__}")
    blob = [FORMAT_VERSION, batch_key, table, items]
    try:
        try:
            packed = msgpack.packb(blob, default=_default, use_bin_type=True)
        except UnicodeEncodeError:  # a lone surrogate somewhere: stored as U+FFFD instead
            packed = msgpack.packb(_scrub(blob), default=_default, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise CodecError(f"cannot encode records: {exc}") from exc
    assert isinstance(packed, bytes)
    return packed


def encode_records(records: Sequence[Record]) -> bytes:
    """Encode records (no batch key) into one compact blob."""
    return _encode(None, records)


def encode_batch(batch_key: str, records: Sequence[Record]) -> bytes:
    """Encode a batch: its key and its records, as the spool stores them."""
    if not isinstance(batch_key, str):
        raise CodecError(f"batch key must be a str, not {type(batch_key).__name__}")
    return _encode(batch_key, records)


# --- decoding -------------------------------------------------------------------------------


def _ext_hook(code: int, data: bytes) -> object:
    """Decode our extension types; any other code means the blob is not ours."""
    if code == _EXT_BIGINT:
        try:
            return int(data.decode("ascii"))
        except ValueError as exc:
            raise CodecError(f"bad big-int extension value {data!r}") from exc
    raise CodecError(f"unknown msgpack extension type {code}")


def _check(ok: bool, what: str, value: object) -> None:
    """Raise a CodecError naming the field when a decoded value has the wrong shape."""
    if not ok:
        raise CodecError(f"malformed {what}: {value!r}")


def _is_num(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _num(value: object, what: str) -> Any:
    _check(_is_num(value), what, value)
    return value


def _opt_num(value: object, what: str) -> Any:
    _check(value is None or _is_num(value), what, value)
    return value


def _opt_int(value: object, what: str) -> Any:
    _check(value is None or _is_int(value), what, value)
    return value


def _str(value: object, what: str) -> str:
    _check(isinstance(value, str), what, value)
    assert isinstance(value, str)
    return value


def _opt_str(value: object, what: str) -> str | None:
    _check(value is None or isinstance(value, str), what, value)
    assert value is None or isinstance(value, str)
    return value


def _dict(value: object, what: str) -> dict[str, Any]:
    _check(isinstance(value, dict), what, value)
    assert isinstance(value, dict)
    return value


def _what(f: StateField) -> str:
    """A state field as a malformed-value message names it."""
    return f.name if f.name in ("tags", "visibility") else "run " + f.name.replace("_", " ")


def _opt_strs(value: object, f: StateField) -> tuple[str, ...] | None:
    _check(
        value is None or (isinstance(value, list) and all(isinstance(t, str) for t in value)),
        _what(f),
        value,
    )
    return None if value is None else tuple(value)  # type: ignore[arg-type]


_STATE_CHECKS: dict[str, Callable[[object, StateField], Any]] = {
    "str?": lambda v, f: _opt_str(v, _what(f)),
    "strs?": _opt_strs,
    "map": lambda v, f: _dict(v, _what(f)),
    "map?": lambda v, f: None if v is None else _dict(v, _what(f)),
    "int?": lambda v, f: _opt_int(v, _what(f)),
}
"""How a stored run-state value is checked, by its field's ``spool`` kind."""


def _decode_run(item: object) -> RunRef:
    _check(isinstance(item, list) and len(item) == 3, "run reference", item)
    assert isinstance(item, list)
    return RunRef(
        key=_str(item[0], "run key"),
        name=_opt_str(item[1], "run name"),
        folder=_str(item[2], "run folder"),
    )


def _decode_record(item: object, runs: list[RunRef]) -> Record:
    _check(isinstance(item, list) and len(item) >= 2, "record", item)
    assert isinstance(item, list)
    tag, index = item[0], item[1]
    _check(_is_int(index) and 0 <= index < len(runs), "run index", index)
    run = runs[index]
    if tag == "m":
        _check(len(item) in (6, 7), "metric record", item)
        values = _dict(item[2], "metric values")
        for name, value in values.items():
            _check(isinstance(name, str) and _is_num(value), "metric value", (name, value))
        step = item[3]
        _check(_is_int(step), "metric step", step)
        return MetricRecord(
            run=run,
            values=values,
            step=step,
            time=_num(item[4], "metric time"),
            timestamp=_num(item[5], "metric timestamp"),
            counter=_str(item[6], "metric step counter") if len(item) == 7 else None,
        )
    if tag == "e":
        _check(len(item) == 5, "event record", item)
        return EventRecord(
            run=run,
            message=_str(item[2], "event message"),
            timestamp=_num(item[3], "event timestamp"),
            level=_str(item[4], "event level"),
        )
    if tag == "r":
        fixed = 6 + len(_FIXED)  # tag, run, status, observed, the fields, started, ended
        _check(fixed <= len(item) <= fixed + len(_TRAILING), "run record", item)
        state = {
            f.name: _STATE_CHECKS[f.spool](v, f) for f, v in zip(_FIXED, item[4:], strict=False)
        }
        for f, v in zip(_TRAILING, item[fixed:], strict=False):
            state[f.name] = None if v is None else _STATE_CHECKS[f.spool](v, f)
        return RunRecord(
            run=run,
            status=_str(item[2], "run status"),
            observed=_num(item[3], "run observed time"),
            started=_opt_num(item[fixed - 2], "run start time"),
            ended=_opt_num(item[fixed - 1], "run end time"),
            **state,
        )
    raise CodecError(f"unknown record type tag {tag!r}")


def _decode(data: bytes) -> tuple[str | None, list[Record]]:
    """Unpack and validate a blob; every failure becomes a CodecError."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CodecError(f"expected bytes, not {type(data).__name__}")
    if not data:
        raise CodecError("cannot decode records: the data is empty")
    try:
        blob = msgpack.unpackb(data, raw=False, ext_hook=_ext_hook, use_list=True)
    except CodecError as exc:
        raise CodecError(f"cannot decode records: {exc}") from None
    except Exception as exc:  # msgpack raises assorted exception types on bad input
        raise CodecError(f"cannot decode records: not valid msgpack ({exc})") from exc
    if not isinstance(blob, list) or not blob:
        raise CodecError(f"cannot decode records: not a record blob (got {type(blob).__name__})")
    version = blob[0]
    if version != FORMAT_VERSION or not _is_int(version):
        raise CodecError(
            f"cannot decode records: unsupported format version {version!r} "
            f"(this simvue-otel reads version {FORMAT_VERSION}; a newer release may read it)"
        )
    if len(blob) != 4:
        raise CodecError(f"cannot decode records: expected 4 fields, got {len(blob)}")
    batch_key, runs_raw, items = blob[1], blob[2], blob[3]
    try:
        key = _opt_str(batch_key, "batch key")
        _check(isinstance(runs_raw, list), "run table", runs_raw)
        _check(isinstance(items, list), "record list", items)
        runs = [_decode_run(run) for run in runs_raw]
        return key, [_decode_record(item, runs) for item in items]
    except CodecError as exc:
        raise CodecError(f"cannot decode records: {exc}") from None


def decode_records(data: bytes) -> list[Record]:
    """Decode a blob from :func:`encode_records` (or :func:`encode_batch`) into records."""
    return _decode(data)[1]


def decode_batch(data: bytes) -> tuple[str, list[Record]]:
    """Decode a blob from :func:`encode_batch` into its batch key and records."""
    key, records = _decode(data)
    if key is None:
        raise CodecError("cannot decode batch: the blob has no batch key")
    return key, records
