"""Refused data never blocks or swallows other data (unit level): what the server refuses for
good is set aside under ``rejected/`` safely, the rest of the batch and later batches flow,
and text that is not Unicode never makes a blob fail. End to end: test_refused_e2e.py."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import pytest

from simvue_otel._internal import conventions as cv
from simvue_otel._internal.client import SimvueClient
from simvue_otel._internal.mapping import Mapper
from simvue_otel._internal.mapping.model import OtelLog, OtelSpan
from simvue_otel._internal.mapping.records import (
    EventRecord,
    MetricRecord,
    Record,
    RunRecord,
    RunRef,
)
from simvue_otel._internal.sink.codec import decode_records, encode_batch, encode_records
from simvue_otel._internal.sink.rejected import REASON_SUFFIX, RECORDS_SUFFIX, set_aside
from simvue_otel._internal.sink.uploader import Progress, RetryLater, Uploader
from tests.fake_simvue import FakeSimvue

BAD = RunRef("key-bad", "bad-run", "/refused")
GOOD = RunRef("key-good", "good-run", "/refused")
SURROGATE = os.fsdecode(b"caf\xe9")  # "caf\udce9": a Latin-1 file name on a UTF-8 system


def batch(run: RunRef, start: int = 0, state: bool = True) -> list[Record]:
    records: list[Record] = []
    if state:
        records.append(RunRecord(run=run, status="running", observed=1.0, metadata={"n": 1}))
    records += [
        MetricRecord(run, {"x": float(i)}, i, float(i), 1_700_000_000.0 + i)
        for i in range(start, start + 3)
    ]
    records.append(EventRecord(run, f"event {start}", 1_700_000_000.5 + start))
    return records


def _reasons(folder: Path) -> list[dict[str, object]]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob(f"*{REASON_SUFFIX}"))]


# -- the uploader -------------------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 409, 413, 422])
def test_a_run_the_server_refuses_is_set_aside_and_the_other_runs_flow(
    fake: FakeSimvue,
    fake_client: SimvueClient,
    tmp_path: Path,
    status: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    rejected = tmp_path / "rejected"
    uploader = Uploader(fake_client, rejected_dir=rejected)
    fake.fail("POST", "runs", status)  # the first run created: the bad one
    with caplog.at_level(logging.ERROR, logger="simvue_otel.sink"):
        uploader.upload([*batch(BAD), *batch(GOOD)], "b1", Progress())
        # Later batches of the refused run follow it aside, without asking the server again;
        # the good run's go on.
        uploader.upload([*batch(BAD, 3, state=False), *batch(GOOD, 3)], "b2", Progress())
    assert [r["name"] for r in fake.runs.values()] == ["good-run"]
    (good_id,) = fake.run_ids()
    assert [s for s, _ in fake.points(good_id, "x")] == [0, 1, 2, 3, 4, 5]
    assert fake.requests.count(("POST", "runs")) == 2  # the refused one, once; the good one
    reasons = _reasons(rejected)
    assert len(reasons) == 2
    assert all(r["status"] == status and str(status) in str(r["reason"]) for r in reasons)
    assert all(r["runs"] == [{"key": "key-bad", "name": "bad-run", "folder": "/refused"}]
               for r in reasons)  # fmt: skip
    assert sorted((r["metric_values"], r["events"], r["run_states"]) for r in reasons) == [
        (3, 1, 0),
        (3, 1, 1),
    ]
    first = next(r for r in reasons if r["run_states"] == 1)
    kept = decode_records((rejected / str(first["records_file"])).read_bytes())
    assert kept == batch(BAD)[1:] + batch(BAD)[:1]  # its points, its event, then its state
    assert uploader.stats.rejected == 9
    assert list(uploader.stats.rejected_runs) == ["bad-run (key-bad)"]
    told = [r for r in caplog.records if "key-bad" in r.getMessage()]
    assert len(told) == 1, [r.getMessage() for r in told]  # logged once, not per batch


def test_a_run_refused_for_now_waits_and_holds_nothing_back_but_itself(
    fake: FakeSimvue, fake_client: SimvueClient, tmp_path: Path
) -> None:
    """403 (a permission to fix) is not a refusal of the data: the batch is kept and retried."""
    uploader = Uploader(fake_client, rejected_dir=tmp_path / "rejected")
    fake.fail("POST", "runs", 403)
    with pytest.raises(RetryLater):
        uploader.upload(batch(BAD), "b1", Progress())
    assert not (tmp_path / "rejected").exists()
    uploader.upload(batch(BAD), "b1", Progress())
    assert [r["name"] for r in fake.runs.values()] == ["bad-run"]


def test_records_that_cannot_be_set_aside_stay_where_they_were(
    fake: FakeSimvue, fake_client: SimvueClient, tmp_path: Path
) -> None:
    victim = tmp_path / "elsewhere"
    victim.mkdir()
    (tmp_path / "rejected").symlink_to(victim)
    uploader = Uploader(fake_client, rejected_dir=tmp_path / "rejected")
    fake.fail("POST", "metrics", 422)  # the run is made; its points are refused
    with pytest.raises(RetryLater):
        uploader.upload(batch(BAD), "b1", Progress())
    assert list(victim.iterdir()) == []  # nothing written through the planted link
    assert uploader.stats.rejected == 0


# -- the rejected folder ------------------------------------------------------------------


def test_set_aside_writes_private_files_with_the_reason(tmp_path: Path) -> None:
    folder = tmp_path / "rejected"
    path = set_aside(folder, batch(BAD), "the server refused: HTTP 422", status=422)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    files = sorted(folder.iterdir())
    assert [p.suffix for p in files] == [".json", RECORDS_SUFFIX]
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files)
    doc = json.loads(path.read_text())
    assert doc["reason"] == "the server refused: HTTP 422" and doc["count"] == 5
    assert decode_records((folder / doc["records_file"]).read_bytes()) == batch(BAD)


def test_set_aside_tightens_an_open_folder(tmp_path: Path) -> None:
    folder = tmp_path / "rejected"
    folder.mkdir()
    os.chmod(folder, 0o750)  # noqa: S103 (an open folder, as an old release made it)
    set_aside(folder, batch(BAD), "x")
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700


def test_set_aside_never_writes_through_a_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    link = tmp_path / "rejected"
    link.symlink_to(victim)
    with pytest.raises(OSError):
        set_aside(link, batch(BAD), "x")
    assert list(victim.iterdir()) == []
    assert link.is_symlink()


# -- text that is not Unicode -------------------------------------------------------------


def test_a_lone_surrogate_is_stored_as_u_fffd_instead_of_failing_the_blob() -> None:
    records: list[Record] = [
        RunRecord(
            run=RunRef("k", "n", "/data/" + SURROGATE),
            status="running",
            observed=1.0,
            description=SURROGATE,
            tags=(SURROGATE,),
            metadata={SURROGATE: SURROGATE, "file": SURROGATE},
        ),
        EventRecord(RunRef("k"), f"opened {SURROGATE}", 1.0),
        MetricRecord(RunRef("k"), {SURROGATE: 1.0}, 0, 0.0, 1.0),
    ]
    for blob in (encode_records(records), encode_batch("b", records)):
        state, event, point = decode_records(blob)
        assert isinstance(state, RunRecord) and isinstance(event, EventRecord)
        assert isinstance(point, MetricRecord)
        assert state.run.folder == "/data/caf\ufffd"
        assert state.description == "caf\ufffd" and state.tags == ("caf\ufffd",)
        assert state.metadata == {"caf\ufffd": "caf\ufffd", "file": "caf\ufffd"}
        assert event.message == "opened caf\ufffd"
        assert dict(point.values) == {"caf\ufffd": 1.0}


# -- the mapping: what arrives over OTel is mended, never sent to be refused --------------

RESOURCE = {cv.RUN_KEY: SURROGATE + "-key", cv.RUN_NAME: "n", cv.RUN_FOLDER: f"/d/{SURROGATE}"}


def _root(attributes: dict[str, object], resource: dict[str, object] | None = None) -> OtelSpan:
    return OtelSpan(
        resource=resource or RESOURCE,
        name=cv.ROOT_SPAN,
        trace_id=1,
        span_id=1,
        parent_span_id=None,
        start=1_700_000_000.0,
        end=1_700_000_010.0,
        attributes=attributes,
    )


def _utf8(value: object) -> None:
    """Fail unless every string inside ``value`` is UTF-8 text."""
    if isinstance(value, str):
        value.encode("utf-8")
    elif isinstance(value, dict):
        for k, v in value.items():
            _utf8(k)
            _utf8(v)
    elif isinstance(value, list | tuple):
        for v in value:
            _utf8(v)


def test_the_mapping_leaves_out_a_retention_or_timeout_no_server_takes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="simvue_otel.mapping"):
        (state,) = Mapper().spans(
            [_root({cv.RUN_RETENTION: 2**62, cv.RUN_HEARTBEAT_TIMEOUT: 2**40})]
        )
    assert isinstance(state, RunRecord)
    assert state.ttl is None and state.heartbeat_timeout is None
    assert any(cv.RUN_RETENTION in r.getMessage() for r in caplog.records)
    (kept,) = Mapper().spans([_root({cv.RUN_RETENTION: 3600})])
    assert isinstance(kept, RunRecord) and kept.ttl == 3600


def test_the_mapping_leaves_out_metadata_too_deep_or_too_large() -> None:
    deep: dict[str, object] = {"leaf": 1}
    for _ in range(79):
        deep = {"a": deep}
    attributes = {
        cv.RUN_METADATA_PREFIX[:-1]: json.dumps({"deep": deep, "ok": {"x": 1}}),
        cv.RUN_METADATA_PREFIX + "big": "x" * 2**20,
        cv.RUN_METADATA_PREFIX + "small": "y",
    }
    (state,) = Mapper().spans([_root(attributes)])
    assert isinstance(state, RunRecord)
    assert {k: v for k, v in state.metadata.items() if not k.startswith(("python", "git"))} == {
        "ok.x": 1,
        "small": "y",
    }
    assert all(k.count(".") < cv.MAX_METADATA_DEPTH for k in state.metadata)


def test_the_mapping_replaces_lone_surrogates_in_every_string() -> None:
    mapper = Mapper()
    attributes = {
        cv.RUN_DESCRIPTION: SURROGATE,
        cv.RUN_METADATA_PREFIX + "file": SURROGATE,
        cv.RUN_METADATA_PREFIX + SURROGATE: 1,
        cv.RUN_VISIBILITY_USERS: [SURROGATE],
        cv.RUN_TAGS: ["ok", SURROGATE],
    }
    records = mapper.spans([_root(attributes)])
    records += mapper.logs(
        [
            OtelLog(RESOURCE, f"opened {SURROGATE}", 1_700_000_001.0),
            OtelLog(
                RESOURCE,
                {f"loss {SURROGATE}": 1.0, "ok": 2.0},
                1_700_000_002.0,
                event_name=cv.METRICS_EVENT,
            ),
        ]
    )
    state, event, point = records
    assert isinstance(state, RunRecord)
    assert state.run.key == "caf\ufffd-key" and state.run.folder == "/d/caf\ufffd"
    assert state.description == "caf\ufffd"
    assert state.metadata["file"] == "caf\ufffd" and state.metadata["caf\ufffd"] == 1
    assert state.visibility is not None and state.visibility["users"] == ["caf\ufffd"]
    assert state.tags == ("ok",)  # a tag that breaks the tag rule is left out, as before
    assert isinstance(event, EventRecord) and event.message == "opened caf\ufffd"
    assert isinstance(point, MetricRecord) and dict(point.values) == {"loss caf_": 1.0, "ok": 2.0}
    for record in records:
        _utf8([getattr(record, f) for f in record.__slots__ if f != "run"])
        _utf8([record.run.key, record.run.name, record.run.folder])


def test_set_aside_works_before_the_spool_folder_exists(tmp_path: Path) -> None:
    folder = tmp_path / "otel-spool" / "server-x" / "rejected"
    path = set_aside(folder, batch(BAD), "refused before anything was spooled")
    assert path.is_file() and stat.S_IMODE(folder.parent.stat().st_mode) == 0o700
