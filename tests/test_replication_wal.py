"""The WAL hooks replication needs (append a record as it arrives, truncate an unacknowledged tail)
and the durable hard state, on real files."""

from __future__ import annotations

import json
import os

import pytest

from knowledge.errors import CorruptionError, InvalidArgument
from knowledge.replication.durable import HardStateFile, WalLog, restore
from knowledge.replication.lsn import EpochStart
from knowledge.replication.ready import HardState
from knowledge.storage.wal import WriteAheadLog


def _records(wal: WriteAheadLog) -> list[tuple[int, int, int, bytes]]:
    return [(r.lsn, r.epoch, r.timestamp_ns, bytes(r.payload)) for r in wal.read_from(1, until_lsn=wal.last_lsn)]


def test_append_record_keeps_the_given_lsn_epoch_and_timestamp(tmp_path):
    wal = WriteAheadLog(str(tmp_path / "wal"))
    wal.append_record(1, 3, 111, b"a")
    wal.append_record(2, 3, 222, b"")
    wal.append_record(3, 5, 333, b"c")
    wal.sync_to(3)
    wal.close()
    wal = WriteAheadLog(str(tmp_path / "wal"))
    assert _records(wal) == [(1, 3, 111, b"a"), (2, 3, 222, b""), (3, 5, 333, b"c")]
    assert wal.last_epoch == 5
    wal.close()


def test_append_record_refuses_a_gap_a_repeat_and_an_older_epoch(tmp_path):
    wal = WriteAheadLog(str(tmp_path / "wal"))
    wal.append_record(1, 4, 1, b"a")
    with pytest.raises(InvalidArgument, match="does not follow"):
        wal.append_record(3, 4, 1, b"gap")
    with pytest.raises(InvalidArgument, match="does not follow"):
        wal.append_record(1, 4, 1, b"again")
    with pytest.raises(InvalidArgument, match="older than"):
        wal.append_record(2, 3, 1, b"stale")
    assert wal.last_lsn == 1
    wal.append_record(2, 4, 1, b"b")
    assert wal.last_lsn == 2
    wal.close()


def test_append_takes_a_timestamp(tmp_path):
    wal = WriteAheadLog(str(tmp_path / "wal"))
    lsn = wal.append(b"x", 1, timestamp_ns=42)
    wal.sync_to(lsn)
    assert _records(wal) == [(1, 1, 42, b"x")]
    wal.close()


def test_truncate_after_within_the_live_segment_survives_reopen(tmp_path):
    wal = WriteAheadLog(str(tmp_path / "wal"))
    for i in range(1, 6):
        wal.append_record(i, 1 if i < 4 else 2, i, b"p%d" % i)
    wal.sync_to(5)
    assert wal.truncate_after(3) == 2
    assert (wal.last_lsn, wal.last_epoch, wal.durable_lsn) == (3, 1, 3)
    wal.append_record(4, 3, 9, b"new")
    wal.sync_to(4)
    wal.close()
    wal = WriteAheadLog(str(tmp_path / "wal"))
    assert [(r[0], r[1], r[3]) for r in _records(wal)] == [(1, 1, b"p1"), (2, 1, b"p2"), (3, 1, b"p3"),
                                                            (4, 3, b"new")]
    assert wal.recovery.truncated_count == 0
    wal.close()


def test_truncate_after_across_segments_updates_the_manifest(tmp_path):
    directory = str(tmp_path / "wal")
    wal = WriteAheadLog(directory, segment_bytes_max=200, preallocate_bytes=0)
    for i in range(1, 21):
        wal.append_record(i, 1, i, b"x" * 40)
    wal.sync_to(20)
    segments_before = len(wal.segments)
    assert segments_before > 3
    assert wal.truncate_after(5) == 15
    assert len(wal.segments) < segments_before
    assert all(seg.first_lsn <= 5 for seg in wal.segments)
    with open(os.path.join(directory, "MANIFEST"), encoding="utf-8") as f:
        manifest = json.load(f)
    assert manifest["segments"][-1][1] is None  # the segment holding LSN 5 is live again
    assert all(first <= 5 for first, _ in manifest["segments"])
    wal.append_record(6, 2, 0, b"after")
    wal.sync_to(6)
    wal.close()
    wal = WriteAheadLog(directory, segment_bytes_max=200, preallocate_bytes=0)
    records = _records(wal)
    assert [r[0] for r in records] == [1, 2, 3, 4, 5, 6] and records[-1][1:] == (2, 0, b"after")
    wal.close()


def test_truncate_after_everything_and_below_the_retained_log(tmp_path):
    directory = str(tmp_path / "wal")
    wal = WriteAheadLog(directory)
    for i in range(1, 4):
        wal.append_record(i, 1, 0, b"a")
    wal.sync_to(3)
    assert wal.truncate_after(3) == 0
    assert wal.truncate_after(0) == 3
    assert wal.last_lsn == 0 and _records(wal) == []
    wal.append_record(1, 2, 0, b"fresh")
    wal.sync_to(1)
    wal.close()
    wal = WriteAheadLog(directory)
    assert [r[:2] for r in _records(wal)] == [(1, 2)]
    wal.close()
    other = WriteAheadLog(str(tmp_path / "later"))
    other.start_at(10, 1)
    other.append_record(11, 1, 0, b"x")
    with pytest.raises(InvalidArgument, match="holds LSN 11..11 only"):
        other.truncate_after(5)
    other.close()


def test_hard_state_file_round_trip_and_damage(tmp_path):
    hard = HardStateFile(str(tmp_path))
    assert hard.load() == HardState(0, None)
    hard.save(HardState(7, "b"))
    assert HardStateFile(str(tmp_path)).load() == HardState(7, "b")
    hard.save(HardState(8, None))
    assert HardStateFile(str(tmp_path)).load() == HardState(8, None)
    with open(hard.path, "w", encoding="utf-8") as f:
        f.write('{"epoch": "x"')
    with pytest.raises(CorruptionError, match="hard state"):
        hard.load()


def test_wal_log_reads_entries_and_restores_the_epoch_history(tmp_path):
    wal = WriteAheadLog(str(tmp_path / "wal"))
    for lsn, epoch in ((1, 1), (2, 1), (3, 4), (4, 4), (5, 6)):
        wal.append_record(lsn, epoch, lsn * 10, b"r%d" % lsn)
    wal.sync_to(5)
    log = WalLog(wal)
    entries = log.entries(2, 4, 1 << 20)
    assert [(e.lsn, e.epoch, e.payload, e.timestamp_ns) for e in entries] == [
        (2, 1, b"r2", 20), (3, 4, b"r3", 30), (4, 4, b"r4", 40)]
    assert [e.lsn for e in log.entries(1, 5, 3)] == [1]  # at least one record, then within the byte cap
    assert [e.lsn for e in log.entries(1, 5, 4)] == [1, 2]
    state = restore(wal, HardState(2, "a"), applied_lsn=3)
    assert state.epochs == (EpochStart(1, 1), EpochStart(4, 3), EpochStart(6, 5))
    assert (state.hard_state, state.last_lsn, state.applied_lsn, state.first_lsn) == (HardState(6, "a"), 5, 3, 1)
    wal.close()
