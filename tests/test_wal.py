"""Unit tests of the write-ahead log (knowledge/storage/wal): framing, LSNs, segments, retention, group commit."""

from __future__ import annotations

import os
import threading

import pytest

from knowledge.errors import CorruptionError, InvariantViolation
from knowledge.storage.wal import Record, WriteAheadLog
from knowledge.storage.wal import record as frames
from knowledge.storage.wal.log import list_segments
from knowledge.storage.wal.segments import parse_segment_name, segment_name


def _payload(i: int, size: int = 24) -> bytes:
    return (f"record-{i:06d}-".encode() * (size // 14 + 1))[:size]


def _segment_files(directory: str) -> list[str]:
    return sorted(name for name in os.listdir(directory) if parse_segment_name(name) is not None)


def _records(wal: WriteAheadLog, lsn: int = 1, until: int | None = None) -> list[Record]:
    return list(wal.read_from(lsn, until_lsn=until))


# -- round trip and LSNs ----------------------------------------------------------------------


def test_append_sync_reopen_round_trip(tmp_path):
    directory = str(tmp_path / "wal")
    wal = WriteAheadLog(directory)
    payloads = [_payload(i, size=1 + 37 * i) for i in range(10)] + [b""]
    epochs = [1, 1, 1, 2, 2, 2, 2, 5, 5, 5, 5]
    lsns = [wal.append(p, e) for p, e in zip(payloads, epochs, strict=True)]
    wal.sync_to(lsns[-1])
    assert wal.durable_lsn == wal.last_lsn == lsns[-1]
    before = _records(wal)
    wal.close()

    reopened = WriteAheadLog(directory)
    try:
        assert reopened.last_lsn == reopened.durable_lsn == len(payloads)
        assert reopened.last_epoch == 5
        after = _records(reopened)
        assert after == before
        assert [r.payload for r in after] == payloads
        assert [r.epoch for r in after] == epochs
        assert [r.lsn for r in after] == lsns
        stamps = [r.timestamp_ns for r in after]
        assert all(t > 0 for t in stamps)
        assert stamps == sorted(stamps)
    finally:
        reopened.close()


def test_lsns_are_dense_from_one_and_continue_after_reopen(tmp_path):
    directory = str(tmp_path / "wal")
    wal = WriteAheadLog(directory)
    assert wal.last_lsn == 0 and wal.durable_lsn == 0 and wal.first_lsn == 1
    assert _records(wal) == []
    assert [wal.append(_payload(i), 1) for i in range(7)] == list(range(1, 8))
    wal.sync_to(7)
    wal.close()

    wal = WriteAheadLog(directory)
    assert wal.first_lsn == 1
    assert [wal.append(_payload(i), 1) for i in range(7, 10)] == [8, 9, 10]
    wal.sync_to(10)
    assert [r.lsn for r in _records(wal)] == list(range(1, 11))
    wal.close()


def test_read_from_defaults_to_durable_records_only(tmp_path):
    wal = WriteAheadLog(str(tmp_path / "wal"))
    try:
        wal.sync_to(wal.append(b"one", 1))
        wal.append(b"two", 1)
        wal.append(b"three", 1)
        assert [r.payload for r in _records(wal)] == [b"one"]
        assert [r.payload for r in _records(wal, until=3)] == [b"one", b"two", b"three"]
        assert [r.payload for r in _records(wal, 2, until=2)] == [b"two"]
        wal.sync_to(3)
        assert [r.lsn for r in _records(wal, 2)] == [2, 3]
        assert _records(wal, 4) == []
    finally:
        wal.close()


def test_sync_to_a_durable_lsn_does_not_fsync_again(tmp_path):
    wal = WriteAheadLog(str(tmp_path / "wal"))
    try:
        first = wal.append(b"a", 1)
        second = wal.append(b"b", 1)
        wal.sync_to(second)  # covers `first` too
        count = wal.fsync_count
        assert count == 1
        wal.sync_to(first)
        wal.sync_to(second)
        assert wal.fsync_count == count
    finally:
        wal.close()


def test_fsync_disabled_still_advances_durable_lsn(tmp_path):
    wal = WriteAheadLog(str(tmp_path / "wal"), fsync=False)
    try:
        lsn = wal.append(b"x", 1)
        wal.sync_to(lsn)
        assert wal.durable_lsn == lsn
        assert wal.fsync_count == 0
    finally:
        wal.close()


# -- epochs -----------------------------------------------------------------------------------


def test_epoch_going_backwards_raises(tmp_path):
    wal = WriteAheadLog(str(tmp_path / "wal"))
    try:
        wal.append(b"a", 3)
        wal.append(b"b", 3)  # equal is fine
        wal.append(b"c", 4)  # forward is fine
        with pytest.raises(InvariantViolation, match="epoch"):
            wal.append(b"d", 3)
        assert wal.last_lsn == 3  # the refused append left nothing behind
        assert wal.last_epoch == 4
        assert wal.append(b"e", 4) == 4
        wal.sync_to(4)
        assert [r.payload for r in _records(wal)] == [b"a", b"b", b"c", b"e"]
    finally:
        wal.close()


def test_epoch_going_backwards_after_reopen_raises(tmp_path):
    directory = str(tmp_path / "wal")
    wal = WriteAheadLog(directory)
    wal.sync_to(wal.append(b"a", 7))
    wal.close()
    wal = WriteAheadLog(directory)
    try:
        assert wal.last_epoch == 7
        with pytest.raises(InvariantViolation):
            wal.append(b"b", 6)
        assert wal.append(b"b", 7) == 2
    finally:
        wal.close()


# -- segments ---------------------------------------------------------------------------------


def test_segment_roll_and_read_from_across_segments(tmp_path):
    directory = str(tmp_path / "wal")
    frame = frames.HEADER_BYTES + 50
    wal = WriteAheadLog(directory, segment_bytes_max=2 * frame + 10)  # two records per segment
    count = 11
    for i in range(count):
        assert wal.append(_payload(i, 50), 1) == i + 1
    wal.sync_to(count)

    names = _segment_files(directory)
    assert names == [segment_name(first) for first in range(1, count + 1, 2)]
    for name in names:
        assert os.path.getsize(os.path.join(directory, name)) <= wal.segment_bytes_max
    for lsn in range(1, count + 2):
        assert [r.lsn for r in _records(wal, lsn)] == list(range(lsn, count + 1))
        for until in range(lsn, count + 1):
            assert [r.lsn for r in _records(wal, lsn, until)] == list(range(lsn, until + 1))
    assert [r.payload for r in _records(wal)] == [_payload(i, 50) for i in range(count)]
    wal.close()

    reopened = WriteAheadLog(directory, segment_bytes_max=2 * frame + 10)
    try:
        assert reopened.last_lsn == count
        assert [r.lsn for r in _records(reopened, 4)] == list(range(4, count + 1))
        assert reopened.append(_payload(99, 50), 1) == count + 1  # fills the half-full last segment
        assert reopened.append(_payload(100, 50), 1) == count + 2  # rolls
        reopened.sync_to(count + 2)
        assert _segment_files(directory)[-1] == segment_name(count + 2)
        assert [r.lsn for r in _records(reopened, count)] == [count, count + 1, count + 2]
    finally:
        reopened.close()


def test_record_larger_than_segment_max_gets_a_segment_of_its_own(tmp_path):
    directory = str(tmp_path / "wal")
    wal = WriteAheadLog(directory, segment_bytes_max=100)
    try:
        wal.append(b"small", 1)
        wal.append(b"L" * 500, 1)
        wal.append(b"small again", 1)
        wal.sync_to(3)
        assert _segment_files(directory) == [segment_name(1), segment_name(2), segment_name(3)]
        assert [r.payload for r in _records(wal)] == [b"small", b"L" * 500, b"small again"]
    finally:
        wal.close()


def test_remove_segments_before(tmp_path):
    directory = str(tmp_path / "wal")
    wal = WriteAheadLog(directory, segment_bytes_max=3 * (frames.HEADER_BYTES + 8))  # three records each
    for i in range(10):
        wal.append(b"%08d" % i, 1)
    wal.sync_to(10)
    assert [s.first_lsn for s in list_segments(directory)] == [1, 4, 7, 10]

    assert wal.remove_segments_before(1) == 0
    assert wal.remove_segments_before(3) == 0  # segment 1..3 still holds LSN 3
    assert wal.first_lsn == 1
    assert wal.remove_segments_before(4) == 1  # 1..3 all below 4
    assert wal.first_lsn == 4
    assert _segment_files(directory) == [segment_name(4), segment_name(7), segment_name(10)]
    assert [r.lsn for r in _records(wal, 4)] == list(range(4, 11))
    assert wal.remove_segments_before(9) == 1  # 4..6 goes, 7..9 keeps LSN 9
    assert wal.first_lsn == 7
    assert wal.remove_segments_before(1000) == 1  # never the last (open) segment
    assert _segment_files(directory) == [segment_name(10)]
    assert wal.first_lsn == 10
    assert wal.append(b"next", 1) == 11
    wal.sync_to(11)
    wal.close()

    reopened = WriteAheadLog(directory, segment_bytes_max=wal.segment_bytes_max)
    try:
        assert reopened.first_lsn == 10
        assert reopened.last_lsn == 11
        assert [r.lsn for r in _records(reopened, 1)] == [10, 11]
    finally:
        reopened.close()


def test_start_at_continues_an_empty_log(tmp_path):
    directory = str(tmp_path / "wal")
    wal = WriteAheadLog(directory)
    wal.start_at(41, 3)
    assert wal.last_lsn == wal.durable_lsn == 41 and wal.first_lsn == 42
    assert wal.append(b"x", 3) == 42
    wal.sync_to(42)
    wal.close()
    assert _segment_files(directory) == [segment_name(42)]
    reopened = WriteAheadLog(directory)
    try:
        assert reopened.first_lsn == 42 and reopened.last_lsn == 42 and reopened.last_epoch == 3
        with pytest.raises(CorruptionError, match=segment_name(42)) as info:
            reopened.start_at(100, 3)
        assert info.value.lsn_range == (42, 42)
    finally:
        reopened.close()


def test_junk_files_in_the_wal_directory_are_ignored(tmp_path):
    directory = str(tmp_path / "wal")
    wal = WriteAheadLog(directory)
    wal.sync_to(wal.append(b"a", 1))
    wal.close()
    for junk in ("notes.txt", "0000000000000001.wal.tmp", "0000000000000002.WAL"):
        (tmp_path / "wal" / junk).write_bytes(b"garbage")
    reopened = WriteAheadLog(directory)
    try:
        assert [s.first_lsn for s in list_segments(directory)] == [1]
        assert [r.payload for r in _records(reopened)] == [b"a"]
    finally:
        reopened.close()


# -- recovery ---------------------------------------------------------------------------------


def _write_log(directory: str, count: int, **kwargs) -> list[int]:
    """Write `count` records; return the byte offset of each within the (single) segment."""
    wal = WriteAheadLog(directory, fsync=False, **kwargs)
    offsets, position = [], 0
    for i in range(count):
        offsets.append(position)
        payload = _payload(i, 20 + i)
        wal.append(payload, 1)
        position += frames.HEADER_BYTES + len(payload)
    wal.sync_to(count)
    wal.close()
    return offsets


def test_torn_tail_is_truncated_on_open(tmp_path):
    directory = str(tmp_path / "wal")
    offsets = _write_log(directory, 4)
    path = os.path.join(directory, segment_name(1))
    with open(path, "r+b") as f:
        f.truncate(offsets[3] + 10)  # the last append stopped half way through its header
    wal = WriteAheadLog(directory)
    try:
        assert wal.last_lsn == 3
        assert os.path.getsize(path) == offsets[3]
        assert wal.append(b"after", 1) == 4
        wal.sync_to(4)
        assert [r.payload for r in _records(wal)][-1] == b"after"
    finally:
        wal.close()


def test_zero_filled_tail_is_truncated_on_open(tmp_path):
    directory = str(tmp_path / "wal")
    offsets = _write_log(directory, 3)
    path = os.path.join(directory, segment_name(1))
    size = os.path.getsize(path)
    with open(path, "ab") as f:
        f.write(b"\x00" * 200)  # file length reached the disk, the data did not
    wal = WriteAheadLog(directory)
    try:
        assert wal.last_lsn == 3
        assert os.path.getsize(path) == size
        assert len(offsets) == 3
    finally:
        wal.close()


def _crashed_log(directory: str, count: int) -> tuple[str, list[int]]:
    """A log whose writer stopped without closing: frames, then its preallocated zeros."""
    wal = WriteAheadLog(directory, preallocate_bytes=64 << 10)
    offsets, position = [], 0
    for i in range(count):
        offsets.append(position)
        payload = _payload(i, size=100)
        wal.append(payload, 1)
        position += frames.HEADER_BYTES + len(payload)
    wal.sync_to(count)
    os.close(wal._fd)  # the process died here: no seal, no truncation of the zeros
    return os.path.join(directory, segment_name(1)), offsets + [position]


def test_live_segment_is_preallocated_and_a_clean_close_cuts_the_zeros(tmp_path):
    directory = str(tmp_path / "wal")
    wal = WriteAheadLog(directory, preallocate_bytes=64 << 10)
    wal.append(_payload(1), 1)
    wal.sync_to(1)
    path = os.path.join(directory, segment_name(1))
    assert os.path.getsize(path) == 64 << 10  # zeros written ahead: fdatasync moves only data
    wal.close()
    assert os.path.getsize(path) == frames.HEADER_BYTES + len(_payload(1))


def test_crash_with_preallocated_zeros_recovers_every_record(tmp_path):
    directory = str(tmp_path / "wal")
    path, offsets = _crashed_log(directory, 5)
    assert os.path.getsize(path) > offsets[-1]
    wal = WriteAheadLog(directory)
    try:
        assert wal.last_lsn == 5
        assert os.path.getsize(path) == offsets[-1]
        assert [r.payload for r in _records(wal)] == [_payload(i, size=100) for i in range(5)]
    finally:
        wal.close()


def test_torn_frame_before_preallocated_zeros_is_truncated(tmp_path):
    directory = str(tmp_path / "wal")
    path, offsets = _crashed_log(directory, 5)
    with open(path, "r+b") as f:  # the last frame's second half never reached the disk
        f.seek(offsets[4] + 60)
        f.write(bytes(offsets[5] - offsets[4] - 60))
    wal = WriteAheadLog(directory)
    try:
        assert wal.last_lsn == 4
        assert os.path.getsize(path) == offsets[4]
    finally:
        wal.close()


def test_damaged_frame_before_preallocated_zeros_with_an_intact_frame_after_raises(tmp_path):
    directory = str(tmp_path / "wal")
    path, offsets = _crashed_log(directory, 5)
    with open(path, "r+b") as f:
        f.seek(offsets[2] + 50)
        f.write(b"\xff")
    before = open(path, "rb").read()
    with pytest.raises(CorruptionError) as caught:
        WriteAheadLog(directory)
    assert caught.value.offset == offsets[2]
    assert open(path, "rb").read() == before  # nothing truncated


def test_sealed_segments_hold_no_zero_tail(tmp_path):
    directory = str(tmp_path / "wal")
    frame = frames.HEADER_BYTES + 24
    wal = WriteAheadLog(directory, segment_bytes_max=3 * frame, preallocate_bytes=64 << 10)
    for i in range(7):
        wal.append(_payload(i), 1)
    wal.sync_to(7)
    names = _segment_files(directory)
    assert len(names) == 3
    assert [os.path.getsize(os.path.join(directory, n)) for n in names[:2]] == [3 * frame, 3 * frame]
    assert os.path.getsize(os.path.join(directory, names[2])) == 3 * frame  # capped at the segment size
    wal.close()
    assert os.path.getsize(os.path.join(directory, names[2])) == frame


def test_damage_before_the_tail_raises_and_modifies_nothing(tmp_path):
    directory = str(tmp_path / "wal")
    offsets = _write_log(directory, 5)
    path = os.path.join(directory, segment_name(1))
    data = bytearray(open(path, "rb").read())
    data[offsets[2] + frames.HEADER_BYTES + 3] ^= 0x40  # payload byte of LSN 3
    open(path, "wb").write(bytes(data))
    with pytest.raises(CorruptionError) as info:
        WriteAheadLog(directory)
    assert info.value.segment == segment_name(1)
    assert info.value.offset == offsets[2]
    assert segment_name(1) in str(info.value) and str(offsets[2]) in str(info.value)
    assert open(path, "rb").read() == bytes(data)


def test_damage_at_the_end_of_a_segment_that_is_not_the_last_raises(tmp_path):
    directory = str(tmp_path / "wal")
    frame = frames.HEADER_BYTES + 20
    wal = WriteAheadLog(directory, fsync=False, segment_bytes_max=2 * frame)
    for i in range(5):
        wal.append(_payload(i, 20), 1)
    wal.sync_to(5)
    wal.close()
    first = os.path.join(directory, segment_name(1))
    with open(first, "r+b") as f:
        f.truncate(frame + 7)  # the second record of the first segment is torn, yet later ones exist
    with pytest.raises(CorruptionError) as info:
        WriteAheadLog(directory)
    assert info.value.segment == segment_name(1)
    assert info.value.offset == frame


def test_empty_segment_before_the_tail_raises(tmp_path):
    directory = str(tmp_path / "wal")
    frame = frames.HEADER_BYTES + 20
    wal = WriteAheadLog(directory, fsync=False, segment_bytes_max=frame)
    for i in range(3):
        wal.append(_payload(i, 20), 1)
    wal.sync_to(3)
    wal.close()
    open(os.path.join(directory, segment_name(2)), "wb").close()
    with pytest.raises(CorruptionError) as info:
        WriteAheadLog(directory)
    assert info.value.segment == segment_name(2)
    assert info.value.offset == 0


def test_lsn_out_of_sequence_inside_a_segment_raises(tmp_path):
    directory = str(tmp_path / "wal")
    os.makedirs(directory)
    frames_ = [frames.encode(Record(lsn, 1, 1, b"p")) for lsn in (1, 2, 4)]
    with open(os.path.join(directory, segment_name(1)), "wb") as f:
        f.write(b"".join(frames_))
    with pytest.raises(CorruptionError, match="LSN 4") as info:
        WriteAheadLog(directory)
    assert info.value.offset == 2 * len(frames_[0])


# -- group commit -----------------------------------------------------------------------------


def test_group_commit_shares_fsyncs(tmp_path):
    wal = WriteAheadLog(str(tmp_path / "wal"))
    threads_n, per_thread = 12, 15
    start = threading.Barrier(threads_n)
    acked: list[list[int]] = [[] for _ in range(threads_n)]
    errors: list[BaseException] = []

    def writer(index: int) -> None:
        try:
            start.wait()
            for i in range(per_thread):
                lsn = wal.append(b"%d:%d" % (index, i), 1)
                wal.sync_to(lsn)
                assert wal.durable_lsn >= lsn
                acked[index].append(lsn)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert not errors
        commits = threads_n * per_thread
        all_lsns = sorted(lsn for lsns in acked for lsn in lsns)
        assert all_lsns == list(range(1, commits + 1))
        for lsns in acked:
            assert lsns == sorted(lsns)
        assert wal.durable_lsn == wal.last_lsn == commits
        assert 1 <= wal.fsync_count < commits
        payloads = {r.payload for r in _records(wal)}
        assert payloads == {b"%d:%d" % (t, i) for t in range(threads_n) for i in range(per_thread)}
    finally:
        wal.close()


# -- segment names ----------------------------------------------------------------------------


@pytest.mark.parametrize("lsn", [1, 2, 15, 16, 255, 4096, 123456789, 2**32, 2**63, 2**64 - 1])
def test_segment_name_round_trip(lsn):
    name = segment_name(lsn)
    assert len(name) == 20 and name.endswith(".wal")
    assert parse_segment_name(name) == lsn


def test_segment_names_sort_in_lsn_order():
    lsns = [1, 9, 10, 16, 255, 256, 4097, 2**40]
    assert sorted(segment_name(n) for n in lsns) == [segment_name(n) for n in lsns]


@pytest.mark.parametrize("lsn", [0, -1, -(2**40)])
def test_segment_name_rejects_lsns_below_one(lsn):
    with pytest.raises(ValueError):
        segment_name(lsn)


@pytest.mark.parametrize("name", [
    "", ".wal", "wal", "1.wal", "0000000000000001", "0000000000000001.wal.tmp", "0000000000000001.WAL",
    "000000000000000A.wal", "000000000000000g.wal", "00000000000000001.wal", "000000000000001.wal",
    "x0000000000000001.wal", "0000000000000001.walx", " 0000000000000001.wal", "0000000000000001.wal ",
    "0000000000000001-wal", "-000000000000001.wal", "+000000000000001.wal", "0x00000000000001.wal",
    "state.duckdb", "LOCK",
])
def test_parse_segment_name_rejects_junk(name):
    assert parse_segment_name(name) is None


def test_parse_segment_name_rejects_a_trailing_newline():
    """CORE BUG (knowledge/storage/wal/segments.py, _NAME): `$` also matches before a final newline, so the
    junk name "0000000000000001.wal\\n" is accepted as segment 1. Fix: use `_NAME.fullmatch` (or `\\Z`)."""
    assert parse_segment_name("0000000000000001.wal\n") is None


def test_position_orders_by_epoch_then_lsn():
    from knowledge.storage.position import Position
    assert Position(1, 9) < Position(2, 1) < Position(2, 3)
    assert str(Position(2, 3)) == "2/3" and Position.parse("2/3") == Position(2, 3)
    assert Position(0, 0).is_zero()
    with pytest.raises(ValueError):
        Position(-1, 0)


def test_preallocation_off_writes_frames_only(tmp_path, monkeypatch):
    from knowledge.storage.wal import log as wal_log

    writes: list[int] = []
    pwrite = os.pwrite

    def counted(fd, data, offset):
        writes.append(len(data))
        return pwrite(fd, data, offset)

    monkeypatch.setattr(wal_log.os, "pwrite", counted)
    directory = str(tmp_path / "wal")
    wal = WriteAheadLog(directory, preallocate_bytes=0)
    try:
        for i in range(3):
            wal.append(_payload(i), 1)
        wal.sync_to(3)
        frame = frames.HEADER_BYTES + len(_payload(0))
        assert writes == [frame] * 3  # each frame written once, no zeros ahead of it
        assert os.path.getsize(os.path.join(directory, segment_name(1))) == 3 * frame
    finally:
        wal.close()
