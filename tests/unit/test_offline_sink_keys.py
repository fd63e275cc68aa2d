"""The offline sink's frame keys: every submit takes a number, keyed or not."""

from __future__ import annotations

from pathlib import Path

from simvue_otel._internal.mapping.records import MetricRecord, RunRef
from simvue_otel._internal.sink.offline import OfflineSink
from simvue_otel._internal.sink.spool import SpoolReader

A = RunRef(key="a" * 32, name="a", folder="/")


def _point(step: int) -> MetricRecord:
    return MetricRecord(run=A, values={"x": 1.0}, step=step, time=0.0, timestamp=1.0)


def test_a_keyed_batch_still_takes_a_sequence_number(tmp_path: Path) -> None:
    """A batch submitted under its own key uses up a number of the sink's sequence, so the
    next unkeyed frame's key is ``<sink id>:2``, as the spool has always numbered them."""
    sink = OfflineSink(tmp_path)
    sink.submit([_point(0)], batch_key="given")
    sink.submit([_point(1)])
    assert sink.close()
    reader = SpoolReader(tmp_path)
    keys = [f.batch_key for s in reader.segments() for f in reader.frames(s)]
    assert keys[0] == "given"
    assert keys[1].endswith(":2")
