"""The on-disk spool: ordered replay, cursors, finished segments, crashes and damage."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from simvue_otel._internal.mapping.records import EventRecord, MetricRecord, Record, RunRef
from simvue_otel._internal.sink.codec import decode_batch
from simvue_otel._internal.sink.spool import (
    Frame,
    SendLock,
    SpoolBusyError,
    SpoolReader,
    SpoolWriter,
)

RUN = RunRef("run-1", "a run", "/f")


def _batch(i: int, n: int = 3) -> list[Record]:
    records: list[Record] = [
        MetricRecord(run=RUN, values={"x": float(i), "j": j}, step=i, time=0.5, timestamp=1.0 * i)
        for j in range(n)
    ]
    records.append(EventRecord(run=RUN, message=f"batch {i}", timestamp=float(i)))
    return records


def _read_all(reader: SpoolReader, *, include_live: bool = False, ack: bool = True) -> list[Frame]:
    frames: list[Frame] = []
    for segment in reader.segments(include_live):
        for frame in reader.frames(segment):
            frames.append(frame)
            if ack:
                reader.ack(frame)
    return frames


def _files(directory: Path, suffix: str) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.suffix == suffix)


def test_write_read_ack_in_order_across_rotation(tmp_path: Path) -> None:
    writer = SpoolWriter(tmp_path / "spool" / "deep", segment_bytes=1000)
    sizes = [writer.append(f"key-{i}", _batch(i)) for i in range(40)]
    assert writer.bytes_written == sum(sizes)
    writer.close()
    assert len(_files(writer.directory, ".done")) > 3
    assert _files(writer.directory, ".seg") == []

    reader = SpoolReader(writer.directory)
    assert reader.pending_bytes() == sum(sizes)
    frames = _read_all(reader)
    assert [f.batch_key for f in frames] == [f"key-{i}" for i in range(40)]
    assert [len(f.records) for f in frames] == [4] * 40
    assert frames[7].records == tuple(_batch(7))
    # Every finished segment was deleted once fully acknowledged, cursors included.
    assert list(writer.directory.iterdir()) == []
    assert reader.pending_bytes() == 0


def test_segment_names_sort_by_creation(tmp_path: Path) -> None:
    writer = SpoolWriter(tmp_path, segment_bytes=1)  # every frame rotates
    for i in range(20):
        writer.append(f"k{i}", _batch(i, 1))
    writer.close()
    names = [p.name for p in SpoolReader(tmp_path).segments()]
    assert len(names) == 20
    assert names == sorted(names)
    stem = names[0].removesuffix(".done")
    stamp, pid, token = stem.split("-")
    assert len(stamp) == 21 and stamp[8] == "T"
    assert pid == str(os.getpid())
    assert len(token) == 8
    keys = [f.batch_key for f in _read_all(SpoolReader(tmp_path))]
    assert keys == [f"k{i}" for i in range(20)]


def test_reader_resumes_from_cursor(tmp_path: Path) -> None:
    with SpoolWriter(tmp_path, segment_bytes=600) as writer:
        for i in range(10):
            writer.append(f"k{i}", _batch(i))

    reader = SpoolReader(tmp_path)
    seen: list[str] = []
    for segment in reader.segments():
        for frame in reader.frames(segment):
            if len(seen) == 4:
                break
            seen.append(frame.batch_key)
            reader.ack(frame)
        if len(seen) == 4:
            break
    # Not acknowledged frames come again; acknowledged ones never do.
    again = _read_all(SpoolReader(tmp_path))
    assert seen + [f.batch_key for f in again] == [f"k{i}" for i in range(10)]


def test_unacked_frames_are_replayed(tmp_path: Path) -> None:
    with SpoolWriter(tmp_path) as writer:
        for i in range(3):
            writer.append(f"k{i}", _batch(i))
    reader = SpoolReader(tmp_path)
    first = _read_all(reader, ack=False)
    assert [f.batch_key for f in first] == ["k0", "k1", "k2"]
    assert [f.batch_key for f in _read_all(SpoolReader(tmp_path))] == ["k0", "k1", "k2"]
    assert list(tmp_path.iterdir()) == []


def test_live_segment_skipped_until_writer_closes(tmp_path: Path) -> None:
    writer = SpoolWriter(tmp_path)
    writer.append("a", _batch(0))
    writer.append("b", _batch(1))
    live = writer.segment
    assert live is not None and live.suffix == ".seg"

    reader = SpoolReader(tmp_path)
    assert reader.segments() == []
    assert reader.segments(include_live=True) == [live]
    assert reader.pending_bytes() == 0
    assert reader.pending_bytes(include_live=True) == writer.bytes_written

    # Reading a live segment works, but acknowledging it never deletes it.
    frames = _read_all(reader, include_live=True)
    assert [f.batch_key for f in frames] == ["a", "b"]
    assert live.exists()
    writer.append("c", _batch(2))
    assert [f.batch_key for f in _read_all(reader, include_live=True)] == ["c"]

    writer.close()
    assert not live.exists()
    (done,) = reader.segments()
    assert done == live.with_suffix(".done")
    reader.cleanup()  # finished and fully acknowledged (cursor from the .seg days)
    assert list(tmp_path.iterdir()) == []


def test_ack_after_writer_closes_deletes_done_segment(tmp_path: Path) -> None:
    writer = SpoolWriter(tmp_path)
    writer.append("a", _batch(0))
    reader = SpoolReader(tmp_path)
    (frame,) = _read_all(reader, include_live=True, ack=False)
    writer.close()  # .seg became .done under the reader's feet
    reader.ack(frame)
    assert list(tmp_path.iterdir()) == []


def test_fsync_interval_and_flush(tmp_path: Path) -> None:
    writer = SpoolWriter(tmp_path, fsync_interval=0.0)
    writer.append("a", _batch(0))
    writer.flush()
    writer.flush(fsync=False)
    writer.close()
    writer.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        writer.append("b", _batch(1))
    assert [f.batch_key for f in _read_all(SpoolReader(tmp_path))] == ["a"]


def test_writer_is_thread_safe(tmp_path: Path) -> None:
    writer = SpoolWriter(tmp_path, segment_bytes=5000)

    def work(t: int) -> None:
        for i in range(50):
            writer.append(f"t{t}-{i}", _batch(i, 1))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    writer.close()
    keys = [f.batch_key for f in _read_all(SpoolReader(tmp_path))]
    assert sorted(keys) == sorted(f"t{t}-{i}" for t in range(4) for i in range(50))
    for t in range(4):  # each thread's frames stay in its order
        mine = [k for k in keys if k.startswith(f"t{t}-")]
        assert mine == [f"t{t}-{i}" for i in range(50)]


def _crashed_segment(directory: Path, n: int) -> Path:
    """A segment as a killed writer leaves it: ``.seg``, unlocked, holding ``n`` frames."""
    with SpoolWriter(directory) as writer:
        for i in range(n):
            writer.append(f"k{i}", _batch(i))
        segment = writer.segment
    assert segment is not None
    segment.with_suffix(".done").rename(segment)
    return segment


def test_unlocked_seg_counts_as_finished(tmp_path: Path) -> None:
    segment = _crashed_segment(tmp_path, 3)
    reader = SpoolReader(tmp_path)
    assert reader.segments() == [segment]
    assert [f.batch_key for f in _read_all(reader)] == ["k0", "k1", "k2"]
    assert list(tmp_path.iterdir()) == []


def test_partial_tail_of_crashed_segment_is_set_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    segment = _crashed_segment(tmp_path, 3)
    size = segment.stat().st_size
    with open(segment, "ab") as handle:
        handle.write(b"SV\x00\x00\x01\x00\x12\x34")  # a frame cut short by a kill
    reader = SpoolReader(tmp_path)
    with caplog.at_level(logging.WARNING):
        assert [f.batch_key for f in _read_all(reader)] == ["k0", "k1", "k2"]
    assert any(segment.name in r.getMessage() for r in caplog.records)
    # The tail is kept aside; the segment itself was then complete and deleted.
    assert not segment.exists()
    assert segment.with_suffix(".corrupt").read_bytes() == b"SV\x00\x00\x01\x00\x12\x34"
    assert size > 0


def test_partial_tail_of_live_segment_is_silent(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    writer = SpoolWriter(tmp_path)
    writer.append("a", _batch(0))
    live = writer.segment
    assert live is not None
    with open(live, "ab") as handle:  # a frame being written, as another fd sees it
        handle.write(b"SV\x00\x00")
    reader = SpoolReader(tmp_path)
    with caplog.at_level(logging.WARNING):
        assert [f.batch_key for f in _read_all(reader, include_live=True)] == ["a"]
        assert _read_all(reader, include_live=True) == []
    assert caplog.records == []
    assert not live.with_suffix(".corrupt").exists()
    writer.close()


def test_corrupted_middle_byte(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A damaged frame costs only itself: the frames after it are read, the damaged bytes are
    set aside, and what they held is reported per run."""
    with SpoolWriter(tmp_path) as writer:
        offsets = [0]
        for i in range(6):
            offsets.append(offsets[-1] + writer.append(f"k{i}", _batch(i)))
    (segment,) = SpoolReader(tmp_path).segments()
    data = bytearray(segment.read_bytes())
    bad = offsets[4] - 3  # inside the payload of frame 3, near its end
    data[bad] ^= 0xFF
    segment.write_bytes(bytes(data))

    reader = SpoolReader(tmp_path)
    with caplog.at_level(logging.ERROR):
        frames = _read_all(reader)
    assert [f.batch_key for f in frames] == ["k0", "k1", "k2", "k4", "k5"]
    assert any(segment.name in r.getMessage() and "CRC" in r.getMessage() for r in caplog.records)
    corrupt = segment.with_suffix(".corrupt")
    assert corrupt.read_bytes() == bytes(data[offsets[3] : offsets[4]])
    (damage,) = reader.take_damage()
    assert (damage.offset, damage.size, damage.corrupt) == (
        offsets[3],
        offsets[4] - offsets[3],
        corrupt,
    )
    assert damage.records == {RUN: 4} and damage.unidentified == 0 and not damage.tail
    assert not segment.exists()  # what was left was read and acknowledged
    assert reader.segments() == []


def test_bad_magic_in_middle(tmp_path: Path) -> None:
    with SpoolWriter(tmp_path) as writer:
        first = writer.append("k0", _batch(0))
        second = writer.append("k1", _batch(1))
        writer.append("k2", _batch(2))
    (segment,) = SpoolReader(tmp_path).segments()
    data = bytearray(segment.read_bytes())
    data[first] = ord("X")
    segment.write_bytes(bytes(data))
    reader = SpoolReader(tmp_path)
    assert [f.batch_key for f in _read_all(reader)] == ["k0", "k2"]
    assert segment.with_suffix(".corrupt").read_bytes() == bytes(data[first : first + second])
    assert [d.records for d in reader.take_damage()] == [{RUN: 4}]


def test_garbage_inserted_between_many_frames_costs_only_the_frame_it_hit(tmp_path: Path) -> None:
    """16 garbage bytes written into frame 2 of 200 (the rest shifted): the reader finds
    frame 3 again by its marker and CRC, and reads every other frame."""
    with SpoolWriter(tmp_path) as writer:
        offsets = [0]
        for i in range(200):
            offsets.append(offsets[-1] + writer.append(f"k{i}", _batch(i)))
    (segment,) = SpoolReader(tmp_path).segments()
    data = segment.read_bytes()
    at = offsets[2] + 120  # past the batch's table of runs
    segment.write_bytes(data[:at] + os.urandom(8) + b"SV" + os.urandom(6) + data[at:])
    reader = SpoolReader(tmp_path)
    keys = [f.batch_key for f in _read_all(reader)]
    assert keys == [f"k{i}" for i in range(200) if i != 2]
    (damage,) = reader.take_damage()
    assert damage.size == offsets[3] - offsets[2] + 16
    assert damage.records == {RUN: 4}
    assert list(tmp_path.iterdir()) == [segment.with_suffix(".corrupt")]


def test_damage_in_a_live_segment_waits_for_a_valid_frame_after_it(tmp_path: Path) -> None:
    """In a segment still being written, damage with nothing valid after it may be a frame
    landing: nothing is set aside until a valid frame follows (or the segment is finished)."""
    writer = SpoolWriter(tmp_path)
    writer.append("a", _batch(0))
    live = writer.segment
    assert live is not None
    with open(live, "ab") as handle:
        handle.write(b"SV\x00\x00\x00\x05garbage-garbage")
    reader = SpoolReader(tmp_path)
    assert [f.batch_key for f in _read_all(reader, include_live=True)] == ["a"]
    assert not live.with_suffix(".corrupt").exists()
    # The stray bytes above went in through another descriptor; the writer's next frame
    # lands after them, and the reader finds it.
    writer.append("b", _batch(1))
    assert [f.batch_key for f in _read_all(reader, include_live=True)] == ["b"]
    assert live.with_suffix(".corrupt").read_bytes().startswith(b"SV\x00\x00\x00\x05")
    writer.close()


def test_cleanup_removes_acked_segments_and_orphan_cursors(tmp_path: Path) -> None:
    with SpoolWriter(tmp_path, segment_bytes=1) as writer:
        writer.append("a", _batch(0))
        writer.append("b", _batch(1))
    reader = SpoolReader(tmp_path)
    first, second = reader.segments()
    size = first.stat().st_size
    first.with_suffix(".cursor").write_text(f"{size}\n")  # acknowledged, not yet deleted
    (tmp_path / "20000101T000000000000-1-deadbeef.cursor").write_text("5\n")  # orphan
    reader.cleanup()
    assert sorted(p.name for p in tmp_path.iterdir()) == [second.name]
    assert reader.pending_bytes() == second.stat().st_size


def test_reader_of_missing_directory(tmp_path: Path) -> None:
    reader = SpoolReader(tmp_path / "nope")
    assert reader.segments() == []
    assert reader.pending_bytes() == 0
    reader.cleanup()


_CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from simvue_otel._internal.mapping.records import MetricRecord, RunRef
    from simvue_otel._internal.sink.spool import SpoolWriter

    run = RunRef("run-kill", "k", "/")
    writer = SpoolWriter(Path(sys.argv[1]), segment_bytes=200_000, fsync_interval=3600)
    i = 0
    while True:
        records = [
            MetricRecord(run=run, values={"v": float(i), "w": j}, step=i, time=1.0, timestamp=2.0)
            for j in range(50 + (i % 7) * 100)
        ]
        writer.append(f"frame-{i}", records)
        sys.stdout.write(f"{i}\\n")
        sys.stdout.flush()
        i += 1
    """
)


@pytest.mark.parametrize("kill_after", [1, 40, 300])
def test_writer_killed_mid_append(tmp_path: Path, kill_after: int) -> None:
    spool = tmp_path / "spool"
    child = subprocess.Popen(
        [sys.executable, "-u", "-c", _CHILD, str(spool)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 60
    while len(lines) < kill_after and time.monotonic() < deadline:
        line = child.stdout.readline()
        if not line:
            break
        lines.append(line)
    os.kill(child.pid, signal.SIGKILL)
    lines.extend(child.stdout.readlines())  # what the child reported before it died
    child.stdout.close()
    assert child.wait() == -signal.SIGKILL
    reported = [int(line) for line in lines if line.endswith("\n")]
    assert reported == list(range(len(reported)))
    assert len(reported) >= kill_after

    reader = SpoolReader(spool)
    frames = _read_all(reader)  # the dead writer's .seg counts as finished
    keys = [f.batch_key for f in frames]
    assert keys == [f"frame-{i}" for i in range(len(keys))]
    assert len(reported) <= len(frames) <= len(reported) + 1
    for frame in frames:
        i = int(frame.batch_key.removeprefix("frame-"))
        assert len(frame.records) == 50 + (i % 7) * 100
        assert all(isinstance(r, MetricRecord) and r.step == i for r in frame.records)
    # All complete frames replayed and acknowledged: only a set-aside partial tail may remain.
    left = list(spool.iterdir())
    assert all(p.suffix == ".corrupt" for p in left), left
    for corrupt in left:
        data = corrupt.read_bytes()
        assert data[:2] == b"SV" or len(data) < 2
        with pytest.raises(ValueError):  # not a complete frame
            decode_batch(data[10:])


def test_send_lock_refuses_a_second_holder(tmp_path: Path) -> None:
    with SendLock(tmp_path):
        with pytest.raises(SpoolBusyError, match="another 'simvue-otel send'"):
            SendLock(tmp_path).acquire()
        code = textwrap.dedent(
            """
            import sys
            from pathlib import Path
            from simvue_otel._internal.sink.spool import SendLock, SpoolBusyError
            try:
                with SendLock(Path(sys.argv[1])):
                    sys.exit(0)
            except SpoolBusyError:
                sys.exit(3)
            """
        )
        result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=False)
        assert result.returncode == 3
    # Released: a new holder gets it.
    with SendLock(tmp_path) as lock:
        assert lock.path == tmp_path / ".send.lock"
    assert issubclass(SpoolBusyError, RuntimeError)


def test_send_lock_in_a_thread(tmp_path: Path) -> None:
    errors: list[BaseException] = []

    def other() -> None:
        try:
            with SendLock(tmp_path):
                pass
        except SpoolBusyError as exc:
            errors.append(exc)

    with SendLock(tmp_path):
        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
    assert len(errors) == 1


# -- progress inside frames ---------------------------------------------------------------------


def test_progress_marks_belong_to_one_frame_and_survive_a_new_reader(tmp_path: Path) -> None:
    writer = SpoolWriter(tmp_path)
    writer.append("a", _batch(0))
    writer.append("b", _batch(1), {"0.m0": "done", "0.e0": "sending"})
    writer.close()
    reader = SpoolReader(tmp_path)
    first, second = _read_all(reader, ack=False)
    assert reader.progress(first) == {}
    assert reader.progress(second) == {"0.m0": "done", "0.e0": "sending"}
    reader.mark(first, "0.m0", "sending")
    reader.mark(first, "0.m0", "done")
    reader.mark(second, "0.e0", "clear")
    again = SpoolReader(tmp_path)  # a later process reads what was recorded
    a, b = _read_all(again, ack=False)
    assert again.progress(a) == {"0.m0": "done"}
    assert again.progress(b) == {"0.m0": "done"}


def test_a_progress_line_never_marks_another_frame_at_the_same_offset(tmp_path: Path) -> None:
    """Marks name the frame's CRC as well as its offset: a mark left for a frame whose write
    failed (so the next frame reuses the offset) does not apply to the next frame."""
    writer = SpoolWriter(tmp_path)
    writer.append("a", _batch(0))
    writer.close()
    reader = SpoolReader(tmp_path)
    (frame,) = _read_all(reader, ack=False)
    stale = Frame(frame.segment, frame.offset, frame.end, "other", (), frame.crc ^ 1)
    reader.mark(stale, "0.m0", "done")
    assert SpoolReader(tmp_path).progress(frame) == {}


def test_acknowledged_segments_take_their_progress_file_with_them(tmp_path: Path) -> None:
    writer = SpoolWriter(tmp_path)
    writer.append("a", _batch(0), {"0.m0": "done"})
    writer.close()
    reader = SpoolReader(tmp_path)
    (frame,) = _read_all(reader, ack=False)
    reader.mark(frame, "0.e0", "done")
    assert _files(tmp_path, ".parts")
    reader.ack(frame)
    assert _files(tmp_path, ".parts") == [] and _files(tmp_path, ".done") == []


# -- one uploader per segment ---------------------------------------------------------------


def test_an_owner_uploading_its_segment_keeps_it_through_rotation(tmp_path: Path) -> None:
    """The owner claims its live segment through its writer; when the segment rotates to
    `.done` meanwhile, its lock is kept, so another uploader (a `send`, in another process
    or not) cannot take it until the owner lets go."""
    writer = SpoolWriter(tmp_path, segment_bytes=400)
    writer.append("a", _batch(0))
    live = writer.segment
    assert live is not None
    assert writer.claim(live.stem)
    owner = SpoolReader(tmp_path)
    (first,) = list(owner.frames(live))
    writer.append("b", _batch(1))
    writer.append("c", _batch(2))  # past 400 bytes: the segment is finished
    done = live.with_suffix(".done")
    assert done.exists() and writer.segment != live
    other = SpoolReader(tmp_path)
    assert done in other.segments()
    assert not other.claim(done)  # the owner is uploading it
    code = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        from simvue_otel._internal.sink.spool import SpoolReader
        sys.exit(0 if SpoolReader(Path(sys.argv[1])).claim(Path(sys.argv[2])) else 3)
        """
    )
    run = [sys.executable, "-c", code, str(tmp_path), str(done)]
    assert subprocess.run(run, check=False).returncode == 3
    owner.ack(first)
    writer.unclaim(live.stem)
    assert other.claim(done)  # let go: now another may upload the rest
    assert [f.batch_key for f in other.frames(done)] == ["b", "c"]
    assert not SpoolReader(tmp_path).claim(done)  # and nobody else meanwhile
    other.release(done)
    writer.close()


def test_a_segment_rotated_while_nobody_uploads_it_is_free_to_claim(tmp_path: Path) -> None:
    """Locks are kept only for what the owner is uploading: a finished segment it is not
    uploading holds no descriptor and can be taken by `send` (one at a time)."""
    writer = SpoolWriter(tmp_path, segment_bytes=1)
    writer.append("a", _batch(0))
    (done,) = SpoolReader(tmp_path).segments()
    first, second = SpoolReader(tmp_path), SpoolReader(tmp_path)
    assert first.claim(done)
    assert not second.claim(done)
    assert not writer.claim(done.stem)  # the writer holds nothing of it any more
    first.release(done)
    assert second.claim(done)
    second.release_all()
    writer.close()


@pytest.mark.parametrize("seed", range(60))
def test_damage_anywhere_costs_only_the_frame_it_hit(tmp_path: Path, seed: int) -> None:
    """Bytes flipped, inserted or cut anywhere in a segment: every frame the damage did not
    touch is read back, in order, and nothing else."""
    import random

    rng = random.Random(seed)
    with SpoolWriter(tmp_path) as writer:
        offsets = [0]
        for i in range(30):
            offsets.append(offsets[-1] + writer.append(f"k{i}", _batch(i, n=rng.randint(1, 6))))
    (segment,) = SpoolReader(tmp_path).segments()
    data = segment.read_bytes()
    at = rng.randrange(len(data))
    hit = next(i for i in range(30) if offsets[i] <= at < offsets[i + 1])
    how = ("flip", "insert", "cut")[seed % 3]
    lost = {hit}
    if how == "flip":
        damaged = data[:at] + bytes([data[at] ^ 0x5A]) + data[at + 1 :]
    elif how == "insert":
        damaged = data[:at] + os.urandom(rng.randint(1, 40)) + data[at:]
        if at == offsets[hit]:  # garbage between two frames: no frame is hit
            lost = set()
    else:
        cut = min(rng.randint(1, 8), len(data) - at)
        damaged = data[:at] + data[at + cut :]
        lost = {i for i in range(30) if offsets[i] < at + cut and offsets[i + 1] > at}
    segment.write_bytes(damaged)
    reader = SpoolReader(tmp_path)
    keys = [f.batch_key for f in _read_all(reader)]
    assert keys == [f"k{i}" for i in range(30) if i not in lost], (how, at, hit)
    assert list(tmp_path.glob("*.done")) == []


def test_cleanup_drops_cursor_files_a_killed_process_never_renamed(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    stale = tmp_path / f".20200101T000000000000-1-deadbeef.cursor.{dead}.0badcafe.tmp"
    mine = tmp_path / f".20200101T000000000000-1-deadbeef.cursor.{os.getpid()}.0badcafe.tmp"
    stale.write_text("12\n")
    mine.write_text("12\n")
    SpoolReader(tmp_path).cleanup()
    assert not stale.exists() and mine.exists()
