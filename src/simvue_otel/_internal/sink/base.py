"""What every sink offers, and the sink that does nothing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ..mapping.records import Record

__all__ = ["NullSink", "Sink"]


class Sink(Protocol):
    """Where mapped records go: a server (online), a spool (offline), or nowhere."""

    def submit(self, records: Sequence[Record], batch_key: str | None = None) -> None:
        """Take records; never blocks on the network and never raises over a full disk.
        A ``batch_key`` names the batch (the bridge derives it from a request)."""

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until what was submitted is delivered (or durable); False on timeout."""

    def close(self, timeout: float = 30.0) -> bool:
        """Deliver what is left within ``timeout``; True when nothing is left behind."""


class NullSink:
    """``mode="disabled"``: accepts everything, keeps nothing, costs nothing."""

    def submit(self, records: Sequence[Record], batch_key: str | None = None) -> None:
        """Drop the records."""

    def flush(self, timeout: float | None = None) -> bool:
        """Nothing to wait for."""
        return True

    def close(self, timeout: float = 30.0) -> bool:
        """Nothing to deliver."""
        return True
