"""`simvue-otel send`: upload spooled records (offline runs, or what an online exporter could
not deliver before it stopped) to the Simvue server.

Resumable and safe to repeat: each part of a frame (a run's metrics or events, one POST each)
is recorded on disk as sent and then as acknowledged, and a frame is acknowledged once all its
parts are; an interrupted `send` skips what the server acknowledged and, for a part whose answer
never came, reads back what the server holds before sending the rest, so nothing is stored
twice. Run ids are recorded beside the spool, so a run is never created twice. Spools still
being written by a live process are left alone; a second `send` on the same directory is
refused.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from ..client import SimvueClient
from ..hints import command
from . import read_identity
from .online import SpoolProgress, run_index_for
from .spool import SendLock, SpoolReader
from .uploader import RetryLater, Uploader, UploadStats

__all__ = ["SendResult", "send_spool"]

_LOG = logging.getLogger("simvue_otel.send")


@dataclass
class SendResult:
    """What a `send` did."""

    frames: int
    bytes: int
    stats: UploadStats
    complete: bool
    reason: str = ""
    skipped: list[tuple[Path, tuple[str, str]]] = field(default_factory=list)
    """Spool folders left alone: logged for another server or user (their ``(server,
    identity)``), and not asked to upload as the current user."""


class _Progress:
    """A one-line progress bar on a terminal, plain lines otherwise."""

    def __init__(self, total: int, stream: TextIO | None) -> None:
        self.total = max(total, 1)
        self.stream = stream
        self.tty = bool(stream and stream.isatty())
        self.last = 0.0

    def update(self, done: int, points: int, force: bool = False) -> None:
        if self.stream is None:
            return
        now = time.monotonic()
        if not force and now - self.last < (0.1 if self.tty else 2.0):
            return
        self.last = now
        share = min(1.0, done / self.total)
        bar = "#" * int(share * 30)
        text = (
            f"sending [{bar:<30}] {share * 100:5.1f}%  {done / 1e6:.1f}/{self.total / 1e6:.1f} MB"
        )
        text += f"  {points} metric values"
        if self.tty:
            self.stream.write("\r" + text)
            if force:
                self.stream.write("\n")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def send_spool(
    spool_dir: Path,
    client: SimvueClient,
    *,
    progress: TextIO | None = sys.stderr,
    attempts: int = 5,
    index_dir: Path | None = None,
    identity: str | None = None,
    as_current_user: bool = False,
    sleep: Callable[[float], None] = time.sleep,
) -> SendResult:
    """Upload every finished spool segment in ``spool_dir`` (offline runs) and in its
    ``server-*`` folders (what online exporters could not deliver), oldest first.

    ``index_dir`` is the spool folder of ``client``'s server, whose run index records which
    server run each run key is (None: runs are found with the server's filter alone).

    Offline runs are uploaded as the current user (``identity``), as the official sender does.
    A ``server-*`` folder holds what online processes could not deliver, under the server and
    user they logged as: it is uploaded only when that is ``client``'s server and
    ``identity``, or with ``as_current_user``; others are listed in ``skipped``.

    This loop owns the retries: each batch is tried ``attempts`` times, ``sleep`` waiting
    0.5 s, 1 s, 2 s... (at most 10 s) between tries, so give it a client that does not retry
    (``retries=0``) or the tries multiply."""
    total = SendResult(0, 0, UploadStats(), True)
    folders = [spool_dir]
    for folder in sorted(p for p in spool_dir.glob("server-*") if p.is_dir()):
        owner = read_identity(folder)
        mine = owner == (client.url, identity) or identity is None
        if not mine and not as_current_user:
            if SpoolReader(folder).segments():  # only folders that hold something matter
                total.skipped.append((folder, owner or ("", "")))
            continue
        folders.append(folder)
    index = run_index_for(index_dir) if index_dir is not None else None
    uploader = Uploader(client, rejected_dir=spool_dir / "rejected", index=index)
    try:
        for folder in folders:
            result = _send_folder(
                folder, uploader, progress=progress, attempts=attempts, sleep=sleep
            )
            total.frames += result.frames
            total.bytes += result.bytes
            if not result.complete:
                resume = command("send", "--cache", spool_dir.parent)
                total.complete = False
                total.reason = f"{result.reason}; run `{resume}` again to resume"
                break
    finally:
        uploader.close()
    total.stats = uploader.stats
    return total


def _send_folder(
    spool_dir: Path,
    uploader: Uploader,
    *,
    progress: TextIO | None,
    attempts: int,
    sleep: Callable[[float], None],
) -> SendResult:
    """Upload one spool folder's finished segments."""
    frames = sent = 0
    if not spool_dir.is_dir():
        return SendResult(0, 0, uploader.stats, True)
    with SendLock(spool_dir):
        reader = SpoolReader(spool_dir)
        bar = _Progress(reader.pending_bytes(), progress)
        for segment in reader.segments():
            for frame in reader.frames(segment):
                for attempt in range(attempts):
                    try:
                        uploader.upload(
                            frame.records, frame.batch_key, SpoolProgress(reader, frame)
                        )
                        break
                    except RetryLater as exc:
                        if attempt == attempts - 1:
                            bar.update(sent, uploader.stats.points, force=True)
                            return SendResult(
                                frames, sent, uploader.stats, False,
                                f"stopped: {exc}; what was sent is recorded",
                            )  # fmt: skip
                        sleep(min(10.0, 0.5 * 2**attempt))
                reader.ack(frame)
                frames += 1
                sent += frame.end - frame.offset
                bar.update(sent, uploader.stats.points)
        reader.cleanup()
        bar.update(sent, uploader.stats.points, force=True)
    return SendResult(frames, sent, uploader.stats, True)
