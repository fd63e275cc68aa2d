"""Where the real Simvue server may answer otherwise than the local one, the delivery core is
safe either way: the in-memory fake (tests/fake_simvue.py) is told to take the other answer,
and what the server ends up holding is checked (no entry stored twice, no run mixed up)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from simvue_otel._internal.client import SimvueClient
from simvue_otel._internal.mapping.records import EventRecord, MetricRecord, RunRecord, RunRef
from simvue_otel._internal.sink.run_index import RunIndex
from simvue_otel._internal.sink.uploader import Progress, RetryLater, Uploader
from tests.fake_simvue import FakeSimvue

RUN = RunRef("key-1", "answers", "/unit")
OTHER = RunRef("key-2", "other", "/unit")


def points(n: int, start: int = 0, run: RunRef = RUN) -> list[MetricRecord]:
    return [
        MetricRecord(run, {"x": float(i)}, i, float(i), 1_700_000_000.0 + i)
        for i in range(start, start + n)
    ]


def events(n: int, start: int = 0) -> list[EventRecord]:
    return [EventRecord(RUN, f"e{i}", 1_700_000_000.0 + i) for i in range(start, start + n)]


def metric_posts(fake: FakeSimvue) -> int:
    return sum(1 for r in fake.requests if r == ("POST", "metrics"))


def stored_steps(fake: FakeSimvue) -> Counter[int]:
    (run_id,) = fake.run_ids()
    return Counter(step for step, _ in fake.points(run_id, "x"))


def unanswered_part(fake: FakeSimvue, uploader: Uploader, records: list, key: str) -> Progress:
    """Upload ``records`` once with their POST stored but unanswered (a 503 after storing);
    returns the batch's progress, with the part left ``sending``."""
    kind = "metrics" if isinstance(records[0], MetricRecord) else "events"
    fake.fail("POST", kind, "stored-then-503")
    progress = Progress()
    with pytest.raises(RetryLater):
        uploader.upload(records, key, progress)
    assert "sending" in progress.states.values()
    return progress


# -- item: GET /api/metrics may give {step, value} points, and fewer than held -------------------


def test_points_without_timestamps_are_matched_by_step_and_not_sent_again(
    fake: FakeSimvue, fake_client: SimvueClient
) -> None:
    fake.bare_points = True  # the official client reads only the x-axis and the value
    uploader = Uploader(fake_client)
    progress = unanswered_part(fake, uploader, points(100), "b1")
    uploader.upload(points(100), "b1", progress)  # the retry reconciles
    assert stored_steps(fake) == Counter(range(100))  # each point once
    assert metric_posts(fake) == 1  # nothing was posted again
    assert uploader.stats.reconciled == 1


def test_a_server_that_thins_its_answer_is_asked_for_every_point(
    fake: FakeSimvue, fake_client: SimvueClient
) -> None:
    """A server that gives 10 points unless ``max_points`` asks for more: reconciliation asks
    for more than the run holds, so it sees every point."""
    fake.max_points_default = 10
    uploader = Uploader(fake_client)
    uploader.upload(points(50), "b0")
    progress = unanswered_part(fake, uploader, points(100, 50), "b1")
    uploader.upload(points(100, 50), "b1", progress)
    assert stored_steps(fake) == Counter(range(150))
    assert metric_posts(fake) == 2


def test_entries_proven_missing_are_sent_and_only_those(
    fake: FakeSimvue, fake_client: SimvueClient
) -> None:
    """A part answered 503 without being stored, then reconciled against a server that thins
    its answer unless asked: the read-back is complete, so every entry is sent, once."""
    fake.max_points_default = 10
    fake.bare_points = True
    uploader = Uploader(fake_client)
    uploader.upload(points(50), "b0")
    fake.fail("POST", "metrics", 503)  # refused before storing anything
    progress = Progress()
    with pytest.raises(RetryLater):
        uploader.upload(points(100, 50), "b1", progress)
    assert progress.states == {"0.m0": "sending"}  # a 5xx proves nothing either way
    uploader.upload(points(100, 50), "b1", progress)
    assert stored_steps(fake) == Counter(range(150))
    assert uploader.stats.unproven == 0


def test_an_incomplete_read_back_never_sends_an_entry_again(
    fake: FakeSimvue, fake_client: SimvueClient
) -> None:
    """A server that answers at most 10 points whatever it is asked: the read-back cannot
    prove any entry missing, so none is sent again (and the count says so)."""
    fake.max_points_cap = 10
    uploader = Uploader(fake_client)
    uploader.upload(points(50), "b0")
    progress = unanswered_part(fake, uploader, points(100, 50), "b1")
    uploader.upload(points(100, 50), "b1", progress)
    assert stored_steps(fake) == Counter(range(150))  # stored once, by the first POST
    assert metric_posts(fake) == 2
    assert uploader.stats.unproven == 100
    assert progress.states == {"0.m0": "done"}


# -- item: events paged by the reply's total ---------------------------------------------------


def test_events_are_read_back_by_the_replys_total_not_by_a_short_page(
    fake: FakeSimvue, fake_client: SimvueClient
) -> None:
    fake.events_page_cap = 5  # shorter pages than the client asks for
    uploader = Uploader(fake_client)
    uploader.upload(events(20), "b0")
    progress = unanswered_part(fake, uploader, events(10, 20), "b1")
    uploader.upload(events(10, 20), "b1", progress)
    (run_id,) = fake.run_ids()
    messages = Counter(e["message"] for e in fake.events[run_id])
    assert messages == Counter(f"e{i}" for i in range(30))
    assert [e["message"] for e in fake_client.get_events(run_id)] == [f"e{i}" for i in range(30)]


# -- item: the run-key filter, 409, metadata, lost runs ----------------------------------------


def test_a_server_that_ignores_the_key_filter_never_gets_data_into_another_run(
    fake: FakeSimvue, fake_client: SimvueClient
) -> None:
    fake.ignore_filters = True  # every run is listed, whatever the filter says
    Uploader(fake_client).upload(points(3, run=OTHER), "b0")
    Uploader(fake_client).upload(points(5), "b1")  # must make its own run
    Uploader(fake_client).upload(points(5, 5), "b2")  # a new process: finds its own run
    assert len(fake.run_ids()) == 2
    by_key = {r["metadata"]["simvue_otel_run_key"]: i for i, r in fake.runs.items()}
    assert [s for s, _ in fake.points(by_key["key-2"], "x")] == [0, 1, 2]
    assert [s for s, _ in fake.points(by_key["key-1"], "x")] == list(range(10))


def test_a_run_index_entry_naming_a_run_with_another_key_is_not_used(
    fake: FakeSimvue, fake_client: SimvueClient, tmp_path: Path
) -> None:
    Uploader(fake_client).upload(points(3, run=OTHER), "b0")
    (other,) = fake.run_ids()
    index = RunIndex(tmp_path)
    index.put("key-1", other)  # a stale or foreign entry: that run carries key-2
    Uploader(fake_client, index=index).upload(points(5), "b1")
    assert len(fake.run_ids()) == 2
    assert [s for s, _ in fake.points(other, "x")] == [0, 1, 2]
    assert index.get("key-1") != other


def test_the_run_of_a_409_is_adopted_as_the_official_client_adopts_it(
    fake: FakeSimvue, fake_client: SimvueClient
) -> None:
    fake.fail("POST", "runs", "conflict")  # the run is stored, the answer is 409 + its id
    uploader = Uploader(fake_client)
    uploader.upload(points(5), "b1")
    (run_id,) = fake.run_ids()
    assert uploader.run_id("key-1") == run_id
    assert [s for s, _ in fake.points(run_id, "x")] == list(range(5))


def test_a_409_naming_a_run_with_another_key_is_not_adopted(
    fake: FakeSimvue, fake_client: SimvueClient
) -> None:
    other = fake_client.create_run(name="taken", metadata={"simvue_otel_run_key": "key-9"})
    fake.fail("POST", "runs", 409)  # a 409 that names no run: not adopted either
    with pytest.raises(Exception, match="409"):
        fake_client.create_run(name="taken", metadata={"simvue_otel_run_key": "key-1"})
    original = fake._handle

    def taken(method: str, path: str, *rest: Any) -> tuple[int, Any]:
        if (method, path) == ("POST", "runs"):
            return 409, {"id": other}  # the name is taken: the answer names that run
        return original(method, path, *rest)

    fake._handle = taken  # type: ignore[method-assign]
    with pytest.raises(Exception, match="not adopted"):
        fake_client.create_run(name="taken", metadata={"simvue_otel_run_key": "key-1"})


def test_metadata_changes_survive_a_server_that_replaces_top_level_values(
    fake: FakeSimvue, fake_client: SimvueClient
) -> None:
    """The fake replaces each top-level metadata value it is sent (no deep merge)."""
    uploader = Uploader(fake_client)
    first = {"solver.tol": 1e-6, "solver.name": "cg", "n": 1}
    uploader.upload([RunRecord(RUN, "running", 1.0, metadata=first)], "b1")
    uploader.upload([RunRecord(RUN, "running", 2.0, metadata={"solver.tol": 1e-8})], "b2")
    (run,) = fake.runs.values()
    assert run["metadata"]["solver"] == {"tol": 1e-8, "name": "cg"}
    assert run["metadata"]["n"] == 1


def test_a_run_marked_lost_during_an_outage_runs_again_when_heartbeats_resume(
    fake: FakeSimvue, fake_client: SimvueClient
) -> None:
    uploader = Uploader(fake_client)
    uploader.upload([RunRecord(RUN, "running", 1.0), *points(3)], "b1")
    (run_id,) = fake.run_ids()
    fake.down = True
    uploader.heartbeat(["key-1"])  # fails: the server cannot be told
    fake.runs[run_id]["status"] = "lost"  # the server gave up on the run meanwhile
    fake.down = False
    uploader.heartbeat(["key-1"])  # the fake's heartbeat does not revive it by itself
    assert fake.runs[run_id]["status"] == "running"
    fake.requests.clear()
    uploader.heartbeat(["key-1"])  # once back, beats are only beats
    assert fake.requests == [("PUT", f"runs/{run_id}/heartbeat")]


def test_a_run_marked_lost_while_uploads_failed_runs_again(
    fake: FakeSimvue, fake_client: SimvueClient
) -> None:
    uploader = Uploader(fake_client)
    uploader.upload([RunRecord(RUN, "running", 1.0), *points(3)], "b1")
    (run_id,) = fake.run_ids()
    fake.fail("POST", "metrics", 502)
    with pytest.raises(RetryLater):
        uploader.upload(points(3, 3), "b2")
    fake.runs[run_id]["status"] = "lost"
    uploader.heartbeat(["key-1"])
    assert fake.runs[run_id]["status"] == "running"


def test_a_lost_run_that_ended_is_not_revived(fake: FakeSimvue, fake_client: SimvueClient) -> None:
    uploader = Uploader(fake_client)
    uploader.upload([RunRecord(RUN, "running", 1.0)], "b1")
    uploader.upload([RunRecord(RUN, "completed", 2.0, ended=2.0)], "b2")
    (run_id,) = fake.run_ids()
    fake.runs[run_id]["status"] = "lost"
    fake.down = True
    uploader.heartbeat(["key-1"])
    fake.down = False
    uploader.heartbeat(["key-1"])
    assert fake.runs[run_id]["status"] == "lost"
