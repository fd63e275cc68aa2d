"""Reconciliation: what of a part whose POST got no answer the server provably lacks.

A part sent without an answer (a timeout, a reset connection, a process killed meanwhile) may
be stored or not. Before it is sent again, the uploader reads back what the server holds and
sends only the entries it provably does not hold, so each point and event is stored once
without any help from the server.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from ..client import SimvueClient
from ..client import parse_timestamp as _parse_timestamp

__all__ = ["missing_entries"]

_LOG = logging.getLogger("simvue_otel.sink")


def _stamp(text: Any) -> Any:
    """A timestamp as integer microseconds, so the server's spelling of it compares equal."""
    if not isinstance(text, str):
        return text
    try:
        return round(_parse_timestamp(text) * 1_000_000)
    except ValueError:
        return text


def missing_entries(
    client: SimvueClient,
    run_id: str,
    kind: str,
    entries: list[dict[str, Any]],
) -> tuple[list[dict[str, Any]], int]:
    """The entries of a part the server provably does not hold, and how many entries it
    neither showed nor proved missing (``unproven``).

    The server's points of those metrics (or the run's events) are read back, asked for
    as the official client asks for all of them, and matched: a point by name, step and
    timestamp, or by name and step where the server's answer carries no timestamp; an
    event by message and timestamp; each stored item matching one entry at most. An
    entry is sent again only when the read-back of its metric (or of the events) is
    complete: as many items as the server counts for it. Where it is not (a server that
    thins or cuts its answer), nothing of it is sent again: the entry may be stored, and
    sending it twice is what this avoids (counted in ``unproven``, and logged).
    """
    unproven = 0
    if kind == "metrics":
        names = sorted({n for e in entries for n in e["values"]})
        points, complete = client.read_metrics(run_id, names)
        exact: Counter[tuple[Any, ...]] = Counter()
        by_step: Counter[tuple[Any, ...]] = Counter()
        for name, held in points.items():
            for point in held:
                stamp = point.get("timestamp")
                if stamp is None:
                    by_step[(name, point.get("step"))] += 1
                else:
                    exact[(name, point.get("step"), _stamp(stamp))] += 1
        missing = []
        for entry in entries:
            values = {}
            for name, value in entry["values"].items():
                found = (name, entry["step"], _stamp(entry["timestamp"]))
                if exact[found] > 0:
                    exact[found] -= 1
                elif by_step[found[:2]] > 0:
                    by_step[found[:2]] -= 1
                elif name not in complete:
                    unproven += 1
                else:
                    values[name] = value
            if values:
                missing.append({**entry, "values": values})
        sent = sum(len(e["values"]) for e in missing)
        total = sum(len(e["values"]) for e in entries)
    else:
        events, whole = client.read_events(run_id)
        stored: Counter[tuple[Any, ...]] = Counter(
            (e.get("message"), _stamp(e.get("timestamp"))) for e in events
        )
        missing = []
        for entry in entries:
            event = (entry["message"], _stamp(entry["timestamp"]))
            if stored[event] > 0:
                stored[event] -= 1
            elif not whole:
                unproven += 1
            else:
                missing.append(entry)
        sent, total = len(missing), len(entries)
    if unproven:
        _LOG.warning(
            "an earlier %s POST for run %s got no answer, and the server's read-back is "
            "not complete: %d of its %d entries were not found and are not sent again "
            "(they may be stored; sending them twice would double them)",
            kind,
            run_id,
            unproven,
            total,
        )
    _LOG.info(
        "an earlier %s POST for run %s got no answer: the server has %d of its %d entries; "
        "sending the rest",
        kind,
        run_id,
        total - sent - unproven,
        total,
    )
    return missing, unproven
