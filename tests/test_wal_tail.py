"""WalTail (knowledge/storage/wal/tail.py): following a live WAL directory incrementally.

Real files throughout: a WriteAheadLog (or a store) appends in this process, another thread or a child
process, and a WalTail must return exactly what `WriteAheadLog.read_from` returns, in batches across many
calls, reading only new bytes (counted with /proc/self/io), through segment rolls, preallocated zeros,
half-written frames past `until_lsn`, retention (WalTailGone), damage (CorruptionError) and encryption.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import zlib

import pytest

import knowledge
from knowledge.config import StoreConfig
from knowledge.errors import CorruptionError, EncryptionKeyMissing, StoreClosed, Unavailable, WalTailGone
from knowledge.storage import crypto
from knowledge.storage.wal import Record, WriteAheadLog
from knowledge.storage.wal import record as frames
from knowledge.storage.wal.log import list_segments
from knowledge.storage.wal.segments import segment_name
from knowledge.storage.wal.tail import WalTail

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY = bytes(range(32))


def _payload(i: int, size: int) -> bytes:
    return (f"rec-{i:07d}|".encode() * (size // 12 + 1))[:size]


def _wal(tmp_path, **kwargs) -> WriteAheadLog:
    kwargs.setdefault("fsync", False)
    return WriteAheadLog(str(tmp_path / "wal"), **kwargs)


def _append(wal: WriteAheadLog, rng: random.Random, count: int, size_max: int = 300) -> None:
    payloads = [_payload(wal.last_lsn + 1 + i, rng.randint(0, size_max)) for i in range(count)]
    if count == 1 or rng.random() < 0.5:
        for payload in payloads:
            wal.append(payload, epoch=1)
    else:
        wal.append_many(payloads, epoch=1)
    wal.sync_to(wal.last_lsn)


def _rchar() -> int:
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("rchar:"):
                return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


class _BytesRead:
    """Bytes this process reads through read(2)/pread(2) inside the block (Linux /proc/self/io rchar, less
    what reading that file itself counts)."""

    def __enter__(self) -> _BytesRead:
        first = _rchar()
        self._overhead = _rchar() - first
        self._start = _rchar()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bytes = _rchar() - self._start - self._overhead


needs_proc_io = pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="needs Linux /proc/self/io")


@pytest.mark.parametrize("preallocate_bytes", [0, 1 << 20], ids=["no-prealloc", "prealloc"])
def test_batches_interleaved_with_appends_match_read_from(tmp_path, preallocate_bytes):
    rng = random.Random(7)
    wal = _wal(tmp_path, segment_bytes_max=8 << 10, preallocate_bytes=preallocate_bytes)
    tail = WalTail(wal.directory, 0)
    got: list[Record] = []
    for _ in range(300):
        _append(wal, rng, rng.choice([1, 1, 2, 5, 20]))
        got += tail.read(wal.durable_lsn, records_max=rng.choice([1, 3, 10_000]))
        assert tail.last_lsn == (got[-1].lsn if got else 0)
    while tail.last_lsn < wal.durable_lsn:
        got += tail.read(wal.durable_lsn, records_max=7)
    assert len(wal.segments) > 20  # it crossed many rolls
    assert got == list(wal.read_from(1))
    assert tail.read(wal.durable_lsn) == []
    tail.close()
    wal.close()


def test_starts_after_any_lsn_in_any_segment(tmp_path):
    rng = random.Random(3)
    wal = _wal(tmp_path, segment_bytes_max=4 << 10)
    for _ in range(60):
        _append(wal, rng, 5)
    firsts = {seg.first_lsn for seg in wal.segments}
    assert len(firsts) > 5
    for after in sorted({0, 1, 2, *firsts, *(f - 1 for f in firsts), *(f + 1 for f in firsts), wal.last_lsn - 1}):
        with WalTail(wal.directory, after) as tail:
            assert tail.read(wal.durable_lsn) == list(wal.read_from(after + 1)), after
    with WalTail(wal.directory, wal.last_lsn) as tail:  # at the end: nothing yet, then the next records
        assert tail.read(wal.durable_lsn) == []
        _append(wal, rng, 3)
        assert tail.read(wal.durable_lsn) == list(wal.read_from(wal.last_lsn - 2))
    wal.close()


def test_records_past_until_lsn_are_not_returned(tmp_path):
    wal = _wal(tmp_path)
    for i in range(1, 16):
        wal.append(_payload(i, 50), epoch=2)
    tail = WalTail(wal.directory, 0)
    got = tail.read(10)
    assert [r.lsn for r in got] == list(range(1, 11))
    assert tail.last_lsn == 10
    assert tail.read(10) == []
    assert tail.read(9) == []
    got += tail.read(12)
    assert [r.lsn for r in got[10:]] == [11, 12]
    got += tail.read(15, records_max=2)
    assert [r.lsn for r in got[12:]] == [13, 14]
    assert tail.read(15, records_max=0) == []
    got += tail.read(15)
    assert got == list(wal.read_from(1, until_lsn=15))
    tail.close()
    with WalTail(wal.directory, 0) as again:
        assert again.read(15) == list(wal.read_from(1, until_lsn=15))
    wal.close()


def test_empty_directory_then_records(tmp_path):
    wal = _wal(tmp_path)
    tail = WalTail(wal.directory, 0)
    assert tail.segment is None
    assert tail.read(0) == []
    wal.append(b"first", epoch=1)
    wal.sync_to(1)
    assert tail.read(1) == list(wal.read_from(1))
    tail.close()
    with pytest.raises(StoreClosed):
        tail.read(1)
    wal.close()


def test_a_record_claimed_durable_that_no_segment_holds_is_an_error(tmp_path):
    wal = _wal(tmp_path)
    with WalTail(wal.directory, 0) as tail:
        with pytest.raises(WalTailGone):  # nothing at all in the directory
            tail.read(1)
    wal.append(b"one", epoch=1)
    with WalTail(wal.directory, 0) as tail:  # the live segment's preallocated zeros where LSN 2 would be
        assert [r.lsn for r in tail.read(2)] == [1]
        with pytest.raises(CorruptionError, match="LSN 2 is durable but not in the log: zeros"):
            tail.read(2)
    wal.close()
    wal = WriteAheadLog(wal.directory, fsync=False, preallocate_bytes=0)  # reopened: the zeros cut off
    with WalTail(wal.directory, 1) as tail:
        with pytest.raises(CorruptionError, match="LSN 2 is durable but not in the log: 0+1.wal ends before it "
                                                  "and no segment follows it"):
            tail.read(2)
    wal.close()


def _write_segment(directory: str, first_lsn: int, data: bytes) -> str:
    path = os.path.join(directory, segment_name(first_lsn))
    with open(path, "wb") as f:
        f.write(data)
    return path


@needs_proc_io
def test_a_partial_frame_is_kept_and_completed_with_only_the_new_bytes(tmp_path):
    directory = str(tmp_path / "wal")
    os.makedirs(directory)
    body = [frames.encode_frame(lsn, 1, 1000 + lsn, _payload(lsn, 4000)) for lsn in range(1, 5)]
    half = len(body[3]) // 2
    path = _write_segment(directory, 1, b"".join(body[:3]) + body[3][:half])
    tail = WalTail(directory, 0)
    assert [r.lsn for r in tail.read(3)] == [1, 2, 3]
    with open(path, "ab") as f:  # the writer finishes the frame
        f.write(body[3][half:])
    with _BytesRead() as spent:
        (rec,) = tail.read(4)
    assert rec == frames.decode(body[3], 0)
    assert spent.bytes == len(body[3]) - half  # the half already held was not read again
    tail.close()


def test_a_frame_past_until_written_over_is_read_again(tmp_path):
    """Bytes read past until_lsn (a half frame, zeros) may change before they are needed."""
    wal = _wal(tmp_path, preallocate_bytes=0)
    for i in range(1, 6):
        wal.append(_payload(i, 100), epoch=1)
    wal.sync_to(5)
    live = wal.segments[-1].path
    end = os.path.getsize(live)
    stray = frames.encode_frame(6, 1, 1, b"x" * 500)
    with open(live, "r+b") as f:  # a stray half frame where the WAL writes LSN 6 next
        f.seek(end)
        f.write(stray[:200])
    tail = WalTail(wal.directory, 0)
    assert len(tail.read(5)) == 5  # its read took the stray bytes into the buffer
    wal.append(_payload(6, 40), epoch=1)  # written over them (shorter, other content)
    wal.append(_payload(7, 40), epoch=1)
    wal.sync_to(7)
    assert tail.read(7) == list(wal.read_from(6))
    tail.close()
    wal.close()


@needs_proc_io
@pytest.mark.parametrize("preallocate_bytes", [0, 4 << 20], ids=["no-prealloc", "prealloc"])
def test_each_read_reads_only_a_little_of_a_large_segment(tmp_path, preallocate_bytes):
    wal = _wal(tmp_path, segment_bytes_max=64 << 20, preallocate_bytes=preallocate_bytes)
    for first in range(1, 4001, 100):  # 4 MB in the live segment
        wal.append_many([_payload(i, 1000) for i in range(first, first + 100)], epoch=1)
    wal.sync_to(wal.last_lsn)
    size = os.path.getsize(wal.segments[-1].path)
    assert (size > 4000 * 1036) == bool(preallocate_bytes)  # zeros ahead of the frames, when preallocating
    tail = WalTail(wal.directory, 0)
    assert len(tail.read(wal.durable_lsn)) == 4000
    spent = []
    for i in range(20):
        wal.append(_payload(4001 + i, 100), epoch=1)
        wal.sync_to(wal.last_lsn)
        with _BytesRead() as counted:
            (rec,) = tail.read(wal.durable_lsn)
        spent.append(counted.bytes)
        assert rec.lsn == 4001 + i
    assert max(spent) <= 2 * 64 << 10, spent  # a few read chunks, never the 4 MB segment
    assert len(wal.segments) == 1
    tail.close()
    wal.close()


def test_preallocated_live_segment_with_rolls(tmp_path):
    rng = random.Random(11)
    wal = _wal(tmp_path, segment_bytes_max=256 << 10, preallocate_bytes=64 << 10)
    tail = WalTail(wal.directory, 0)
    got: list[Record] = []
    saw_zeros = False
    for _ in range(400):
        _append(wal, rng, rng.choice([1, 4, 30]), size_max=900)
        live = wal.segments[-1].path
        with open(live, "rb") as f:
            saw_zeros |= f.read()[-64:] == bytes(64)
        got += tail.read(wal.durable_lsn)
    assert saw_zeros and len(wal.segments) > 5
    assert got == list(wal.read_from(1))
    tail.close()
    wal.close()


@pytest.mark.parametrize("preallocate_bytes", [0, 256 << 10], ids=["no-prealloc", "prealloc"])
def test_writer_thread_and_reader_thread(tmp_path, preallocate_bytes):
    wal = _wal(tmp_path, segment_bytes_max=64 << 10, preallocate_bytes=preallocate_bytes)
    total = 6000
    sizes = random.Random(5).choices(range(0, 600), k=total + 1)
    errors: list[BaseException] = []
    done = threading.Event()

    def writer() -> None:
        rng = random.Random(9)
        try:
            while wal.last_lsn < total:
                count = min(rng.choice([1, 1, 3, 17, 60]), total - wal.last_lsn)
                first = wal.last_lsn + 1
                wal.append_many([_payload(lsn, sizes[lsn]) for lsn in range(first, first + count)], epoch=1)
                wal.sync_to(wal.last_lsn)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
        finally:
            done.set()

    got: list[Record] = []
    thread = threading.Thread(target=writer)
    with WalTail(wal.directory, 0) as tail:
        thread.start()
        while tail.last_lsn < total and not errors:
            got += tail.read(wal.durable_lsn, records_max=500)
            if done.is_set() and tail.last_lsn == wal.durable_lsn:
                break
        thread.join()
    assert not errors
    assert [r.lsn for r in got] == list(range(1, total + 1))
    assert all(r.payload == _payload(r.lsn, sizes[r.lsn]) for r in got)
    assert got == list(wal.read_from(1))
    assert len(wal.segments) > 20
    wal.close()


WRITER = r"""
import random, sys
from knowledge.storage.wal import WriteAheadLog
directory, total = sys.argv[1], int(sys.argv[2])
wal = WriteAheadLog(directory, fsync=False, segment_bytes_max=32 << 10, preallocate_bytes=16 << 10)
rng = random.Random(1)
while wal.last_lsn < total:
    first = wal.last_lsn + 1
    count = min(rng.choice([1, 2, 9, 40]), total - wal.last_lsn)
    wal.append_many([(b"%d:" % lsn) * rng.randint(1, 40) for lsn in range(first, first + count)], epoch=3)
    wal.sync_to(wal.last_lsn)
    print(wal.durable_lsn, flush=True)
wal.close()
"""


def test_writer_process_and_reader(tmp_path):
    directory = str(tmp_path / "wal")
    os.makedirs(directory)
    total = 3000
    tail = WalTail(directory, 0)
    got: list[Record] = []
    child = subprocess.Popen([sys.executable, "-c", WRITER, directory, str(total)], cwd=ROOT,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    for line in child.stdout:
        got += tail.read(int(line))
    assert child.wait(timeout=60) == 0
    assert [r.lsn for r in got] == list(range(1, total + 1))
    assert all(r.payload.startswith(b"%d:" % r.lsn) and r.epoch == 3 for r in got)
    wal = WriteAheadLog(directory, fsync=False)
    assert got == list(wal.read_from(1))
    assert len(wal.segments) > 10
    wal.close()
    tail.close()


def test_segment_removed_while_open_stays_readable(tmp_path):
    rng = random.Random(2)
    wal = _wal(tmp_path, segment_bytes_max=4 << 10)
    for _ in range(40):
        _append(wal, rng, 4)
    expected = list(wal.read_from(1))
    tail = WalTail(wal.directory, 0)
    part = tail.read(3)  # holds the first segment open
    second = wal.segments[1].first_lsn
    assert wal.remove_segments_before(second) == 1  # retention unlinks the segment being read
    assert not os.path.exists(tail.segment.path)
    assert part + tail.read(wal.durable_lsn) == expected
    tail.close()
    wal.close()


def test_needed_segment_gone_raises_wal_tail_gone(tmp_path):
    rng = random.Random(4)
    wal = _wal(tmp_path, segment_bytes_max=4 << 10)
    for _ in range(40):
        _append(wal, rng, 4)
    segments = wal.segments
    tail = WalTail(wal.directory, 0)
    tail.read(2)  # in the first segment
    assert wal.remove_segments_before(segments[3].first_lsn) == 3
    rest = tail.read(wal.durable_lsn)  # the rest of the open (unlinked) first segment: still there
    assert [r.lsn for r in rest] == list(range(3, segments[1].first_lsn))
    with pytest.raises(WalTailGone) as info:
        tail.read(wal.durable_lsn)
    assert info.value.lsn == segments[1].first_lsn
    assert info.value.directory == wal.directory
    assert f"LSN {segments[1].first_lsn}" in str(info.value) and wal.directory in str(info.value)
    assert isinstance(info.value, Unavailable)
    tail.close()
    with pytest.raises(WalTailGone, match="LSN 1 "):  # a tail starting where the log no longer reaches
        WalTail(wal.directory, 0)
    with WalTail(wal.directory, segments[3].first_lsn - 1) as tail:  # one that starts at the log's start
        assert tail.read(wal.durable_lsn) == list(wal.read_from(segments[3].first_lsn))
    wal.close()


def test_damage_before_until_raises_corruption_and_after_it_does_not(tmp_path):
    wal = _wal(tmp_path, preallocate_bytes=0)
    for i in range(1, 31):
        wal.append(_payload(i, 80), epoch=1)
    wal.sync_to(30)
    path = wal.segments[-1].path
    frame = frames.HEADER_BYTES + 80

    def flip(lsn: int) -> None:  # a payload byte of the record's frame
        with open(path, "r+b") as f:
            f.seek((lsn - 1) * frame + frames.HEADER_BYTES + 7)
            byte = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([byte[0] ^ 0x20]))

    flip(25)
    with WalTail(wal.directory, 0) as tail:
        assert [r.lsn for r in tail.read(24)] == list(range(1, 25))  # the damage lies past until_lsn
        with pytest.raises(CorruptionError, match="LSN 25"):
            tail.read(30)
    flip(10)
    with WalTail(wal.directory, 0) as tail:
        assert [r.lsn for r in tail.read(20)] == list(range(1, 10))  # the records before the damage first
        assert tail.last_lsn == 9
        for _ in range(2):  # then the damage, as often as it is read
            with pytest.raises(CorruptionError) as info:
                tail.read(20)
            assert info.value.lsn == 10 and info.value.offset == 9 * frame
            assert os.path.basename(path) in str(info.value) and "CRC mismatch" in str(info.value)
        assert tail.last_lsn == 9
    with WalTail(wal.directory, 12) as tail:  # damage below the start is found while skipping to it
        with pytest.raises(CorruptionError, match="LSN 10"):
            tail.read(13)
    wal.close()


def test_out_of_order_lsn_is_corruption(tmp_path):
    directory = str(tmp_path / "wal")
    os.makedirs(directory)
    _write_segment(directory, 1, frames.encode_frame(1, 1, 1, b"a") + frames.encode_frame(3, 1, 1, b"c"))
    with WalTail(directory, 0) as tail:
        assert [r.payload for r in tail.read(3)] == [b"a"]
        with pytest.raises(CorruptionError, match="LSN 3 where 2 was expected"):
            tail.read(3)


def _doc_store(path: str, config: StoreConfig) -> knowledge.Store:
    store = knowledge.open(path, config=config)
    store.define_node_type("Doc", key="name", properties={"body": "text", "n": "int"})
    return store


def _commit(store: knowledge.Store, i: int) -> None:
    with store.session().transaction() as tx:
        tx.upsert_nodes("Doc", [{"name": f"d{i}-{j}", "body": f"body {i} {j} " * 30, "n": j} for j in range(3)])


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_a_real_store(tmp_path, encrypted):
    extra = {"encryption_key": KEY, "encryption_key_id": "a"} if encrypted else {}
    config = StoreConfig(segment_bytes_max=16 << 10, wal_preallocate_bytes=8 << 10, **extra)
    store = _doc_store(str(tmp_path / "s"), config)
    directory = os.path.join(str(tmp_path / "s"), "wal")
    tail = WalTail(directory, 0, keyring=config.keyring())
    got: list[Record] = []
    for i in range(60):
        _commit(store, i)
        got += tail.read(store.wal.durable_lsn)
        assert tail.last_lsn == store.wal.durable_lsn
    assert got == list(store.wal.read_from(1))
    assert len(store.wal.segments) > 3
    with open(store.wal.segments[-1].path, "rb") as f:
        assert crypto.is_encrypted(f.read(4)) is encrypted
    if encrypted:
        assert all(b"body 5" not in open(seg.path, "rb").read() for seg in list_segments(directory))
        with WalTail(directory, 0) as keyless, pytest.raises(EncryptionKeyMissing):
            keyless.read(store.wal.durable_lsn)
        with WalTail(directory, 0, keyring=crypto.Keyring(bytes(32), "a")) as wrong:
            with pytest.raises(knowledge.errors.EncryptionKeyWrong):
                wrong.read(store.wal.durable_lsn)
    tail.close()
    store.close()


def test_encrypted_payload_altered_with_a_matching_crc_is_corruption(tmp_path):
    keyring = crypto.Keyring(KEY, "a")
    wal = _wal(tmp_path, keyring=keyring, preallocate_bytes=0)
    for i in range(1, 6):
        wal.append(_payload(i, 64), epoch=1)
    wal.sync_to(5)
    path = wal.segments[-1].path
    with open(path, "rb") as f:
        data = bytearray(f.read())
    offset = crypto.FILE_HEADER_BYTES
    for _ in range(2):  # to the frame of LSN 3
        offset += frames.decode(data, offset).frame_bytes
    rec = frames.decode(data, offset)
    data[offset + frames.HEADER_BYTES + 20] ^= 1  # a ciphertext byte, then the CRC made to match
    head = bytes(data[offset:offset + frames.HEADER.size])
    sealed = bytes(data[offset + frames.HEADER_BYTES:offset + rec.frame_bytes])
    data[offset + frames.HEADER.size:offset + frames.HEADER_BYTES] = frames.CRC.pack(zlib.crc32(sealed, zlib.crc32(head)))
    with open(path, "r+b") as f:
        f.write(data)
    with WalTail(wal.directory, 0, keyring=keyring) as tail:
        assert [r.payload for r in tail.read(5)] == [_payload(1, 64), _payload(2, 64)]
        with pytest.raises(CorruptionError, match="authentication tag") as info:
            tail.read(5)
        assert info.value.lsn == 3 and info.value.offset == offset and tail.last_lsn == 2
    wal.close()
