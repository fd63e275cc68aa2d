"""The record codec: exact round trips, compactness, and refusal of what it cannot read."""

from __future__ import annotations

import math
from typing import Any

import msgpack
import pytest

from simvue_otel._internal.mapping.records import (
    EventRecord,
    MetricRecord,
    Record,
    RunRecord,
    RunRef,
)
from simvue_otel._internal.sink.codec import (
    FORMAT_VERSION,
    CodecError,
    decode_batch,
    decode_records,
    encode_batch,
    encode_records,
)

RUN = RunRef("run-key-1", "my run", "/proj/sub")
NAMELESS = RunRef("run-key-2")


def _same_value(a: Any, b: Any) -> bool:
    """Equality that treats NaN as equal to NaN and keeps int and float (and bool) apart."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same_value(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same_value(a[k], b[k]) for k in a)
    return bool(a == b)


def _same_record(a: Record, b: Record) -> bool:
    if type(a) is not type(b):
        return False
    return all(
        _same_value(
            dict(getattr(a, f)) if f in ("values", "metadata") else getattr(a, f),
            dict(getattr(b, f)) if f in ("values", "metadata") else getattr(b, f),
        )
        for f in a.__slots__
    )


def _assert_round_trip(records: list[Record]) -> None:
    decoded = decode_records(encode_records(records))
    assert len(decoded) == len(records)
    for original, back in zip(records, decoded, strict=True):
        assert _same_record(original, back), (original, back)


AWKWARD_RECORDS: list[Record] = [
    RunRecord(
        run=RUN,
        status="running",
        observed=1700000000.25,
        description="ünïcødé ✓ 日本語 🚀",
        tags=("a", "b", "ß"),
        metadata={
            "int": 3,
            "float": 3.0,
            "bool": True,
            "false": False,
            "str": "x",
            "list": [1, 2.5, "three", [4, [5.0]], True],
            "empty": [],
            "big": 2**63 - 1,
            "neg_big": -(2**63),
            "huge": 10**40,
            "neg_huge": -(10**30),
            "nan": math.nan,
            "inf": math.inf,
            "ninf": -math.inf,
            "none": None,
        },
        visibility={"public": False, "tenant": True, "users": ["alice", "bob"]},
        ttl=3600,
        heartbeat_timeout=2**40,
        started=1700000000,  # an int where a float is usual: kept an int
        ended=1700000100.5,
    ),
    RunRecord(run=NAMELESS, status="created", observed=0.0),
    RunRecord(run=NAMELESS, status="completed", observed=-1.5, tags=(), metadata={}),
    MetricRecord(
        run=RUN,
        values={"loss": 0.5, "nan": math.nan, "inf": math.inf, "ninf": -math.inf, "int": 7},
        step=2**62,
        time=1.0e-300,
        timestamp=1700000000.123456,
    ),
    MetricRecord(run=NAMELESS, values={}, step=0, time=0, timestamp=5),
    MetricRecord(run=RUN, values={"gauge": 1.0}, step=3, time=0.5, timestamp=6, counter="ab12.0"),
    EventRecord(run=RUN, message="", timestamp=1.5),
    EventRecord(run=NAMELESS, message="line1\nline2 \x00 ☃", timestamp=2.0, level="error"),
]


def test_round_trip_of_every_kind_and_awkward_values() -> None:
    _assert_round_trip(AWKWARD_RECORDS)


def test_each_record_round_trips_alone() -> None:
    for record in AWKWARD_RECORDS:
        _assert_round_trip([record])


def test_empty_sequence_round_trips() -> None:
    assert decode_records(encode_records([])) == []
    assert decode_batch(encode_batch("k", [])) == ("k", [])


def test_tags_come_back_as_tuple_and_run_refs_equal() -> None:
    (back,) = decode_records(encode_records([AWKWARD_RECORDS[0]]))
    assert isinstance(back, RunRecord)
    assert back.tags == ("a", "b", "ß")
    assert isinstance(back.tags, tuple)
    assert back.run == RUN
    assert back.visibility == {"public": False, "tenant": True, "users": ["alice", "bob"]}
    (none_vis,) = decode_records(encode_records([AWKWARD_RECORDS[1]]))
    assert isinstance(none_vis, RunRecord)
    assert none_vis.visibility is None
    assert none_vis.run.name is None
    assert none_vis.run.folder == "/"


def test_int_and_float_are_kept_apart() -> None:
    record = MetricRecord(run=RUN, values={"i": 1, "f": 1.0}, step=1, time=2, timestamp=3.0)
    (back,) = decode_records(encode_records([record]))
    assert isinstance(back, MetricRecord)
    assert type(back.values["i"]) is int
    assert type(back.values["f"]) is float
    assert type(back.time) is int
    assert type(back.timestamp) is float


def test_batch_round_trip_keeps_key_and_order() -> None:
    key, records = decode_batch(encode_batch("batch-ключ-1", AWKWARD_RECORDS))
    assert key == "batch-ключ-1"
    assert [type(r) for r in records] == [type(r) for r in AWKWARD_RECORDS]


def test_decode_batch_requires_a_key() -> None:
    with pytest.raises(CodecError, match="no batch key"):
        decode_batch(encode_records(AWKWARD_RECORDS[:1]))


def test_run_refs_are_deduplicated() -> None:
    run = RunRef("0b6f3e0c-5d2a-4c8e-9a51-7f1d2e3c4b5a", "training run 42", "/project/sweep")
    records: list[Record] = [
        MetricRecord(run=run, values={"x": float(i)}, step=i, time=float(i), timestamp=1.0e9 + i)
        for i in range(10_000)
    ]
    blob = encode_batch("k", records)
    # The run key appears once, not once per record.
    assert blob.count(run.key.encode()) == 1
    naive = sum(
        len(
            msgpack.packb(
                [r.run.key, r.run.name, r.run.folder, dict(r.values), r.step, r.time, r.timestamp]
            )
        )
        for r in records
        if isinstance(r, MetricRecord)
    )
    assert len(blob) < naive * 0.5
    assert len(decode_batch(blob)[1]) == 10_000


def test_unknown_version_is_refused() -> None:
    blob = msgpack.packb([FORMAT_VERSION + 1, None, [], []])
    with pytest.raises(CodecError, match="unsupported format version"):
        decode_records(blob)
    with pytest.raises(CodecError, match="unsupported format version"):
        decode_records(msgpack.packb(["1", None, [], []]))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",  # never used in msgpack
        b"garbage that is not msgpack at all \xff\xfe",
        msgpack.packb({"a": 1}),
        msgpack.packb(42),
        msgpack.packb([FORMAT_VERSION]),
        msgpack.packb([FORMAT_VERSION, None, [], [["z", 0]]]),  # no runs, bad tag
        msgpack.packb([FORMAT_VERSION, None, [["k", None, "/"]], [["z", 0]]]),
        msgpack.packb([FORMAT_VERSION, None, [["k", None, "/"]], [["m", 5, {}, 0, 0, 0]]]),
        msgpack.packb([FORMAT_VERSION, None, [["k", None, "/"]], [["m", 0, {}, 0.5, 0, 0]]]),
        msgpack.packb([FORMAT_VERSION, None, [["k", None, "/"]], [["e", 0, 1, 0, "info"]]]),
        msgpack.packb([FORMAT_VERSION, None, [[1, None, "/"]], []]),
        msgpack.packb([FORMAT_VERSION, None, [], [], "extra"]),
        msgpack.packb([FORMAT_VERSION, None, [], []]) + b"\x00",  # trailing bytes
        encode_records(AWKWARD_RECORDS)[:-3],  # truncated
        msgpack.packb([FORMAT_VERSION, None, [], [msgpack.ExtType(9, b"x")]]),
    ],
)
def test_garbage_raises_codec_error(data: bytes) -> None:
    with pytest.raises(CodecError, match=r"cannot decode|unsupported"):
        decode_records(data)


def test_codec_error_is_a_value_error() -> None:
    assert issubclass(CodecError, ValueError)


def test_unencodable_value_raises_codec_error() -> None:
    record = RunRecord(run=RUN, status="running", observed=0.0, metadata={"obj": object()})
    with pytest.raises(CodecError, match="cannot encode"):
        encode_records([record])
