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

from simvue_otel._internal.server.store import Invalid, Store


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
    """An older release kept one row per value in a ``metrics`` table and no summaries: on
    opening, the summaries and envelope are filled and every point is moved, NaN included."""
    path = tmp_path / "old.sqlite"
    store = Store(path)
    who, _ = store.ensure_user("ada", "lab")
    run = store.create_run(who, {"folder": "/", "name": "old"})["id"]
    store.close()
    points = [(s, float(s * s)) for s in range(30)] + [(30, math.nan)]
    with sqlite3.connect(path) as db:  # as an older release left it
        db.execute("DELETE FROM meta WHERE key = 'metric_summary_v2'")
        db.execute(
            "CREATE TABLE metrics (run_id TEXT NOT NULL, name TEXT NOT NULL, "
            "step INTEGER NOT NULL, time REAL, timestamp TEXT, value REAL)"
        )
        db.executemany(
            "INSERT INTO metrics VALUES (?, ?, ?, ?, ?, ?)",
            [
                (run, name, s, s / 10, "2026-01-01T00:00:00", None if math.isnan(v) else v)
                for s, v in points
                for name in ("m", "n")
            ],
        )
    reopened = Store(path)
    assert reopened.get_run(who, run)["metrics"]["m"] == _expected(points)
    assert reopened.metric_names(who, [run]) == ["m", "n"]
    # the envelope was filled too: steps 0-29 are one slice, drawn as its lowest and highest
    assert reopened.plot_points(who, run, ["m"], "step", buckets=5)["m"] == [
        (0.0, 0.0),
        (29.0, 841.0),
    ]
    held = reopened.get_metrics(who, [run], ["n"], "step")[run]["n"]
    assert [(p["step"], p["time"]) for p in held] == [(s, s / 10) for s, _ in points]
    assert [p["value"] for p in held[:30]] == [v for _, v in points[:30]]
    assert math.isnan(held[30]["value"])
    with sqlite3.connect(path) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "metrics" not in tables
    reopened.close()
    assert Store(path).get_run(who, run)["metrics"]["m"] == _expected(points)  # opened again


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


def test_entries_of_several_shapes_keep_every_point_in_order(store: Store) -> None:
    """Entries with different sets of metrics (stored as one row each) give every metric its
    own points, in step then arrival order, and summaries and envelopes that match them."""
    who, _ = store.ensure_user("ada", "lab")
    run = store.create_run(who, {"folder": "/", "name": "shapes"})["id"]
    rng = random.Random(11)
    entries: list[dict[str, Any]] = []
    for i in range(3_000):
        step = rng.randrange(0, 2_500)  # repeats, out of order, across slices of 1,024
        values: dict[str, Any] = {"m": rng.choice([rng.uniform(-9, 9), math.nan])}
        if i % 3:
            values["k"] = rng.randrange(-5, 5)  # ints, stored as floats
        if i % 7 == 0:
            values = {"k": True, **values}  # another order of names is another shape
        entries.append({"values": values, "step": step, "time": i / 100, "timestamp": None})
    for start in range(0, len(entries), 400):
        store.add_metrics(who, run, entries[start : start + 400])
    for name in ("m", "k"):
        posted = [
            (e["step"], i, float(e["values"][name]))
            for i, e in enumerate(entries)
            if name in e["values"]
        ]
        posted.sort(key=lambda p: (p[0], p[1]))  # by step, then as they arrived
        held = store.get_metrics(who, [run], [name], "step")[run][name]
        assert [p["step"] for p in held] == [s for s, _, _ in posted]
        assert [p["time"] for p in held] == [entries[i]["time"] for _, i, _ in posted]
        assert [repr(p["value"]) for p in held] == [repr(v) for _, _, v in posted]
        summary = store.get_run(who, run)["metrics"][name]
        top = max(s for s, _, _ in posted)
        last = [v for s, _, v in posted if s == top][-1]
        finite = [v for _, _, v in posted if not math.isnan(v)]
        assert summary == {
            "count": len(posted),
            "min": min(finite),
            "max": max(finite),
            "average": pytest.approx(sum(finite) / len(finite)),
            "step": top,
            "last": None if math.isnan(last) else last,
        }
        drawn = store.plot_points(who, run, [name], "step", buckets=100)[name]
        assert min(v for _, v in drawn) == min(finite)
        assert max(v for _, v in drawn) == max(finite)


def test_a_bad_entry_stores_nothing_of_its_batch(store: Store) -> None:
    """A batch is stored whole or not at all; the error names the entry and the rule."""
    who, _ = store.ensure_user("ada", "lab")
    run = store.create_run(who, {"folder": "/", "name": "bad"})["id"]
    good = {"values": {"brand new": 1.0}, "step": 0}
    for bad, where in [
        ({"values": {"m": "1.5"}, "step": 1}, "metrics.1.values.m"),
        ({"values": {"m": 10**400}, "step": 1}, "metrics.1.values.m"),
        ({"values": {"bad\ud800": 1.0}, "step": 1}, "metrics.1.values"),
        ({"values": {"m": 1.0}, "step": -1}, "metrics.1.step"),
        ({"values": {"m": 1.0}, "step": True}, "metrics.1.step"),
        ({"values": {"m": 1.0}, "time": math.inf}, "metrics.1.time"),
        ({"values": {"m": 1.0}, "timestamp": "2026-01-01T00:00:00\ud800"}, "metrics.1.timestamp"),
        ({"values": [1.0]}, "metrics.1.values"),
    ]:
        with pytest.raises(Invalid) as caught:
            store.add_metrics(who, run, [good, bad])
        assert caught.value.detail[0]["loc"][-1] == where, bad
    assert store.get_run(who, run)["metrics"] == {}
    assert store.get_metrics(who, [run], ["brand new"], "step") == {}
    store.add_metrics(who, run, [good])  # the shape made by a refused batch still works
    assert store.get_run(who, run)["metrics"]["brand new"]["count"] == 1
