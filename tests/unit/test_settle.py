"""A part whose answer was lost is judged missing only once no earlier POST of it can still
land (the settle time, ``SIMVUE_OTEL_SETTLE_SECONDS``): a gateway may hold a POST while its
sender dies, and pass it on after the sender's successor has read back what the server holds.

Here the held POST is played by a timer that delivers the part's entries to the in-memory
server (tests/fake_simvue.py) some time after the part was marked ``sending``; the end-to-end
case, a real ``send`` killed behind a holding proxy, is in tests/integration/test_chaos_soak.py.
"""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from simvue_otel._internal.client import SimvueClient
from simvue_otel._internal.mapping.records import MetricRecord, Record, RunRecord, RunRef
from simvue_otel._internal.sink.online import OnlineSink
from simvue_otel._internal.sink.send import send_spool
from simvue_otel._internal.sink.spool import SpoolReader, SpoolWriter
from simvue_otel._internal.sink.uploader import (
    Progress,
    RetryLater,
    Unsettled,
    Uploader,
    _metric_entries,
)
from tests.fake_simvue import FakeSimvue

RUN = RunRef("key-held", "held", "/unit")
OTHER = RunRef("key-other", "other", "/unit")


def points(n: int, start: int = 0, run: RunRef = RUN) -> list[Record]:
    return [
        MetricRecord(run, {"x": float(i)}, i, float(i), 1_700_000_000.0 + i)
        for i in range(start, start + n)
    ]


def _run_id(uploader: Uploader, run: RunRef) -> str:
    """The run made on the server (as the process that sent the held POST had made it)."""
    uploader.upload([RunRecord(run, "running", 1.0)], f"make-{run.key}")
    run_id = uploader.run_id(run.key)
    assert run_id is not None
    return run_id


def _steps(fake: FakeSimvue, run_id: str) -> list[int]:
    return sorted(s for s, _ in fake.points(run_id, "x"))


def _land_later(client: SimvueClient, run_id: str, records: list[Record], after: float) -> Any:
    """The held POST: the part's entries reach the server ``after`` seconds from now."""
    timer = threading.Timer(after, client.post_metrics, (run_id, _metric_entries(records)))
    timer.start()
    return timer


# -- the marks on disk ----------------------------------------------------------------------------


def test_a_sending_mark_says_when_its_post_began_and_old_marks_still_read(tmp_path: Path) -> None:
    writer = SpoolWriter(tmp_path)
    writer.append("a", points(3), {"0.m0": "sending", "0.e0": "done"}, {"0.m0": 1234.5})
    writer.append("b", points(3, 3))
    writer.close()
    reader = SpoolReader(tmp_path)
    first, second = list(reader.frames(reader.segments()[0]))
    assert reader.progress(first) == {"0.m0": "sending", "0.e0": "done"}
    assert reader.began(first) == {"0.m0": 1234.5}
    reader.mark(second, "0.m0", "sending", 99.25)
    (parts,) = tmp_path.glob("*.parts")
    # Lines as an earlier version wrote them (no time), and one whose time does not read:
    # still ``sending`` (reconciled before anything is sent again), as long settled.
    with parts.open("a") as fh:
        for line in (
            {"o": second.offset, "c": second.crc, "p": "0.e0", "s": "sending"},
            {"o": second.offset, "c": second.crc, "p": "0.e1", "s": "sending", "t": "soon"},
        ):
            fh.write(json.dumps(line) + "\n")
    again = SpoolReader(tmp_path)
    a, b = list(again.frames(again.segments()[0]))
    assert again.began(a) == {"0.m0": 1234.5}
    assert again.progress(b) == {"0.m0": "sending", "0.e0": "sending", "0.e1": "sending"}
    assert again.began(b) == {"0.m0": 99.25, "0.e0": 0.0, "0.e1": 0.0}
    again.mark(b, "0.m0", "done")
    assert again.began(b) == {"0.e0": 0.0, "0.e1": 0.0}


def test_each_post_of_a_part_records_its_own_start(tmp_path: Path) -> None:
    """A part sent again after a reconciliation is marked ``sending`` anew, with the time of
    that POST: its settle time runs from the last POST, not the first."""
    progress = Progress({"0.m0": "sending"}, {"0.m0": 1.0})
    before = time.time()
    progress.set("0.m0", "sending")
    assert progress.began["0.m0"] >= before
    progress.set("0.m0", "done")
    assert progress.began == {}


# -- the uploader --------------------------------------------------------------------------------


def test_an_unsettled_part_waits_and_the_rest_of_the_batch_goes(
    fake: FakeSimvue, fake_client: SimvueClient
) -> None:
    uploader = Uploader(fake_client, settle=3600.0)
    held_id = _run_id(uploader, RUN)
    other_id = _run_id(uploader, OTHER)
    batch = [*points(10), *points(5, run=OTHER)]
    progress = Progress({"0.m0": "sending"}, {"0.m0": time.time()})  # a POST begun just now
    fake.requests.clear()
    with pytest.raises(Unsettled) as caught:
        uploader.upload(batch, "b1", progress)
    assert caught.value.parts == 1 and caught.value.ready > time.monotonic() + 3000
    assert ("GET", "metrics") not in fake.requests  # not even read back: too early to judge
    assert _steps(fake, held_id) == [] and _steps(fake, other_id) == [0, 1, 2, 3, 4]
    assert progress.states == {"0.m0": "sending", "1.m0": "done"}
    # The held POST lands; once settled, the part is read back and nothing is sent twice.
    fake_client.post_metrics(held_id, _metric_entries(points(10)))
    uploader.settle = 0.0
    uploader.upload(batch, "b1", progress)
    assert _steps(fake, held_id) == list(range(10)) and uploader.stats.reconciled == 1
    assert _steps(fake, other_id) == [0, 1, 2, 3, 4]


def test_a_clock_stepped_back_makes_a_part_wait_no_longer_than_the_settle_time(
    fake_client: SimvueClient,
) -> None:
    uploader = Uploader(fake_client, settle=0.3)
    _run_id(uploader, RUN)
    progress = Progress({"0.m0": "sending"}, {"0.m0": time.time() + 3600})  # "in the future"
    deadline = time.monotonic() + 60
    while True:
        try:
            uploader.upload(points(3), "b1", progress)
            break
        except Unsettled as exc:
            assert exc.ready <= time.monotonic() + 0.3 + 1e-3
            assert time.monotonic() < deadline, "the part never settled"
            time.sleep(max(0.0, exc.ready - time.monotonic()))
    assert progress.states == {"0.m0": "done"}


# -- send: waits --------------------------------------------------------------------------------


def test_send_waits_for_a_post_that_may_still_land_before_judging_it(
    fake: FakeSimvue, fake_client: SimvueClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `send` killed with a POST held by a gateway: the next `send` waits the settle time
    (saying so), so the held POST, landing meanwhile, is found and not sent again."""
    monkeypatch.setenv("SIMVUE_OTEL_SETTLE_SECONDS", "3")
    spool = tmp_path / "otel-spool"
    run_id = _run_id(Uploader(fake_client), RUN)
    with SpoolWriter(spool) as writer:
        writer.append("b1", points(10), {"0.m0": "sending"}, {"0.m0": time.time()})
    timer = _land_later(fake_client, run_id, points(10), after=0.5)
    said = io.StringIO()
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        time.sleep(seconds)

    result = send_spool(spool, fake_client, progress=said, attempts=3, sleep=sleep)
    timer.join()
    assert result.complete and result.frames == 1
    assert waits and 0 < waits[0] <= 3.0
    assert "waiting" in said.getvalue() and "SIMVUE_OTEL_SETTLE_SECONDS" in said.getvalue()
    assert _steps(fake, run_id) == list(range(10))  # each once


# -- the online sink: keeps the frame, holds back nothing ---------------------------------------


def test_a_sink_keeps_an_unsettled_frame_and_delivers_the_rest_meanwhile(
    fake: FakeSimvue, fake_client: SimvueClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A spool a dead bridge left: its first frame has a part whose POST may still be held,
    the frames after it and another segment do not. The sink delivers those at once, keeps
    the first frame (the segment's cursor stays before it), and delivers it once settled,
    each point once."""
    monkeypatch.setenv("SIMVUE_OTEL_SETTLE_SECONDS", "3600")
    spool = tmp_path / "spool"
    maker = Uploader(fake_client)
    held_id, other_id = _run_id(maker, RUN), _run_id(maker, OTHER)
    with SpoolWriter(spool) as writer:
        writer.append("b1", points(10), {"0.m0": "sending"}, {"0.m0": time.time()})
        writer.append("b2", points(10, 10))
    with SpoolWriter(spool) as writer:
        writer.append("b3", points(5, run=OTHER))
    first = sorted(spool.glob("*.done"))[0]
    sink = OnlineSink(fake_client, spool, flush_interval=0.05, adopt_interval=0.05)
    try:
        deadline = time.monotonic() + 60
        while _steps(fake, held_id) != list(range(10, 20)) or not _steps(fake, other_id):
            assert time.monotonic() < deadline, "the frames after the unsettled one waited"
            time.sleep(0.02)
        assert _steps(fake, other_id) == [0, 1, 2, 3, 4]
        assert first.exists()  # not acknowledged past the kept frame
        reader = SpoolReader(spool)
        assert [f.batch_key for f in reader.frames(first)] == ["b1", "b2"]  # cursor: at b1
        # The held POST lands; the sink, once the part has settled, finds it there.
        fake_client.post_metrics(held_id, _metric_entries(points(10)))
        sink.uploader.settle = 0.0
        while first.exists():
            assert time.monotonic() < deadline, "the kept frame was never delivered"
            time.sleep(0.02)
    finally:
        sink.close(10)
    assert _steps(fake, held_id) == list(range(20))  # each once
    assert _steps(fake, other_id) == [0, 1, 2, 3, 4]
    assert not list(spool.glob("*.done"))


def test_a_frame_partly_taken_is_not_passed_by_the_cursor_of_the_frames_after_it(
    fake: FakeSimvue, fake_client: SimvueClient, tmp_path: Path
) -> None:
    """Events answered 503 once: the frame holding them is kept while the frame after it in
    the same segment is delivered; acknowledging that one must not move the segment's cursor
    past the kept frame, whose events follow on the next pass."""
    from simvue_otel._internal.mapping.records import EventRecord

    spool = tmp_path / "spool"
    run_id = _run_id(Uploader(fake_client), RUN)
    with SpoolWriter(spool) as writer:
        writer.append("b1", [*points(3), EventRecord(RUN, "hello", 1_700_000_000.0)])
        writer.append("b2", points(3, 3))
    fake.fail("POST", "events", 503)
    sink = OnlineSink(fake_client, spool, flush_interval=0.05, max_backoff=0.2, adopt_interval=0.05)
    try:
        deadline = time.monotonic() + 30
        while not fake.events.get(run_id) or list(spool.glob("*.done")):
            assert time.monotonic() < deadline, "the kept frame's events were never delivered"
            time.sleep(0.02)
    finally:
        sink.close(10)
    assert [e["message"] for e in fake.events[run_id]] == ["hello"]
    assert _steps(fake, run_id) == list(range(6))


def test_a_part_answered_with_a_5xx_is_reconciled_without_waiting(
    fake: FakeSimvue, fake_client: SimvueClient
) -> None:
    """An answer, even a 502 after the server stored the POST, means whoever answered holds
    it no more: the next try reads back at once, and sends nothing twice."""
    uploader = Uploader(fake_client, settle=3600.0)
    run_id = _run_id(uploader, RUN)
    progress = Progress()
    fake.fail("POST", "metrics", "stored-then-502")
    with pytest.raises(RetryLater):
        uploader.upload(points(10), "b1", progress)
    assert progress.states == {"0.m0": "sending"} and progress.began == {"0.m0": 0.0}
    uploader.upload(points(10), "b1", progress)
    assert _steps(fake, run_id) == list(range(10)) and uploader.stats.reconciled == 1


def test_an_adopted_frame_waiting_to_settle_counts_in_the_backlog_and_close_waits_for_it(
    fake: FakeSimvue, fake_client: SimvueClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bridge killed while its last POST was on the way: its successor adopts the frame,
    which waits to settle. Until it is delivered the successor's backlog says so (what
    `/health` reports, and what an operator waits on before stopping it), and a graceful close
    waits for it within its deadline instead of leaving it behind with a backlog of 0."""
    monkeypatch.setenv("SIMVUE_OTEL_SETTLE_SECONDS", "3")
    spool = tmp_path / "spool"
    held_id = _run_id(Uploader(fake_client), RUN)
    with SpoolWriter(spool) as writer:
        writer.append("b1", points(10), {"0.m0": "sending"}, {"0.m0": time.time()})
    sink = OnlineSink(fake_client, spool, flush_interval=0.05, adopt_interval=0.05)
    try:
        deadline = time.monotonic() + 30
        while sink.backlog() == 0 and _steps(fake, held_id) == []:
            assert time.monotonic() < deadline, "the adopted frame was never looked at"
            time.sleep(0.01)
        assert _steps(fake, held_id) == [] and sink.backlog() == 1  # waits to settle
    finally:
        sink.close(30)
    assert _steps(fake, held_id) == list(range(10))  # delivered by the close, once
    assert sink.backlog() == 0
    assert not list(spool.glob("*.done"))
