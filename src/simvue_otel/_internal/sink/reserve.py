"""Room kept on the spool's disk for what a run must not lose at its end.

Each sink that writes a spool holds a :class:`DiskReserve` from the start and gives it back
at close, so a disk that filled up meanwhile still takes the runs' final states and the events
saying what was lost (:mod:`.losses`). A reserve whose process was killed is found by
:func:`stale_reserves` and deleted by the spool's cleanup.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from .files import create_private, private_dir

__all__ = ["DiskReserve", "stale_reserves"]


RESERVE_PREFIX = ".reserve-"


class DiskReserve:
    """A small file of real bytes held in the spool directory from the start, and deleted at
    close: on a disk that filled up meanwhile, it makes room for what a run must not lose at
    its end (its final state and the event saying what was lost)."""

    def __init__(self, directory: Path, size: int = 256 * 1024) -> None:
        self.path: Path | None = directory / f"{RESERVE_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        try:
            private_dir(directory)
            # Written, not sparse: the space is really taken. Created exclusively: never a file
            # (or a link) that was there before.
            create_private(self.path, b"\0" * size)
        except OSError:
            with contextlib.suppress(OSError):
                self.path.unlink()
            self.path = None  # no room even for this: nothing reserved

    def release(self) -> None:
        """Give the space back (once)."""
        if self.path is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()
            self.path = None


def stale_reserves(directory: Path) -> list[Path]:
    """Reserve files whose process is gone (killed before its close): safe to delete."""
    found = []
    for path in directory.glob(f"{RESERVE_PREFIX}*"):
        pid_text = path.name[len(RESERVE_PREFIX) :].split("-", 1)[0]
        try:
            os.kill(int(pid_text), 0)
        except (ValueError, ProcessLookupError):
            found.append(path)
        except PermissionError:
            pass  # alive, another user's
    return found
