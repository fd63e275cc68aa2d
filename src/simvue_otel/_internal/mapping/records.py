"""What the mapping produces and the sinks consume: Simvue records, free of OTel types.

Records are treated as read-only once made; only :class:`RunRef` is frozen (it is hashed),
the others are plain slotted classes because they are made per metric point, on the hot path.

Every record names its run by :class:`RunRef` (the run key plus the name and folder from the
Resource), so a sink can create the run from any record, whichever signal arrives first.
Times are epoch seconds (floats).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..run_state import check_record_fields

__all__ = ["EventRecord", "MetricRecord", "Record", "RunRecord", "RunRef"]


@dataclass(frozen=True, slots=True)
class RunRef:
    """Identity of a run as every signal carries it (Resource attributes)."""

    key: str
    name: str | None = None
    folder: str = "/"


@dataclass(slots=True)
class RunRecord:
    """The state of a run at ``observed`` (later states replace earlier ones).

    A field that is None was not stated and leaves the run's value as it is (so a process
    that reconnects to a run without knowing its tags never clears them); ``tags=()``
    states "no tags". ``metadata`` is flat (dotted keys) and merged into the run's;
    ``visibility`` is Simvue's wire shape ``{"public": bool, "tenant": bool, "users": [...]}``.
    """

    run: RunRef
    status: str
    observed: float
    description: str | None = None
    tags: tuple[str, ...] | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    visibility: Mapping[str, Any] | None = None
    ttl: int | None = None
    heartbeat_timeout: int | None = None
    started: float | None = None
    ended: float | None = None
    system: Mapping[str, Any] | None = None
    """Simvue's ``system`` field (host, platform, CPU...), from the Resource; None = not stated."""


# The state fields (all but the run, status and times) are the rows of ``RUN_STATE``, in order.
check_record_fields(
    tuple(
        f
        for f in RunRecord.__dataclass_fields__
        if f not in ("run", "status", "observed", "started", "ended")
    )
)


@dataclass(slots=True)
class MetricRecord:
    """One ``log_metrics`` call: exact values at one step.

    ``counter`` is None when ``step`` is the run's own step (given by the user, or counted
    where the run lives). Instrument exports are numbered by the mapping process alone, which
    may not be the first to write that run (a restarted bridge, another replica, a reconnect):
    their ``step`` is then that process's own count, ``counter`` names the count, and the
    uploader turns it into the run's step and ``time`` into seconds since the run's start
    (see conventions §7).
    """

    run: RunRef
    values: Mapping[str, float]
    step: int
    time: float
    timestamp: float
    counter: str | None = None


@dataclass(slots=True)
class EventRecord:
    """A timestamped message."""

    run: RunRef
    message: str
    timestamp: float
    level: str = "info"


Record = RunRecord | MetricRecord | EventRecord
