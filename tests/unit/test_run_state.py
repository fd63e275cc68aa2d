"""The run-state table: the views derived from it agree with each other and with the spool."""

from __future__ import annotations

import msgpack

from simvue_otel._internal import conventions as cv
from simvue_otel._internal.mapping.records import RunRecord, RunRef
from simvue_otel._internal.run_state import (
    RUN_STATE,
    RUN_STATE_NAMES,
    created_fields,
    initial_state,
    registry_entry,
    state_attributes,
    state_from_registry,
    stated_fields,
)
from simvue_otel._internal.sink.codec import decode_records, encode_records

RUN = RunRef("run-key-1", "my run", "/proj")


def test_run_record_holds_every_field_in_the_spool_order() -> None:
    fields = [f for f in RunRecord.__dataclass_fields__ if f in RUN_STATE_NAMES]
    assert tuple(fields) == RUN_STATE_NAMES


def test_spool_positions_are_the_tables_order() -> None:
    record = RunRecord(
        run=RUN, status="running", observed=1.0, description="d", tags=("a",),
        metadata={"m": 1}, visibility={"public": True, "tenant": False, "users": []},
        ttl=10, heartbeat_timeout=60, started=0.5, ended=None, system={"host": "h"},
    )  # fmt: skip
    item = msgpack.unpackb(encode_records([record]))[3][0]
    assert item == [
        "r", 0, "running", 1.0, "d", ["a"], {"m": 1},
        {"public": True, "tenant": False, "users": []}, 10, 60, 0.5, None, {"host": "h"},
    ]  # fmt: skip
    assert decode_records(encode_records([record])) == [record]


def test_unstated_trailing_fields_are_not_stored() -> None:
    record = RunRecord(run=RUN, status="created", observed=1.0)
    item = msgpack.unpackb(encode_records([record]))[3][0]
    assert len(item) == 6 + sum(not f.trailing for f in RUN_STATE)
    assert decode_records(encode_records([record])) == [record]


def test_run_views() -> None:
    state = initial_state()
    assert state["heartbeat_timeout"] == 180 and state["tags"] == ()
    state.update(visibility=["alice"], metadata={"a.b": 1}, description="d")
    attrs = state_attributes(state)
    assert attrs[cv.RUN_VISIBILITY] == "private"
    assert attrs[cv.RUN_VISIBILITY_USERS] == ["alice"]
    assert attrs[cv.RUN_METADATA_PREFIX + "a.b"] == 1
    assert attrs[cv.RUN_TAGS] == []  # stated even when empty
    assert cv.RUN_RETENTION not in attrs  # None: not stated
    assert state_from_registry(registry_entry(state)) == state


def test_uploader_views() -> None:
    record = RunRecord(run=RUN, status="running", observed=1.0, tags=("a",), system={})
    assert stated_fields(record) == {"tags": ["a"], "system": {}}
    created = created_fields(record)
    assert "metadata" not in created  # merged key by key, sent on its own
    assert created["visibility"] == {"public": False, "tenant": False, "users": []}
    assert created["system"] is None  # an empty system is not sent at creation
