"""The progress of a spooled frame: which of its parts the server holds, kept on disk.

Used by whoever uploads spooled frames (the online sink's delivery loop and
``simvue-otel send``), so a process that dies mid-frame leaves its successor that knowledge.
"""

from __future__ import annotations

from .spool import Frame, SpoolReader
from .uploader import Progress

__all__ = ["SpoolProgress"]


class SpoolProgress(Progress):
    """The progress of a spooled frame, kept in its segment's ``.parts`` file."""

    def __init__(self, reader: SpoolReader, frame: Frame) -> None:
        super().__init__(reader.progress(frame), reader.began(frame))
        self._reader = reader
        self._frame = frame

    def record(self, part: str, state: str) -> None:
        at = self.began.get(part) if state == "sending" else None
        self._reader.mark(self._frame, part, state, at)
