"""What every sink offers, and the sink that does nothing.

A sink is where mapped records go: a Simvue server (online), a spool on disk (offline), or
nowhere (disabled). Everything a caller may ask of a sink is declared here, with defaults that
fit a sink which delivers nothing (in the way httpx's transports spell their interface out), so
no caller probes a sink's attributes: a sink that has no upload backlog says 0, a sink that
makes no runs knows no run ids.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..mapping.records import Record

if TYPE_CHECKING:
    from .uploader import UploadStats

__all__ = ["NullSink", "Sink"]


class Sink:
    """Where mapped records go; subclasses implement :meth:`submit`, :meth:`flush` and
    :meth:`close`, and override what else they offer."""

    spool_dir: Path | None = None
    """The folder this sink writes its spool to (None: it keeps nothing on disk)."""

    abort_listener: Callable[[str], None] | None = None
    """Called with a run key when someone asked, on the server, to abort that run (online
    sinks check while they send heartbeats)."""

    def submit(self, records: Sequence[Record], batch_key: str | None = None) -> None:
        """Take records; never blocks on the network and never raises over a full disk.
        A ``batch_key`` names the batch (the bridge derives it from a request)."""
        raise NotImplementedError

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until what was submitted is delivered (or durable); False on timeout."""
        raise NotImplementedError

    def close(self, timeout: float = 30.0) -> bool:
        """Deliver what is left within ``timeout``; True when nothing is left behind."""
        raise NotImplementedError

    def for_child(self, parent_runs: Collection[str] = ()) -> Sink:
        """A fresh sink of the same kind for a forked child process (this one, inherited, holds
        the parent's records): its own buffers, threads, connections and spool segment.
        ``parent_runs`` are the keys of runs the parent process makes on the server."""
        raise NotImplementedError(f"{type(self).__name__} cannot be used in a forked child")

    def drop_inherited(self) -> None:
        """In a forked child, right after the fork: let go of what the parent still uses (the
        spool segment's file descriptor, whose lock the child would otherwise keep), touching
        no lock and writing nothing."""

    def backlog(self) -> int:
        """Batches accepted and not yet delivered to the server (0 for a sink that delivers
        nothing to a server, whatever its spool holds)."""
        return 0

    def run_id(self, key: str) -> str | None:
        """The server's id for the run with this key, once this sink has made or found it."""
        return None

    def upload_stats(self) -> UploadStats | None:
        """What this sink's uploads achieved so far (None: it uploads nothing)."""
        return None

    def lost_records(self) -> int:
        """Records this sink could neither deliver nor keep (a full disk) since it started."""
        return 0


class NullSink(Sink):
    """``mode="disabled"``: accepts everything, keeps nothing, costs nothing."""

    def for_child(self, parent_runs: Collection[str] = ()) -> Sink:
        """Nothing to keep apart."""
        return self

    def submit(self, records: Sequence[Record], batch_key: str | None = None) -> None:
        """Drop the records."""

    def flush(self, timeout: float | None = None) -> bool:
        """Nothing to wait for."""
        return True

    def close(self, timeout: float = 30.0) -> bool:
        """Nothing to deliver."""
        return True
