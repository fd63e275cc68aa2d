"""`simvue-otel send`: upload spooled records (offline runs, or what an online exporter could
not deliver before it stopped) to the Simvue server.

Resumable and safe to repeat: each part of a frame (a run's metrics or events, one POST each)
is recorded on disk as sent and then as acknowledged, and a frame is acknowledged once all its
parts are; an interrupted `send` skips what the server acknowledged and, for a part whose answer
never came, reads back what the server holds before sending the rest, so nothing is stored
twice; a part whose POST got no answer and began less than the settle time ago
(``SIMVUE_OTEL_SETTLE_SECONDS``: a `send` killed a moment ago, whose POST a gateway may still
hold) is read back only once that time has passed, and `send` waits for it, saying so. Run ids
are recorded beside the spool, so a run is never created twice. Spools still being written by
a live process are left alone, and so is each segment another process is uploading (it holds
the segment's lock: a bridge or an online run uploading its own spill); a second `send` on the
same directory is refused.

Damage costs only itself: a frame whose bytes no longer read back is set aside in
``<stem>.corrupt``, the frames after it are sent, and each run that lost records gets a loss
event (written to the spool first, so it is delivered even if the server goes away meanwhile).
What could not be delivered (damage, records the server refused, files left alone) is listed
in the result, so the command can say which runs lost what and exit non-zero.
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
from ..mapping.records import RunRef
from . import read_identity
from .codec import CodecError, decode_records
from .files import UnsafeSpoolFile, private_dir, read_private
from .losses import damage_events
from .run_index import run_index_for
from .spool import Damage, SendLock, SpoolReader, SpoolWriter
from .spool_progress import SpoolProgress
from .uploader import RetryLater, Unsettled, Uploader, UploadStats

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
    damage: list[Damage] = field(default_factory=list)
    """Damaged bytes set aside (the frames around them were sent)."""
    left_alone: dict[Path, str] = field(default_factory=dict)
    """Names in the spool not touched (links, other users' files), and why."""
    refused: dict[RunRef, int] = field(default_factory=dict)
    """Records the server refused (set aside in ``rejected/``), per run."""
    busy: int = 0
    """Segments another live process was uploading (left to it)."""

    @property
    def undelivered(self) -> bool:
        """Whether something could not be delivered (apart from stopping early): damage that
        lost records, records the server refused, or spool files left alone."""
        lost = [d for d in self.damage if not d.tail]
        return bool(lost or self.left_alone or self.refused or self.stats.rejected)


class _Progress:
    """A one-line progress bar on a terminal, plain lines otherwise."""

    def __init__(self, total: int, stream: TextIO | None) -> None:
        self.total = max(total, 1)
        self.stream = stream
        self.tty = bool(stream and stream.isatty())
        self.last = 0.0

    def say(self, text: str) -> None:
        """One line of its own (after the bar, on a terminal)."""
        if self.stream is None:
            return
        self.stream.write(("\n" if self.tty else "") + text + "\n")
        self.stream.flush()

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
    (``retries=0``) or the tries multiply. A batch with parts whose earlier POST may still be
    on its way (:class:`~.uploader.Unsettled`) is waited for with ``sleep``, up to the settle
    time, and counts no try."""
    total = SendResult(0, 0, UploadStats(), True)
    folders = [spool_dir]
    for folder in sorted(spool_dir.glob("server-*")):
        if folder.is_symlink() or not folder.is_dir():
            total.left_alone[folder] = f"{folder} is a link or not a directory; left alone"
            continue
        owner = read_identity(folder)
        mine = owner == (client.url, identity) or identity is None
        if not mine and not as_current_user:
            if SpoolReader(folder).segments():  # only folders that hold something matter
                total.skipped.append((folder, owner or ("", "")))
            continue
        folders.append(folder)
    index = run_index_for(index_dir) if index_dir is not None else None
    rejected = spool_dir / "rejected"
    if spool_dir.is_dir():
        private_dir(rejected)
    refused_before = set(rejected.glob("*.records"))
    uploader = Uploader(client, rejected_dir=rejected, index=index)
    try:
        for folder in folders:
            result = _send_folder(
                folder, uploader, progress=progress, attempts=attempts, sleep=sleep
            )
            total.frames += result.frames
            total.bytes += result.bytes
            total.damage += result.damage
            total.left_alone.update(result.left_alone)
            total.busy += result.busy
            if not result.complete:
                resume = command("send", "--cache", spool_dir.parent)
                total.complete = False
                total.reason = f"{result.reason}; run `{resume}` again to resume"
                break
    finally:
        uploader.close()
        total.refused = _refused_runs(set(rejected.glob("*.records")) - refused_before)
    total.stats = uploader.stats
    return total


def _refused_runs(files: set[Path]) -> dict[RunRef, int]:
    """Records per run in the files the server's refusals were set aside in."""
    runs: dict[RunRef, int] = {}
    for path in files:
        try:
            records = decode_records(read_private(path))
        except (OSError, CodecError) as exc:
            _LOG.warning("cannot read refused records %s (%s)", path, exc)
            continue
        for record in records:
            runs[record.run] = runs.get(record.run, 0) + 1
    return runs


def _send_folder(
    spool_dir: Path,
    uploader: Uploader,
    *,
    progress: TextIO | None,
    attempts: int,
    sleep: Callable[[float], None],
) -> SendResult:
    """Upload one spool folder's finished segments, each under its lock."""
    result = SendResult(0, 0, uploader.stats, True)
    if not spool_dir.is_dir():
        return result
    with SendLock(spool_dir):
        reader = SpoolReader(spool_dir)
        bar = _Progress(reader.pending_bytes(), progress)
        seen: set[str] = set()
        try:
            while True:  # again when damage was found: its loss events wait in a new segment
                todo = [s for s in reader.segments() if s.stem not in seen]
                if not todo:
                    break
                for segment in todo:
                    seen.add(segment.stem)
                    if not reader.claim(segment):
                        result.busy += segment not in reader.left_alone
                        continue
                    try:
                        stopped = _send_segment(
                            reader, segment, uploader, result, bar, attempts, sleep
                        )
                    except UnsafeSpoolFile as exc:  # a link planted meanwhile: leave it
                        reader.left_alone[segment] = exc.strerror or str(exc)
                        stopped = None
                    finally:
                        reader.release(segment)
                        _keep_damage_events(reader, spool_dir, result)
                    if stopped is not None:
                        bar.update(result.bytes, uploader.stats.points, force=True)
                        result.complete = False
                        result.reason = f"stopped: {stopped}; what was sent is recorded"
                        return result
        finally:
            reader.release_all()
            result.left_alone.update(reader.left_alone)
        reader.cleanup()
        bar.update(result.bytes, uploader.stats.points, force=True)
    return result


def _send_segment(
    reader: SpoolReader,
    segment: Path,
    uploader: Uploader,
    result: SendResult,
    bar: _Progress,
    attempts: int,
    sleep: Callable[[float], None],
) -> RetryLater | None:
    """Upload one claimed segment's frames; the last failure when the server stopped taking
    them (after ``attempts`` tries of one frame), else None."""
    for frame in reader.frames(segment):
        attempt = 0
        while True:
            try:
                uploader.upload(frame.records, frame.batch_key, SpoolProgress(reader, frame))
                break
            except Unsettled as exc:
                # An earlier `send` (or bridge) POSTed parts of it and died: a gateway may still
                # hold those POSTs, so they are judged only once none can land any more.
                wait = min(max(0.0, exc.ready - time.monotonic()), uploader.settle)
                bar.say(
                    f"waiting {wait:.1f} s for {exc.parts} earlier POST(s) of batch "
                    f"{frame.batch_key} that got no answer (a gateway may still pass them on; "
                    "SIMVUE_OTEL_SETTLE_SECONDS), then checking what the server holds"
                )
                sleep(max(wait, 0.01))
            except RetryLater as exc:
                attempt += 1
                if attempt >= attempts:
                    return exc
                sleep(min(10.0, 0.5 * 2 ** (attempt - 1)))
        reader.ack(frame)
        result.frames += 1
        result.bytes += frame.end - frame.offset
        bar.update(result.bytes, uploader.stats.points)
    return None


def _keep_damage_events(reader: SpoolReader, spool_dir: Path, result: SendResult) -> None:
    """Write the loss events of damage just found into a new segment of the folder (sent in
    this pass, or by the next `send` if the server stops meanwhile)."""
    found = reader.take_damage()
    result.damage += found
    events = [e for damage in found for e in damage_events(damage)]
    if not events:
        return
    try:
        with SpoolWriter(spool_dir) as writer:
            writer.append(f"damage:{found[0].segment.stem}:{found[0].offset}", events)
    except OSError as exc:
        _LOG.error("cannot keep the loss events of damaged spool data (%s)", exc)
