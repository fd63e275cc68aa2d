"""Interactions between the delivery fixes, in process against tests/fake_simvue.py: a frame
kept for a later pass, damage in the same segment, and adoption of what a dead process left."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from simvue_otel._internal.client import SimvueClient
from simvue_otel._internal.mapping.records import EventRecord, MetricRecord, RunRecord, RunRef
from simvue_otel._internal.sink.losses import LOSS_EVENT_PREFIX
from simvue_otel._internal.sink.online import OnlineSink
from simvue_otel._internal.sink.spool import SendLock, SpoolReader, SpoolWriter
from tests.fake_simvue import FakeSimvue
from tests.helpers import poll

RUN = RunRef("key-1", "interactions", "/unit")


def _await_uploaded(spool: Path) -> None:
    """Wait until no finished segment is left in ``spool`` (the sink adopted and uploaded it)."""
    left = poll(lambda: list(spool.glob("*.done")), lambda done: not done, 60, interval=0.02)
    assert not left, "the segment left behind was not uploaded"


def points(n: int, start: int = 0) -> list[MetricRecord]:
    return [
        MetricRecord(RUN, {"x": float(i)}, i, float(i), 1_700_000_000.0 + i)
        for i in range(start, start + n)
    ]


def _left_segment_with_damage(spool: Path) -> tuple[Path, int]:
    """A finished segment a dead process left: frame 0 (state, points 0-9, an event), frame 1
    (points 10-19) damaged in its payload's last byte, frame 2 (points 20-29)."""
    with SpoolWriter(spool) as writer:
        writer.append(
            "dead:1", [RunRecord(RUN, "running", 1.0), *points(10), EventRecord(RUN, "e", 1.0)]
        )
        start = writer.bytes_written
        writer.append("dead:2", points(10, 10))
        end = writer.bytes_written
        writer.append("dead:3", points(10, 20))
    (segment,) = spool.glob("*.done")
    data = bytearray(segment.read_bytes())
    data[end - 1] ^= 0xFF  # a CRC mismatch; the frame's table of runs still reads
    segment.write_bytes(bytes(data))
    return segment, end - start


def test_damage_after_a_kept_frame_is_set_aside_and_told_once(
    fake: FakeSimvue, fake_client: SimvueClient, tmp_path: Path
) -> None:
    """The first frame's events meet a 503, so it is kept for a later pass, and the damage
    after it is found before it is acknowledged. When the kept frame goes, reading resumes at
    the damage again: it must not be copied to ``.corrupt`` twice nor told twice."""
    spool = tmp_path / "spool"
    segment, damaged = _left_segment_with_damage(spool)
    fake.fail("POST", "events", 503)
    sink = OnlineSink(fake_client, spool, flush_interval=0.05, max_backoff=0.2)
    try:
        _await_uploaded(spool)
        assert sink.flush(30)
    finally:
        assert sink.close(20)
    (run_id,) = fake.run_ids()
    assert [s for s, _ in fake.points(run_id, "x")] == list(range(10)) + list(range(20, 30))
    told = [e for e in fake.events[run_id] if e["message"].startswith(LOSS_EVENT_PREFIX)]
    assert len(told) == 1, [e["message"] for e in told]
    assert segment.with_suffix(".corrupt").stat().st_size == damaged  # set aside once


def test_a_frame_left_behind_that_one_endpoint_refuses_holds_back_nothing_else(
    fake: FakeSimvue, fake_client: SimvueClient, tmp_path: Path
) -> None:
    """A dead process left a frame with an event, and the events endpoint answers 503 again
    and again: adopting that frame is only partly possible, and meanwhile another run's
    points, logged in this process, must still be delivered (one failing endpoint holds back
    nothing else)."""
    spool = tmp_path / "spool"
    with SpoolWriter(spool) as writer:
        writer.append("dead:1", [*points(5), EventRecord(RUN, "left", 1.0)])
    for _ in range(5000):
        fake.fail("POST", "events", 503)
    other = RunRef("key-2", "live", "/unit")
    sink = OnlineSink(fake_client, spool, flush_interval=0.05, max_backoff=0.2)
    try:
        sink.submit([MetricRecord(other, {"y": float(i)}, i, 0.0, 1.7e9 + i) for i in range(3)])
        deadline = time.monotonic() + 60
        while True:
            ids = {run["metadata"]["simvue_otel_run_key"]: i for i, run in fake.runs.items()}
            if "key-2" in ids and len(fake.points(ids["key-2"], "y")) == 3:
                break
            assert time.monotonic() < deadline, "the live run's points were held back"
            time.sleep(0.02)
        assert fake._faults, "the events endpoint still fails: the points did not wait for it"
        fake._faults.clear()
        assert sink.flush(30)
    finally:
        assert sink.close(20)
    assert [s for s, _ in fake.points(ids["key-1"], "x")] == list(range(5))
    assert [e["message"] for e in fake.events[ids["key-1"]]] == ["left"]


def _in_forked_child_that_waits(check: Callable[[], None]) -> None:
    """Fork a child that only waits (as a pool worker idles), run ``check`` in this process
    meanwhile, then let the child go."""
    read, write = os.pipe()
    up_read, up_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: say it runs (its fork handlers ran), then wait to be let go
        os.close(write)
        os.close(up_read)
        os.write(up_write, b"x")
        os.read(read, 1)
        os._exit(0)
    os.close(read)
    os.close(up_write)
    try:
        assert os.read(up_read, 1) == b"x"
        check()
    finally:
        os.write(write, b"x")
        os.close(write)
        os.close(up_read)
        os.waitpid(pid, 0)


def test_a_forked_child_holds_none_of_its_parents_spool_locks(tmp_path: Path) -> None:
    """A fork while the parent uploads a segment (its claim, the lock its writer keeps through
    a rotation) or adopts (the send lock): once the parent lets go, the segment and the
    directory are free again, though the child lives on (it must not keep them locked)."""
    spool = tmp_path / "spool"
    writer = SpoolWriter(spool, segment_bytes=1)
    writer.append("own:1", points(3))  # rotates at once: a finished segment of this writer
    (finished,) = spool.glob("*.done")
    writer.segment_bytes = 2**20
    writer.append("own:2", points(3, 3))  # the live segment, which the owner uploads...
    (live,) = spool.glob("*.seg")
    assert writer.claim(live.stem)
    writer.segment_bytes = 1
    writer.append("own:3", points(3, 6))  # ...and keeps locked through its rotation
    held = live.with_suffix(".done")
    reader = SpoolReader(spool)
    assert reader.claim(finished)  # as a sink uploading its rotated segment
    lock = SendLock(spool)
    lock.acquire()

    def parent_lets_go() -> None:
        reader.release(finished)
        writer.unclaim(held.stem)
        lock.release()
        other = SpoolReader(spool)
        assert other.claim(finished), "the child kept the parent's claim of a segment"
        assert other.claim(held), "the child kept the lock the parent's writer held"
        other.release_all()
        with SendLock(spool):  # raises SpoolBusyError while the child holds it
            pass

    try:
        _in_forked_child_that_waits(parent_lets_go)
    finally:
        writer.close()


def test_close_past_a_post_still_in_flight_neither_loses_the_batch_nor_says_all_went(
    fake: FakeSimvue, fake_client: SimvueClient, tmp_path: Path
) -> None:
    """``close`` gives up on a worker held by a POST past its deadline (plus the grace it
    gives the worker). The batch in that POST is answered 503 afterwards: it must still be
    kept on disk (the sink's spool must not be closed under it), and ``close`` must not have
    reported everything delivered."""
    spool = tmp_path / "spool"
    sink = OnlineSink(fake_client, spool, flush_interval=0.05, max_backoff=0.2)
    fake.down = True  # a first outage: the sink has a spool open from then on
    sink.submit([RunRecord(RUN, "running", 1.0)])
    deadline = time.monotonic() + 30
    while not sink._spilled:
        assert time.monotonic() < deadline, "nothing was spilled"
        time.sleep(0.01)
    fake.down = False
    assert sink.flush(30)
    fake.slow = 6.0  # longer than close's grace (its timeout + 5 s)
    fake.fail("POST", "metrics", 503)
    sink.submit(points(10))
    while sink._buffer:  # the worker takes the batch into its (slow) POST
        assert time.monotonic() < deadline, "the worker did not take the batch"
        time.sleep(0.01)
    delivered = sink.close(0.1)
    while sink._thread.is_alive():
        assert time.monotonic() < deadline, "the worker never ended"
        time.sleep(0.05)
    (run_id,) = fake.run_ids()
    stored = [step for step, _ in fake.points(run_id, "x")]
    reader = SpoolReader(spool)
    kept = [
        r.step
        for segment in reader.segments(include_live=True)
        for frame in reader.frames(segment)
        for r in frame.records
        if isinstance(r, MetricRecord)
    ]
    assert sorted(stored + kept) == list(range(10)), (stored, kept)
    assert not delivered or not kept, "close said everything reached the server"


def test_a_link_planted_beside_the_sinks_own_segment_blocks_no_other_data(
    fake: FakeSimvue, fake_client: SimvueClient, tmp_path: Path
) -> None:
    """The sink's own spooled segment gets a symlink planted as its cursor: that segment is
    left alone (never followed), and everything else still reaches the server."""
    spool = tmp_path / "spool"
    fake.down = True
    sink = OnlineSink(fake_client, spool, flush_interval=0.05, max_backoff=0.2)
    try:
        sink.submit(points(5))
        deadline = time.monotonic() + 30
        while not list(spool.glob("*.seg")):
            assert time.monotonic() < deadline, "nothing was spilled"
            time.sleep(0.01)
        (segment,) = spool.glob("*.seg")
        victim = tmp_path / "victim"
        victim.write_text("0\n")
        segment.with_suffix(".cursor").symlink_to(victim)
        fake.down = False
        other = RunRef("key-2", "other", "/unit")
        sink.submit([MetricRecord(other, {"y": 1.0}, 0, 0.0, 1.7e9)])
        while True:
            ids = {run["metadata"]["simvue_otel_run_key"]: i for i, run in fake.runs.items()}
            if "key-2" in ids and fake.points(ids["key-2"], "y"):
                break
            assert time.monotonic() < deadline, "the other run's point was held back"
            time.sleep(0.02)
    finally:
        sink.close(0.5)
    assert victim.read_text() == "0\n"


def test_a_refused_runs_records_are_set_aside_once_though_their_frame_is_read_again(
    fake: FakeSimvue, fake_client: SimvueClient, tmp_path: Path
) -> None:
    """Frame 0 (run A's event) meets 503s, so it is kept for later passes and frame 1 after it
    is read again on each of them. Frame 1 holds run B, whose creation the server refuses:
    B's records must be set aside in ``rejected/`` once, not once per pass."""
    from simvue_otel._internal.sink.uploader import Uploader

    Uploader(fake_client).upload([RunRecord(RUN, "running", 1.0)], "make-a")  # run A exists
    spool = tmp_path / "spool"
    refused = RunRef("key-b", "refused", "/unit")
    with SpoolWriter(spool) as writer:
        writer.append("dead:1", [EventRecord(RUN, "a", 1.0)])
        writer.append(
            "dead:2",
            [
                RunRecord(refused, "running", 1.0),
                MetricRecord(refused, {"z": 1.0}, 0, 0.0, 1.7e9),
            ],
        )
    fake.fail("POST", "runs", 422)
    for _ in range(3):
        fake.fail("POST", "events", 503)
    sink = OnlineSink(fake_client, spool, flush_interval=0.05, max_backoff=0.2)
    try:
        _await_uploaded(spool)
    finally:
        sink.close(5)
    (run_a,) = fake.run_ids()
    assert [e["message"] for e in fake.events[run_a]] == ["a"]
    assert len(list((spool / "rejected").glob("*.records"))) == 1


def test_a_refused_run_state_is_set_aside_once_though_its_frame_is_read_again(
    fake: FakeSimvue, fake_client: SimvueClient, tmp_path: Path
) -> None:
    """As above, with the run made and its state update refused (422) each time it is sent:
    the state goes to ``rejected/`` once."""
    from simvue_otel._internal.sink.uploader import Uploader

    other = RunRef("key-b", "other", "/unit")
    Uploader(fake_client).upload(
        [RunRecord(RUN, "running", 1.0), RunRecord(other, "running", 1.0)], "make"
    )
    spool = tmp_path / "spool"
    with SpoolWriter(spool) as writer:
        writer.append("dead:1", [EventRecord(RUN, "a", 1.0)])
        writer.append("dead:2", [RunRecord(other, "running", 2.0, description="refused")])
    for _ in range(3):
        fake.fail("POST", "events", 503)
        fake.fail("PUT", "runs", 422)
    sink = OnlineSink(fake_client, spool, flush_interval=0.05, max_backoff=0.2)
    try:
        _await_uploaded(spool)
    finally:
        sink.close(5)
    assert len(list((spool / "rejected").glob("*.records"))) == 1


def test_a_forked_childs_sink_keeps_its_parents_settings(
    fake_client: SimvueClient, tmp_path: Path
) -> None:
    """The child's sink is built with every setting of the parent's (the memory bound among
    them), not the defaults."""
    sink = OnlineSink(fake_client, tmp_path / "spool", hold_seconds=0.3, adopt_interval=7.0)
    child = sink.for_child(["key-1"])
    try:
        assert (child.hold_seconds, child.adopt_interval) == (0.3, 7.0)
    finally:
        child.close(5)
        sink.close(5)
