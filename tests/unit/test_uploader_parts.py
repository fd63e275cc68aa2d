"""The uploader's parts: how a batch is cut into POSTs, and what a run without a name is
called. (Its behaviour against a server is tested end to end in test_exactly_once.py.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import requests

from simvue_otel._internal.mapping.records import EventRecord, MetricRecord, Record, RunRef
from simvue_otel._internal.names import name_for_key
from simvue_otel._internal.sink.uploader import Uploader, _chunks, _flatten, _unflatten

A, B = RunRef("key-a", "a", "/"), RunRef("key-b", None, "/")


def test_parts_are_numbered_by_run_in_first_seen_order() -> None:
    records: list[Record] = [
        EventRecord(run=B, message="b", timestamp=1.0),
        MetricRecord(run=A, values={"x": 1.0}, step=0, time=0.0, timestamp=1.0),
        MetricRecord(run=B, values={"x": 1.0}, step=0, time=0.0, timestamp=1.0),
    ]
    plans = Uploader.plan(records)
    assert [(k, p.index, len(p.points), len(p.events)) for k, p in plans.items()] == [
        ("key-b", 0, 1, 1),
        ("key-a", 1, 1, 0),
    ]


def test_no_part_holds_more_than_the_official_clients_16000_entries() -> None:
    sizes = [len(c) for c in _chunks(list(range(40_000)))]
    assert sizes == [16_000, 16_000, 8_000]
    assert _chunks([]) == []


def test_an_unnamed_run_gets_the_same_readable_name_everywhere() -> None:
    name = name_for_key("key-b")
    assert name == name_for_key("key-b") and name != name_for_key("key-c")
    adjective, noun = name.split("-")
    assert adjective.isalpha() and noun.isalpha()


def test_server_metadata_flattens_to_the_keys_states_carry() -> None:
    nested = {"solver": {"tol": 1e-6, "name": "cg"}, "n": 3, "empty": {}}
    flat = _flatten(nested)
    assert flat == {"solver.tol": 1e-6, "solver.name": "cg", "n": 3, "empty": {}}
    assert _unflatten({k: v for k, v in flat.items() if k != "empty"}) == {
        "solver": {"tol": 1e-6, "name": "cg"},
        "n": 3,
    }


def test_records_after_a_final_status_never_restart_heartbeats(tmp_path: Path) -> None:
    from simvue_otel._internal.client import SimvueClient
    from simvue_otel._internal.mapping.records import RunRecord
    from simvue_otel._internal.sink.online import OnlineSink
    from tests.helpers import free_port

    client = SimvueClient(f"http://127.0.0.1:{free_port()}", "t", retries=0)
    sink = OnlineSink(client, tmp_path / "spool", flush_interval=60.0)
    try:
        sink.submit([RunRecord(run=A, status="running", observed=1.0)])
        assert "key-a" in sink._live
        sink.submit([RunRecord(run=A, status="completed", observed=2.0, ended=2.0)])
        sink.submit([MetricRecord(run=A, values={"x": 1.0}, step=1, time=0.0, timestamp=3.0)])
        sink.submit([EventRecord(run=A, message="late", timestamp=3.0)])
        assert "key-a" not in sink._live
    finally:
        sink.close(timeout=0.1)


def test_send_owns_its_retries_and_its_waits_can_be_injected(tmp_path: Path) -> None:
    """`simvue-otel send` tries each batch `attempts` times with its own backoff; its client
    does not retry inside (so a server that is away costs `attempts` tries, not 5x more)."""
    from simvue_otel._internal.client import SimvueClient
    from simvue_otel._internal.sink.offline import OfflineSink
    from simvue_otel._internal.sink.send import send_spool
    from tests.helpers import free_port

    spool = tmp_path / "otel-spool"
    sink = OfflineSink(spool)
    sink.submit([MetricRecord(run=A, values={"x": 1.0}, step=0, time=0.0, timestamp=1.0)])
    assert sink.close()
    tries: list[str] = []

    class Counting(requests.Session):
        def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
            tries.append(f"{method} {url.split('/api/', 1)[1].split('?')[0]}")
            return super().request(method, url, *args, **kwargs)

    waits: list[float] = []
    client = SimvueClient(f"http://127.0.0.1:{free_port()}", "t", retries=0, session=Counting())
    result = send_spool(spool, client, progress=None, attempts=3, sleep=waits.append)
    assert not result.complete and result.frames == 0
    assert waits == [0.5, 1.0]  # between the three tries, never after the last
    assert len(tries) == 3  # one request per try: nothing retried inside the client
