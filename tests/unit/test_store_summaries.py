"""The local server's per-run metric summaries (kept as points arrive, so run documents cost the
same whatever a run holds) and its plot envelopes (so a run page does too): each compared with
what the stored points themselves say."""

from __future__ import annotations

import math
import random
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from simvue_otel._internal.server.store import Store


def _entries(points: list[tuple[int, float]]) -> list[dict[str, Any]]:
    return [
        {"values": {"m": v}, "step": s, "time": float(s) / 10, "timestamp": "2026-01-01T00:00:00"}
        for s, v in points
    ]


def _expected(points: list[tuple[int, float]]) -> dict[str, Any]:
    finite = [v for _, v in points if not math.isnan(v)]
    top = max(s for s, _ in points)
    last = [v for s, v in points if s == top][-1]  # the latest stored of the highest step
    return {
        "count": len(points),
        "min": min(finite) if finite else None,
        "max": max(finite) if finite else None,
        "average": pytest.approx(sum(finite) / len(finite)) if finite else None,
        "step": top,
        "last": None if math.isnan(last) else last,
    }


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "db.sqlite")


def test_summaries_match_the_points_whatever_order_and_batches(store: Store) -> None:
    who, _ = store.ensure_user("ada", "lab")
    run = store.create_run(who, {"folder": "/", "name": "summary"})["id"]
    rng = random.Random(7)
    points = [
        (rng.randrange(0, 50), rng.choice([rng.uniform(-5, 5), math.nan])) for _ in range(400)
    ]
    points += [(49, 1.5), (49, 2.5)]  # equal highest steps: the later one is the last
    for start in range(0, len(points), 37):  # many batches, steps out of order
        store.add_metrics(who, run, _entries(points[start : start + 37]))
    assert store.get_run(who, run)["metrics"]["m"] == _expected(points)
    (listed,) = [r for r in store.list_runs(who, lambda *_: True)[0] if r["id"] == run]
    assert listed["metrics"]["m"] == _expected(points)


def test_a_database_written_before_summaries_gets_them_on_opening(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    store = Store(path)
    who, _ = store.ensure_user("ada", "lab")
    run = store.create_run(who, {"folder": "/", "name": "old"})["id"]
    points = [(s, float(s * s)) for s in range(30)]
    store.add_metrics(who, run, _entries(points))
    with sqlite3.connect(path) as db:  # as an older release left it: points, no summaries
        db.execute("DELETE FROM metric_summary")
        db.execute("DELETE FROM metric_envelope")
        db.execute("DELETE FROM meta WHERE key = 'metric_summary_v2'")
    reopened = Store(path)
    assert reopened.get_run(who, run)["metrics"]["m"] == _expected(points)
    assert reopened.metric_names(who, [run]) == ["m"]
    # the envelope was filled too: steps 0-29 are one slice, drawn as its lowest and highest
    assert reopened.plot_points(who, run, ["m"], "step", buckets=5)["m"] == [
        (0.0, 0.0),
        (29.0, 841.0),
    ]


def test_a_deleted_run_leaves_no_summary(store: Store) -> None:
    who, _ = store.ensure_user("ada", "lab")
    run = store.create_run(who, {"folder": "/", "name": "gone"})["id"]
    store.add_metrics(who, run, _entries([(0, 1.0)]))
    store.delete_run(who, run)
    with store._read() as db:
        assert db.execute("SELECT COUNT(*) FROM metric_summary").fetchone()[0] == 0


def test_a_plot_of_many_points_is_an_envelope_that_keeps_the_extremes(store: Store) -> None:
    who, _ = store.ensure_user("ada", "lab")
    run = store.create_run(who, {"folder": "/", "name": "plot"})["id"]
    values = [math.sin(s / 300) + (3.0 if s == 7777 else 0.0) for s in range(20_000)]
    for start in range(0, 20_000, 5_000):
        chunk = [(s, values[s]) for s in range(start, start + 5_000)]
        store.add_metrics(who, run, _entries(chunk))
    drawn = store.plot_points(who, run, ["m"], "step", buckets=500)["m"]
    assert len(drawn) <= 2 * 500
    assert max(v for _, v in drawn) == max(values)  # the spike at step 7777 is drawn
    assert min(v for _, v in drawn) == min(values)
    assert [x for x, _ in drawn] == sorted(x for x, _ in drawn)
    few = store.plot_points(who, run, ["m"], "time", buckets=50_000)["m"]
    assert few == [(s / 10, values[s]) for s in range(20_000)]  # few enough: every point
