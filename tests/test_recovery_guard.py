"""Recovery never hides a loss (issue 11, points 10-13): the WAL manifest, truncation reports,
corruption errors that name file/offset/LSN, backup destinations, and `knowledge recover`."""

from __future__ import annotations

import logging
import os

import pytest

import knowledge
from knowledge.cli import main
from knowledge.errors import BackupError, CorruptionError

SMALL_SEGMENTS = knowledge.StoreConfig(segment_bytes_max=16 << 10, wal_preallocate_bytes=0)


def _segments(path: str) -> list[str]:
    wal = os.path.join(path, "wal")
    return sorted(os.path.join(wal, n) for n in os.listdir(wal) if n.endswith(".wal"))


def _build(path: str, commits: int = 200, *, config: knowledge.StoreConfig = SMALL_SEGMENTS,
           close: bool = True) -> knowledge.Store:
    store = knowledge.open(path, config=config)
    store.define_node_type("Doc", key="k", properties={"n": "int", "body": "text"})
    session = store.session()
    for i in range(commits):
        with session.transaction() as tx:
            tx.upsert_nodes("Doc", [{"k": f"d{i}", "n": i, "body": "x" * 300}])
    if close:
        store.close()
    return store


def _count(store: knowledge.Store) -> int:
    return store.session().scan("Doc").num_rows


def test_missing_sealed_segment_refuses_naming_the_lsn_range(tmp_path):
    path = str(tmp_path / "s")
    _build(path)
    segments = _segments(path)
    assert len(segments) >= 3
    os.unlink(segments[1])
    with pytest.raises(CorruptionError) as info:
        knowledge.open(path)
    err = info.value
    assert err.lsn is not None and err.lsn_range is not None
    first, last = err.lsn_range
    assert first == int(os.path.basename(segments[1])[:16], 16)
    assert last == int(os.path.basename(segments[2])[:16], 16) - 1
    assert f"{first}..{last}" in str(err)
    assert os.path.basename(segments[1]) in str(err)


def test_missing_live_segment_refuses_even_when_the_tables_hold_everything(tmp_path):
    """state.duckdb ahead of a deleted WAL segment: the store used to open with what was left, silently."""
    path = str(tmp_path / "s")
    _build(path)
    segments = _segments(path)
    os.unlink(segments[-1])
    with pytest.raises(CorruptionError) as info:
        knowledge.open(path)
    first = int(os.path.basename(segments[-1])[:16], 16)
    assert info.value.lsn_range[0] == first
    assert str(first) in str(info.value)


def test_sealed_segment_shorter_than_sealed_refuses(tmp_path):
    path = str(tmp_path / "s")
    _build(path)
    segments = _segments(path)
    size = os.path.getsize(segments[0])
    with open(segments[0], "r+b") as f:
        f.truncate(size - 100)  # cut within the last record: looks like a torn tail of that file
    with pytest.raises(CorruptionError) as info:
        knowledge.open(path)
    assert os.path.basename(segments[0]) in str(info.value)
    assert info.value.lsn_range is not None


def test_explicit_recovery_option_opens_with_what_is_left_and_says_so(tmp_path, caplog):
    path = str(tmp_path / "s")
    _build(path)
    segments = _segments(path)
    os.unlink(segments[-1])
    caplog.set_level(logging.WARNING, logger="knowledge")
    with knowledge.open(path, allow_data_loss=True) as store:
        assert 0 < _count(store) <= 200
        report = store.stats()["recovery"]
        assert report["lsn_ranges_lost"]
    assert any("lost" in r.getMessage() for r in caplog.records)
    with knowledge.open(path) as store:  # the acceptance is recorded: a second open is clean
        assert 0 < _count(store) <= 200


def test_torn_tail_is_truncated_logged_and_counted(tmp_path, caplog):
    path = str(tmp_path / "s")
    _build(path, commits=20, config=knowledge.StoreConfig())
    live = _segments(path)[-1]
    with open(live, "ab") as f:
        f.write(b"KNWL" + os.urandom(40))  # a half-written frame
    caplog.set_level(logging.WARNING, logger="knowledge")
    with knowledge.open(path) as store:
        assert _count(store) == 20
        truncated = store.stats()["recovery"]["truncated"]
        assert truncated["bytes"] == 44
        assert truncated["count"] == 1
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "44 bytes" in messages and os.path.basename(live) in messages


def test_bit_flip_in_last_fsynced_record_is_dropped_with_its_lsn_logged(tmp_path, caplog):
    path = str(tmp_path / "s")
    last = _build(path, commits=20, config=knowledge.StoreConfig()).memory_lsn
    live = _segments(path)[-1]
    size = os.path.getsize(live)
    with open(live, "r+b") as f:
        f.seek(size - 5)
        byte = f.read(1)
        f.seek(size - 5)
        f.write(bytes([byte[0] ^ 0x01]))
    caplog.set_level(logging.WARNING, logger="knowledge")
    with knowledge.open(path, allow_data_loss=True) as store:
        recovery = store.stats()["recovery"]
        assert recovery["truncated"]["count"] == 1
        assert recovery["truncated"]["lsn_ranges"] == [[last, last]]
        assert recovery["truncated"]["bytes"] > 0
        assert [last, last] in recovery["lsn_ranges_lost"]  # the tables held it: the log continues after
        assert store.session().count("Doc") == 20
    assert any(f"{last}..{last}" in r.getMessage() for r in caplog.records)
    with pytest.raises(CorruptionError):  # without the option the same damage refuses to open
        _flip_and_open(tmp_path)


def _flip_and_open(tmp_path) -> None:
    path = str(tmp_path / "again")
    _build(path, commits=5, config=knowledge.StoreConfig())
    live = _segments(path)[-1]
    with open(live, "r+b") as f:
        f.seek(os.path.getsize(live) - 5)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x01]))
    knowledge.open(path)


def test_clean_open_reports_no_recovery(tmp_path):
    path = str(tmp_path / "s")
    _build(path)
    with knowledge.open(path) as store:
        assert _count(store) == 200
        recovery = store.stats()["recovery"]
        assert recovery["truncated"]["count"] == 0
        assert recovery["lsn_ranges_lost"] == []


def test_checkpoint_removed_segments_are_not_reported_missing(tmp_path):
    path = str(tmp_path / "s")
    store = _build(path, close=False)
    store.checkpoint()
    with store.session().transaction() as tx:
        tx.upsert_nodes("Doc", [{"k": "after", "n": 1, "body": "y"}])
    store.close()
    with knowledge.open(path) as reopened:
        assert _count(reopened) == 201


def test_corruption_errors_name_file_offset_and_lsn(tmp_path):
    path = str(tmp_path / "s")
    _build(path)
    segments = _segments(path)
    with open(segments[1], "r+b") as f:
        f.seek(60)
        f.write(b"\xff\xff\xff\xff")
    with pytest.raises(CorruptionError) as info:
        knowledge.open(path)
    err = info.value
    assert err.segment == os.path.basename(segments[1])
    assert err.offset is not None and err.lsn is not None
    assert "LSN" in str(err) and "offset" in str(err)


def test_backup_refuses_a_destination_inside_the_store(tmp_path):
    path = str(tmp_path / "s")
    with _build(path, commits=3, close=False) as store:
        with pytest.raises(BackupError, match="inside"):
            store.backup(os.path.join(path, "inside"))
        with pytest.raises(BackupError, match="inside"):
            store.backup(os.path.join(path, "wal", "deeper"))
        assert not os.path.exists(os.path.join(path, "inside"))
        occupied = tmp_path / "occupied"
        occupied.mkdir()
        (occupied / "file").write_text("keep me")
        with pytest.raises(BackupError, match="not an empty directory"):
            store.backup(str(occupied))
        assert (occupied / "file").read_text() == "keep me"
    assert main(["backup", path, os.path.join(path, "inside")]) == 1


def _damage_tables(path: str) -> None:
    with open(os.path.join(path, "state.duckdb"), "r+b") as f:
        f.seek(0)
        f.write(os.urandom(8192))


def test_recover_rebuilds_from_the_wal_when_state_duckdb_is_damaged(tmp_path, capsys):
    path, dest = str(tmp_path / "s"), str(tmp_path / "r")
    _build(path, commits=50, config=knowledge.StoreConfig())
    _damage_tables(path)
    with pytest.raises(knowledge.KnowledgeError):
        knowledge.open(path)
    assert main(["recover", path, dest]) == 0
    out = capsys.readouterr().out
    assert '"lsn": 51' in out and '"records_replayed": 51' in out
    with knowledge.open(dest) as store:
        assert _count(store) == 50
        assert store.session().get("Doc", "d49")["n"] == 49


def test_recover_uses_a_backup_where_checkpoint_truncated_the_wal(tmp_path):
    path, backup, dest = str(tmp_path / "s"), str(tmp_path / "b"), str(tmp_path / "r")
    store = _build(path, commits=100, close=False)
    store.backup(backup)
    store.checkpoint()  # drops WAL segments the tables now cover
    session = store.session()
    for i in range(100, 130):
        with session.transaction() as tx:
            tx.upsert_nodes("Doc", [{"k": f"d{i}", "n": i, "body": "z"}])
    store.close()
    _damage_tables(path)
    with pytest.raises(CorruptionError, match="backup"):
        knowledge.recover(path, str(tmp_path / "no-backup"))
    report = knowledge.recover(path, dest, backup=backup)
    assert report["lsn"] == report["wal_last_lsn"]
    assert report["from_backup_lsn"] is not None
    with knowledge.open(dest) as recovered:
        assert _count(recovered) == 130
