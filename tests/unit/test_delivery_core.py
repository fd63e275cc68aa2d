"""The delivery core in process, against an in-memory Simvue API (tests/fake_simvue.py): the
uploader, the online sink's spilling and retries, the pipeline, and the bridge core's ingest.
The same behaviours are tested end to end over loopback against the real local server in
tests/integration; these pin them down where a failure names the exact step."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from simvue_otel._internal.bridge.core import BridgeCore
from simvue_otel._internal.client import SimvueClient
from simvue_otel._internal.mapping.records import EventRecord, MetricRecord, RunRecord, RunRef
from simvue_otel._internal.sink.online import OnlineSink
from simvue_otel._internal.sink.run_index import RunIndex
from simvue_otel._internal.sink.uploader import PartlyTaken, Progress, RetryLater, Uploader
from tests.fake_simvue import FakeSimvue

RUN = RunRef("key-1", "delivery", "/unit")


def points(n: int, start: int = 0, run: RunRef = RUN) -> list[MetricRecord]:
    return [
        MetricRecord(run, {"x": float(i)}, i, float(i), 1_700_000_000.0 + i)
        for i in range(start, start + n)
    ]


# -- the uploader ------------------------------------------------------------------------------


def test_a_run_is_created_once_and_its_points_go_in_parts_of_16000(
    fake: FakeSimvue, fake_client: SimvueClient
) -> None:
    uploader = Uploader(fake_client)
    uploader.upload(points(40_000), "b1")
    uploader.upload(points(10, 40_000), "b2")
    (run_id,) = fake.run_ids()
    assert [s for s, _ in fake.points(run_id, "x")] == list(range(40_010))
    posts = [p for m, p in fake.requests if (m, p) == ("POST", "metrics")]
    assert len(posts) == 4  # 16,000 + 16,000 + 8,000, then 10
    assert fake.runs[run_id]["metadata"]["simvue_otel_run_key"] == "key-1"


def test_a_part_stored_but_unanswered_is_reconciled_not_sent_twice(
    fake: FakeSimvue, fake_client: SimvueClient
) -> None:
    uploader = Uploader(fake_client)
    progress = Progress()
    fake.fail("POST", "metrics", "stored-then-503")
    with pytest.raises(RetryLater):
        uploader.upload(points(100), "b1", progress)
    assert progress.states == {"0.m0": "sending"}
    uploader.upload(points(100), "b1", progress)  # the caller's retry, with its progress
    (run_id,) = fake.run_ids()
    assert [s for s, _ in fake.points(run_id, "x")] == list(range(100))
    assert uploader.stats.reconciled == 1 and progress.states == {"0.m0": "done"}


def test_a_lost_run_creation_answer_makes_no_second_run(
    fake: FakeSimvue, fake_client: SimvueClient
) -> None:
    fake.fail("POST", "runs", "stored-then-504")
    uploader = Uploader(fake_client)
    with pytest.raises(RetryLater):
        uploader.upload(points(5), "b1")
    Uploader(fake_client).upload(points(5), "b1")  # even a new process: found by its key
    assert len(fake.run_ids()) == 1


def test_the_run_index_finds_the_run_without_asking_the_filter(
    fake: FakeSimvue, fake_client: SimvueClient, tmp_path: Path
) -> None:
    Uploader(fake_client, index=RunIndex(tmp_path)).upload(points(3), "b1")
    fake.requests.clear()
    Uploader(fake_client, index=RunIndex(tmp_path)).upload(points(3, 3), "b2")
    assert ("GET", "runs") not in fake.requests  # the index's id, checked with one GET
    assert len(fake.run_ids()) == 1


def test_instrument_counts_continue_the_runs_steps(
    fake: FakeSimvue, fake_client: SimvueClient
) -> None:
    """A second process's count of instrument exports (counter "b") follows what the server
    holds from the first (counter "a")."""

    def counted(counter: str, steps: range) -> list[MetricRecord]:
        return [
            MetricRecord(RUN, {"g": float(s)}, s - steps.start, 0.0, 1_700_000_000.0 + s, counter)
            for s in steps
        ]

    Uploader(fake_client).upload(counted("a", range(0, 3)), "b1")
    Uploader(fake_client).upload(counted("b", range(3, 6)), "b2")  # its own count starts at 0
    (run_id,) = fake.run_ids()
    assert fake.points(run_id, "g") == [(s, float(s)) for s in range(6)]


def test_only_changed_state_is_sent_and_a_final_status_sets_the_end(
    fake: FakeSimvue, fake_client: SimvueClient
) -> None:
    uploader = Uploader(fake_client)
    running = RunRecord(RUN, "running", 1.0, tags=("a",), metadata={"n": 1}, started=1.0)
    uploader.upload([running], "b1")
    fake.requests.clear()
    uploader.upload([RunRecord(RUN, "running", 2.0, tags=("a",), metadata={"n": 1})], "b2")
    assert ("PUT", next(iter(fake.runs))) not in [(m, p.split("/")[-1]) for m, p in fake.requests]
    uploader.upload([RunRecord(RUN, "completed", 3.0, tags=("a", "b"), ended=3.0)], "b3")
    run = next(iter(fake.runs.values()))
    assert run["status"] == "completed" and run["tags"] == ["a", "b"] and run["endtime"]


def test_a_refused_record_is_set_aside_with_its_reason(
    fake: FakeSimvue, fake_client: SimvueClient, tmp_path: Path
) -> None:
    uploader = Uploader(fake_client, rejected_dir=tmp_path / "rejected")
    fake.fail("POST", "events", 422)
    uploader.upload([EventRecord(RUN, "hello", 1.0)], "b1")
    assert uploader.stats.rejected == 1
    (reason,) = (tmp_path / "rejected").glob("*.reason.json")
    assert "refused events" in reason.read_text()


# -- the online sink ---------------------------------------------------------------------------


def test_the_online_sink_keeps_everything_while_the_server_is_down(
    fake: FakeSimvue, fake_client: SimvueClient, tmp_path: Path
) -> None:
    fake.down = True
    sink = OnlineSink(fake_client, tmp_path / "spool", flush_interval=0.05, max_memory_points=10)
    try:
        sink.submit(points(50))
        assert not sink.flush(0.5)  # nothing can be delivered
        assert list((tmp_path / "spool").glob("*.seg")), "spilled to disk, not dropped"
        assert sink.upload_stats().failures["unreachable"] >= 1
        fake.down = False
        assert sink.flush(20)
    finally:
        assert sink.close(20)
    (run_id,) = fake.run_ids()
    assert [s for s, _ in fake.points(run_id, "x")] == list(range(50))
    assert sink.run_id("key-1") == run_id and sink.backlog() == 0


def test_a_full_buffer_waits_for_a_server_that_takes_data_instead_of_going_to_disk(
    fake: FakeSimvue, fake_client: SimvueClient, tmp_path: Path
) -> None:
    """While the server takes what comes, a producer that fills the memory buffer waits for
    the uploader to take it: nothing is written to the spool and read back."""
    sink = OnlineSink(
        fake_client, tmp_path / "spool", flush_interval=0.05, max_memory_points=10, room_wait=60
    )
    try:
        for start in range(0, 200, 20):
            sink.submit(points(20, start))  # each submit overfills the buffer
        assert sink.flush(20)
        assert sink._spill_seq == 0, "batches were written to the spool"
    finally:
        assert sink.close(20)
    (run_id,) = fake.run_ids()
    assert [s for s, _ in fake.points(run_id, "x")] == list(range(200))


def test_a_slow_server_costs_the_producer_one_wait_then_full_buffers_go_to_disk(
    fake: FakeSimvue, fake_client: SimvueClient, tmp_path: Path
) -> None:
    """When the uploader does not take a full buffer within ``room_wait`` (each POST here
    takes 0.5 s), that buffer goes to the spool, and so do the next ones without waiting (for
    5 waits' time); everything still arrives once."""
    fake.slow = 0.5
    sink = OnlineSink(
        fake_client, tmp_path / "spool", flush_interval=0.05, max_memory_points=10, room_wait=30
    )
    try:
        sink.submit(points(20))  # full: the uploader takes it, and posts it for 0.5 s
        assert sink._spill_seq == 0
        sink.room_wait = 0.2
        waits: list[float | None] = []
        wait = sink._room.wait

        def counted(timeout: float | None = None) -> bool:
            waits.append(timeout)
            return wait(timeout)

        sink._room.wait = counted  # type: ignore[method-assign]
        sink.submit(points(20, 20))  # full: waits 0.2 s for room, then spilled
        assert sink._spill_seq == 1 and waits
        waited = len(waits)
        for start in range(40, 100, 20):
            sink.submit(points(20, start))  # spilled without waiting
        assert sink._spill_seq == 4 and len(waits) == waited
        assert sink.flush(30)
    finally:
        assert sink.close(30)
    (run_id,) = fake.run_ids()
    assert sorted(s for s, _ in fake.points(run_id, "x")) == list(range(100))


def test_heartbeats_go_on_while_only_one_endpoint_refuses_data(
    fake: FakeSimvue, fake_client: SimvueClient, tmp_path: Path
) -> None:
    """The server answers (events refused with 503, again and again): its runs still get
    their heartbeats, so they do not turn lost meanwhile."""
    for _ in range(1000):
        fake.fail("POST", "events", 503)
    sink = OnlineSink(
        fake_client,
        tmp_path / "spool",
        flush_interval=0.05,
        heartbeat_interval=0.1,
        max_backoff=0.2,
    )
    try:
        sink.submit([RunRecord(RUN, "running", 1.0), EventRecord(RUN, "refused", 1.0)])
        deadline = time.monotonic() + 60
        while not any(p.endswith("/heartbeat") for _, p in fake.requests):
            assert time.monotonic() < deadline, "no heartbeat while events were refused"
            time.sleep(0.02)
        assert ("POST", "events") in fake.requests
    finally:
        sink.close(0.1)


# -- the bridge core ---------------------------------------------------------------------------


def _request(key: str, values: list[float]) -> ExportLogsServiceRequest:
    resource = Resource(
        attributes=[KeyValue(key="simvue.run.key", value=AnyValue(string_value=key))]
    )
    records = []
    for i, v in enumerate(values):
        body = AnyValue()
        body.kvlist_value.values.append(KeyValue(key="x", value=AnyValue(double_value=v)))
        records.append(
            LogRecord(time_unix_nano=time.time_ns() + i, event_name="simvue.metrics", body=body)
        )
    return ExportLogsServiceRequest(
        resource_logs=[ResourceLogs(resource=resource, scope_logs=[ScopeLogs(log_records=records)])]
    )


def test_the_bridge_core_stores_a_resent_request_once(
    fake: FakeSimvue, fake_client: SimvueClient, tmp_path: Path
) -> None:
    sink = OnlineSink(fake_client, tmp_path / "spool", flush_interval=0.05, max_memory_points=0)
    core = BridgeCore(sink, token=None)
    try:
        request = _request("bridge-key", [1.0, 2.0, 3.0])
        first = core.ingest("logs", request)
        again = core.ingest("logs", request)  # the sender did not get the first answer
        assert (first.accepted, first.rejected, first.resent, first.points) == (3, 0, 0, 3)
        assert (again.accepted, again.resent, again.points) == (3, 3, 0)
        assert sink.flush(20)
    finally:
        sink.close(20)
    (run_id,) = fake.run_ids()
    assert [v for _, v in fake.points(run_id, "x")] == [1.0, 2.0, 3.0]


def test_a_failing_endpoint_holds_back_neither_the_others_nor_the_runs_status(
    fake: FakeSimvue, fake_client: SimvueClient
) -> None:
    """Events answered 503: the batch's metrics and its final status are delivered, the
    caller is told the batch was partly taken, and the events follow on the next try."""
    uploader = Uploader(fake_client)
    progress = Progress()
    fake.fail("POST", "events", 503)
    batch = [
        *points(10),
        EventRecord(RUN, "hello", 1_700_000_000.0),
        RunRecord(RUN, "completed", 2.0, ended=2.0),
    ]
    with pytest.raises(PartlyTaken):
        uploader.upload(batch, "b1", progress)
    (run_id,) = fake.run_ids()
    assert [s for s, _ in fake.points(run_id, "x")] == list(range(10))
    assert fake.runs[run_id]["status"] == "completed"
    assert progress.states == {"0.m0": "done", "0.e0": "sending"}
    uploader.upload(batch, "b1", progress)
    assert [e["message"] for e in fake.events[run_id]] == ["hello"]


def test_within_a_pass_a_failed_endpoint_is_not_tried_again_by_later_batches(
    fake: FakeSimvue, fake_client: SimvueClient
) -> None:
    uploader = Uploader(fake_client)
    uploader.upload(points(1), "b0")
    fake.fail("POST", "events", 503)
    uploader.begin_pass()
    try:
        with pytest.raises(PartlyTaken):
            uploader.upload([EventRecord(RUN, "a", 1.0), *points(1, 1)], "b1")
        fake.requests.clear()
        with pytest.raises(PartlyTaken):
            uploader.upload([EventRecord(RUN, "b", 2.0), *points(1, 2)], "b2")
        assert ("POST", "events") not in fake.requests  # waits for the next pass
        uploader.upload(points(1, 3), "b3")  # nothing of it waits: delivered, no error
    finally:
        uploader.end_pass()
    (run_id,) = fake.run_ids()
    assert [s for s, _ in fake.points(run_id, "x")] == [0, 1, 2, 3]


def test_a_spooled_frame_left_partly_taken_keeps_its_rest_when_later_frames_go(
    fake: FakeSimvue, fake_client: SimvueClient, tmp_path: Path
) -> None:
    """Two spooled frames in one segment; the first one's events meet a 503 while its points
    and the whole second frame are taken. Acknowledging the second frame must not move the
    segment's cursor past the first: its events follow on a later pass."""
    fake.down = True
    sink = OnlineSink(
        fake_client, tmp_path / "spool", flush_interval=0.05, max_memory_points=0, max_backoff=0.2
    )
    try:
        sink.submit([RunRecord(RUN, "running", 1.0), *points(10), EventRecord(RUN, "first", 1.0)])
        sink.submit(points(10, 10))
        deadline = time.monotonic() + 60
        while len(list((tmp_path / "spool").glob("*.seg"))) < 1 or sink._spilled < 2:
            assert time.monotonic() < deadline, "the batches were not spooled"
            time.sleep(0.02)
        fake.fail("POST", "events", 503)
        fake.down = False
        assert sink.flush(30)
    finally:
        assert sink.close(20)
    (run_id,) = fake.run_ids()
    assert [s for s, _ in fake.points(run_id, "x")] == list(range(20))
    assert [e["message"] for e in fake.events.get(run_id, [])] == ["first"]
